"""compare.py: localization indices against independent formulas, joint draws, paired agreement."""
import numpy as np
import pytest
from scipy.stats import entropy

from deconfound.compare import (Comparison, compare_estimators, joint_draws, localization, localization_difference,
                                localization_indices, localization_matrix)
from deconfound.estimators.base import MediationEstimator
from deconfound.inference import Effect
from deconfound.results import MediationResult, add_derived
from deconfound.simulate import localization_curves


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
    for method in ("debiased", "abs"):
        diff = localization_difference(res, res, n_draws=500, method=method)
        assert np.allclose(diff.difference, 0) and np.allclose(diff.ci_lower, 0) and np.allclose(diff.ci_upper, 0)
    tab = localization(res, n_draws=500, method="abs")
    assert set(tab["index"]) == {"entropy", "gini", "top3_share", "units_for_80", "peak_to_mean"}
    assert (tab.ci_lower <= tab.estimate + 1e-9).all() and (tab.estimate <= tab.ci_upper + 1e-9).all()
    assert localization(res, n_draws=500)["index"].tolist() == ["concentration", "effective_units", "renyi2_entropy"]
    with pytest.raises(ValueError, match="method"):
        localization(res, method="median")


def test_localization_difference_detects_spread():
    """A concentrated curve vs an even one: the entropy difference is positive and its CI excludes 0."""
    rng = np.random.default_rng(2)
    n = 2000
    scores = 0.5 * rng.normal(size=(n, 8))
    scores -= scores.mean(0)
    even = _score_result(np.ones(8), scores)
    spike = _score_result([3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], scores)
    diff = localization_difference(even, spike, n_draws=1000, method="abs").set_index("index")
    assert diff.loc["entropy", "difference"] > 0 and diff.loc["entropy", "ci_lower"] > 0
    assert diff.loc["gini", "ci_upper"] < 0
    deb = localization_difference(even, spike, n_draws=1000).set_index("index")  # the default
    assert deb.loc["concentration", "ci_upper"] < 0 and deb.loc["renyi2_entropy", "difference"] > 0


def test_debiased_moments_are_unbiased_and_exact_without_noise():
    """Hermite moments: E[a^2 - s^2] = alpha^2, E[a^4 - 6 a^2 s^2 + 3 s^4] = alpha^4 (a ~ N(alpha, s^2))."""
    from deconfound.compare import _moments, debiased_indices

    alpha, s = np.array([1.0, 0.5, 0.0, -0.3]), np.array([0.2, 0.4, 0.3, 0.1])
    a = alpha + s * np.random.default_rng(5).standard_normal((200_000, 4))
    m2, m4 = _moments(a, s**2)
    assert abs(m2.mean() - (alpha**2).sum()) < 4 * m2.std() / np.sqrt(len(m2))
    assert abs(m4.mean() - (alpha**4).sum()) < 4 * m4.std() / np.sqrt(len(m4))
    r = debiased_indices(alpha, np.zeros(4))
    conc = (alpha**4).sum() / (alpha**2).sum() ** 2
    assert r["concentration"] == pytest.approx(conc, rel=1e-12)
    assert r["effective_units"] == pytest.approx(1 / conc) and r["renyi2_entropy"] == pytest.approx(
        np.log(1 / conc) / np.log(4))


def test_a_curve_with_no_squared_effect_above_its_noise_has_infinite_signal_cv():
    # sum(a^2 - s^2) = 0.02 - 0.12 < 0: no index, and a signal_cv that says why (with or without draws)
    from deconfound.compare import debiased_indices

    a, s = np.array([0.1, 0.0, -0.1]), np.full(3, 0.2)
    for draws in (None, a + 0.2 * np.random.default_rng(0).standard_normal((50, 3))):
        r = debiased_indices(a, s, draws)
        assert np.isinf(r["signal_cv"]) and np.isnan(r["concentration"])


def _draws_result(est, draws):
    effs = {f"u{i}": add_derived({("nie", "treated"): Effect.from_draws(e, draws[:, i])}) for i, e in enumerate(est)}
    return MediationResult("fake", effs, n=100, n_treated=50)


def _curve_pairs(adjusted, n_rep, seed, se=0.07):
    """Pairs of noisy curves of simulate.localization_curves (unadjusted SE se, adjusted 1.5 se, correlated)."""
    for r in range(n_rep):
        c = localization_curves(se, adjusted=adjusted, seed=[seed, r])
        yield tuple(_draws_result(c[k]["estimate"], c[k]["draws"]) for k in ("adjusted", "unadjusted"))


