"""Unit sets (joint mediators) in the patching engine against a naive recompute.

Naive: one full forward of the whole prompt per patched row, batch 1, with one ``deconfound.lm.hooks.patch``
block per unit of the set entered together (in layer order; a coordinate subset is filled with the site's
activation under the upstream patches already entered). The engine instead runs each set row once, from its
lowest patched layer, in batches shared with single-unit rows.
"""
from contextlib import ExitStack

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.errors import DataError, ModelSiteError  # noqa: E402
from deconfound.lm.hooks import capture, patch  # noqa: E402
from deconfound.lm.models import tiny_model  # noqa: E402
from deconfound.lm.patch import NextTokenMass, Patcher, PatchSet, PatchUnit, as_unit  # noqa: E402
from test_patch_engine import evaluate_counting_rows  # noqa: E402

pytestmark = pytest.mark.lm

PROMPTS = ["you are a stupid idiot", "the doctor said", "shut up you dumb fool", "he", "the game was great"]
BAD = ["stupid", "idiot", "dumb", "fool", "hate", "ugly", "awful", "worst", "useless", "pathetic"]


def naive_joint_mass(lm, prompt, units, values, ids):
    """Next-token mass with every unit of ``units`` patched at once by plain hooks."""
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad(), ExitStack() as stack:
        for unit, vals in sorted(zip(units, values), key=lambda p: p[0].site.layer):
            full = torch.as_tensor(vals, dtype=torch.float32)
            if unit.coords is not None:  # the site under the patches entered so far, with the coords replaced
                with capture(lm, unit.site.name) as cap:
                    lm.model(**enc)
                full = cap[unit.site.name][0].clone()
                full[list(unit.coords)] = torch.as_tensor(vals, dtype=torch.float32)
            stack.enter_context(patch(lm, unit.site.name, full[None], calls="all"))
        logits = lm.model(**enc).logits[0, -1]
    return logits.softmax(-1)[ids].sum().item()


SETS = [["mlp_out.L1", "mlp_out.L2", "mlp_out.L3"],  # the last three layers jointly
        ["mlp_out.L0", "attn_out.L2", "resid_post.L3"],  # different kinds and layers
        ["resid_post.L1", ("mlp_neurons.L2", [1, 9])],  # a coordinate subset below a patched layer
        ["mlp_neurons.L3[1,2]", "mlp_neurons.L3[5]"]]  # two coordinate subsets of one site


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sets_equal_naive_recompute_and_resume_at_the_lowest_layer(arch):
    lm = tiny_model(arch, seed=7, n_layers=4)
    ids = lm.tokenizer.convert_tokens_to_ids(BAD)
    rng = np.random.default_rng(11)
    p = Patcher(lm, PROMPTS, outcome=NextTokenMass(ids), batch_size=64)
    units = [p.unit(s) for s in SETS] + [p.unit("attn_out.L3")]  # one single unit in the same batch
    reqs = [(u, rng.integers(0, len(PROMPTS), size=3), rng.normal(scale=2.0, size=(3, p.dim(u)))) for u in units]
    results, layers_run = evaluate_counting_rows(lm, p, reqs)
    lowest = [min(u.site.layer for u in (s.units if isinstance(s, PatchSet) else (s,))) for s in units]
    assert lowest == [1, 0, 1, 3, 3]
    # the patched pass: layer j ran the rows whose lowest patched layer is <= j
    assert layers_run[-4:] == [(j, sum(3 for low in lowest if low <= j)) for j in range(4)]
    for (unit, pidx, vals), res in zip(reqs, results):
        parts = unit.units if isinstance(unit, PatchSet) else (unit,)
        widths = np.cumsum([0] + [p.dim(u) for u in parts])
        naive = [naive_joint_mass(lm, PROMPTS[i], parts, [v[a:b] for a, b in zip(widths[:-1], widths[1:])], ids)
                 for i, v in zip(pidx, vals)]
        np.testing.assert_allclose(res.scores, naive, atol=1e-5, rtol=0)
        assert res.unit == unit
    full = Patcher(lm, PROMPTS, outcome=NextTokenMass(ids), batch_size=2, resume=False).evaluate(reqs)
    for a, b in zip(results, full):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6, rtol=0)


