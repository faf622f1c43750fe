"""Extraction on a tiny model with fake scorer and topic labeller.

Oracles: hand-computed inverse-CDF draws, transformers' own greedy ``generate``,
capture hooks run separately, the fake scorer re-applied to the stored
continuations, and an uninterrupted run for the kill-and-resume test.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.data import MediationData  # noqa: E402
from deconfound.errors import DataError  # noqa: E402
from deconfound.lm.extract import (  # noqa: E402
    Treatment, extract, load_extraction, run_batch, sample_tokens, sample_uniforms,
)
from deconfound.lm.hooks import capture  # noqa: E402
from deconfound.lm.models import tiny_model  # noqa: E402

pytestmark = pytest.mark.lm

# Fakes shared by this module and the worker subprocess of the kill test.
FAKES = textwrap.dedent('''
    import time
    from types import SimpleNamespace
    import numpy as np

    BAD = {"stupid", "idiot", "hate", "dumb", "fool", "ugly", "awful", "worst", "pathetic", "useless"}

    class FakeScorer:
        name = "fake_lexical"
        columns = ["toxic", "insult"]

        def __init__(self, delay=0.0):
            self.delay = delay

        def score(self, texts):
            if self.delay < 0:
                raise RuntimeError("the scorer was called")
            time.sleep(self.delay)
            out = []
            for t in texts:
                words = t.lower().split()
                bad = sum(w in BAD for w in words)
                out.append([bad / (len(words) + 1), min(1.0, bad / 2)])
            return np.array(out, dtype=float).reshape(len(texts), 2)

    class FakeTopics:
        name = "fake_topics"
        topics = ["sport", "politics", "everyday life"]

        def label(self, texts):
            s = np.array([[("game" in t) + ("team" in t), ("law" in t) + ("president" in t), 0.5] for t in texts])
            p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
            top = np.sort(p, 1)
            return SimpleNamespace(labels=np.array(self.topics)[p.argmax(1)], probs=p, topics=self.topics,
                                   margin=top[:, -1] - top[:, -2])

    BASE = ["the game was great", "you are a stupid idiot", "the president spoke to the people",
            "the doctor said", "i hate you", "the team played well", "what a ugly", "she cooked rice",
            "the market fell", "shut up you dumb fool", "the weather is cold", "voters will choose"]
    PROMPTS = [f"{p} {w}" for w in ("and", "but", "so") for p in BASE]  # 36 prompts
    GIVEN = np.full(len(PROMPTS), np.nan)
    GIVEN[::4] = np.linspace(0.05, 0.95, len(GIVEN[::4]))

    def run(out_dir, delay=0.0):
        from deconfound.lm.extract import extract
        from deconfound.lm.models import tiny_model
        lm = tiny_model("llama", seed=5, n_layers=2)
        return extract(lm, PROMPTS, outcome=FakeScorer(delay), topics=FakeTopics(),
                       sites=["mlp_out", "resid_post.L1"], treatment=GIVEN, n_samples=3, max_new_tokens=5,
                       seed=11, out_dir=out_dir, batch_size=3, shard_size=6, progress=False)
''')
ns: dict = {}
exec(FAKES, ns)
FakeScorer, FakeTopics, PROMPTS, GIVEN, run = ns["FakeScorer"], ns["FakeTopics"], ns["PROMPTS"], ns["GIVEN"], ns["run"]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=5, n_layers=2)


def test_inverse_cdf_sampling_by_hand():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4))
    u = torch.tensor([0.05, 0.15, 0.35, 0.7])
    assert sample_tokens(logits, u).tolist() == [0, 1, 2, 3]
    # nucleus 0.5: keep tokens 3 (0.4) and 2 (0.3); mass 0.7; u * 0.7 against [0.4, 0.7]
    assert sample_tokens(logits[:2], torch.tensor([0.5, 0.6]), top_p=0.5).tolist() == [3, 2]
    assert sample_tokens(logits[:1], torch.tensor([0.99]), temperature=0).tolist() == [3]
    # temperature 0.5 squares the odds: p proportional to [1, 4, 9, 16] / 30
    assert sample_tokens(logits[:2], torch.tensor([0.03, 0.04]), temperature=0.5).tolist() == [0, 1]


def test_uniform_streams_are_per_prompt_and_sample():
    a = sample_uniforms(7, 3, 2, 5)
    assert a.shape == (2, 5)
    np.testing.assert_array_equal(a, sample_uniforms(7, 3, 2, 5))
    np.testing.assert_array_equal(a[:, :3], sample_uniforms(7, 3, 2, 3))  # prefix-stable in steps
    assert not np.array_equal(a, sample_uniforms(7, 4, 2, 5))
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_greedy_run_batch_matches_transformers_generate(arch):
    lm = tiny_model(arch, seed=2)
    prompts = ["the game was great", "you are a stupid idiot and i", "the"]
    res = run_batch(lm, prompts, [0, 1, 2], units=["mlp_out.L1"], n_samples=2, max_new_tokens=6, temperature=0)
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = lm.model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    eos = lm.tokenizer.eos_token_id
    for i in range(3):
        seq = ref[i, enc["input_ids"].shape[1]:].tolist()
        seq = seq[: seq.index(eos)] if eos in seq else seq
        assert res.tokens[i] == [seq, seq]
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # GPT-2 needs these with left padding
    with torch.no_grad(), capture(lm, "mlp_out.L1") as cap:
        lm.model(**enc, position_ids=pos)
    np.testing.assert_allclose(res.activations["mlp_out.L1"], cap["mlp_out.L1"].numpy(), rtol=1e-5, atol=1e-6)


def test_samples_do_not_depend_on_batching(lm):
    prompts = PROMPTS[:5]
    together = run_batch(lm, prompts, range(5), units=["mlp_out.L0"], n_samples=3, max_new_tokens=6, seed=4)
    for i, p in enumerate(prompts):
        alone = run_batch(lm, [p], [i], units=["mlp_out.L0"], n_samples=3, max_new_tokens=6, seed=4)
        assert alone.tokens[0] == together.tokens[i]
        np.testing.assert_allclose(alone.activations["mlp_out.L0"][0], together.activations["mlp_out.L0"][i],
                                   rtol=1e-5, atol=1e-6)
    other = run_batch(lm, prompts, range(5), n_samples=3, max_new_tokens=6, seed=5)
    assert other.tokens != together.tokens


def test_extract_builds_mediation_data(lm, tmp_path):
    data = run(tmp_path / "out")
    n = len(PROMPTS)
    assert isinstance(data, MediationData) and data.n == n
    assert data.units == ["mlp_out.L0", "mlp_out.L1", "resid_post.L1"]
    assert all(data.mediator(u).dtype == np.float32 and data.mediator(u).shape == (n, 64) for u in data.units)
    assert list(data.x.columns) == ["topic", "p_topic_sport", "p_topic_politics", "p_topic_everyday_life"]
    lab = FakeTopics().label(PROMPTS)
    np.testing.assert_array_equal(data.x["topic"].astype(str).to_numpy(), lab.labels)
    np.testing.assert_allclose(data.x["p_topic_politics"].to_numpy(), lab.probs[:, 1])
    # mediators: the activation at the last prompt token, as a separate capture gives it
    enc = lm.tokenizer(PROMPTS[:4], return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), capture(lm, "resid_post.L1") as cap:
        lm.model(**enc, position_ids=pos)
    np.testing.assert_allclose(data.mediator("resid_post.L1")[:4], cap["resid_post.L1"].numpy(), rtol=1e-5,
                               atol=1e-6)
    # outcome: mean of the scorer's toxic column over the stored continuations
    conts = pd.read_parquet(tmp_path / "out" / "continuations.parquet")
    assert len(conts) == 3 * n and conts.groupby("index").size().eq(3).all()
    rescored = FakeScorer().score(conts["text"].tolist())
    np.testing.assert_allclose(conts[["toxic", "insult"]].to_numpy(), rescored)
    np.testing.assert_allclose(data.y, rescored[:, 0].reshape(n, 3).mean(1))
    assert (conts["n_tokens"] <= 5).all() and (conts["text"].str.len() > 0).any()
    # treatment: the given score where present, the scorer otherwise
    table = pd.read_parquet(tmp_path / "out" / "prompts.parquet")
    own = FakeScorer().score(PROMPTS)[:, 0]
    expected = np.where(np.isnan(GIVEN), own, GIVEN)
    np.testing.assert_allclose(table["prompt_score"], expected)
    np.testing.assert_array_equal(data.t, (expected >= 0.5).astype(int))
    # bare given scores are recorded as such, never guessed to be Perspective's
    assert (table["score_source"] == np.where(np.isnan(GIVEN), "scorer:fake_lexical", "given scores")).all()
    meta = data.meta
    assert meta["treatment"]["sources"] == {"given scores": 9, "scorer:fake_lexical": 27}
    assert meta["model"]["id"] == "tiny-llama-seed5" and len(meta["model"]["fingerprint"]) == 64
    assert meta["sites"] == data.units and meta["outcome"]["scorer"] == "fake_lexical"
    assert meta["topics"]["labeller"] == "fake_topics" and meta["seed"] == 11
    assert meta["versions"]["torch"] and meta["versions"]["transformers"]
    loaded = load_extraction(tmp_path / "out")
    np.testing.assert_array_equal(loaded.mediator("mlp_out.L1"), data.mediator("mlp_out.L1"))


def test_batching_and_shards_do_not_change_the_result(lm, tmp_path):
    kw = dict(outcome=FakeScorer(), topics=None, sites="mlp_out.L1", treatment=[0.9, 0.1, np.nan] * 4, n_samples=2,
              max_new_tokens=4, seed=3, progress=False)
    a = extract(lm, PROMPTS[:12], out_dir=tmp_path / "a", batch_size=1, shard_size=5, **kw)
    b = extract(lm, PROMPTS[:12], out_dir=tmp_path / "b", batch_size=4, shard_size=12, **kw)
    ca = pd.read_parquet(tmp_path / "a" / "continuations.parquet")
    cb = pd.read_parquet(tmp_path / "b" / "continuations.parquet")
    assert ca["text"].tolist() == cb["text"].tolist()
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_allclose(a.mediator("mlp_out.L1"), b.mediator("mlp_out.L1"), rtol=1e-5, atol=1e-6)


def test_user_topic_labels_and_errors(lm, tmp_path):
    labels = ["a", "b", "c"] * 4
    kw = dict(outcome=FakeScorer(), sites="mlp_out.L0", n_samples=1, max_new_tokens=2, progress=False)
    data = extract(lm, PROMPTS[:12], topics=labels, out_dir=tmp_path / "u",
                   treatment=Treatment(scores=np.array([0.9, 0.1] * 6), source="perspective"), **kw)
    assert list(data.x.columns) == ["topic"] and data.meta["topics"]["labeller"] == "user"
    assert data.meta["treatment"]["sources"] == {"perspective": 12}
    with pytest.raises(ValueError, match="treatment source: expected a name for the given scores"):
        extract(lm, PROMPTS[:12], treatment=Treatment(scores=np.ones(12)), out_dir=tmp_path / "e0", **kw)
    with pytest.raises(DataError, match="expected 12 labels"):
        extract(lm, PROMPTS[:12], topics=labels[:5], out_dir=tmp_path / "e1", **kw)
    with pytest.raises(DataError, match=r"outcome column: expected one of \['toxic', 'insult'\], got 'tox'"):
        extract(lm, PROMPTS[:12], outcome_column="tox", out_dir=tmp_path / "e2",
                **{k: v for k, v in kw.items()})
    with pytest.raises(DataError, match=r"prompts\[1\]: expected a non-empty string"):
        extract(lm, ["ok", "  "], out_dir=tmp_path / "e3", **kw)
    with pytest.raises(DataError, match="expected 12 values"):
        extract(lm, PROMPTS[:12], treatment=[0.5], out_dir=tmp_path / "e4", **kw)
    # a re-run into the same out_dir with other settings is refused
    with pytest.raises(DataError, match="other settings.*n_samples: expected 1 \\(on disk\\), got 2"):
        extract(lm, PROMPTS[:12], topics=labels, out_dir=tmp_path / "u",
                treatment=Treatment(scores=np.array([0.9, 0.1] * 6), source="perspective"), **{**kw, "n_samples": 2})


WORKER = FAKES + textwrap.dedent('''
    if __name__ == "__main__":
        import sys
        run(sys.argv[1], delay=float(sys.argv[2]))
''')


def _read_shards(out_dir):
    out = {}
    for path in sorted((out_dir / "shards").glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            out[path.name] = {k: z[k] for k in z.files}
    return out


def test_killed_run_resumes_bit_for_bit(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DECONFOUND_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.4"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "shards" / "shard-00000.npz"
    deadline = time.monotonic() + 120
    while not first.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "worker wrote no shard within 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = sorted(p.name for p in (killed / "shards").glob("shard-*.npz"))
    assert 1 <= len(done_before) < 6 and not (killed / "data").exists()
    (killed / "shards" / ".shard-00005.npz.tmp-999").write_bytes(b"half a shard")  # debris of a crash

    resumed = run(killed)
    straight = run(tmp_path / "straight")
    assert not list((killed / "shards").glob(".*tmp*"))
    a, b = _read_shards(killed), _read_shards(tmp_path / "straight")
    assert sorted(a) == sorted(b) == [f"shard-{s:05d}.npz" for s in range(6)]
    for name in a:
        assert sorted(a[name]) == sorted(b[name])
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name}:{key}")
    index = np.concatenate([a[k]["index"] for k in sorted(a)])
    np.testing.assert_array_equal(np.sort(index), np.arange(len(PROMPTS)))  # nothing lost, no duplicates
    for unit in straight.units:
        assert resumed.mediator(unit).tobytes() == straight.mediator(unit).tobytes()
    assert resumed.y.tobytes() == straight.y.tobytes()
    np.testing.assert_array_equal(resumed.t, straight.t)
    np.testing.assert_array_equal(resumed.ids, straight.ids)
    pd.testing.assert_frame_equal(resumed.x, straight.x)
    pd.testing.assert_frame_equal(pd.read_parquet(killed / "continuations.parquet"),
                                  pd.read_parquet(tmp_path / "straight" / "continuations.parquet"))
    # a third run over a finished out_dir computes nothing and returns the same data
    again = run(killed, delay=-1)  # this scorer raises if called
    assert again.y.tobytes() == straight.y.tobytes()