@pytest.mark.slow
def test_default_localization_test_has_its_size_with_a_noisier_adjusted_curve():
    """Identical true curves, adjusted SE 1.5x: the default test rejects at most 7% at nominal 5%."""
    rej = [localization_difference(a, u).set_index("index").loc["concentration"]
           for a, u in _curve_pairs("same", 300, seed=0)]
    size = np.mean([r.ci_lower > 0 or r.ci_upper < 0 for r in rej])
    assert size <= 0.07
    assert abs(np.mean([r.difference for r in rej])) < 0.01  # no drift toward "spread" (true difference 0)


@pytest.mark.slow
def test_default_localization_test_detects_a_spread_out_adjusted_curve():
    """Adjusted curve flat (same total |effect|): concentration 0.10 against 0.29; power above 0.8."""
    rej = [localization_difference(a, u).set_index("index").loc["concentration"].ci_upper < 0
           for a, u in _curve_pairs("flat", 100, seed=1)]
    assert np.mean(rej) > 0.8


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


def test_agreement_against_a_reference_keeps_every_pair_once():
    """Regression: the reference's two fits (adjusted, unadjusted) each pair with every other fit, once."""
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(200, 3))
    scores -= scores.mean(0)
    fits = {}
    for name, pop in (("patching", "att"), ("weighting", "att"), ("dml", "ate")):
        for graph, shift in (("topic_mediation", 0.0), ("unadjusted_mediation", 0.5)):
            res = _score_result(rng.normal(size=3) + shift, scores, name)
            res.population = pop
            fits[(name, graph)] = res
    comp = Comparison(fits, frame=None)
    agree = comp.agreement(reference="patching")
    pairs = set(zip(agree.a, agree.b, agree.unit))
    assert len(pairs) == len(agree) == 3 * (1 + 2 * 4)  # patching adj vs unadj, and each vs the 4 others
    assert set(agree.a) == {"patching@topic_mediation", "patching@unadjusted_mediation"}
    for ka in ("patching@topic_mediation", "patching@unadjusted_mediation"):
        assert len(agree[agree.a == ka]) == 3 * (4 + (ka == "patching@topic_mediation"))
    row = agree[(agree.a == "patching@topic_mediation") & (agree.b == "weighting@unadjusted_mediation")].iloc[0]
    ea = fits[("patching", "topic_mediation")].effect(row.unit, "nie", "treated")
    eb = fits[("weighting", "unadjusted_mediation")].effect(row.unit, "nie", "treated")
    assert row.difference == pytest.approx(ea.estimate - eb.estimate)
    # like with like: ATT against ATE is not comparable and gets no disagreement flag
    assert (agree.comparable == (agree.population_a == agree.population_b)).all()
    assert agree[~agree.comparable].disagrees.isna().all() and agree[agree.comparable].disagrees.notna().all()
    assert set(agree[~agree.comparable].b.str.split("@").str[0]) == {"dml"}
    assert set(agree.estimand_a) == set(agree.estimand_b) == {"NIE"}


class _WithPopulation(_MeanDiff):
    def __init__(self, slope=1.0, random_state=0, population="ate"):
        super().__init__(slope, random_state)
        self.population = population

    def fit(self, data, *, graph=None, units=None):
        res = super().fit(data, graph=graph, units=units)
        res.population = self.population
        return res


class _Interventional(_MeanDiff):
    def fit(self, data, *, graph=None, units=None, patcher=None):
        res = super().fit(data, graph=graph, units=units)
        res.population = "att"
        res.settings["estimand"] = "mean-patch contrast"
        return res


def test_compare_estimators_gives_observational_fits_the_patching_population():
    from deconfound.simulate import topic_mediation

    data, _ = topic_mediation(300, n_units=2, seed=4)
    ests = {"patching": _Interventional(), "obs": _WithPopulation()}
    comp = compare_estimators(data, estimators=ests, graphs=["topic_mediation"], patcher=object())
    assert comp.results[("obs", "topic_mediation")].population == "att"
    agree = comp.agreement(reference="patching")
    assert agree.comparable.all() and set(agree.estimand_a) == {"mean-patch contrast"}
    assert set(agree.estimand_b) == {"NIE"}
    alone = compare_estimators(data, estimators={"obs": _WithPopulation()}, graphs=["topic_mediation"])
    assert alone.results[("obs", "topic_mediation")].population == "ate"
