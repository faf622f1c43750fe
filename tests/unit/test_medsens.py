"""Imai rho sensitivity: the closed form against a direct re-computation of R `medsens`' SUR fit.

The oracle (``_sur_medsens``) re-implements R mediation's medsens algorithm for lm/lm models independently
of deconfound.medsens: stack the mediator and outcome equations, fix the error correlation at rho, iterate
feasible GLS to its fixed point (error variances from the current residuals with n - 1 denominators, as R
does), take ACME = a * b from the SUR coefficients and R's delta-method variance from (X' Omega^-1 X)^-1.
"""
from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from deconfound import MediationData, simulate
from deconfound.estimators.parametric import ParametricMediation
from deconfound.medsens import RhoSensitivity, rho_sensitivity


def _sur_medsens(z, m, w, y, rho, i_t, i_m, i_tm=None):
    """R medsens (CASE 1) at one rho: returns ACME(control), ACME(treated) and their variances."""
    n, k1 = z.shape
    x = np.block([[z, np.zeros((n, w.shape[1]))], [np.zeros((n, k1)), w]])
    yc = np.concatenate([m, y])
    b = np.linalg.solve(x.T @ x, x.T @ yc)
    for _ in range(20000):
        e = yc - x @ b
        e1, e2 = e[:n], e[n:]
        sd1, sd2 = np.std(e1, ddof=1), np.std(e2, ddof=1)
        omega = np.array([[e1 @ e1 / (n - 1), rho * sd1 * sd2], [rho * sd1 * sd2, e2 @ e2 / (n - 1)]])
        # X' (Omega^-1 kron I_n) X and X' (Omega^-1 kron I_n) y, block by block
        (p, q), (_, r) = np.linalg.inv(omega)
        xs = np.block([[p * z.T @ z, q * z.T @ w], [q * w.T @ z, r * w.T @ w]])
        rhs = np.concatenate([p * z.T @ m + q * z.T @ y, q * w.T @ m + r * w.T @ y])
        new = np.linalg.solve(xs, rhs)
        diff = np.sum((new - b) ** 2)
        b = new
        if diff < 1e-28:
            break
    vcov = np.linalg.inv(xs)
    a, va = b[i_t], vcov[i_t, i_t]
    jm = k1 + i_m
    gm, vm = b[jm], vcov[jm, jm]
    if i_tm is None:
        return a * gm, a * gm, gm**2 * va + a**2 * vm, gm**2 * va + a**2 * vm
    jtm = k1 + i_tm
    gtm = b[jtm]
    d1_var = (gm + gtm) ** 2 * va + a**2 * (vm + vcov[jtm, jtm] + 2 * vcov[jm, jtm])
    return a * gm, a * (gm + gtm), gm**2 * va + a**2 * vm, d1_var


def _designs(data, interaction):
    t, m, y = data.t.astype(float), data.mediator(data.units[0])[:, 0].astype(float), data.y
    topic = data.x["topic"].astype(str)
    xd = np.column_stack([(topic == lv).to_numpy(float) for lv in sorted(topic.unique())[1:]])
    one = np.ones(data.n)
    z = np.column_stack([one, t, xd])
    w = np.column_stack([one, t, m] + ([t * m] if interaction else []) + [xd])
    return z, m, w, y


