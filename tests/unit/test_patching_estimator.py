"""PatchingMediation on toy patchers with closed-form outcomes, plus the tiny model.

Oracles: post-stratification weights written out by hand (EB with one-hot topics equals them), the bootstrap
replicates recomputed from the same ``bootstrap.draw_counts``, closed forms for affine and quadratic outcomes
(E g(M) - g(E M) = c Var M for g = a + c |m|^2), and a naive patch through ``deconfound.lm.hooks.patch``.
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from deconfound import MediationData, PositivityError
from deconfound.compare import _pairable
from deconfound.estimators import get_estimator
from deconfound.estimators.patching import PatchingMediation, paired_difference
from deconfound.bootstrap import draw_counts


class ToyPatcher:
    """g_i(m) = a_i + b.m + c |m|^2 for every unit (width d); unit names are passed through."""

    def __init__(self, m, a, b, c=0.0, ids=None):
        self.m, self.a, self.b, self.c = np.asarray(m, float), np.asarray(a, float), np.asarray(b, float), c
        self.ids = ids
        self.outcome = SimpleNamespace(name="toy")
        self.rows = 0

    @property
    def n_prompts(self):
        return len(self.a)

    def unit(self, spec):
        return spec

    def dim(self, unit):
        return self.m.shape[1]

    def g(self, prompts, values):
        values = np.asarray(values, float)
        return self.a[prompts] + values @ self.b + self.c * (values**2).sum(axis=1)

    def base_scores(self):
        return self.g(np.arange(self.n_prompts), self.m)

    def evaluate(self, requests, grad=False):
        out = []
        for unit, prompts, values in requests:
            values = np.broadcast_to(np.asarray(values, float), (len(prompts), self.m.shape[1]))
            self.rows += len(prompts)
            g = self.b[None, :] + 2 * self.c * values if grad else None
            out.append(SimpleNamespace(unit=unit, scores=self.g(np.asarray(prompts), values), extras={}, grad=g))
        return out

    def describe(self):
        return {"outcome": "toy"}


def toy_data(seed=0, n=90, d=3, balanced=False, shift=1.0):
    """Three topics; T depends on topic (unless balanced); M = topic effect + shift * T + noise."""
    rng = np.random.default_rng(seed)
    topic = np.array(["a", "b", "c"])[np.arange(n) % 3]
    if balanced:
        t = (np.arange(n) // 3) % 2
    else:
        p = pd.Series(topic).map({"a": 0.75, "b": 0.5, "c": 0.25}).to_numpy()
        t = (rng.random(n) < p).astype(int)
    loc = pd.Series(topic).map({"a": 2.0, "b": 0.0, "c": -1.0}).to_numpy()
    m = loc[:, None] + shift * t[:, None] + rng.normal(size=(n, d))
    data = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u": m}, x=pd.DataFrame({"topic": topic}))
    return data, data.mediator("u").astype(float), topic, t  # the float32 values the estimator sees


def post_strat(topic, t, q=None):
    """ATT post-stratification weights of the controls (and treated weights) with frequency weights q."""
    q = np.ones(len(t)) if q is None else q.astype(float)
    w = np.zeros(len(t))
    n1 = q[t == 1].sum()
    for x in np.unique(topic):
        sel0 = (topic == x) & (t == 0)
        n1x = q[(topic == x) & (t == 1)].sum()
        w[sel0] = q[sel0] * (n1x / n1) / q[sel0].sum()
    w[t == 1] = q[t == 1] / n1
    return w


def test_eb_mean_matches_post_stratification_and_bootstrap_by_hand():
    data, m, topic, t = toy_data()
    rng = np.random.default_rng(1)
    toy = ToyPatcher(m, rng.normal(size=data.n), np.array([0.5, -0.2, 0.3]), c=0.1)
    res = PatchingMediation(donors="eb_mean", n_boot=30, random_state=5).fit(data, patcher=toy)
    g = toy.base_scores()

    def nie_te(q):
        w = post_strat(topic, t, q)
        donor = w[t == 0] @ m[t == 0]
        tr = np.flatnonzero(t == 1)
        nie = np.sum(w[tr] * (g[tr] - toy.g(tr, np.broadcast_to(donor, (len(tr), 3)))))
        return nie, np.sum(w[t == 1] * g[t == 1]) - np.sum(w[t == 0] * g[t == 0])

    nie0, te0 = nie_te(None)
    eff = res.effect("u", "nie", "treated")
    assert eff.estimate == pytest.approx(nie0, abs=1e-9)
    assert res.effect("u", "te", "treated").estimate == pytest.approx(te0, abs=1e-9)
    assert res.effect("u", "nde", "control").estimate == pytest.approx(te0 - nie0, abs=1e-9)
    counts = draw_counts(data, 30, stratify=("treatment",), random_state=5)
    hand = np.array([nie_te(c) for c in counts])
    np.testing.assert_allclose(eff.draws, hand[:, 0], atol=1e-8)
    np.testing.assert_allclose(res.effect("u", "nde", "control").draws, hand[:, 1] - hand[:, 0], atol=1e-8)
    assert res.population == "att" and res.settings["donors_effective"] == "eb_mean"


def test_affine_outcome_makes_eb_mean_topic_mean_and_exact_coincide():
    data, m, _, _ = toy_data(seed=2)
    toy = ToyPatcher(m, np.random.default_rng(0).normal(size=data.n), np.array([1.0, 0.5, -2.0]))
    fits = {d: PatchingMediation(donors=d, n_boot=20, random_state=3).fit(data, patcher=toy)
            for d in ("eb_mean", "topic_mean", "exact")}
    ref = fits["eb_mean"].effect("u", "nie", "treated")
    for d in ("topic_mean", "exact"):
        e = fits[d].effect("u", "nie", "treated")
        assert e.estimate == pytest.approx(ref.estimate, abs=1e-9)
        np.testing.assert_allclose(e.draws, ref.draws, atol=1e-8)
    assert fits["exact"].diagnostics["u"]["affine_gap"] == pytest.approx(0.0, abs=1e-9)
    # unadjusted mean differs: the donor topics differ between arms
    un = PatchingMediation(donors="eb_mean", n_boot=20, random_state=3).fit(data, graph="unadjusted_mediation",
                                                                           patcher=toy)
    assert un.settings["donors_effective"] == "mean"
    assert abs(un.effect("u", "nie", "treated").estimate - ref.estimate) > 0.1


def test_unadjusted_graph_gives_the_plain_control_mean():
    data, m, _, t = toy_data(seed=4)
    toy = ToyPatcher(m, np.zeros(data.n), np.array([1.0, 1.0, 0.0]), c=0.2)
    res = PatchingMediation(donors="topic_mean", n_boot=10).fit(data, graph="unadjusted_mediation", patcher=toy)
    tr = np.flatnonzero(t == 1)
    donor = m[t == 0].mean(axis=0)
    g = toy.base_scores()
    hand = np.mean(g[tr] - toy.g(tr, np.broadcast_to(donor, (len(tr), 3))))
    assert res.effect("u", "nie", "treated").estimate == pytest.approx(hand, abs=1e-12)
    assert res.effect("u", "te", "treated").estimate == pytest.approx(g[t == 1].mean() - g[t == 0].mean(), abs=1e-12)
    assert res.adjustment["first_stage"] == []


def test_exact_quadratic_gap_and_sampled_donors():
    data, m, topic, t = toy_data(seed=6, n=120)
    c = 0.3
    toy = ToyPatcher(m, np.zeros(data.n), np.zeros(3), c=c)
    full = PatchingMediation(donors="exact", n_boot=10).fit(data, patcher=toy)
    # E g(M) - g(E M) = c * trace Var(M | topic) per treated prompt, donors weighted uniformly within topic
    gap = 0.0
    tr = np.flatnonzero(t == 1)
    for i in tr:
        pool = m[(t == 0) & (topic == topic[i])]
        gap += c * pool.var(axis=0).sum() / len(tr)
    d = full.diagnostics["u"]
    assert -d["affine_gap"] == pytest.approx(gap, rel=1e-9)  # NIE = g_i - patched: a larger patched mean
    sampled = PatchingMediation(donors="exact", n_donors=40, n_boot=10, random_state=1).fit(data, patcher=toy)
    ds = sampled.diagnostics["u"]
    assert ds["mc_se"] > 0
    diff = sampled.effect("u", "nie", "treated").estimate - full.effect("u", "nie", "treated").estimate
    assert abs(diff) < 4 * ds["mc_se"]


def test_ablation_and_injection_signs_and_equality_for_affine_outcomes():
    data, m, _, _ = toy_data(seed=8, shift=1.5)
    b = np.array([0.4, 0.4, 0.2])  # g increases with every coordinate; M(1) > M(0)
    toy = ToyPatcher(m, np.random.default_rng(2).normal(size=data.n), b)
    abl = PatchingMediation(donors="eb_mean", direction="ablation", n_boot=20).fit(data, patcher=toy)
    inj = PatchingMediation(donors="eb_mean", direction="injection", n_boot=20).fit(data, patcher=toy)
    e_abl, e_inj = abl.effect("u", "nie", "treated"), inj.effect("u", "nie", "control")
    assert e_abl.estimate > 0 and e_inj.estimate > 0
    # no T x M interaction: NIE(1) = NIE(0) = b.(mean treated M - EB-weighted control M), also per replicate
    assert e_inj.estimate == pytest.approx(e_abl.estimate, abs=1e-9)
    np.testing.assert_allclose(e_inj.draws, e_abl.draws, atol=1e-8)
    assert ("nde", "treated") in inj.effects["u"] and ("nde", "control") in abl.effects["u"]
    neg = ToyPatcher(m, toy.a, -b)
    assert PatchingMediation(direction="injection", n_boot=5).fit(data, patcher=neg).effect(
        "u", "nie", "control").estimate < 0


def test_donor_bootstrap_modes():
    data, m, topic, t = toy_data(seed=9)
    affine = ToyPatcher(m, np.zeros(data.n), np.array([1.0, -1.0, 0.5]))
    rep = PatchingMediation(n_boot=25, random_state=2).fit(data, patcher=affine)
    lin = PatchingMediation(n_boot=25, random_state=2, donor_bootstrap="linear").fit(data, patcher=affine)
    fix = PatchingMediation(n_boot=25, random_state=2, donor_bootstrap="fixed").fit(data, patcher=affine)
    np.testing.assert_allclose(lin.effect("u", "nie", "treated").draws, rep.effect("u", "nie", "treated").draws,
                               atol=1e-9)  # first order is exact for an affine g
    assert not np.allclose(fix.effect("u", "nie", "treated").draws, rep.effect("u", "nie", "treated").draws)
    assert any("donor_bootstrap='fixed'" in w for w in fix.warnings)
    # one patched row per treated prompt present in a replicate (count > 0), plus the full sample and the
    # exact check (32 prompts x (16 donors + their mean))
    counts = draw_counts(data, 25, stratify=("treatment",), random_state=2)
    assert rep.diagnostics["u"]["patched_rows"] == data.n_treated + int((counts[:, t == 1] > 0).sum()) + 32 * 17


def test_positivity_raises_unless_dropped():
    data, m, topic, t = toy_data(seed=10)
    t = t.copy()
    t[topic == "a"] = 1  # topic a: no controls
    data = data.replace(t=t)
    toy = ToyPatcher(m, np.zeros(data.n), np.ones(3))
    with pytest.raises(PositivityError, match="topic 'a'"):
        PatchingMediation(n_boot=5).fit(data, patcher=toy)
    res = PatchingMediation(n_boot=5, drop_unsupported=True).fit(data, patcher=toy)
    assert res.n == int((topic != "a").sum())
    assert any("dropped topics" in w for w in res.warnings)
    # the unadjusted graph needs no overlap
    assert PatchingMediation(n_boot=5).fit(data, graph="unadjusted_mediation", patcher=toy).n == data.n


def test_balanced_topics_make_adjusted_equal_unadjusted_and_pairing():
    data, m, _, _ = toy_data(seed=11, balanced=True)
    toy = ToyPatcher(m, np.zeros(data.n), np.array([0.3, 0.2, 0.1]), c=0.05)
    adj = PatchingMediation(n_boot=30, random_state=4).fit(data, patcher=toy)
    un = PatchingMediation(n_boot=30, random_state=4).fit(data, graph="unadjusted_mediation", patcher=toy)
    assert adj.effect("u", "nie", "treated").estimate == pytest.approx(un.effect("u", "nie", "treated").estimate,
                                                                       abs=1e-9)
    assert adj.settings["resample_key"] == un.settings["resample_key"]
    ea, eb = adj.effect("u", "nie", "treated"), un.effect("u", "nie", "treated")
    assert _pairable(adj, un, ea, eb)
    diff = paired_difference(adj, un)
    assert diff.loc[0, "difference"] == pytest.approx(0.0, abs=1e-9)
    other = PatchingMediation(n_boot=30, random_state=5).fit(data, patcher=toy)
    with pytest.raises(ValueError, match="resample_key"):
        paired_difference(other, un)


def test_paired_difference_is_tighter_than_unpaired_when_topics_confound():
    data, m, _, _ = toy_data(seed=12, n=150)
    toy = ToyPatcher(m, np.zeros(data.n), np.array([0.3, 0.2, 0.1]))
    adj = PatchingMediation(n_boot=60, random_state=1).fit(data, patcher=toy)
    un = PatchingMediation(n_boot=60, random_state=1).fit(data, graph="unadjusted_mediation", patcher=toy)
    d = paired_difference(adj, un).iloc[0]
    ea, eb = adj.effect("u", "nie", "treated"), un.effect("u", "nie", "treated")
    assert d["difference"] == pytest.approx(ea.estimate - eb.estimate)
    assert d["se"] < np.hypot(ea.se, eb.se)
    np.testing.assert_allclose(np.std(ea.draws - eb.draws, ddof=1), d["se"])


def test_soft_one_hot_topics_equal_categorical_topic_mean():
    data, m, topic, _ = toy_data(seed=13)
    toy = ToyPatcher(m, np.zeros(data.n), np.array([1.0, 0.0, 0.0]), c=0.2)
    soft = pd.DataFrame({f"p_{k}": (topic == k).astype(float) for k in "abc"})
    sdata = data.replace(x=soft)
    cat = PatchingMediation(donors="topic_mean", n_boot=10, random_state=0).fit(data, patcher=toy)
    sft = PatchingMediation(donors="topic_mean", n_boot=10, random_state=0, strata="treatment").fit(sdata, patcher=toy)
    assert sft.settings["conditional"] == "soft"
    cat_t = PatchingMediation(donors="topic_mean", n_boot=10, random_state=0, strata="treatment").fit(
        data, patcher=toy)
    assert sft.effect("u", "nie", "treated").estimate == pytest.approx(cat.effect("u", "nie", "treated").estimate,
                                                                       abs=1e-7)
    np.testing.assert_allclose(sft.effect("u", "nie", "treated").draws, cat_t.effect("u", "nie", "treated").draws,
                               atol=1e-6)


def test_inputs_are_checked():
    data, m, _, _ = toy_data(seed=14)
    toy = ToyPatcher(m, np.zeros(data.n), np.ones(3))
    with pytest.raises(ValueError, match="donors"):
        PatchingMediation(donors="median").fit(data, patcher=toy)
    short = ToyPatcher(m[:10], np.zeros(10), np.ones(3))
    with pytest.raises(ValueError, match="expected 90 prompts"):
        PatchingMediation().fit(data, patcher=short)
    assert isinstance(get_estimator("patching"), PatchingMediation)
    text = PatchingMediation(n_boot=5).fit(data, patcher=toy).summary()
    assert "ACME (treated)" in text and "patching" in text


@pytest.mark.lm
def test_tiny_model_adjusted_vs_unadjusted():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from deconfound.lm.hooks import patch
    from deconfound.lm.models import TINY_TEXT, tiny_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = tiny_model("llama", seed=2, n_layers=2)
    prompts = [line for line in TINY_TEXT.strip().splitlines()][:16]
    ids = lm.tokenizer.convert_tokens_to_ids(["stupid", "idiot", "hate", "awful", "dumb"])
    patcher = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=16)
    acts = patcher.activations(["mlp_out.L0", "mlp_out.L1"])
    topic = np.array(["a"] * 8 + ["b"] * 8)
    designs = {"balanced": np.tile([1, 0], 8), "confounded": np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 6)}
    g = patcher.base_scores()
    for kind, t in designs.items():
        data = MediationData.from_arrays(t=t, y=g, mediators=acts, x=pd.DataFrame({"topic": topic}))
        adj = PatchingMediation(n_boot=10, random_state=0).fit(data, patcher=patcher)
        un = PatchingMediation(n_boot=10, random_state=0).fit(data, graph="unadjusted_mediation", patcher=patcher)
        for unit in ("mlp_out.L0", "mlp_out.L1"):
            a, b = adj.effect(unit, "nie", "treated").estimate, un.effect(unit, "nie", "treated").estimate
            if kind == "balanced":
                assert a == pytest.approx(b, abs=1e-6)
                continue
            assert abs(a - b) > 1e-4
            w = post_strat(topic, t)
            donor = torch.as_tensor(w[t == 0] @ acts[unit][t == 0].astype(float), dtype=torch.float32)
            hand = []
            for i in np.flatnonzero(t == 1):
                enc = lm.tokenizer([prompts[i]], return_tensors="pt")
                with torch.no_grad(), patch(lm, unit, donor[None]):
                    probs = lm.model(**enc).logits[0, -1].softmax(-1)
                hand.append(g[i] - probs[ids].sum().item())
            assert a == pytest.approx(np.mean(hand), abs=1e-5)


def test_mean_patch_is_named_and_its_gap_to_the_exact_nie_is_checked():
    """Affine g: no gap. Quadratic g = c |m|^2: exact NIE - mean patch = -c trace Var_w(donors) (EB weights)."""
    data, m, topic, t = toy_data(seed=15, n=150)
    affine = ToyPatcher(m, np.zeros(data.n), np.array([1.0, -0.5, 0.2]))
    res = PatchingMediation(n_boot=10, random_state=3).fit(data, patcher=affine)
    d = res.diagnostics["u"]
    assert d["exact_gap"] == pytest.approx(0.0, abs=1e-9) and d["exact_gap_se"] == pytest.approx(0.0, abs=1e-9)
    assert d["exact_check_prompts"] == 32
    assert res.settings["estimand"] == "mean-patch contrast"
    frame = res.to_frame()
    assert (frame[frame.effect == "nie"].estimand == "mean-patch contrast").all()
    assert "mean-patch contrast" in res.summary() and "exact_gap" in res.summary()
    exact = PatchingMediation(donors="exact", n_boot=10).fit(data, patcher=affine)
    assert exact.settings["estimand"] == "NIE" and "exact_gap" not in exact.diagnostics["u"]

    c = 0.4
    quad = ToyPatcher(m, np.zeros(data.n), np.zeros(3), c=c)
    res = PatchingMediation(n_boot=10, random_state=3, exact_check=200).fit(data, patcher=quad)
    w = post_strat(topic, t)[t == 0]
    pool = m[t == 0]
    mu = w @ pool
    closed = -c * (w @ ((pool - mu) ** 2)).sum()
    d = res.diagnostics["u"]
    assert d["exact_gap_se"] > 0 and abs(d["exact_gap"] - closed) < 3 * d["exact_gap_se"]
    again = PatchingMediation(n_boot=10, random_state=3, exact_check=200).fit(data, patcher=quad)
    assert again.diagnostics["u"]["exact_gap"] == d["exact_gap"]  # seeded
    none = PatchingMediation(n_boot=10, exact_check=0).fit(data, patcher=quad)
    assert "exact_gap" not in none.diagnostics["u"]


def test_donor_distance_flags_a_donor_far_from_the_natural_activations():
    from deconfound.estimators._patching_checks import donor_distance

    rng = np.random.default_rng(0)
    cov = np.diag([4.0, 1.0, 0.25, 0.25, 0.1])
    x = rng.multivariate_normal(np.ones(5), cov, size=300)
    near = donor_distance(x, x.mean(0), k=3)
    assert not near["off_distribution"] and near["percentile"] < 5 and near["components"] == 3
    far = x.mean(0) + 10 * np.sqrt(np.diag(cov))[1] * np.eye(5)[1]  # 10 SD along the second axis
    flagged = donor_distance(x, far, k=3)
    assert flagged["off_distribution"] and flagged["percentile"] == 100.0
    assert flagged["distance"] == pytest.approx(10.0, rel=0.15)
    # in a fit: the patched prompts' own activations against the donor mean, per unit
    data, m, _, t = toy_data(seed=16)
    toy = ToyPatcher(m, np.zeros(data.n), np.ones(3))
    d = PatchingMediation(n_boot=5).fit(data, patcher=toy).diagnostics["u"]
    assert {"donor_distance", "donor_distance_pct", "off_distribution"} <= set(d) and not d["off_distribution"]
    shifted = data.replace(mediators={"u": np.where(t[:, None] == 0, m + 50.0, m)})
    res = PatchingMediation(n_boot=5).fit(shifted, patcher=ToyPatcher(shifted.mediator("u"), np.zeros(data.n),
                                                                      np.ones(3)))
    assert res.diagnostics["u"]["off_distribution"] and any("off-distribution" in w for w in res.warnings)


def test_auto_strata_are_the_treatment_unless_a_topic_has_few_controls():
    data, m, topic, t = toy_data(seed=17, balanced=True)  # 15 controls per topic
    toy = ToyPatcher(m, np.zeros(data.n), np.ones(3))
    res = PatchingMediation(n_boot=5).fit(data, patcher=toy)
    assert res.settings["stratify"] == ["treatment"] and not any("bootstrap strata" in w for w in res.warnings)
    t = t.copy()
    t[np.flatnonzero((topic == "a") & (t == 0))[3:]] = 1  # topic a keeps 3 controls
    sparse = data.replace(t=t)
    res = PatchingMediation(n_boot=5).fit(sparse, patcher=toy)
    assert res.settings["stratify"] == ["treatment", "topic"]
    assert any("bootstrap strata: treatment x topic" in w and "too narrow" in w for w in res.warnings)
    forced = PatchingMediation(n_boot=5, strata="treatment").fit(sparse, patcher=toy)
    assert forced.settings["stratify"] == ["treatment"]


def _six_topic_data(seed, n=300):
    """Six topics drawn at random, P(T | topic) from 0.3 to 0.7, M shifted by topic and T."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 6, n)
    t = (rng.random(n) < np.linspace(0.3, 0.7, 6)[topic]).astype(int)
    m = np.linspace(-1.5, 1.5, 6)[topic][:, None] + 0.5 * t[:, None] + rng.normal(size=(n, 2))
    data = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u": m},
                                     x=pd.DataFrame({"topic": np.array(list("abcdef"))[topic]}))
    return data, data.mediator("u").astype(float)


