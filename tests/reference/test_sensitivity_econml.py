"""OVB bounds and robustness values against EconML 0.17 (econml.validate.sensitivity_analysis, DRLearner).

Oracle: EconML's own code, run here. ``sensitivity_interval(theta, sigma, nu, cov, alpha, c_y, c_t, rho,
interval_type)`` takes sigma = sigma^2 and nu = nu^2 (the names drop the square), alpha = 1 - level with
alpha / 2 in each tail, c_y = our cf_y and c_t = our cf_d.
"""
import numpy as np
import pandas as pd
import pytest

from deconfound import simulate
from deconfound.folds import data_folds
from deconfound.inference import Effect
from deconfound.results import MediationResult
from deconfound.sensitivity import ovb_bounds, robustness_value, sensitivity_analysis

va = pytest.importorskip("econml.validate.sensitivity_analysis")


def _cases():
    rng = np.random.default_rng(7)
    for i in range(40):
        a = rng.normal(size=(3, 3))
        cov = a @ a.T / rng.choice([50, 500, 5000])
        theta = rng.normal(scale=[0.05, 1.0, 3.0][i % 3])
        yield (theta, rng.uniform(0.1, 3), rng.uniform(0.5, 20), cov, rng.uniform(0, 0.3), rng.uniform(0, 0.3),
               rng.uniform(-1, 1), rng.choice([0.01, 0.05, 0.1]))


@pytest.mark.parametrize("interval_type", ["theta", "ci"])
def test_bounds_match_econml_sensitivity_interval(interval_type):
    for theta, s2, n2, cov, cy, cd, rho, alpha in _cases():
        lb, ub = va.sensitivity_interval(theta, s2, n2, cov, alpha, cy, cd, rho, interval_type=interval_type)
        b = ovb_bounds(theta, s2, n2, cov=cov, cf_y=cy, cf_d=cd, rho=rho, level=1 - alpha)
        ours = (b.theta_lower, b.theta_upper) if interval_type == "theta" else (b.ci_lower, b.ci_upper)
        np.testing.assert_allclose(ours, (lb, ub), rtol=0, atol=1e-9)


@pytest.mark.parametrize("interval_type", ["theta", "ci"])
def test_robustness_value_is_econml_rv_root(interval_type):
    # EconML's RV bisects until the bound is within 1e-6 of the null; ours is the exact root. So: EconML's
    # own bound, evaluated at our RV, sits on the null to 1e-9, and the two RVs differ only by EconML's stop.
    kind = "theta" if interval_type == "theta" else "ci"
    for theta, s2, n2, cov, _, _, _, alpha in _cases():
        ours = robustness_value(theta, s2, n2, cov=cov, kind=kind, level=1 - alpha)
        theirs = va.RV(theta, s2, n2, cov, alpha, interval_type=interval_type)
        if theirs == 0:
            assert ours == 0
            continue
        lb, ub = va.sensitivity_interval(theta, s2, n2, cov, alpha, ours, ours, 1.0, interval_type=interval_type)
        bound = lb if theta > 0 else ub
        assert abs(bound) < 1e-9
        assert abs(ours - theirs) < 1e-5


def test_rv_closed_form_against_bisection_to_1e_12():
    # An independent root: bisection on the theta bound to 60 halvings
    for theta, s2, n2, cov, *_ in _cases():
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            b = ovb_bounds(theta, s2, n2, cov=cov, cf_y=mid, cf_d=mid, rho=1.0)
            gap = b.theta_lower if theta > 0 else -b.theta_upper
            lo, hi = (mid, hi) if gap > 0 else (lo, mid)
        assert abs(robustness_value(theta, s2, n2, cov=cov) - (lo + hi) / 2) < 1e-12


# ---- on data: a DRLearner fitted on the simulator -------------------------------------------------------
def _fit_drlearner(data, folds):
    from econml.dr import DRLearner
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    w = pd.get_dummies(data.x["topic"]).to_numpy(dtype=float)
    # fully grown trees on one-hot topics (and T) are the cell means / cell frequencies
    est = DRLearner(model_propensity=DecisionTreeClassifier(random_state=0),
                    model_regression=DecisionTreeRegressor(random_state=0), cv=folds, min_propensity=1e-6)
    est.fit(data.y, data.t, X=None, W=w)
    return est


