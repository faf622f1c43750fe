"""`deconfound extract --prompts` and `deconfound patch` end to end on a tiny random model saved to a folder.

Oracles: the gold topics and the score-quantile treatment recomputed from the input file, a direct Python fit
of PatchingMediation with the same settings, and (for --outcome generate) the extraction's own Y.
"""
import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.cli import main  # noqa: E402
from deconfound.data import MediationData  # noqa: E402
from deconfound.lm.models import TINY_TEXT, tiny_model  # noqa: E402
from deconfound.lm.scorers import SCORERS, register_scorer  # noqa: E402

pytestmark = pytest.mark.lm
BAD = {"stupid", "idiot", "hate", "dumb", "fool", "ugly", "awful", "worst", "pathetic", "useless"}


class CliWords:
    """A deterministic scorer registered for the CLI: share of bad words, and a length column."""

    name = "cli_words"
    columns = ["toxic", "length"]
    primary = "toxic"

    def score(self, texts):
        out = []
        for t in texts:
            words = t.lower().split()
            out.append([sum(w in BAD for w in words) / (len(words) + 1), len(words)])
        return np.asarray(out, dtype=float).reshape(len(texts), 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    added = "cli_words" not in SCORERS
    if added:
        register_scorer("cli_words", CliWords)
    root = tmp_path_factory.mktemp("cli")
    lm = tiny_model("llama", seed=4, n_layers=2)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    lines = TINY_TEXT.strip().splitlines()
    words = [ln.split() for ln in lines]
    prompts = [" ".join(w[: max(3, len(w) - 3)]) for w in words] * 2
    n = len(prompts)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "quip": prompts, "file": np.where(np.arange(n) % 2 == 0, "sport", "people"),
        "rude": rng.uniform(size=n) + 0.5 * np.isin(np.arange(n) % len(lines), [12, 13, 14, 15]),
        "doc": [f"d{i // 4}" for i in range(n)], "key": [f"q{i:03d}" for i in range(n)],
    })
    frame.to_csv(root / "prompts.csv", index=False)
    (root / "words.txt").write_text("stupid\nidiot\nhate you\ndumb fool\nugly\n")
    out = root / "x"
    code = main(["extract", "--prompts", str(root / "prompts.csv"), "--text-column", "quip", "--topic-column", "file",
                 "--id-column", "key", "--score-column", "rude", "--score-quantile", "0.6", "--group-column", "doc",
                 "--model", str(root / "model"), "--dtype", "float32", "--device", "cpu", "--scorer", "cli_words",
                 "--n-samples", "2", "--max-new-tokens", "4", "--words", str(root / "words.txt"), "--out", str(out)])
    assert code == 0
    yield root, frame, out, lm
    if added:  # leave the registry as found: other tests list its names
        SCORERS.pop("cli_words", None)


def test_extract_from_a_prompt_file(setup, capsys):
    root, frame, out, lm = setup
    data = MediationData.load(out / "data")
    assert list(data.ids) == frame.key.tolist()
    assert list(data.x.columns) == ["topic"]  # gold labels as they are, no extra columns
    assert data.x.topic.tolist() == frame.file.tolist()
    cut = np.quantile(frame.rude, 0.6)
    np.testing.assert_array_equal(data.t, (frame.rude >= cut).astype(int))
    tr = data.meta["treatment"]
    assert tr["instrument"] == "score_column" and tr["column"] == "rude" and tr["quantile"] == 0.6
    assert tr["threshold"] == pytest.approx(cut) and "perspective" not in json.dumps(tr)
    assert tr["given_source"] == "column:rude"
    table = pd.read_parquet(out / "prompts.parquet")
    assert table.group.tolist() == frame.doc.tolist() and data.meta["prompts"]["group_column"] == "doc"
    agree = data.meta["patch_outcome"]
    r = np.corrcoef(table.patch_outcome, data.y)[0, 1]
    assert agree["pearson_r"] == pytest.approx(r, abs=1e-9) and agree["weak"] == (abs(r) < 0.3)
    assert data.units == ["mlp_out.L0", "mlp_out.L1"]