@pytest.mark.parametrize("interaction", [False, True])
def test_closed_form_equals_sur_recomputation(interaction):
    data, _ = simulate.topic_mediation(200, n_topics=3, interaction=0.4 if interaction else 0.0, seed=3)
    res = ParametricMediation(interaction=interaction, n_sims=20).fit(data)
    grid = np.array([-0.7, -0.3, 0.0, 0.25, 0.6])
    sens = rho_sensitivity(res, rho_grid=grid)
    z, m, w, y = _designs(data, interaction)
    for rho in grid:
        d0, d1, v0, v1 = _sur_medsens(z, m, w, y, rho, 1, 2, 3 if interaction else None)
        c, tr = sens.acme("control").loc[rho], sens.acme("treated").loc[rho]
        assert c.acme == pytest.approx(d0, rel=1e-8)
        assert tr.acme == pytest.approx(d1, rel=1e-8)
        assert c.se == pytest.approx(np.sqrt(v0), rel=1e-8)
        assert tr.se == pytest.approx(np.sqrt(v1), rel=1e-8)
        assert c.ci_upper == pytest.approx(d0 + 1.959963984540054 * np.sqrt(v0), rel=1e-8)
    # the closed-form root zeroes the SUR ACME
    for arm, k in (("control", 0), ("treated", 1)):
        acme_at_root = _sur_medsens(z, m, w, y, sens.rho_zero[arm], 1, 2, 3 if interaction else None)[k]
        assert abs(acme_at_root) < 1e-10


def test_rho_zero_reproduces_the_estimator_and_r2_matches_statsmodels():
    data, _ = simulate.topic_mediation(800, interaction=0.3, seed=8)
    res = ParametricMediation(interaction=True, n_sims=20).fit(data)
    sens = rho_sensitivity(res, rho_grid=[-0.5, 0.0, 0.5])
    for arm in ("control", "treated", "average"):
        assert sens.acme(arm).loc[0.0, "acme"] == pytest.approx(res.effect("u0", "nie", arm).estimate, rel=1e-10)
    z, m, w, y = _designs(data, True)
    r2m, r2y = sm.OLS(m, z).fit().rsquared, sm.OLS(y, w).fit().rsquared
    assert sens.r2_mediator == pytest.approx(r2m, rel=1e-10)
    assert sens.r2_outcome == pytest.approx(r2y, rel=1e-10)
    for arm in ("control", "treated"):
        assert sens.r2star_zero[arm] == pytest.approx(sens.rho_zero[arm] ** 2, rel=1e-12)
        assert sens.r2tilde_zero[arm] == pytest.approx(sens.rho_zero[arm] ** 2 * (1 - r2m) * (1 - r2y), rel=1e-10)
    row = sens.acme("treated").loc[0.5]
    assert row.r2star_prod == pytest.approx(0.25) and row.r2tilde_prod == pytest.approx(0.25 * (1 - r2m) * (1 - r2y))
    # ACME is monotone in rho and changes sign at rho_zero
    fine = rho_sensitivity(res, rho_grid=np.linspace(-0.95, 0.95, 381)).acme("control")
    assert np.all(np.diff(np.sign(np.diff(fine.acme.to_numpy()))) == 0)
    i = np.argmin(np.abs(fine.index.to_numpy() - sens.rho_zero["control"]))
    assert abs(fine.acme.iloc[i]) < 0.02 * fine.acme.abs().max()


def test_true_error_correlation_recovers_the_true_acme():
    # M and Y share an unobserved cause: corr(e_M, e_Y) = 0.4. The naive ACME is biased; ACME(0.4) is not.
    rng = np.random.default_rng(1)
    n = 20000
    x = rng.normal(size=n)
    t = (rng.random(n) < 1 / (1 + np.exp(-x))).astype(int)
    e = rng.multivariate_normal([0, 0], [[1.0, 0.4 * 1.2], [0.4 * 1.2, 1.44]], size=n)
    m = 0.2 + 0.5 * t + 0.3 * x + e[:, 0]
    y = 0.1 + 0.4 * t + 0.7 * m + 0.2 * x + e[:, 1]
    data = MediationData.from_arrays(t=t, y=y, mediators={"m": m}, x=x[:, None], x_names=["x"])
    res = ParametricMediation(n_sims=200).fit(data)
    sens = rho_sensitivity(res, rho_grid=[0.0, 0.4])
    naive, fixed = sens.acme().loc[0.0], sens.acme().loc[0.4]
    assert abs(naive.acme - 0.35) > 10 * naive.se
    assert abs(fixed.acme - 0.35) < 3 * fixed.se