def _crossfit_aipw_result(data, folds):
    """An independent cross-fitted AIPW of the TE on topic cells, with EconML's nu^2 score, as a result."""
    y, t, k = data.y, data.t.astype(float), data.x["topic"].cat.codes.to_numpy()
    p1, mu1, mu0 = np.empty(data.n), np.empty(data.n), np.empty(data.n)
    for train, test in folds:
        for level in np.unique(k[test]):
            tr, te = train[k[train] == level], test[k[test] == level]
            p1[te] = t[tr].mean()
            mu1[te] = y[tr][t[tr] == 1].mean()
            mu0[te] = y[tr][t[tr] == 0].mean()
    alpha = t / p1 - (1 - t) / (1 - p1)
    score = mu1 - mu0 + alpha * (y - np.where(t == 1, mu1, mu0))
    theta = score.mean()
    sig = (y - np.where(t == 1, mu1, mu0)) ** 2
    nu = 2 * (1 / p1 + 1 / (1 - p1)) - alpha**2
    te = Effect.from_scores(theta, score - theta)
    ovb = {("te", "average"): dict(sigma2=sig.mean(), nu2=nu.mean(), psi_sigma2=sig - sig.mean(),
                                   psi_nu2=nu - nu.mean())}
    return MediationResult("toy-aipw", {"u0": {("te", "average"): te}}, n=data.n, n_treated=data.n_treated,
                           diagnostics={"u0": {"ovb": ovb}})


@pytest.fixture(scope="module")
def fitted():
    data, _ = simulate.topic_mediation(3000, n_topics=6, seed=11)
    rng = np.random.default_rng(0)
    fold = rng.permutation(data.n) % 3
    folds = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(3)]
    return data, folds, _fit_drlearner(data, folds)


def test_econml_fitted_params_through_our_bound(fitted):
    *_, est = fitted
    params = {k: v[0] for k, v in est._ortho_learner_model_final.sensitivity_params._asdict().items()}
    for cy, ct, rho in [(0.03, 0.03, 1.0), (0.05, 0.05, 1.0), (0.1, 0.02, 0.5), (0.0, 0.2, 1.0)]:
        for itype in ("theta", "ci"):
            lb, ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=cy, c_t=ct, rho=rho, interval_type=itype)
            b = ovb_bounds(params["theta"], params["sigma"], params["nu"], cov=params["cov"], cf_y=cy, cf_d=ct,
                           rho=rho)
            ours = (b.theta_lower, b.theta_upper) if itype == "theta" else (b.ci_lower, b.ci_upper)
            np.testing.assert_allclose(ours, (lb, ub), rtol=0, atol=1e-9)


def test_sensitivity_analysis_matches_drlearner_on_same_folds(fitted):
    # Same folds and the same (saturated) nuisances: the result-level API must reproduce EconML exactly.
    data, folds, est = fitted
    res = _crossfit_aipw_result(data, folds)
    assert abs(res.effect("u0", "te", "average").estimate - est.ate()) < 1e-9
    for cy, ct, rho in [(0.03, 0.03, 1.0), (0.08, 0.01, 0.7)]:
        row = sensitivity_analysis(res, cf_y=cy, cf_d=ct, rho=rho).to_frame().iloc[0]
        t_lb, t_ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=cy, c_t=ct, rho=rho, interval_type="theta")
        c_lb, c_ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=cy, c_t=ct, rho=rho, interval_type="ci")
        np.testing.assert_allclose([row.theta_lower, row.theta_upper, row.ci_lower, row.ci_upper],
                                   [t_lb, t_ub, c_lb, c_ub], rtol=0, atol=1e-9)
    row = sensitivity_analysis(res).to_frame().iloc[0]
    assert abs(row.rv - est.robustness_value(T=1, interval_type="theta")) < 1e-5
    assert abs(row.rva - est.robustness_value(T=1, interval_type="ci")) < 1e-5