def test_extract_treatment_by_scorer_and_by_column(setup, tmp_path):
    root, frame, _, _ = setup
    frame = frame.assign(flag=(frame.rude > 0.7))
    frame.to_parquet(tmp_path / "p.parquet")
    common = ["--prompts", str(tmp_path / "p.parquet"), "--text-column", "quip", "--topic-column", "file",
              "--model", str(root / "model"), "--scorer", "cli_words", "--n-samples", "1", "--max-new-tokens", "2",
              "--patch-outcome", "none"]
    assert main(["extract", *common, "--treatment-column", "flag", "--out", str(tmp_path / "a")]) == 0
    a = MediationData.load(tmp_path / "a" / "data")
    np.testing.assert_array_equal(a.t, frame.flag.astype(int))
    assert a.meta["treatment"]["instrument"] == "column" and "patch_outcome" not in a.meta
    assert main(["extract", *common, "--score-threshold", "0.05", "--out", str(tmp_path / "b")]) == 0
    b = MediationData.load(tmp_path / "b" / "data")
    want = CliWords().score(frame.quip.tolist())[:, 0] >= 0.05
    np.testing.assert_array_equal(b.t, want.astype(int))
    assert b.meta["treatment"]["instrument"] == "scorer" and b.meta["treatment"]["scorer"] == "cli_words"


@pytest.mark.parametrize("argv,bad", [
    (["--treatment-column", "rude", "--score-column", "rude"], "got both"),
    (["--treatment-column", "rude"], "expected 0/1 or True/False"),
    (["--topic-column", "nope"], "'nope'"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--dtype", "int8"], "expected"),
])
def test_extract_bad_input(setup, argv, bad, capsys, tmp_path):
    root, _, _, _ = setup
    code = main(["extract", "--prompts", str(root / "prompts.csv"), "--text-column", "quip", "--model",
                 str(root / "model"), "--scorer", "cli_words", "--out", str(tmp_path / "z"), *argv])
    assert code == 2
    assert bad in capsys.readouterr().err


def test_patch_matches_a_direct_fit(setup, tmp_path):
    from deconfound.estimators.patching import PatchingMediation
    from deconfound.lm.outcomes import NextTokenMass
    from deconfound.lm.patch import Patcher

    root, frame, out, lm = setup
    csv = tmp_path / "p.csv"
    assert main(["patch", "--extraction", str(out), "--model", str(root / "model"), "--donors", "eb_mean,mean",
                 "--n-boot", "20", "--words", str(root / "words.txt"), "--out", str(csv)]) == 0
    got = pd.read_csv(csv)
    assert set(got.graph) == {"topic_mediation", "unadjusted_mediation"} and set(got.donors) == {"eb_mean", "mean"}
    data = MediationData.load(out / "data")
    words = ["stupid", "idiot", "hate you", "dumb fool", "ugly"]
    patcher = Patcher(lm, frame.quip.tolist(), outcome=NextTokenMass(words=words), ids=data.ids)
    data = data.replace(y=patcher.base_scores())
    res = PatchingMediation(donors="mean", n_boot=20, random_state=0, donor_bootstrap="linear").fit(
        data, graph="topic_mediation", patcher=patcher)
    want = res.to_frame()
    mine = got[(got.graph == "topic_mediation") & (got.donors == "mean")].reset_index(drop=True)
    np.testing.assert_allclose(mine.estimate, want.estimate, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mine.ci_lower, want.ci_lower, rtol=1e-9, atol=1e-12)
    assert json.loads(csv.with_suffix(".json").read_text())["outcome"] == "next_token_mass"


def test_patch_with_generate_reuses_the_extraction_streams(setup, tmp_path):
    root, frame, out, _ = setup
    csv = tmp_path / "g.csv"
    assert main(["patch", "--extraction", str(out), "--outcome", "generate", "--graphs", "unadjusted_mediation",
                 "--donors", "mean", "--n-boot", "5", "--units", "mlp_out.L1", "--out", str(csv)]) == 0
    got = pd.read_csv(csv)
    data = MediationData.load(out / "data")
    te = got[(got.effect == "te")].estimate.iloc[0]
    t = data.t == 1
    # unadjusted ATT total effect of the unpatched scores: the extraction's Y, since the streams are the same
    assert te == pytest.approx(data.y[t].mean() - data.y[~t].mean(), abs=1e-9)


def test_patch_linear_bootstrap_with_generate_is_refused_with_the_alternatives(setup, capsys):
    root, _, out, _ = setup
    code = main(["patch", "--extraction", str(out), "--outcome", "generate", "--donor-bootstrap", "linear",
                 "--graphs", "unadjusted_mediation", "--donors", "mean", "--n-boot", "5", "--units", "mlp_out.L1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--donor-bootstrap linear: expected a differentiable --outcome" in err and "got generate" in err
    assert "repatch" in err and "reweight" in err
