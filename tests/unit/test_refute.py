"""Refuters that re-run the whole estimator (deconfound.refute), on the simulator with known truth."""
import warnings

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deconfound import refute, simulate
from deconfound.estimators import get_estimator
from deconfound.errors import NullPathsWarning
from deconfound.estimators.base import MediationEstimator
from deconfound.graph import CausalGraph

pytest.importorskip("deconfound.estimators.parametric", reason="deconfound.estimators.parametric has not landed")


def cheap():
    return get_estimator("parametric", n_sims=200, random_state=0)


class Recording(MediationEstimator):
    """Wraps an estimator and keeps every (data, graph) it was fitted on."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []

    def fit(self, data, *, graph=None, units=None):
        self.seen.append((data, graph))
        return self.inner.fit(data, graph=graph, units=units)


@pytest.fixture(scope="module")
def sim():
    return simulate.topic_mediation(1500, n_topics=8, seed=4)


def test_frame_columns_rule_and_summary(sim):
    data, _ = sim
    res = refute.placebo_treatment(cheap(), data, random_state=1)
    frame = res.to_frame()
    assert list(frame.columns) == refute.COLUMNS
    assert list(zip(frame.effect, frame.arm))[:4] == [("te", "average"), ("nie", "control"), ("nie", "treated"),
                                                       ("nie", "average")]
    assert set(frame.refuter) == {"placebo_treatment"}
    text = res.summary()
    assert "Rule: expect 0" in text and "Refuter: placebo_treatment" in text


def test_placebo_permutes_within_topic_and_effects_vanish(sim):
    data, truth = sim
    rec = Recording(cheap())
    res = refute.placebo_treatment(rec, data, random_state=1)
    (orig, _), (placebo, _) = rec.seen
    assert orig is data
    topic = data.x["topic"].to_numpy()
    for k in np.unique(topic):
        assert placebo.t[topic == k].sum() == data.t[topic == k].sum()
    assert np.mean(placebo.t != data.t) > 0.2
    np.testing.assert_array_equal(placebo.y, data.y)
    frame = res.to_frame().set_index(["effect", "arm"])
    for key in (("te", "average"), ("nie", "average")):
        row = frame.loc[key]
        assert row.passed and abs(row.new_estimate) < 3 * row.new_se < abs(row.estimate)
    # same seed, same numbers
    again = refute.placebo_treatment(cheap(), data, random_state=1).to_frame()
    pd.testing.assert_frame_equal(again, res.to_frame())


def test_placebo_fails_when_the_pipeline_leaks_the_true_treatment(sim, leaky_estimator):
    data, _ = sim
    res = refute.placebo_treatment(leaky_estimator(cheap(), data.t), data, random_state=2)
    frame = res.to_frame().set_index(["effect", "arm"])
    assert not res.passed
    for key in (("te", "average"), ("nie", "average")):
        assert not frame.loc[key, "passed"] and frame.loc[key, "p_value"] < 0.05
        assert frame.loc[key, "new_estimate"] == pytest.approx(frame.loc[key, "estimate"], rel=0.1)


def test_dummy_outcome_is_near_zero(sim):
    data, _ = sim
    for kind in ("permute", "normal"):
        rec = Recording(cheap())
        res = refute.dummy_outcome(rec, data, random_state=3, kind=kind)
        new_data = rec.seen[1][0]
        if kind == "permute":
            np.testing.assert_array_equal(np.sort(new_data.y), np.sort(data.y))
        assert abs(np.corrcoef(new_data.y, data.y)[0, 1]) < 0.1
        frame = res.to_frame()
        assert np.all(np.abs(frame.new_estimate) < 3 * frame.new_se)
        assert res.passed


def test_random_common_cause_adds_a_noise_column_and_is_stable(sim):
    data, _ = sim
    rec = Recording(cheap())
    res = refute.random_common_cause(rec, data, random_state=4)
    new_data = rec.seen[1][0]
    assert new_data.confounder_names == ["topic", "random_common_cause"]
    assert abs(new_data.x["random_common_cause"].std() - 1) < 0.1
    frame = res.to_frame()
    assert res.passed
    assert np.all(np.abs(frame.new_estimate - frame.estimate) < 0.5 * frame.new_se)
    # p-value follows the stated rule
    row = frame.iloc[0]
    e0 = res.original.effect("u0", "te", "average")
    assert row.p_value == pytest.approx(2 * stats.norm.sf(abs(row.new_estimate - row.estimate) / e0.se), rel=1e-12)


def test_random_common_cause_enters_a_graph_that_names_confounders():
    g = nx.DiGraph([("topic", "T"), ("topic", "M"), ("topic", "Y"), ("T", "M"), ("T", "Y"), ("M", "Y")])
    data, _ = simulate.topic_mediation(600, n_topics=4, seed=5)
    rec = Recording(cheap())
    refute.random_common_cause(rec, data, graph=CausalGraph(g, "named"), random_state=0)
    graph = rec.seen[1][1]
    assert {("random_common_cause", v) for v in "TMY"} <= set(graph.nx.edges)


def test_data_subset_is_stratified_and_uses_the_subset_reference_spread(sim):
    data, _ = sim
    rec = Recording(cheap())
    res = refute.data_subset(rec, data, random_state=5, fraction=0.8, n_subsets=2)
    strata = data.x["topic"].astype(str) + "|" + pd.Series(data.t).astype(str)
    for sub, _ in rec.seen[1:]:
        assert abs(sub.n - 0.8 * data.n) <= strata.nunique()
        sub_strata = sub.x["topic"].astype(str) + "|" + pd.Series(sub.t).astype(str)
        for s, count in strata.value_counts().items():
            assert (sub_strata == s).sum() == max(2, round(0.8 * count))
    row = res.to_frame().iloc[0]
    d = res.details[(res.details.effect == "te")]
    assert row.new_estimate == pytest.approx(d.estimate.mean(), rel=1e-12)
    f = np.mean([s.n for s, _ in rec.seen[1:]]) / data.n
    se = res.original.effect("u0", "te", "average").se
    s2 = d.estimate.var(ddof=1)
    z = abs(row.new_estimate - row.estimate)  # the p-value by quadrature over sigma^2's fiducial law, 1 df
    sigma2 = lambda c: s2 / c  # noqa: E731 - (B - 1) S^2 / chi^2_1
    dens = lambda c: stats.chi2(1).pdf(c) * 2 * stats.norm.sf(z / np.sqrt(  # noqa: E731
        sigma2(c) / 2 + f * max(sigma2(c) - se**2 * (1 / f - 1), 0)))
    from scipy import integrate

    assert row.p_value == pytest.approx(integrate.quad(dens, 0, np.inf, limit=200)[0], rel=5e-3)


def test_unobserved_confounder_moves_te_and_nde_by_the_implied_amount():
    # Y += b sd(Y) U with E[U | T=1] - E[U | T=0] = a: TE and NDE move by a b sd(Y), NIE does not move.
    data, _ = simulate.topic_mediation(6000, n_topics=6, seed=6)
    for a, b in ((0.6, 0.3), (0.6, -0.3), (-0.4, 0.2)):
        res = refute.unobserved_confounder(cheap(), data, random_state=7, effect_on_t=a, effect_on_y=b)
        d = res.details.set_index(["effect", "arm"])
        want = a * b * data.y.std()
        for key in (("te", "average"), ("nde", "control"), ("nde", "treated")):
            assert d.loc[key, "expected_shift"] == pytest.approx(want, rel=1e-12)
            assert np.sign(d.loc[key, "observed_shift"]) == np.sign(want)
            assert abs(d.loc[key, "observed_shift"] - want) < 0.25 * abs(want)
        assert abs(d.loc[("nie", "average"), "observed_shift"]) < 0.1 * abs(want)
        assert res.to_frame().passed.all()  # effects are strong; the conclusion survives this U


def test_unobserved_confounder_conclusion_flips_for_a_strong_u():
    data, _ = simulate.topic_mediation(1500, n_topics=6, seed=8)
    res = refute.unobserved_confounder(cheap(), data, random_state=0, effect_on_t=2.0, effect_on_y=-1.0)
    frame = res.to_frame().set_index(["effect", "arm"])
    assert not frame.loc[("te", "average"), "passed"] and frame.loc[("te", "average"), "new_estimate"] < 0
    with_m = refute.unobserved_confounder(cheap(), data, random_state=0, effect_on_m=0.5)
    assert with_m.details.expected_shift.isna().all()


def test_topic_granularity_merge_and_soft(sim):
    data, _ = sim
    rec = Recording(cheap())
    res = refute.topic_granularity(rec, data, random_state=0, n_groups=3)
    merged = rec.seen[1][0].x["topic"]
    assert merged.nunique() == 3
    share = pd.Series(data.t).groupby(data.x["topic"].to_numpy(), observed=True).mean()
    groups = pd.Series(res.options["mapping"])
    order = share.sort_values().index  # merged groups are blocks of neighbours in P(T | topic)
    assert list(groups[order].to_numpy()) == sorted(groups[order].to_numpy())
    # halving the real topic loses confounding information: the NIE shift is reported and fails the rule
    frame = res.to_frame().set_index(["effect", "arm"])
    assert not frame.loc[("nie", "average"), "passed"]
    rec = Recording(cheap())
    refute.topic_granularity(rec, data, random_state=0, mode="soft")
    soft = rec.seen[1][0]
    assert soft.confounder_names == [f"topic_p{lv}" for lv in data.x["topic"].cat.categories[1:]]
    assert np.all(soft.x.sum(axis=1) < 1)
    with pytest.raises(ValueError, match="mapping: expected a group for every level"):
        refute.topic_granularity(cheap(), data, mapping={"t0": "a"})


def test_topic_granularity_merging_a_needlessly_fine_label_is_stable():
    # the observed label splits every true topic at random in two; merging the halves back loses nothing
    data, truth = simulate.topic_mediation(1500, n_topics=6, seed=4)
    bit = np.random.default_rng(0).integers(0, 2, size=data.n)
    fine = data.replace(x=pd.DataFrame({"topic": pd.Categorical([f"t{k}_{b}" for k, b in zip(truth.topic, bit)])}))
    mapping = {lv: lv.split("_")[0] for lv in fine.x["topic"].cat.categories}
    res = refute.topic_granularity(cheap(), fine, mapping=mapping)
    assert res.passed
    frame = res.to_frame()
    assert np.all(np.abs(frame.new_estimate - frame.estimate) < 0.5 * frame.new_se)


def test_topic_granularity_soft_rewires_a_named_graph():
    g = nx.DiGraph([("topic", "T"), ("topic", "M"), ("topic", "Y"), ("T", "M"), ("T", "Y"), ("M", "Y")])
    data, _ = simulate.topic_mediation(600, n_topics=3, seed=9)
    rec = Recording(cheap())
    refute.topic_granularity(rec, data, graph=CausalGraph(g, "named"), mode="soft")
    graph = rec.seen[1][1]
    assert "topic" not in graph.nx and {("topic_pt1", "Y"), ("topic_pt2", "T")} <= set(graph.nx.edges)


def test_refute_all_table(sim):
    data, _ = sim
    table = refute.refute_all(cheap(), data, random_state=0, options={"data_subset": {"n_subsets": 1}})
    assert list(table.columns) == refute.COLUMNS
    assert list(dict.fromkeys(table.refuter)) == [n for n in refute.REFUTERS if n not in refute.PATCHER_ONLY]
    assert table.groupby("refuter").size().eq(7).all()
    no_topic = data.replace(x=pd.DataFrame(index=range(data.n)))
    table = refute.refute_all(cheap(), no_topic, random_state=0, refuters=None,
                              options={"data_subset": {"n_subsets": 1}})
    assert "topic_granularity" not in set(table.refuter)


@pytest.mark.parametrize("call, match", [
    (lambda d: refute.dummy_outcome(cheap(), d, kind="zero"), "kind"),
    (lambda d: refute.data_subset(cheap(), d, fraction=1.0), "fraction"),
    (lambda d: refute.placebo_treatment(cheap(), d, strata=["colour"]), "strata"),
    (lambda d: refute.topic_granularity(cheap(), d, column="colour"), "column"),
    (lambda d: refute.refute_all(cheap(), d, refuters=["bootstrap"]), "refuters"),
    (lambda d: refute.random_common_cause(cheap(), d, name="topic"), "name"),
])
def test_bad_options_raise(sim, call, match):
    with pytest.raises(ValueError, match=match):
        call(sim[0])


def test_refute_all_reuses_a_given_original_fit(sim):
    """A fit already at hand (possibly with more units) is not refitted; its estimates are the originals."""
    data, _ = sim
    orig = cheap().fit(data)
    rec = Recording(cheap())
    table = refute.refute_all(rec, data, refuters=["placebo_treatment"], original=orig, random_state=1)
    assert len(rec.seen) == 1  # the placebo refit only
    for row in table.itertuples():
        assert row.estimate == orig.effect(row.unit, row.effect, row.arm).estimate


class Noisy(MediationEstimator):
    """Wraps an estimator and warns on every fit, naming how many rows it saw."""

    def __init__(self, inner):
        self.inner = inner

    def fit(self, data, *, graph=None, units=None):
        warnings.warn(f"fitted {data.n} rows", UserWarning, stacklevel=2)
        return self.inner.fit(data, graph=graph, units=units)


def test_a_refits_warnings_name_its_refuter_and_the_originals_do_not(sim):
    data, _ = sim
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refute.refute_all(Noisy(cheap()), data, random_state=1)
    texts = [str(w.message) for w in caught if "fitted" in str(w.message)]
    assert texts[0] == f"fitted {data.n} rows"  # the original fit: the user's data, said as is
    prefixes = [t.split(" refit ")[0] for t in texts[1:]]
    assert prefixes == ["placebo_treatment", "random_common_cause"] + ["data_subset"] * 3 + [
        "dummy_outcome", "unobserved_confounder", "topic_granularity"]
    assert all(t.endswith("rows") and "(on the refuter's modified data)" in t for t in texts[1:])


def test_the_placebo_refits_curved_outcome_is_not_reported_as_the_users():
    """A permuted T leaves Y curved in M (T's effect now enters through E[T | M, X]): RESET flags the refit (data
    seed 47 of the grid's refuter cell); the fit on the user's data is linear and says nothing."""
    data, _ = simulate.topic_mediation(300, seed=47, n_topics=4, n_units=2)
    est = get_estimator("parametric")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", NullPathsWarning)  # u1 is a topic tracker: both of its paths are 0
        orig = est.fit(data)
    with pytest.warns(UserWarning, match=r"^placebo_treatment refit \(on the refuter's modified data\): "
                                         r"parametric: unit 'u1''s outcome is not linear"):
        refute.placebo_treatment(est, data, random_state=1_000_047, original=orig)


# ---- the patching estimator under the refuters (toy patcher: g_i(m) = a_i + b.m + c |m|^2) --------------------
from test_patching_estimator import ToyPatcher, toy_data  # noqa: E402

from deconfound.estimators.patching import PatchingMediation  # noqa: E402


class NullToy(ToyPatcher):
    """The toy patcher with activations and a random copy: the same activations, g's slope redrawn tiny."""

    def activations(self, units, prompts=None):
        return {str(u): self.m[slice(None) if prompts is None else np.asarray(prompts)] for u in units}

    def random_copy(self, seed):
        return NullToy(self.m, self.a, np.random.default_rng(seed).normal(scale=0.01, size=self.b.shape), self.c)


@pytest.fixture(scope="module")
def toy():
    data, m, _, _ = toy_data(seed=1, n=150)
    a = np.random.default_rng(0).normal(size=data.n)
    return data, m, a


def patching():
    return PatchingMediation(n_boot=40, random_state=0)


def test_refute_all_on_patching_needs_the_patcher_and_says_so(toy):
    data, _, _ = toy
    with pytest.raises(TypeError, match="patcher: expected the Patcher"):
        refute.refute_all(patching(), data)
    with pytest.raises(TypeError, match="patcher"):
        refute.placebo_treatment(patching(), data)


def test_every_refuter_that_applies_runs_the_patching_estimator(toy):
    data, m, a = toy
    pat = NullToy(m, a, b=np.array([1.0, 0.5, 0.0]), c=0.1)
    table = refute.refute_all(patching(), data, patcher=pat, refuters=list(refute.REFUTERS),
                              options={"data_subset": {"n_subsets": 2}, "random_directions": {"n_draws": 19}})
    assert set(table.refuter) == {"placebo_treatment", "random_common_cause", "data_subset", "topic_granularity",
                                  "random_model", "random_directions"}
    assert table.attrs["skipped"] == {k: refute.NOT_FOR_PATCHING[k] for k in ("dummy_outcome",
                                                                               "unobserved_confounder")}
    with pytest.raises(ValueError, match="does not apply to the patching estimator"):
        refute.dummy_outcome(patching(), data, patcher=pat)
    # placebo: the same fit on the permuted T, done by hand
    res = refute.placebo_treatment(patching(), data, patcher=pat, random_state=3)
    t = data.t.copy()
    rng = np.random.default_rng(3)
    labels = refute.strata_labels(data)
    for s in np.unique(labels):
        idx = np.flatnonzero(labels == s)
        t[idx] = t[rng.permutation(idx)]
    direct = patching().fit(data.replace(t=t), patcher=pat)
    row = res.to_frame().set_index(["effect", "arm"]).loc[("nie", "treated")]
    assert row.new_estimate == pytest.approx(direct.effect("u", "nie", "treated").estimate, abs=1e-12)


def test_data_subset_on_patching_fits_each_subset_on_its_own_prompts(toy):
    """The subset view maps row i to prompt rows[i]: a fit on it equals a fit with a patcher built on the rows."""
    data, m, a = toy
    pat = NullToy(m, a, b=np.array([1.0, 0.5, 0.0]), c=0.1)
    res = refute.data_subset(patching(), data, patcher=pat, n_subsets=2, random_state=2)
    rng = np.random.default_rng(2)
    labels = refute.strata_labels(data) * 2 + data.t
    estimates = []
    for _ in range(2):
        keep = np.sort(np.concatenate([rng.choice(idx, size=max(2, int(round(0.8 * len(idx)))), replace=False)
                                       for idx in (np.flatnonzero(labels == s) for s in np.unique(labels))]))
        sub = NullToy(m[keep], a[keep], pat.b, pat.c)
        estimates.append(patching().fit(data.subset(keep), patcher=sub).effect("u", "nie", "treated").estimate)
    d = res.details.set_index(["effect", "arm"]).loc[("nie", "treated")]
    np.testing.assert_allclose(d.estimate, estimates, atol=1e-12)


def test_random_directions_keep_the_donor_shift_norm_and_separate_a_real_effect(toy):
    data, m, a = toy
    own = {"u": m}
    view = refute._RandomShifts(NullToy(m, a, b=np.ones(3)), own, np.random.default_rng(0))
    donors = m[::-1] + 1.0
    captured = []
    view.parent.evaluate = lambda reqs, grad=False: captured.extend(reqs) or []
    view.evaluate([("u", np.arange(data.n), donors)])
    moved = captured[0][2] - m
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), np.linalg.norm(donors - m, axis=1), rtol=1e-12)
    cos = np.sum(moved * (donors - m), axis=1) / np.linalg.norm(moved, axis=1) / np.linalg.norm(donors - m, axis=1)
    assert np.abs(cos).mean() < 0.8  # random, not the donor's direction
    # g moves along the treatment's shift (all coordinates): the NIE beats every random direction
    strong = refute.random_directions(patching(), data, patcher=NullToy(m, a, b=np.ones(3)), n_draws=39)
    assert strong.frame.passed.all() and (strong.frame.p_value == 1 / 40).all()
    # g ignores the mediator: the NIE is 0 and sits inside its null
    flat = refute.random_directions(patching(), data, patcher=NullToy(m, a, b=np.zeros(3), c=0.0), n_draws=19)
    assert not flat.frame.passed.any()


