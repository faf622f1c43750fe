"""compare.py: localization indices against independent formulas, joint draws, paired agreement."""
import numpy as np
import pytest
from scipy.stats import entropy

from deconfound.compare import (Comparison, compare_estimators, joint_draws, localization, localization_difference,
                                localization_indices, localization_matrix)
from deconfound.estimators.base import MediationEstimator
from deconfound.inference import Effect
from deconfound.results import MediationResult, add_derived


def _gini_pairs(a):
    a = np.abs(np.asarray(a, float))
    return np.abs(a[:, None] - a[None, :]).sum() / (2 * len(a) ** 2 * a.mean())


@pytest.mark.parametrize("seed", range(5))
def test_indices_match_independent_formulas(seed):
    a = np.random.default_rng(seed).normal(size=12)
    r = localization_indices(a, top_k=3)
    p = np.abs(a) / np.abs(a).sum()
    assert r["entropy"] == pytest.approx(entropy(p) / np.log(len(a)), rel=1e-12)
    assert r["gini"] == pytest.approx(_gini_pairs(a), rel=1e-12)
    assert r["top3_share"] == pytest.approx(np.sort(p)[::-1][:3].sum(), rel=1e-12)
    cum, k = 0.0, 0
    for v in np.sort(p)[::-1]:
        cum += v
        k += 1
        if cum >= 0.8:
            break
    assert r["units_for_80"] == k
    assert r["peak_to_mean"] == pytest.approx(np.abs(a).max() / np.abs(a).mean(), rel=1e-12)


def test_extremes():
    even = localization_indices(np.ones(8))
    spike = localization_indices([0, 0, 5.0, 0, 0, 0, 0, 0])
    assert even["entropy"] == pytest.approx(1.0) and even["gini"] == pytest.approx(0.0)
    assert spike["entropy"] == pytest.approx(0.0) and spike["gini"] == pytest.approx(7 / 8)
    assert spike["units_for_80"] == 1 and spike["peak_to_mean"] == pytest.approx(8.0)


def test_matrix_rows_equal_single_calls():
    a = np.random.default_rng(3).normal(size=(6, 9))
    m = localization_matrix(a)
    for i in range(6):
        single = localization_indices(a[i])
        for k, v in single.items():
            assert m[k][i] == pytest.approx(v, rel=1e-12)


def _score_result(est_scale, scores, name="fake"):
    effs = {}
    for u, (e, s) in enumerate(zip(est_scale, scores.T)):
        effs[f"u{u}"] = add_derived({("nie", "treated"): Effect.from_scores(e, s)})
    return MediationResult(name, effs, n=scores.shape[0], n_treated=scores.shape[0] // 2)


def test_joint_draws_from_scores_have_the_analytic_covariance():
    rng = np.random.default_rng(0)
    n = 400
    z = rng.normal(size=(n, 1))
    scores = np.hstack([z + 0.5 * rng.normal(size=(n, 1)), z, rng.normal(size=(n, 1))])
    scores -= scores.mean(0)
    res = _score_result([1.0, 2.0, 0.5], scores)
    draws = joint_draws(res, res.units, "nie", "treated", n_draws=20000, random_state=1)
    analytic = scores.T @ scores / n**2
    assert np.allclose(np.cov(draws.T), analytic, atol=0.15 * np.abs(analytic).max())
    assert np.allclose(draws.mean(0), [1.0, 2.0, 0.5], atol=4 * np.sqrt(np.diag(analytic) / 20000) + 1e-3)


def test_localization_difference_of_a_result_with_itself_is_exactly_zero():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(300, 6))
    scores -= scores.mean(0)
    res = _score_result(rng.normal(size=6), scores)
    diff = localization_difference(res, res, n_draws=500)
    assert np.allclose(diff.difference, 0) and np.allclose(diff.ci_lower, 0) and np.allclose(diff.ci_upper, 0)
    tab = localization(res, n_draws=500)
    assert set(tab["index"]) == {"entropy", "gini", "top3_share", "units_for_80", "peak_to_mean"}
    assert (tab.ci_lower <= tab.estimate + 1e-9).all() and (tab.estimate <= tab.ci_upper + 1e-9).all()


def test_localization_difference_detects_spread():
    """A concentrated curve vs an even one: the entropy difference is positive and its CI excludes 0."""
    rng = np.random.default_rng(2)
    n = 2000
    scores = 0.5 * rng.normal(size=(n, 8))
    scores -= scores.mean(0)
    even = _score_result(np.ones(8), scores)
    spike = _score_result([3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], scores)
    diff = localization_difference(even, spike, n_draws=1000).set_index("index")
    assert diff.loc["entropy", "difference"] > 0 and diff.loc["entropy", "ci_lower"] > 0
    assert diff.loc["gini", "ci_upper"] < 0


class _MeanDiff(MediationEstimator):
    """Toy estimator: NIE(treated) = mean difference of the mediator times a fixed slope; scores attached."""

    def __init__(self, slope=1.0, random_state=0):
        self.slope = slope
        self.random_state = random_state

    def fit(self, data, *, graph=None, units=None):
        effs = {}
        t = data.t.astype(bool)
        for u in units or data.units:
            m = data.mediator(u)[:, 0].astype(float)
            est = self.slope * (m[t].mean() - m[~t].mean())
            s = self.slope * np.where(t, (m - m[t].mean()) / t.mean(), -(m - m[~t].mean()) / (1 - t.mean()))
            effs[u] = add_derived({("nie", "treated"): Effect.from_scores(est, s)})
        return MediationResult("meandiff", effs, n=data.n, n_treated=data.n_treated, graph=str(graph))


def test_compare_estimators_tidy_and_paired():
    from deconfound.simulate import topic_mediation

    data, _ = topic_mediation(600, n_units=3, seed=4)
    comp = compare_estimators(data, estimators={"a": _MeanDiff(1.0), "b": _MeanDiff(2.0)},
                              graphs=["topic_mediation"])
    assert isinstance(comp, Comparison)
    assert list(comp.frame.columns[:14]) == ["estimator", "graph", "unit", "effect", "arm", "estimate", "se",
                                             "ci_lower", "ci_upper", "p_value", "runtime_s", "rv", "rva",
                                             "refutation_passed"]
    agree = comp.agreement(effect="nie", arm="treated")
    assert agree.paired.all() and len(agree) == 3
    ra = comp.results[("a", "topic_mediation")]
    for row in agree.itertuples():
        e = ra.effect(row.unit, "nie", "treated")
        # b = 2a exactly, so a - b = -a with the same SE as a
        assert row.difference == pytest.approx(-e.estimate) and row.se == pytest.approx(e.se)
