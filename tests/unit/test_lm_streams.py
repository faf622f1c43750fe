"""Random streams are keyed by prompt id: a subset or a reordering of the prompts draws the same numbers.

Regression for issue 16: ``Generate``'s streams followed the Patcher's row numbers, so after subsetting the data
the common random numbers no longer matched the extraction's (40 of 40 rows differed).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.lm.extract import extract  # noqa: E402
from deconfound.lm.models import tiny_model  # noqa: E402
from deconfound.lm.outcomes import Generate  # noqa: E402
from deconfound.lm.patch import Patcher  # noqa: E402
from deconfound.lm.sampling import default_ids, run_batch, sample_uniforms, stream_key  # noqa: E402

pytestmark = pytest.mark.lm

PROMPTS = ["the game was great and the team played", "you are a stupid idiot", "the doctor said",
           "shut up you dumb fool nobody likes", "he walks the dog in the park every", "the market fell and",
           "what a ugly useless and", "the weather is cold and it"]
IDS = [f"q{i}" for i in range(len(PROMPTS))]
BAD = {"stupid", "idiot", "dumb", "fool", "hate", "ugly", "awful", "worst", "useless", "pathetic"}


class Words:
    name = "words"
    columns = ["toxic"]

    def score(self, texts):
        return np.array([[sum(w in BAD for w in t.split()) + 0.01 * len(t)] for t in texts], dtype=float)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=5, n_layers=2)


def test_stream_key_depends_on_the_id_only():
    assert stream_key("q3") == stream_key(np.str_("q3")) >= 2**64
    assert stream_key("q3") != stream_key("q4")
    assert stream_key(3) == 3  # ints are used as they are, apart from hashed ids
    with pytest.raises(ValueError, match="non-negative"):
        stream_key(-1)
    np.testing.assert_array_equal(sample_uniforms(1, "q3", 2, 4), sample_uniforms(1, np.str_("q3"), 2, 4))
    assert default_ids(3) == ["p000000", "p000001", "p000002"]


def test_generate_on_a_subset_equals_the_full_run_rows(lm):
    make = lambda: Generate(Words(), n_samples=3, max_new_tokens=4, seed=11)  # noqa: E731
    full = Patcher(lm, PROMPTS, outcome=make(), ids=IDS, batch_size=6)
    rows = np.array([6, 1, 4, 0])
    sub = Patcher(lm, [PROMPTS[i] for i in rows], outcome=make(), ids=[IDS[i] for i in rows], batch_size=5)
    np.testing.assert_array_equal(sub.base_scores(), full.base_scores()[rows])
    vals = np.random.default_rng(0).normal(scale=2.0, size=(len(rows), full.dim("mlp_out.L1")))
    np.testing.assert_array_equal(sub.scores("mlp_out.L1", np.arange(len(rows)), vals),
                                  full.scores("mlp_out.L1", rows, vals))
    # without ids the streams follow the default ids of the rows, so a subset differs from the full run
    plain = Patcher(lm, [PROMPTS[i] for i in rows], outcome=make(), batch_size=5)
    assert not np.array_equal(plain.base_scores(), full.base_scores()[rows])


def test_generate_reproduces_the_extraction_continuations_on_a_subset(lm, tmp_path):
    data = extract(lm, PROMPTS, outcome=Words(), treatment=np.array([0, 1, 0, 1, 0, 0, 1, 1.0]), n_samples=3, max_new_tokens=4, top_p=0.9, seed=11,
                   ids=IDS, out_dir=tmp_path / "x", progress=False, batch_size=3, shard_size=4)
    rows = np.array([7, 2, 5, 1, 0])
    sub = data.subset(np.isin(np.arange(len(PROMPTS)), rows))
    texts = [PROMPTS[i] for i in sorted(rows)]
    p = Patcher(lm, texts, ids=sub.ids, outcome=Generate(Words(), n_samples=3, max_new_tokens=4, top_p=0.9,
                                                         seed=11))
    # Generate counts the end token while extraction cuts it; the tiny model rarely samples it, and the
    # scorer sees only the decoded words, so the scores are the extraction's Y
    np.testing.assert_allclose(p.base_scores(), sub.y, rtol=0, atol=1e-12)
    alone = run_batch(lm, texts[:1], [sub.ids[0]], n_samples=3, max_new_tokens=4, seed=11, top_p=0.9)
    got = Words().score(alone.texts[0])[:, 0].mean()
    assert got == pytest.approx(sub.y[0], abs=1e-12)