def test_summary_and_plot(tmp_path):
    data, _ = simulate.topic_mediation(400, seed=2)
    sens = rho_sensitivity(ParametricMediation(interaction=False, n_sims=20).fit(data))
    assert isinstance(sens, RhoSensitivity) and len(sens.frame) == 37 * 3
    assert list(sens.frame.columns) == ["rho", "arm", "acme", "se", "ci_lower", "ci_upper", "r2star_prod",
                                        "r2tilde_prod"]
    text = sens.summary()
    assert f"Rho at which ACME = 0: {sens.rho_zero['average']:.4f}" in text and "R^2_M~R^2_Y~" in text
    path = sens.plot(tmp_path / "sub" / "rho.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    assert mpimg.imread(path).shape[0] > 100


def test_unsupported_cases_raise():
    data, _ = simulate.topic_mediation(300, dim=2, seed=1)
    with pytest.raises(NotImplementedError, match="scalar mediator"):
        rho_sensitivity(ParametricMediation(n_sims=10).fit(data))
    rng = np.random.default_rng(0)
    t = np.repeat([0, 1], 100)
    m = rng.normal(size=200) + t
    yb = (rng.random(200) < 0.3 + 0.3 * t).astype(float)
    binary = MediationData.from_arrays(t=t, y=yb, mediators={"m": m})
    with pytest.raises(NotImplementedError, match="gaussian"):
        rho_sensitivity(ParametricMediation(outcome_family="logit", n_sims=10).fit(binary, graph="unadjusted_mediation"))
    data1, _ = simulate.topic_mediation(300, seed=1)
    res = ParametricMediation(n_sims=10).fit(data1)
    with pytest.raises(ValueError, match="rho_grid"):
        rho_sensitivity(res, rho_grid=[0.0, 1.0])
    with pytest.raises(KeyError, match="unit"):
        rho_sensitivity(res, unit="nope")
    res.diagnostics["u0"]["parametric"] = dict(res.diagnostics["u0"]["parametric"], second_stage=[])
    with pytest.raises(NotImplementedError, match="mediator model only"):
        rho_sensitivity(res)
    res.diagnostics["u0"] = {}
    with pytest.raises(NotImplementedError, match="ParametricMediation"):
        rho_sensitivity(res)


# ---- the other family pairs of R medsens ------------------------------------------------------------------
def _bivariate_data(n, seed, rho, *, binary):
    """The bivariate-normal error model: corr(e_M, e_Y) = rho, with a probit mediator or a probit outcome.

    Returns the data and the true ACME (equal for both arms; no T x M interaction).
    """
    from scipy.special import ndtr

    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = (rng.random(n) < 1 / (1 + np.exp(-x))).astype(int)
    e = rng.multivariate_normal([0, 0], [[1.0, rho], [rho, 1.0]], size=n)
    if binary == "mediator":  # probit mediator, lm outcome (sd(e_Y) = 1)
        m = (0.1 + 0.8 * t + 0.3 * x + e[:, 0] > 0).astype(float)
        y = 0.2 + 0.3 * t + 0.6 * m + 0.2 * x + e[:, 1]
        truth = 0.6 * np.mean(ndtr(0.9 + 0.3 * x) - ndtr(0.1 + 0.3 * x))
    else:  # lm mediator (sd 1), probit outcome
        m = 0.2 + 0.5 * t + 0.3 * x + e[:, 0]
        y = (-0.3 + 0.3 * t + 0.5 * m + 0.2 * x + e[:, 1] > 0).astype(float)
        scale = np.sqrt(1 + 0.5**2)
        truth = np.mean([ndtr((-0.3 + 0.3 * tt + 0.5 * (0.7 + 0.3 * x) + 0.2 * x) / scale)
                         - ndtr((-0.3 + 0.3 * tt + 0.5 * (0.2 + 0.3 * x) + 0.2 * x) / scale) for tt in (0, 1)])
    data = MediationData.from_arrays(t=t, y=y, mediators={"m": m}, x=x[:, None], x_names=["x"])
    return data, truth


@pytest.mark.parametrize("binary", ["mediator", "outcome"])
def test_other_family_pairs_rho_zero_root_and_truth(binary):
    data, truth = _bivariate_data(20000, 3, 0.4, binary=binary)
    est = (ParametricMediation(mediator_family="probit", interaction=False, n_sims=200) if binary == "mediator"
           else ParametricMediation(outcome_family="probit", interaction=False, n_sims=200))
    res = est.fit(data)
    sens = rho_sensitivity(res, rho_grid=[0.0, 0.4], n_sims=300)
    # rho = 0 reproduces the plain estimate
    for arm in ("control", "treated"):
        np.testing.assert_allclose(sens.acme(arm).loc[0.0, "acme"], res.effect("m", "nie", arm).estimate,
                                   rtol=1e-9)
    # the true error correlation recovers the true ACME of the simulation; the naive one is biased
    naive, fixed = sens.acme().loc[0.0], sens.acme().loc[0.4]
    assert abs(naive.acme - truth) > 5 * naive.se
    assert abs(fixed.acme - truth) < 3 * fixed.se
    # the reported root is a zero of ACME(rho)
    root = sens.rho_zero["average"]
    at_root = rho_sensitivity(res, rho_grid=[root], n_sims=20).acme().acme.iloc[0]
    assert abs(at_root) < 1e-8
    assert 0 < root < 0.99


def test_probit_mediator_root_matches_a_direct_search():
    # the closed-form root equals brentq on the per-rho refit (OLS of Y - rho sigma lambda on W, sigma by the
    # moment equation solved by fixed-point iteration here)
    from scipy.optimize import brentq
    from scipy.special import ndtr
    from scipy.stats import norm

    data, _ = _bivariate_data(3000, 5, 0.0, binary="mediator")
    res = ParametricMediation(mediator_family="probit", interaction=False, n_sims=20).fit(data)
    t, m, y, x = data.t.astype(float), data.mediator("m")[:, 0].astype(float), data.y, data.x["x"].to_numpy()
    z = np.column_stack([np.ones_like(t), t, x])
    alpha = sm.GLM(m, z, family=sm.families.Binomial(link=sm.families.links.Probit())).fit().params
    za = z @ alpha
    lam = np.where(m == 1, norm.pdf(za) / ndtr(za), -norm.pdf(za) / (1 - ndtr(za)))
    w = np.column_stack([np.ones_like(t), t, m, x])

    def slope(rho):
        sigma = np.std(y - w @ np.linalg.lstsq(w, y, rcond=None)[0], ddof=w.shape[1])
        for _ in range(200):
            g = np.linalg.lstsq(w, y - rho * sigma * lam, rcond=None)[0]
            sigma = np.sqrt(np.sum((y - w @ g) ** 2) / (len(y) - w.shape[1]))
        return g[2]

    direct = brentq(slope, -0.95, 0.95, xtol=1e-12)
    np.testing.assert_allclose(rho_sensitivity(res, rho_grid=[0.0]).rho_zero["average"], direct, atol=1e-7)


def test_unsupported_family_pairs_name_the_families():
    data, _ = _bivariate_data(600, 1, 0.0, binary="mediator")
    res = ParametricMediation(mediator_family="logit", n_sims=10).fit(data)
    with pytest.raises(NotImplementedError, match="mediator_family='logit' and outcome_family='gaussian'"):
        rho_sensitivity(res)
    res = ParametricMediation(n_sims=10).fit(data, weights=np.linspace(1, 2, data.n))
    with pytest.raises(NotImplementedError, match="weights or a cluster"):
        rho_sensitivity(res)