def test_random_model_refuter_compares_with_the_random_copy(toy):
    data, m, a = toy
    pat = NullToy(m, a, b=np.ones(3))
    res = refute.random_model(patching(), data, patcher=pat, random_state=4)
    null = pat.random_copy(4)
    direct = patching().fit(data.replace(y=null.base_scores()), patcher=null)
    f = res.to_frame().set_index(["effect", "arm"])
    for key in (("nie", "treated"), ("nde", "control")):  # the refuter stores re-extracted activations as float32
        assert f.loc[key, "new_estimate"] == pytest.approx(direct.effect("u", *key).estimate, rel=1e-6)
    assert f.loc[("nie", "treated"), "passed"]  # the trained slope's effect is not in the random model
    same = refute.random_model(patching(), data, patcher=NullToy(m, a, b=np.zeros(3)), random_state=4)
    assert not same.frame.set_index(["effect", "arm"]).loc[("nie", "treated"), "passed"]


@pytest.mark.lm
def test_random_model_on_the_tiny_model_reextracts_with_a_seeded_random_copy():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch

    from deconfound import MediationData
    from deconfound.lm.models import TINY_TEXT, tiny_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = tiny_model("llama", seed=2, n_layers=2)
    prompts = TINY_TEXT.strip().splitlines()[:16]
    patcher = Patcher(lm, prompts, outcome=NextTokenMass(lm.tokenizer.convert_tokens_to_ids(["stupid", "hate"])))
    t = np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 6)
    data = MediationData.from_arrays(t=t, y=patcher.base_scores(), mediators=patcher.activations(["mlp_out.L1"]),
                                     x=pd.DataFrame({"topic": ["a"] * 8 + ["b"] * 8}))
    state = torch.random.get_rng_state()
    one, two = patcher.random_copy(5), patcher.random_copy(5)
    assert torch.equal(state, torch.random.get_rng_state())
    assert one.lm.model_id == "tiny-llama-seed2-random5" and type(one.lm.model) is type(lm.model)
    np.testing.assert_array_equal(one.base_scores(), two.base_scores())
    assert np.abs(one.base_scores() - patcher.base_scores()).max() > 1e-6
    res = refute.random_model(patching(), data, patcher=patcher, random_state=5)
    acts = one.activations(["mlp_out.L1"])
    direct = patching().fit(data.replace(mediators=acts, y=one.base_scores()), patcher=one)
    row = res.to_frame().set_index(["effect", "arm"]).loc[("nie", "treated")]
    assert row.new_estimate == pytest.approx(direct.effect("mlp_out.L1", "nie", "treated").estimate, abs=1e-9)


