"""The bootstrap engine: count matrices, counts vs materialized resamples, intervals, pairing, failures."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deconfound.bootstrap import (EBMeanDifference, bootstrap, draw_counts, paired_bootstrap, register_backend,
                                  resample)
from deconfound.data import MediationData
from deconfound.errors import DataError, PositivityError
from deconfound.simulate import topic_mediation
from deconfound.weights import eb_att


@pytest.fixture(scope="module")
def sim():
    data, _ = topic_mediation(400, n_topics=4, n_units=3, dim=2, seed=11)
    return data


def weighted_mean_y(data, counts):
    return np.average(data.y, weights=counts)


def test_counts_are_stratified_and_seeded(sim):
    c = draw_counts(sim, 50, random_state=3)
    assert c.shape == (50, sim.n)
    assert (c.sum(axis=1) == sim.n).all()
    assert (c[:, sim.t == 1].sum(axis=1) == sim.n_treated).all()
    assert (c[:, sim.t == 0].sum(axis=1) == sim.n_control).all()
    assert np.array_equal(c, draw_counts(sim, 50, random_state=3))
    assert not np.array_equal(c, draw_counts(sim, 50, random_state=4))
    # stratified by treatment x topic: every (arm, topic) cell keeps its size
    ct = draw_counts(sim, 20, stratify=("treatment", "topic"), random_state=0)
    codes = sim.x["topic"].cat.codes.to_numpy()
    for arm in (0, 1):
        for k in np.unique(codes):
            cell = (sim.t == arm) & (codes == k)
            assert (ct[:, cell].sum(axis=1) == cell.sum()).all()
    # no strata: only the total is fixed
    c0 = draw_counts(sim, 200, stratify=None, random_state=0)
    assert (c0.sum(axis=1) == sim.n).all() and len(np.unique(c0[:, sim.t == 1].sum(axis=1))) > 1


def test_counts_path_equals_materialized_path(sim):
    a = bootstrap(weighted_mean_y, sim, n_boot=30, random_state=5)
    b = bootstrap(lambda d: d.y.mean(), sim, n_boot=30, random_state=5, materialize=True)
    np.testing.assert_allclose(a.draws, b.draws, rtol=0, atol=1e-12)
    assert a.estimate[0] == pytest.approx(sim.y.mean(), abs=1e-14)
    # the draws are the weighted means for the same count matrix
    counts = draw_counts(sim, 30, random_state=5)
    np.testing.assert_allclose(a.draws[:, 0], counts @ sim.y / sim.n, atol=1e-12)


def test_resample_repeats_rows(sim):
    rows = np.r_[np.flatnonzero(sim.t == 1)[:2], np.flatnonzero(sim.t == 0)[:2]]
    counts = np.zeros(sim.n, dtype=int)
    counts[rows] = [2, 1, 1, 3]
    sub = resample(sim, counts)
    assert sub.n == 7 and np.allclose(sub.y, sim.y[np.repeat(np.sort(rows), counts[np.sort(rows)])])
    with pytest.raises(DataError, match="expected shape"):
        resample(sim, counts[:-1])


def test_intervals_match_their_definitions(sim):
    res = bootstrap(weighted_mean_y, sim, n_boot=400, random_state=0, level=0.9)
    d = res.draws[:, 0]
    pct = res.effect(0)
    assert pct.ci == pytest.approx(tuple(np.quantile(d, [0.05, 0.95], method="median_unbiased")), abs=1e-14)
    assert pct.se == pytest.approx(np.std(d, ddof=1), abs=1e-14)
    nrm = res.effect("stat", ci="normal")
    z = stats.norm.ppf(0.95)
    assert nrm.ci == pytest.approx((res.estimate[0] - z * pct.se, res.estimate[0] + z * pct.se), abs=1e-12)
    # the bootstrap SE of a mean is close to sd / sqrt(n) within arms (stratified): a loose sanity band
    analytic = np.sqrt(sum(sim.y[sim.t == a].var() * (sim.t == a).sum() for a in (0, 1))) / sim.n
    assert 0.85 < pct.se / analytic < 1.15
    frame = res.to_frame()
    assert list(frame.statistic) == ["stat"] and frame.n_ok.iloc[0] == 400
    assert "400 replicates (0 failed)" in res.summary()


def test_vector_statistic_names_and_effects(sim):
    def stat(data, counts):
        return np.array([np.average(data.y, weights=counts * data.t), np.average(data.y, weights=counts * (1 - data.t))])
    stat.names = ["y1", "y0"]
    res = bootstrap(stat, sim, n_boot=50, random_state=1)
    effs = res.effects()
    diff = effs["y1"] - effs["y0"]
    assert diff.estimate == pytest.approx(res.estimate[0] - res.estimate[1])
    np.testing.assert_allclose(diff.draws, res.draws[:, 0] - res.draws[:, 1])
    with pytest.raises(KeyError, match="expected one of"):
        res.effect("nope")


def test_paired_bootstrap_uses_the_same_resamples(sim):
    a = lambda d, c: np.average(d.y, weights=c * d.t)  # noqa: E731
    b = lambda d, c: np.average(d.y, weights=c)  # noqa: E731
    pb = paired_bootstrap(a, b, sim, n_boot=300, random_state=2)
    np.testing.assert_allclose(pb.diff.draws, pb.a.draws - pb.b.draws)
    sa = bootstrap(a, sim, n_boot=300, random_state=2)
    np.testing.assert_allclose(pb.a.draws, sa.draws)  # same seed, same resamples as an unpaired run
    # pairing: positively correlated statistics give a smaller SE of the difference than independent draws
    sb_indep = bootstrap(b, sim, n_boot=300, random_state=99)
    unpaired = np.std(pb.a.draws[:, 0] - sb_indep.draws[:, 0], ddof=1)
    assert pb.diff.effect(0).se < unpaired
    assert set(pb.to_frame().part) == {"a", "b", "a - b"}
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap(a, lambda d, c: np.array([1.0, 2.0]), sim, n_boot=5)


class _FailsSometimes:
    """Raises PositivityError when control row 0 is absent from the resample."""

    def __init__(self, row):
        self.row = row

    def __call__(self, data, counts):
        if counts[self.row] == 0:
            raise PositivityError("topic 'x': n1=3, n0=0")
        return np.average(data.y, weights=counts)


def test_failed_replicates_are_nan_counted_and_warned(sim):
    stat = _FailsSometimes(int(np.flatnonzero(sim.t == 0)[0]))
    with pytest.warns(RuntimeWarning, match=r"replicates failed .*PositivityError: topic 'x'"):
        res = bootstrap(stat, sim, n_boot=60, random_state=0)
    counts = draw_counts(sim, 60, random_state=0)
    expected = counts[:, stat.row] == 0
    assert expected.any()
    assert np.array_equal(~res.ok, expected) and res.n_failed == expected.sum()
    assert [i for i, _ in res.failures] == np.flatnonzero(expected).tolist()
    assert res.effect(0).draws.size == 60 - expected.sum()


def test_bugs_in_the_statistic_propagate(sim):
    def broken(data, counts):
        raise ZeroDivisionError("bug")
    with pytest.raises(ZeroDivisionError):
        bootstrap(broken, sim, n_boot=3)


def test_chunks_and_backends_give_identical_draws(sim):
    base = bootstrap(weighted_mean_y, sim, n_boot=40, random_state=7)
    chunked = bootstrap(weighted_mean_y, sim, n_boot=40, random_state=7, chunk_size=7)
    np.testing.assert_array_equal(base.draws, chunked.draws)
    calls = []

    def reversed_runner(tasks, n_jobs):  # runs tasks out of order, returns them in order
        calls.append(len(tasks))
        return list(reversed([task() for task in reversed(tasks)]))

    register_backend("test-reversed", reversed_runner)
    other = bootstrap(weighted_mean_y, sim, n_boot=40, random_state=7, chunk_size=10, backend="test-reversed")
    assert calls == [4]
    np.testing.assert_array_equal(base.draws, other.draws)
    threads = bootstrap(weighted_mean_y, sim, n_boot=40, random_state=7, n_jobs=2, chunk_size=10)
    np.testing.assert_array_equal(base.draws, threads.draws)
    with pytest.raises(ValueError, match="backend: expected one of"):
        bootstrap(weighted_mean_y, sim, n_boot=3, backend="nope")


def test_precomputed_counts_and_bad_arguments(sim):
    counts = draw_counts(sim, 10, random_state=1)
    res = bootstrap(weighted_mean_y, sim, counts=counts)
    np.testing.assert_allclose(res.draws[:, 0], counts @ sim.y / sim.n)
    with pytest.raises(DataError, match="counts: expected"):
        bootstrap(weighted_mean_y, sim, counts=counts[:, :-1])
    with pytest.raises(DataError, match="stratify: expected"):
        draw_counts(sim, 3, stratify=("nope",))
    with pytest.raises(ValueError, match="n_boot: expected"):
        draw_counts(sim, 0)
    with pytest.raises(ValueError, match="names: expected 1"):
        bootstrap(weighted_mean_y, sim, n_boot=3, names=["a", "b"])


def test_eb_mean_difference_batch_equals_naive_refits(sim):
    stat = EBMeanDifference()
    counts = draw_counts(sim, 8, random_state=4)
    fast = stat.batch(sim, counts)
    assert fast.shape == (8, 3)
    values = np.column_stack([sim.mediator(u).mean(axis=1, dtype=np.float64) for u in sim.units])
    for b in range(8):
        sub = resample(sim, counts[b])
        w = eb_att(sub.x[["topic"]], sub.t).weights  # refit on the copied resample
        vals = np.column_stack([sub.mediator(u).mean(axis=1, dtype=np.float64) for u in sub.units])
        naive = np.where(sub.t == 1, w, -w) @ vals
        np.testing.assert_allclose(fast[b], naive, atol=1e-9)
        np.testing.assert_allclose(stat(sim, counts[b]), fast[b], atol=1e-12)
    # on the full sample: treated mean minus post-stratified control mean (closed form)
    est = stat(sim, np.ones(sim.n))
    codes, t = sim.x["topic"].cat.codes.to_numpy(), sim.t
    closed = values[t == 1].mean(axis=0)
    for k in np.unique(codes):
        share = ((codes == k) & (t == 1)).sum() / t.sum()
        closed = closed - share * values[(codes == k) & (t == 0)].mean(axis=0)
    np.testing.assert_allclose(est, closed, atol=1e-10)
    res = bootstrap(stat, sim, n_boot=20, random_state=0)
    assert res.names == sim.units


def test_eb_mean_difference_without_confounders_is_a_difference_in_means():
    rng = np.random.default_rng(0)
    t = np.r_[np.ones(30), np.zeros(50)].astype(int)
    data = MediationData.from_arrays(t=t, y=rng.normal(size=80), mediators={"m": rng.normal(size=(80, 2))})
    stat = EBMeanDifference(values=lambda d: d.y, estimand="ATE")
    assert stat(data, np.ones(80))[0] == pytest.approx(data.y[t == 1].mean() - data.y[t == 0].mean(), abs=1e-12)
    with pytest.raises(ValueError, match="estimand"):
        EBMeanDifference(estimand="ATC")


def test_eb_mean_difference_marks_replicates_without_overlap():
    # a topic with a single control: replicates that drop it cannot be balanced (NaN, warned)
    t = np.array([1] * 10 + [0] * 10 + [1] * 3 + [0])
    topic = ["a"] * 20 + ["b"] * 4
    rng = np.random.default_rng(1)
    data = MediationData.from_arrays(t=t, y=rng.normal(size=24), mediators={"m": rng.normal(size=(24, 1))},
                                     x=pd.DataFrame({"topic": topic}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = bootstrap(EBMeanDifference(), data, n_boot=40, random_state=0)
    counts = draw_counts(data, 40, random_state=0)
    lost = (counts[:, 23] == 0) & (counts[:, 20:23].sum(axis=1) > 0)  # treated topic 'b' rows, no control
    assert lost.any() and np.array_equal(~res.ok, lost)
    assert any("replicates failed" in str(w.message) for w in caught)
