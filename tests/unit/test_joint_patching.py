"""Joint mediators with the patching estimator: the set patched at once, against closed forms and a naive patch.

Toy outcome g_i(h1, h2) = a_i + b1.h1 + b2.h2 + c (1.h1)(1.h2) (two units of width d):

- affine (c = 0): patching the set moves g by the sum of the units' moves, so the interaction is exactly 0,
  in the estimate and in every bootstrap replicate, for every donor strategy;
- with the product term, for a mean donor D_u (the same for every target), joint minus the sum of the units'
  patches is -c (S1_i - D1)(S2_i - D2) per target (S_u = 1.h_u of the target, D_u = 1.donor), so
  interaction = -sign * c * sum_i v_i (S1_i - D1)(S2_i - D2), with v the target weights.

On a tiny random model the joint NIE of the last three layers' mlp_out equals a naive recompute that patches
the three with plain hooks at once, and the units' NIEs equal a single-unit fit's (same resamples).
"""
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from deconfound import MediationData
from deconfound.bootstrap import draw_counts
from deconfound.estimators.dml import DMLMediation
from deconfound.estimators.patching import PatchingMediation
from deconfound.joint import joint_mediation

D = 3


class JointToy:
    """Units ``"u1"``, ``"u2"`` (width D) and sets of them (lists, values side by side)."""

    def __init__(self, m1, m2, a, b1, b2, c=0.0):
        self.m = {"u1": np.asarray(m1, float), "u2": np.asarray(m2, float)}
        self.a, self.b, self.c = np.asarray(a, float), {"u1": np.asarray(b1), "u2": np.asarray(b2)}, c
        self.ids = None
        self.outcome = SimpleNamespace(name="toy")

    @property
    def n_prompts(self):
        return len(self.a)

    def unit(self, spec):
        return tuple(spec) if isinstance(spec, list) else spec

    def dim(self, unit):
        return D * (len(unit) if isinstance(unit, tuple) else 1)

    def g(self, h):
        s = {u: h[u].sum(axis=1) for u in h}
        return sum(h[u] @ self.b[u] for u in h) + self.c * s["u1"] * s["u2"]

    def base_scores(self):
        return self.a + self.g(self.m)

    def evaluate(self, requests, grad=False):
        out = []
        for unit, prompts, values in requests:
            prompts = np.asarray(prompts)
            names = unit if isinstance(unit, tuple) else (unit,)
            values = np.broadcast_to(np.asarray(values, float), (len(prompts), D * len(names)))
            h = {u: m[prompts] for u, m in self.m.items()}
            for k, u in enumerate(names):
                h[u] = values[:, k * D:(k + 1) * D]
            s = {u: h[u].sum(axis=1) for u in h}
            other = {"u1": "u2", "u2": "u1"}
            g = np.hstack([self.b[u] + self.c * s[other[u]][:, None] for u in names]) if grad else None
            out.append(SimpleNamespace(unit=unit, scores=self.a[prompts] + self.g(h), extras={}, grad=g))
        return out

    def describe(self):
        return {"outcome": "toy"}


def toy(seed=0, n=120, c=0.0):
    rng = np.random.default_rng(seed)
    topic = np.array(["a", "b", "c"])[np.arange(n) % 3]
    t = (rng.random(n) < pd.Series(topic).map({"a": 0.7, "b": 0.5, "c": 0.3}).to_numpy()).astype(int)
    loc = pd.Series(topic).map({"a": 1.0, "b": 0.0, "c": -1.0}).to_numpy()[:, None]
    m1 = loc + 0.8 * t[:, None] + rng.normal(size=(n, D))
    m2 = 0.5 * loc + 0.6 * t[:, None] + rng.normal(size=(n, D))
    data = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u1": m1, "u2": m2},
                                     x=pd.DataFrame({"topic": topic}))
    m1, m2 = data.mediator("u1").astype(float), data.mediator("u2").astype(float)  # the values the fit sees
    patcher = JointToy(m1, m2, rng.normal(size=n), [0.5, -0.2, 0.3], [0.1, 0.4, -0.3], c=c)
    return data, patcher, topic, t


def post_strat(topic, t, arm, q=None):
    """Weights summing to 1 over the rows of ``arm``, reweighted to the topic mix of the other arm (ATT-type)."""
    q = np.ones(len(t)) if q is None else q.astype(float)
    w = np.zeros(len(t))
    target = 1 - arm
    for x in np.unique(topic):
        sel = (topic == x) & (t == arm)
        w[sel] = q[sel] * q[(topic == x) & (t == target)].sum() / q[t == target].sum() / q[sel].sum()
    return w


@pytest.mark.parametrize("kw", [{}, {"donors": "mean"}, {"donors": "topic_mean"}, {"donors": "exact"},
                                {"donors": "exact", "n_donors": 5}, {"direction": "injection"},
                                {"donor_bootstrap": "linear"}],
                         ids=["eb_mean", "mean", "topic_mean", "exact", "exact_sampled", "injection", "linear"])
def test_affine_outcome_has_zero_interaction_in_every_replicate(kw):
    data, patcher, topic, t = toy(seed=1)
    out = joint_mediation(PatchingMediation(n_boot=20, random_state=4, **kw), data, ["u1", "u2"],
                          patcher=patcher)
    arm = "control" if kw.get("direction") == "injection" else "treated"
    assert out.arms == (arm,) and out.result.population == "att"
    inter, joint = out.effect("interaction"), out.effect("joint")
    assert inter is out.effect("interaction", arm)
    assert abs(inter.estimate) < 1e-10 and np.abs(inter.draws).max() < 1e-10
    assert joint.se > 0.01  # the joint effect itself varies between resamples
    np.testing.assert_allclose(joint.draws, out.effect("u1").draws + out.effect("u2").draws, atol=1e-10)
    assert out.result.units == ["u1+u2", "u1", "u2"]