# ---- our DML estimator against DRLearner ------------------------------------------------------------------
def _dml():
    return pytest.importorskip("deconfound.estimators.dml", reason="deconfound.estimators.dml has not landed")


def _te_row(res, **kw):
    frame = sensitivity_analysis(res, **kw).to_frame()
    return frame[(frame.unit == "u0") & (frame.effect == "te")].iloc[0]


def test_dml_te_bound_equals_drlearner_with_matched_nuisances(fitted):
    # Same folds (one split), cell-mean nuisances (fully grown trees on one-hot topics), no trimming, no normalization:
    # theta and sigma2 coincide to rounding. nu2 differs only in its estimator: ours is mean(alpha^2), EconML's
    # mean(2 (1/p1 + 1/p0) - alpha^2); both estimate E[1/p1 + 1/p0], and with cell propensities fitted on the
    # other folds they differ by well under 1%. Tolerance on the bounds: 0.02 SE of the TE.
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    data, _, _ = fitted
    dml = _dml().DMLMediation(outcome_learner=DecisionTreeRegressor(), propensity_learner=DecisionTreeClassifier(),
                              n_folds=3, n_rep=1, trim=0.0, normalize=False, random_state=0)
    res = dml.fit(data)
    folds = data_folds(data, 3, random_state=0)  # the folds DMLMediation cross-fits on
    est = _fit_drlearner(data, [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)])
    params = {k: v[0] for k, v in est._ortho_learner_model_final.sensitivity_params._asdict().items()}
    ovb = res.diagnostics["u0"]["ovb"][("te", "average")]
    te = res.effect("u0", "te", "average")
    assert te.estimate == pytest.approx(params["theta"], abs=1e-9)
    assert ovb["sigma2"] == pytest.approx(params["sigma"], abs=1e-9)
    assert ovb["nu2"] == pytest.approx(params["nu"], rel=0.01)
    row = _te_row(res, cf_y=0.05, cf_d=0.05)
    t_lb, t_ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=0.05, c_t=0.05, rho=1.0, interval_type="theta")
    c_lb, c_ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=0.05, c_t=0.05, rho=1.0, interval_type="ci")
    np.testing.assert_allclose([row.theta_lower, row.theta_upper, row.ci_lower, row.ci_upper],
                               [t_lb, t_ub, c_lb, c_ub], rtol=0, atol=0.02 * te.se)


def test_dml_te_bound_agrees_with_drlearner_default_learners(fitted):
    # Different nuisance fits (our ridge/logistic with trimming and normalized weights vs EconML's own linear
    # models, same folds). Both are first-order equivalent (one efficient influence function), so they differ
    # by a fraction of a standard error; tolerance: 0.25 SE of the TE. A wrong bound formula (a missing square
    # root, a factor 2 in the bias) moves the bounds by more than 1 SE here.
    from econml.dr import DRLearner
    from sklearn.linear_model import LogisticRegression, RidgeCV

    data, _, _ = fitted
    res = _dml().DMLMediation(n_folds=3, random_state=0).fit(data)
    folds = data_folds(data, 3, random_state=0)
    w = pd.get_dummies(data.x["topic"]).to_numpy(dtype=float)
    est = DRLearner(model_propensity=LogisticRegression(C=1.0, max_iter=2000),
                    model_regression=RidgeCV(), min_propensity=0.05,
                    cv=[(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)])
    est.fit(data.y, data.t, X=None, W=w)
    se = res.effect("u0", "te", "average").se
    for cy, ct in ((0.03, 0.03), (0.1, 0.05)):
        row = _te_row(res, cf_y=cy, cf_d=ct)
        t_lb, t_ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=cy, c_t=ct, rho=1.0, interval_type="theta")
        c_lb, c_ub = est.sensitivity_interval(T=1, alpha=0.05, c_y=cy, c_t=ct, rho=1.0, interval_type="ci")
        np.testing.assert_allclose([row.theta_lower, row.theta_upper, row.ci_lower, row.ci_upper],
                                   [t_lb, t_ub, c_lb, c_ub], rtol=0, atol=0.25 * se)
    row = _te_row(res)
    assert abs(row.rv - est.robustness_value(T=1, interval_type="theta")) < 0.02
