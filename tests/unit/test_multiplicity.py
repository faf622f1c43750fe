"""Simultaneous max-|t| bands and significance counts, against closed forms, re-implementations and simulations."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from deconfound.errors import DataError
from deconfound.inference import Effect, bh_qvalues
from deconfound.multiplicity import joint_draws, significance_counts, simultaneous_bands
from deconfound.results import MediationResult

KEY = ("nie", "treated")


def _result(effects: dict, n: int = 100) -> MediationResult:
    return MediationResult("test", {u: {KEY: e} for u, e in effects.items()}, n=n, n_treated=n // 2)


def _score_result(scores, estimates=None) -> MediationResult:
    scores = np.asarray(scores, dtype=float)
    est = np.zeros(scores.shape[1]) if estimates is None else estimates
    return _result({f"u{j}": Effect.from_scores(float(est[j]), scores[:, j]) for j in range(scores.shape[1])},
                   n=len(scores))


def _orthogonal_scores(n, k, seed):
    """n x k centred score columns, exactly orthogonal with equal norms: multiplier t-stats are iid N(0, 1)."""
    z = np.random.default_rng(seed).standard_normal((n, k))
    z -= z.mean(axis=0)
    q, _ = np.linalg.qr(z)
    return q * np.sqrt(n)


def test_identical_units_give_the_pointwise_critical_value():
    s = np.random.default_rng(1).standard_normal(300)
    s -= s.mean()
    res = _score_result(np.column_stack([s] * 8), np.full(8, 0.3))
    bands = simultaneous_bands(res, *KEY, n_draws=4000, random_state=5)
    # oracle: one unit's multiplier draws with the same multipliers
    xi = np.random.default_rng(5).standard_normal((4000, 300))
    se = np.sqrt(np.mean(s**2) / 300)
    one = np.abs(xi @ s / 300) / se
    assert bands.critical_value == pytest.approx(np.quantile(one, 0.95), rel=1e-9)
    assert bands.critical_value == pytest.approx(1.96, abs=0.08)  # Monte Carlo error of a 4000-draw quantile
    assert bands.method == "multiplier"


def test_independent_units_give_the_sidak_critical_value():
    k = 10
    res = _score_result(_orthogonal_scores(400, k, seed=2))
    bands = simultaneous_bands(res, *KEY, n_draws=20000, random_state=3)
    sidak = stats.norm.ppf((1 + 0.95 ** (1 / k)) / 2)  # 2.80: max of 10 independent |N(0, 1)|
    assert bands.critical_value == pytest.approx(sidak, abs=0.06)
    assert bands.critical_value > bands.pointwise_critical_value == pytest.approx(1.959964, abs=1e-6)


def test_correlated_units_fall_between_pointwise_and_sidak():
    rng = np.random.default_rng(4)
    common = rng.standard_normal((500, 1))
    s = 0.9 * common + np.sqrt(1 - 0.81) * rng.standard_normal((500, 12))
    bands = simultaneous_bands(_score_result(s - s.mean(axis=0)), *KEY, n_draws=10000, random_state=0)
    assert 2.05 < bands.critical_value < stats.norm.ppf((1 + 0.95 ** (1 / 12)) / 2) - 0.1


def test_draws_backed_bands_match_a_reimplementation():
    rng = np.random.default_rng(6)
    est = np.array([0.5, -0.2, 0.05, 1.0])
    draws = est + rng.standard_normal((999, 4)) * np.array([0.1, 0.2, 0.05, 0.3])
    res = _result({f"u{j}": Effect.from_draws(est[j], draws[:, j]) for j in range(4)})
    bands = simultaneous_bands(res, *KEY, level=0.9)
    se = draws.std(axis=0, ddof=1)
    max_t = np.max(np.abs(draws - est) / se, axis=1)
    c = np.quantile(max_t, 0.9)
    f = bands.frame
    assert bands.method == "draws" and bands.n_draws == 999
    assert bands.critical_value == pytest.approx(c, rel=1e-12)
    np.testing.assert_allclose(f.band_lower, est - c * se, rtol=1e-12)
    np.testing.assert_allclose(f.band_upper, est + c * se, rtol=1e-12)
    t = est / se
    np.testing.assert_allclose(f.p_adjusted, [(1 + np.sum(max_t >= abs(v))) / 1000 for v in t], rtol=1e-12)
    assert f.significant.tolist() == list((est - c * se > 0) | (est + c * se < 0))
    # bands contain the pointwise normal intervals of the same level
    assert (f.band_upper - f.band_lower >= 2 * stats.norm.ppf(0.95) * se).all()


def test_joint_draws_equal_compare_joint_draws():
    from deconfound.compare import joint_draws as compare_joint

    rng = np.random.default_rng(0)
    res = _score_result(rng.standard_normal((200, 3)), np.array([0.1, 0.2, 0.3]))
    mine, method = joint_draws(res, res.units, *KEY, n_draws=50, random_state=9)
    np.testing.assert_array_equal(mine, compare_joint(res, res.units, *KEY, n_draws=50, random_state=9))
    assert method == "multiplier"


def test_units_without_a_finite_se_are_left_out():
    s = _orthogonal_scores(100, 3, seed=1)
    effs = {f"u{j}": Effect.from_scores(0.2, s[:, j]) for j in range(3)}
    effs["dead"] = Effect(np.nan, np.nan, (np.nan, np.nan), np.nan, scores=np.zeros(100))
    bands = simultaneous_bands(_result(effs, 100), *KEY, n_draws=500)
    assert bands.excluded == ["dead"]
    row = bands.frame.set_index("unit").loc["dead"]
    assert np.isnan(row.band_lower) and not row.significant
    same = simultaneous_bands(_result({k: v for k, v in effs.items() if k != "dead"}, 100), *KEY, n_draws=500)
    assert bands.critical_value == pytest.approx(same.critical_value, rel=1e-12)
    assert "left out" in bands.summary()


def test_bad_arguments():
    res = _score_result(_orthogonal_scores(50, 2, seed=0))
    with pytest.raises(ValueError, match="level: expected"):
        simultaneous_bands(res, *KEY, level=1.5)
    with pytest.raises(ValueError, match="n_draws: expected"):
        simultaneous_bands(res, *KEY, n_draws=0)
    with pytest.raises(DataError, match="units: expected names"):
        simultaneous_bands(res, *KEY, units=["nope"])
    with pytest.raises(DataError, match="at least 20 finite joint draws"):
        simultaneous_bands(res, *KEY, n_draws=5)
    mixed = _result({"a": Effect.from_scores(0.1, np.ones(50) - 1 + np.arange(50) / 50 - 0.49),
                     "b": Effect.from_draws(0.1, np.linspace(0, 0.2, 99))}, 50)
    with pytest.raises(DataError, match="expected every unit"):
        simultaneous_bands(mixed, *KEY)
    with pytest.raises(KeyError):
        simultaneous_bands(res, "nde", "treated")


def _p_result(p_values):
    return _result({f"u{i}": Effect(0.1, 0.05, (0.0, 0.2), float(p)) for i, p in enumerate(p_values)})


def test_significance_counts_bh_matches_to_frame_and_hand_counts():
    rng = np.random.default_rng(3)
    pa = np.concatenate([rng.uniform(0, 0.002, 5), rng.uniform(0, 1, 25)])
    pu = np.concatenate([rng.uniform(0, 0.002, 12), rng.uniform(0, 1, 18)])
    adj, unadj = _p_result(pa), _p_result(pu)
    out = significance_counts(adj, unadj, *KEY, fdr=0.05)
    qa, qu = bh_qvalues(pa), bh_qvalues(pu)
    frame_q = adj.to_frame().query("effect == 'nie' and arm == 'treated'").q_value.to_numpy()
    np.testing.assert_allclose(out.frame.q_value_adjusted, frame_q, rtol=1e-12)
    sa, su = qa <= 0.05, qu <= 0.05
    assert (out.adjusted, out.unadjusted) == (int(sa.sum()), int(su.sum()))
    assert (out.both, out.only_adjusted, out.only_unadjusted) == (int((sa & su).sum()), int((sa & ~su).sum()),
                                                                   int((~sa & su).sum()))
    assert out.unadjusted >= 12 and out.n_units == 30
    assert out.as_dict()["method"] == "bh" and "without topic adjustment" in out.summary()


def test_significance_counts_max_t_and_errors():
    s = _orthogonal_scores(400, 6, seed=8)
    se = np.sqrt(np.mean(s**2, axis=0) / 400)
    adj = _score_result(s, se * np.array([6, 0, 0, 0, 0, 0]))
    unadj = _score_result(s, se * np.array([6, 6, 6, 2.2, 0, 0]))
    out = significance_counts(adj, unadj, *KEY, method="max-t", n_draws=4000)
    # |t| = 6 survives any correction; |t| = 2.2 is pointwise significant but not against max of 6 |N(0,1)|
    assert (out.adjusted, out.unadjusted, out.only_unadjusted) == (1, 3, 2)
    bands = simultaneous_bands(unadj, *KEY, n_draws=4000)
    np.testing.assert_allclose(out.frame.p_maxt_unadjusted, bands.frame.p_adjusted)
    with pytest.raises(ValueError, match="method: expected"):
        significance_counts(adj, unadj, method="holm")
    with pytest.raises(ValueError, match="fdr: expected"):
        significance_counts(adj, unadj, fdr=0)
    smaller = _result({"u0": adj.effect("u0", *KEY)}, 400)
    with pytest.raises(DataError, match="unadjusted: expected the units"):
        significance_counts(adj, smaller)


# ---- coverage on simulations with a known truth -------------------------------------------------------------
def _null_first_stage(n, k, rho, seed):
    """k units whose activation does not depend on T (true effect 0), correlated through a shared factor.

    The estimator is the difference in means of each unit between arms with its influence scores, so the
    units' estimates are correlated like real units of one layer.
    """
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    m = np.sqrt(rho) * rng.standard_normal((n, 1)) + np.sqrt(1 - rho) * rng.standard_normal((n, k))
    m = m * rng.uniform(0.5, 2.0, k)  # different scales per unit
    p1 = t.mean()
    mu1, mu0 = m[t == 1].mean(axis=0), m[t == 0].mean(axis=0)
    scores = (t[:, None] * (m - mu1) / p1) - ((1 - t)[:, None] * (m - mu0) / (1 - p1))
    return _score_result(scores, mu1 - mu0)


@pytest.mark.slow
def test_family_wise_error_of_simultaneous_bands_on_null_units():
    reps, k = 400, 25
    sim_miss = point_miss = 0
    for rep in range(reps):
        res = _null_first_stage(300, k, rho=0.3, seed=rep)
        f = simultaneous_bands(res, *KEY, n_draws=1000, random_state=rep).frame
        sim_miss += bool(((f.band_lower > 0) | (f.band_upper < 0)).any())
        point_miss += bool(((f.ci_lower > 0) | (f.ci_upper < 0)).any())
    fwer, pointwise = sim_miss / reps, point_miss / reps
    se = np.sqrt(0.05 * 0.95 / reps)  # 0.011
    assert fwer <= 0.05 + 3 * se, fwer  # family-wise error at most the nominal 5%, up to Monte Carlo error
    assert fwer >= 0.05 - 3 * se, fwer  # and not wildly conservative (the multiplier keeps the correlation)
    assert pointwise > 0.4, pointwise  # 25 pointwise 95% CIs miss somewhere most of the time


@pytest.mark.slow
def test_family_wise_error_with_bootstrap_draws_on_null_units():
    """Bootstrap draws on shared resamples (the bootstrap engine) on simulated topic data with known zero
    first-stage effects for pure-noise units; the simultaneous band keeps the family-wise error near 5%."""
    from deconfound.bootstrap import bootstrap
    from deconfound.data import MediationData

    reps, k, n = 120, 15, 300
    miss = 0
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        t = rng.integers(0, 2, n)
        m = 0.5 * rng.standard_normal((n, 1)) + rng.standard_normal((n, k))
        data = MediationData.from_arrays(t=t, y=rng.standard_normal(n), mediators={"m": m})
        vals = data.mediator("m").astype(float)

        def diff(d, c, v=vals):
            w1, w0 = c * d.t, c * (1 - d.t)
            return (w1 @ v) / w1.sum() - (w0 @ v) / w0.sum()

        boot = bootstrap(diff, data, n_boot=400, random_state=rep)
        res = _result({f"u{j}": boot.effect(j) for j in range(k)}, n)
        f = simultaneous_bands(res, *KEY).frame
        miss += bool(((f.band_lower > 0) | (f.band_upper < 0)).any())
    fwer = miss / reps
    assert fwer <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps), fwer


@pytest.mark.parametrize("kind", ["scores", "draws"])
def test_blocked_max_t_equals_the_full_joint_draws(kind):
    """The band is computed a block of units at a time (memory draws x block, not draws x units, issue 16);
    the numbers equal the max over the full joint-draw matrix of joint_draws."""
    from deconfound.inference import Effect
    from deconfound.multiplicity import _max_abs_t, joint_draws
    from deconfound.results import MediationResult

    rng = np.random.default_rng(3)
    n, n_units = 200, 7
    s = rng.standard_normal((n, n_units)) * rng.uniform(0.5, 2, n_units)
    if kind == "scores":
        effs = {f"u{j}": {("nie", "treated"): Effect.from_scores(0.05 * j, s[:, j] - s[:, j].mean())}
                for j in range(n_units)}
    else:
        effs = {f"u{j}": {("nie", "treated"): Effect.from_draws(0.05 * j, 0.05 * j + s[:, j] / 10)}
                for j in range(n_units)}
    res = MediationResult("demo", effs, n=n, n_treated=n // 2)
    units = res.units
    est = np.array([res.effect(u, "nie", "treated").estimate for u in units])
    se = np.array([res.effect(u, "nie", "treated").se for u in units])
    draws, method = joint_draws(res, units, n_draws=300, random_state=1)
    want = np.max(np.abs(draws - est) / se, axis=1)
    for chunk in (1, 3, 100):
        got, m2 = _max_abs_t(res, units, "nie", "treated", est, se, n_draws=300, random_state=1, xi=None, chunk=chunk)
        assert m2 == method
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