def test_product_term_interaction_equals_the_closed_form_per_replicate():
    c = 0.4
    data, patcher, topic, t = toy(seed=2, c=c)
    counts = draw_counts(data, 25, stratify=("treatment",), random_state=6)
    s1, s2 = patcher.m["u1"].sum(axis=1), patcher.m["u2"].sum(axis=1)
    for direction, sign, arm in (("ablation", 1.0, 1), ("injection", -1.0, 0)):
        out = joint_mediation(PatchingMediation(direction=direction, n_boot=25, random_state=6), data,
                              ["u1", "u2"], name="both", patcher=patcher)

        def closed(q=None):
            # targets: arm `arm` weighted to its own counts (ablation) or to the treated topic mix (injection);
            # donors: the other arm weighted to the targets' topic mix (ablation) or by its counts (injection)
            qq = np.ones(len(t)) if q is None else q.astype(float)
            own = np.where(t == 1, qq, 0.0) / qq[t == 1].sum()
            v = own if arm == 1 else post_strat(topic, t, 0, q)
            w = post_strat(topic, t, 0, q) if arm == 1 else own
            d1, d2 = w @ s1, w @ s2
            tg = t == arm
            return -sign * c * np.sum(v[tg] * (s1[tg] - d1) * (s2[tg] - d2))

        inter = out.effect("interaction")
        assert inter.estimate == pytest.approx(closed(), abs=1e-9)
        np.testing.assert_allclose(inter.draws, [closed(q) for q in counts], atol=1e-8)
        assert abs(inter.estimate) > 3 * inter.se  # clearly not 0
        assert out.effect("sum").estimate == pytest.approx(
            out.effect("u1").estimate + out.effect("u2").estimate, abs=1e-12)


def test_patching_joint_errors():
    data, patcher, _, _ = toy(seed=3)
    with pytest.raises(TypeError, match="list of unit names for the dml estimator, got a dict"):
        joint_mediation(DMLMediation(), data, {"u1": "u1", "u2": "u2"})
    same = joint_mediation(PatchingMediation(n_boot=5), data, {"u1": "u1", "u2": "u2"}, patcher=patcher)
    assert same.name == "u1+u2" and same.result.units == ["u1+u2", "u1", "u2"]
    assert re.search(r"^interaction +treated ", same.summary(), flags=re.M)
    with pytest.raises(KeyError, match="part, arm"):
        same.effect("interaction", "average")  # patching (ablation) estimates the treated arm only


def test_tiny_model_last_three_layers_equal_a_naive_joint_patch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from contextlib import ExitStack

    from deconfound.errors import ModelSiteError
    from deconfound.lm.hooks import patch
    from deconfound.lm.models import TINY_TEXT, tiny_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = tiny_model("llama", seed=2, n_layers=3)
    prompts = TINY_TEXT.strip().splitlines()[:16]
    ids = lm.tokenizer.convert_tokens_to_ids(["stupid", "idiot", "hate", "awful", "dumb"])
    patcher = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=16)
    units = ["mlp_out.L0", "mlp_out.L1", "mlp_out.L2"]
    acts = patcher.activations(units)
    topic = np.array(["a"] * 8 + ["b"] * 8)
    t = np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 6)
    data = MediationData.from_arrays(t=t, y=patcher.base_scores(), mediators=acts, x=pd.DataFrame({"topic": topic}))
    est = PatchingMediation(n_boot=10, random_state=0)
    out = joint_mediation(est, data, units, name="last3", patcher=patcher)
    g = patcher.base_scores()
    w = post_strat(topic, t, 0)
    donors = [torch.as_tensor(w[t == 0] @ acts[u][t == 0].astype(float), dtype=torch.float32) for u in units]
    hand = []
    for i in np.flatnonzero(t == 1):
        enc = lm.tokenizer([prompts[i]], return_tensors="pt")
        with torch.no_grad(), ExitStack() as stack:
            for u, d in zip(units, donors):
                stack.enter_context(patch(lm, u, d[None]))
            probs = lm.model(**enc).logits[0, -1].softmax(-1)
        hand.append(g[i] - probs[ids].sum().item())
    assert out.effect("joint").estimate == pytest.approx(np.mean(hand), abs=1e-5)
    single = est.fit(data, patcher=patcher)  # the same resamples and donors, one unit at a time
    for u in units:  # equal up to float32 rounding (rows share forward passes with other rows)
        np.testing.assert_allclose(out.effect(u).draws, single.effect(u, "nie", "treated").draws, atol=1e-6)
        assert out.effect(u).estimate == pytest.approx(single.effect(u, "nie", "treated").estimate, abs=1e-6)
    inter = out.effect("interaction")
    assert inter.estimate == pytest.approx(out.effect("joint").estimate - out.effect("sum").estimate, abs=1e-12)
    assert abs(inter.estimate) > 1e-4  # a real model is not additive across layers
    two = data.replace(mediators={"whole": acts["mlp_out.L1"], "part": acts["mlp_out.L1"][:, [0, 5]]})
    with pytest.raises(ModelSiteError, match="disjoint coordinates"):
        joint_mediation(est, two, {"whole": "mlp_out.L1", "part": "mlp_out.L1[0,5]"}, patcher=patcher)