@pytest.mark.lm
def test_demo_report_has_the_null_model_checks_of_the_patching_fit(tmp_path):
    pytest.importorskip("transformers")
    from deconfound import MediationData
    from deconfound.demo import analyse_and_report
    from deconfound.lm.models import TINY_TEXT, tiny_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = tiny_model("llama", seed=2, n_layers=2)
    prompts = TINY_TEXT.strip().splitlines()[:20]
    patcher = Patcher(lm, prompts, outcome=NextTokenMass(lm.tokenizer.convert_tokens_to_ids(["stupid", "hate"])))
    t = np.array([1, 1, 1, 1, 0, 1, 1, 0, 0, 1] + [0, 0, 1, 0, 0, 0, 1, 0, 1, 0])
    data = MediationData.from_arrays(t=t, y=patcher.base_scores(),
                                     mediators=patcher.activations(["mlp_out.L0", "mlp_out.L1"]),
                                     x=pd.DataFrame({"topic": ["a"] * 10 + ["b"] * 10}))
    out = analyse_and_report(data, out=tmp_path, estimators={"patching": PatchingMediation(n_boot=20)},
                             patcher=patcher, quick=True, refute_units=1)
    text = "".join(p.read_text() for p in tmp_path.glob("*.md"))
    assert "Null-model checks (patching, top 1 units)" in text and "random_directions" in text
    assert "random_model" in text and out["summary"]


