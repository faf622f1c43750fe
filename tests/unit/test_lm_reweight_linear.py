"""The fast (linear) donor bootstrap with sampled-continuation outcomes.

Reweight is differentiable in the patched activation through its importance weights: its gradient is checked
against central finite differences, and the linear bootstrap against repatching on a tiny model, where g is
close to affine over the range of the replicates' donor means. Generate has no gradient: asking for the
linear bootstrap with it is a precise error, raised before any model work.
"""
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound import MediationData  # noqa: E402
from deconfound.estimators.patching import PatchingMediation  # noqa: E402
from deconfound.lm.models import TINY_TEXT, tiny_model  # noqa: E402
from deconfound.lm.patch import Generate, Patcher, Reweight  # noqa: E402

pytestmark = pytest.mark.lm

BAD = {"stupid", "idiot", "dumb", "fool", "hate", "ugly", "awful", "worst", "useless", "pathetic"}


class WordScorer:
    """Deterministic toxicity: 0.5 per bad word plus 0.1 per word."""

    name = "words"
    columns = ["toxic"]

    def score(self, texts):
        return np.array([[0.5 * sum(w in BAD for w in t.split()) + 0.1 * len(t.split())] for t in texts])


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=3, n_layers=3)


def _data(patcher, unit="mlp_out.L1"):
    t = np.array(([1] * 3 + [0]) * 2 + ([0] * 3 + [1]) * 2)
    return MediationData.from_arrays(t=t, y=patcher.base_scores(), mediators=patcher.activations([unit]),
                                     x=pd.DataFrame({"topic": ["a"] * 8 + ["b"] * 8}))


def test_reweight_gradient_matches_finite_differences(lm):
    p = Patcher(lm, TINY_TEXT.strip().splitlines()[:3], outcome=Reweight(WordScorer(), n_samples=6,
                                                                           max_new_tokens=3, seed=4))
    vals = np.random.default_rng(1).normal(size=(3, p.dim("mlp_out.L1")))
    res = p.evaluate([("mlp_out.L1", np.arange(3), vals)], grad=True)[0]
    assert res.grad.shape == vals.shape and np.abs(res.grad).max() > 1e-4
    eps = 1e-2
    for k in (0, 7, 30):
        e = np.zeros_like(vals)
        e[:, k] = eps
        fd = (p.scores("mlp_out.L1", np.arange(3), vals + e) - p.scores("mlp_out.L1", np.arange(3), vals - e)) / (2 * eps)
        np.testing.assert_allclose(res.grad[:, k], fd, rtol=2e-2, atol=2e-6)


def test_linear_bootstrap_with_reweight_tracks_repatching(lm):
    p = Patcher(lm, TINY_TEXT.strip().splitlines()[:16], outcome=Reweight(WordScorer(), n_samples=8,
                                                                            max_new_tokens=3, seed=4),
                batch_size=64)
    data = _data(p)
    kw = dict(n_boot=20, random_state=0, exact_check=0, strata="treatment")
    rep = PatchingMediation(donor_bootstrap="repatch", **kw).fit(data, patcher=p).effect("mlp_out.L1", "nie",
                                                                                          "treated")
    lin = PatchingMediation(donor_bootstrap="linear", **kw).fit(data, patcher=p).effect("mlp_out.L1", "nie",
                                                                                         "treated")
    assert lin.estimate == rep.estimate  # same full-sample patch
    assert np.corrcoef(lin.draws, rep.draws)[0, 1] > 0.99
    assert np.max(np.abs(lin.draws - rep.draws)) < 0.5 * rep.se
    assert lin.se == pytest.approx(rep.se, rel=0.15)


def test_linear_bootstrap_with_generate_says_why_and_what_instead(lm):
    p = Patcher(lm, TINY_TEXT.strip().splitlines()[:16], outcome=Generate(WordScorer(), n_samples=2,
                                                                            max_new_tokens=2, seed=1))
    data = MediationData.from_arrays(t=np.array(([1] * 3 + [0]) * 2 + ([0] * 3 + [1]) * 2), y=np.zeros(16),
                                     mediators={"mlp_out.L1": np.zeros((16, p.dim("mlp_out.L1")))},
                                     x=pd.DataFrame({"topic": ["a"] * 8 + ["b"] * 8}))
    with pytest.raises(ValueError, match=r"donor_bootstrap='linear': expected a differentiable outcome .*got "
                                         r"'generate'.*no gradient.*'repatch'.*'reweight'"):
        PatchingMediation(donor_bootstrap="linear", n_boot=5).fit(data, patcher=p)
    # the exact strategy re-weights cached scores and needs no gradient, so it runs
    res = PatchingMediation(donors="exact", donor_bootstrap="linear", n_boot=3, n_donors=1).fit(data, patcher=p)
    assert np.isfinite(res.effect("mlp_out.L1", "nie", "treated").estimate)
