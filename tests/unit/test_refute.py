"""Refuters that re-run the whole estimator (deconfound.refute), on the simulator with known truth."""
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deconfound import refute, simulate
from deconfound.estimators import get_estimator
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
    se = res.original.effect("u0", "te", "average").se * np.sqrt((1 / f - 1) / 2)
    assert row.p_value == pytest.approx(2 * stats.norm.sf(abs(row.new_estimate - row.estimate) / se), rel=1e-9)


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
    assert list(dict.fromkeys(table.refuter)) == list(refute.REFUTERS)
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