def test_subset_p_keeps_its_size_when_the_refits_have_noise_of_their_own():
    """Subset estimates N(0, sigma^2), sigma^2 = sampling part + the refits' own noise; the full fit carries
    f times that noise. Plugging S^2 into t_2 rejected 0.10 of null data sets when the two parts were equal."""
    from deconfound.inference import Effect

    rng = np.random.default_rng(0)
    f, se = 0.8, 1.0
    spread = se**2 * (1 / f - 1)
    for extra, low, high in ((0.0, 0.02, 0.06), (spread, 0.035, 0.07), (4 * spread, 0.035, 0.07)):
        rejected = []
        for _ in range(3000):
            est = rng.normal(0, np.sqrt(spread + extra), 3)
            e0 = Effect.from_se(rng.normal(0, np.sqrt(f * extra)), se)
            rejected.append(refute._subset_p(est, e0, f) < 0.05)
        assert low <= np.mean(rejected) <= high, (extra, np.mean(rejected))  # MC SE about 0.004
    big = Effect.from_se(0.0, 100.0)  # no excess anywhere: the t_{B-1} p-value
    est = np.array([0.3, -0.1, 0.5])
    t_p = 2 * stats.t(2).sf(abs(est.mean()) / np.sqrt(est.var(ddof=1) / 3))
    assert refute._subset_p(est, big, f) == pytest.approx(t_p, rel=5e-3)