@pytest.mark.slow
def test_default_bootstrap_se_matches_the_monte_carlo_sd():
    """Affine-plus-quadratic g, topic-confounded: RMS bootstrap SE / MC SD in [0.85, 1.15] over 200 data sets
    for the unadjusted NIE, the adjusted NIE and their paired difference (topic strata gave ~0.5)."""
    rows = []
    for r in range(200):
        data, m = _six_topic_data(r)
        toy = ToyPatcher(m, np.zeros(data.n), np.array([0.5, 0.3]), c=0.2)
        est = PatchingMediation(n_boot=40, random_state=r, exact_check=0)  # the default strata
        adj, un = est.fit(data, patcher=toy), est.fit(data, graph="unadjusted_mediation", patcher=toy)
        d = paired_difference(adj, un).iloc[0]
        ea, eu = adj.effect("u", "nie", "treated"), un.effect("u", "nie", "treated")
        rows.append([eu.estimate, eu.se, ea.estimate, ea.se, d["difference"], d["se"]])
    a = np.array(rows)
    for k, name in enumerate(["unadjusted", "adjusted", "difference"]):
        ratio = np.sqrt(np.mean(a[:, 2 * k + 1] ** 2)) / np.std(a[:, 2 * k], ddof=1)
        assert 0.85 <= ratio <= 1.15, (name, ratio)


