"""A user's prompt file to a report through the CLI alone, on a tiny random model of every listed architecture.

Each model is saved to a folder; a prompt CSV (text, topic, treatment) goes through ``deconfound extract
--prompts``, then ``deconfound patch --report``. The report files must exist, the estimates table must hold
finite patching effects for every unit and both graphs, and the patch CSV must equal the report's patching
rows (one fit serves both). The report compares with weighting only (DML's cross-fitting needs more than these
80 prompts); the default set (weighting, dml) runs on the real model in tests/integration. llama runs by
default; the other architectures are marked slow.
"""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.cli import main  # noqa: E402
from deconfound.lm.models import TINY_ARCHS, TINY_TEXT, tiny_model  # noqa: E402
from deconfound.lm.scorers import SCORERS, register_scorer  # noqa: E402

pytestmark = pytest.mark.lm
BAD = {"stupid", "idiot", "hate", "dumb", "fool", "ugly", "awful", "worst", "pathetic", "useless"}


class ArchWords:
    """Deterministic toxicity: share of bad words."""

    name = "arch_words"
    columns = ["toxic"]

    def score(self, texts):
        return np.array([[sum(w in BAD for w in t.lower().split()) / (len(t.split()) + 1)] for t in texts])


@pytest.fixture(scope="module")
def scorer():
    added = "arch_words" not in SCORERS
    if added:
        register_scorer("arch_words", ArchWords)
    yield "arch_words"
    if added:
        SCORERS.pop("arch_words", None)


def _prompt_file(path):
    lines = TINY_TEXT.strip().splitlines()
    words = [ln.split() for ln in lines]
    prompts = [" ".join(w[: max(3, len(w) - 2 - k)]) for k in range(4) for w in words]
    n = len(prompts)
    topic = np.where(np.arange(n) % 2 == 0, "sport", "people")
    treat = ((np.arange(n) // 2) % 3 == 0) ^ (topic == "sport") * (np.arange(n) % 5 == 0)
    pd.DataFrame({"text": prompts, "topic": topic, "treatment": treat.astype(int)}).to_csv(path, index=False)
    return n


ARCHS = [a if a == "llama" else pytest.param(a, marks=pytest.mark.slow) for a in TINY_ARCHS]


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_file_to_report_through_the_cli(arch, scorer, tmp_path):
    lm = tiny_model(arch, seed=5, n_layers=2)
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    n = _prompt_file(tmp_path / "prompts.csv")
    ext, rep, csv = tmp_path / "x", tmp_path / "report", tmp_path / "patching.csv"
    words = tmp_path / "words.txt"  # the tiny vocabulary has none of the default lexicon's words
    words.write_text("stupid\nidiot\nhate\ndumb fool\nugly\n")
    assert main(["extract", "--prompts", str(tmp_path / "prompts.csv"), "--topic-column", "topic",
                 "--treatment-column", "treatment", "--model", str(tmp_path / "model"), "--scorer", scorer,
                 "--n-samples", "2", "--max-new-tokens", "3", "--words", str(words), "--out", str(ext)]) == 0
    assert main(["patch", "--extraction", str(ext), "--n-boot", "20", "--words", str(words), "--out", str(csv),
                 "--report", str(rep), "--report-estimators", "weighting", "--quick", "--refute-units", "1"]) == 0
    for name in ("report.html", "report.md", "estimates.csv"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    est = pd.read_csv(rep / "estimates.csv")
    patch = est[(est.estimator == "patching") & (est.effect == "nie")]
    assert set(patch.graph) == {"topic_mediation", "unadjusted_mediation"}
    assert set(patch.unit) == {"mlp_out.L0", "mlp_out.L1"} and len(patch) == 4
    assert np.isfinite(patch[["estimate", "se", "ci_lower", "ci_upper"]].to_numpy()).all()
    assert "weighting" in set(est.estimator)
    got = pd.read_csv(csv)
    assert len(got) and n == 4 * len(TINY_TEXT.strip().splitlines())
    mine = got[got.effect == "nie"].set_index(["graph", "unit"]).estimate.sort_index()
    theirs = patch.set_index(["graph", "unit"]).estimate.sort_index()
    np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy(), rtol=0, atol=1e-12)