def test_set_values_as_a_list_gradients_and_activations():
    lm = tiny_model("llama", seed=5, n_layers=3)
    ids = lm.tokenizer.convert_tokens_to_ids(BAD)
    p = Patcher(lm, PROMPTS[:3], outcome=NextTokenMass(ids))
    both = p.unit("mlp_out.L0+mlp_out.L2")
    assert both == PatchSet((as_unit("mlp_out.L0"), as_unit("mlp_out.L2"))) and p.dim(both) == 128
    rng = np.random.default_rng(3)
    v0, v2 = rng.normal(size=(3, 64)), rng.normal(size=(3, 64))
    stacked, listed = p.evaluate([(both, [0, 1, 2], np.hstack([v0, v2])), (["mlp_out.L0", "mlp_out.L2"],
                                                                         [0, 1, 2], [v0, v2])], grad=True)
    np.testing.assert_array_equal(stacked.scores, listed.scores)
    assert stacked.grad.shape == (3, 128)
    eps = 1e-2
    for k in (3, 64 + 7):  # a coordinate of each unit: d score / d value by central differences
        e = np.zeros((3, 128))
        e[:, k] = eps
        fd = (p.scores(both, [0, 1, 2], np.hstack([v0, v2]) + e) - p.scores(both, [0, 1, 2], np.hstack([v0, v2]) - e))
        np.testing.assert_allclose(stacked.grad[:, k], fd / (2 * eps), rtol=2e-2, atol=1e-6)
    acts = p.activations([both, "mlp_out.L2"])
    np.testing.assert_array_equal(acts[both.name][:, 64:], acts["mlp_out.L2"])
    # each unit patched with its own activation: the unpatched score
    np.testing.assert_allclose(p.scores(both, [0, 1, 2], acts[both.name]), p.base_scores(), atol=1e-6)


def test_sets_are_checked():
    lm = tiny_model("llama", seed=0, n_layers=2)
    p = Patcher(lm, PROMPTS[:2], outcome=NextTokenMass([5, 6]))
    with pytest.raises(ModelSiteError, match="disjoint coordinates, got mlp_out.L1 and mlp_out.L1\\[0,5\\]"):
        p.unit(["mlp_out.L1", "mlp_out.L1[0,5]"])
    with pytest.raises(ModelSiteError, match="layer"):
        p.unit("mlp_out.L0+mlp_out.L7")
    with pytest.raises(ModelSiteError, match="a set inside a set"):
        p.unit([["mlp_out.L0", "mlp_out.L1"], "attn_out.L0"])
    with pytest.raises(DataError, match="expected 2 arrays \\(one per unit\\).*got a list of 3"):
        p.scores(["mlp_out.L0", "mlp_out.L1"], [0], [np.zeros(64)] * 3)
    with pytest.raises(DataError, match="values for mlp_out.L1: expected shape \\(1, 64\\)"):
        p.scores(["mlp_out.L0", "mlp_out.L1"], [0], [np.zeros(64), np.zeros(3)])
    with pytest.raises(DataError, match="values for mlp_out.L0\\+mlp_out.L1: expected shape \\(1, 128\\)"):
        p.scores(["mlp_out.L0", "mlp_out.L1"], [0], np.zeros((1, 64)))
    from deconfound.lm.attribution import LinearizedPatcher

    lin = LinearizedPatcher(p, ["mlp_out.L0", "mlp_out.L1"])
    with pytest.raises(ModelSiteError, match="additive over units"):
        lin.unit("mlp_out.L0+mlp_out.L1")
    assert isinstance(p.unit(1), PatchUnit)


class LengthScorer:
    """A deterministic scorer: 0.5 per bad word plus 0.1 per word."""

    name, columns, primary = "words", ["toxic"], "toxic"

    def score(self, texts):
        return np.array([[0.5 * sum(w in BAD for w in t.split()) + 0.1 * len(t.split())] for t in texts])


@pytest.mark.parametrize("kind", ["reweight", "generate"])
def test_sampled_outcomes_of_a_set_with_one_unit_at_its_own_value_equal_the_other_unit_alone(kind):
    """Patching {mlp_out.L0 at its own activation, mlp_out.L2 at v} is patching mlp_out.L2 at v (L0 lies below,
    so its own activation does not depend on the L2 patch); sampled outcomes use common random numbers."""
    from deconfound.lm.patch import Generate, Reweight

    lm = tiny_model("llama", seed=6, n_layers=3)
    make = Reweight if kind == "reweight" else Generate
    p = Patcher(lm, PROMPTS, outcome=make(LengthScorer(), n_samples=6, max_new_tokens=3, seed=1), batch_size=24)
    pidx = np.array([0, 1, 2, 4, 1])
    own = p.activations("mlp_out.L0", prompts=pidx)["mlp_out.L0"]
    v = np.random.default_rng(2).normal(scale=3.0, size=(len(pidx), 64))
    both, alone = p.evaluate([(["mlp_out.L0", "mlp_out.L2"], pidx, [own, v]), ("mlp_out.L2", pidx, v)])
    np.testing.assert_allclose(both.scores, alone.scores, atol=1e-5, rtol=0)
    assert np.abs(alone.scores - p.base_scores()[pidx]).max() > 1e-3  # the patch matters