def test_cluster_bootstrap_resamples_whole_clusters():
    """Prompts drawn from one document share its outcome level: the cluster bootstrap (issue 15) gives the
    replicates of bootstrap.draw_counts(cluster=) and a wider SE than the row bootstrap."""
    from deconfound.simulate import ToyPatcher

    rng = np.random.default_rng(3)
    n, size = 640, 8
    doc = np.repeat(np.arange(n // size), size)
    topic = np.array(["a", "b"])[doc % 2]
    t = (rng.random(n // size) < 0.5).astype(int)[doc]  # the treatment is a document's: clusters in one arm
    m = (doc % 2)[:, None] * 0.5 + t[:, None] + rng.normal(size=(n, 2))
    a = rng.normal(size=n // size)[doc] * 2.0 + rng.normal(size=n) * 0.1  # a strong document effect
    toy = ToyPatcher(m, a, np.array([1.0, -0.5]), c=0.0)
    data = MediationData.from_arrays(t=t, y=toy.base_scores(), mediators={"u": m}, x=pd.DataFrame({"topic": topic}))
    toy.m = data.mediator("u").astype(float)
    est = get_estimator("patching", donors="eb_mean", n_boot=300, exact_check=0, random_state=0)
    rows = est.fit(data, patcher=toy)
    clustered = est.fit(data, patcher=toy, cluster=doc)
    assert clustered.effect("u", "nie", "treated").estimate == rows.effect("u", "nie", "treated").estimate
    assert clustered.effect("u", "te", "treated").se > 1.5 * rows.effect("u", "te", "treated").se
    with pytest.raises(NotImplementedError, match="weights role"):
        est.fit(data.replace(weights=np.ones(n)), patcher=toy)


def _soft_case(n=120, seed=13):
    """Soft topics (p_a, p_b): treated prompts inside the controls' simplex, so every target is reachable."""
    data, m, topic, t = toy_data(seed=seed, n=n)
    rng = np.random.default_rng(0)
    onehot = np.stack([(topic == k).astype(float) for k in "abc"], 1)
    p = np.where(t[:, None] == 1, 0.4 * onehot + 0.6 * rng.dirichlet([2, 2, 2], n),
                 rng.dirichlet([0.4, 0.4, 0.4], n))
    x = pd.DataFrame({"p_a": p[:, 0], "p_b": p[:, 1]})
    sdata = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u": m}, x=x)
    return sdata, sdata.mediator("u").astype(float), p[:, :2], t


def _eb_to_point(xp, q, target):
    """Oracle: weights w_j prop. to q_j exp(lam . x_j) with sum_j w_j x_j = target (the dual, solved by scipy)."""
    from scipy.optimize import minimize

    def dual(lam):
        z = (xp - target) @ lam
        top = z.max()
        w = q * np.exp(z - top)
        return np.log(w.sum()) + top, (w[:, None] * (xp - target)).sum(0) / w.sum()

    lam = minimize(dual, np.zeros(xp.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-12}).x
    w = q * np.exp((xp - target) @ lam)
    return w / w.sum()


@pytest.mark.parametrize("donors,boot", [("topic_mean", "repatch"), ("topic_mean", "linear"),
                                         ("topic_mean", "fixed"), ("exact", "repatch")])
def test_soft_topic_replicates_match_per_prompt_eb_weights(donors, boot):
    """Soft topics: every replicate's donor weights (streamed one replicate at a time) give the NIE computed
    from per-prompt EB weights solved independently, replicate by replicate."""
    data, m, xp, t = _soft_case()
    toy = ToyPatcher(m, np.random.default_rng(1).normal(size=data.n), np.array([1.0, -0.5, 0.2]), c=0.2)
    res = PatchingMediation(donors=donors, donor_bootstrap=boot, n_boot=6, random_state=3, conditional="soft",
                            exact_check=0).fit(data, patcher=toy)
    assert res.settings["conditional"] == "soft" and all(res.settings["boot_valid"])
    counts = np.vstack([np.ones((1, data.n)), draw_counts(data, 6, stratify=("treatment",), random_state=3)])
    tg, pool = np.flatnonzero(t == 1), np.flatnonzero(t == 0)
    gt = toy.base_scores()[tg]
    full = None
    expected = []
    for q in counts:
        w = np.stack([_eb_to_point(xp[pool], q[pool], xp[i]) for i in tg])  # (n1, n0)
        v = q[tg] / q[tg].sum()
        donor = w @ m[pool]
        if donors == "exact":
            gp = np.array([w[k] @ toy.g(np.full(len(pool), i), m[pool]) for k, i in enumerate(tg)])
        elif full is None or boot == "repatch":
            gp = toy.g(tg, donor)
        elif boot == "fixed":
            gp = full[0]
        else:  # first order around the full-sample donor: g + (b + 2 c d0) . (d - d0)
            gp = full[0] + np.einsum("ij,ij->i", toy.b + 2 * toy.c * full[1], donor - full[1])
        if full is None:
            full = (gp, donor)
        expected.append(np.sum(v * (gt - gp)))
    eff = res.effect("u", "nie", "treated")
    assert eff.estimate == pytest.approx(expected[0], abs=1e-6)
    np.testing.assert_allclose(eff.draws, expected[1:], atol=1e-6)


def test_soft_topic_donor_weights_are_not_held_for_every_replicate():
    """Peak memory of a soft-topic fit stays well below B x n1 x n0 floats (the layout that held every
    replicate's (n1, n0) donor weights at once)."""
    import tracemalloc

    data, m, _, t = _soft_case(n=400, seed=5)
    toy = ToyPatcher(m, np.zeros(data.n), np.array([1.0, -0.5, 0.2]))
    n_boot = 60
    est = PatchingMediation(donors="topic_mean", donor_bootstrap="linear", n_boot=n_boot, random_state=0,
                            conditional="soft", exact_check=0)
    tracemalloc.start()
    est.fit(data, patcher=toy)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    held = (n_boot + 1) * int(t.sum()) * int((1 - t).sum()) * 8
    assert peak < held / 4, (peak, held)
