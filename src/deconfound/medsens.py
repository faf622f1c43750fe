"""Imai rho sensitivity for the parametric estimator (R `mediation::medsens`; Imai, Keele & Yamamoto 2010).

Sequential ignorability fails when an unobserved confounder of M and Y makes the errors of the mediator model
(e_M) and the outcome model (e_Y) correlated: rho = corr(e_M, e_Y). R `medsens` refits the two linear
equations as a seemingly unrelated regression (SUR) with rho fixed and reports ACME(rho). With a scalar
mediator, a gaussian outcome and the mediator model's covariates among the outcome model's, that SUR has a
closed form (derived in docs/parametric.md): the errors factor as e_Y = lambda e_M + nu with nu independent
of e_M, so the mediator equation stays OLS and only the outcome's M coefficient moves:

    lambda(rho) = rho * s_Y / (s_M * sqrt(1 - rho^2)),   s_M^2 = RSS_M / (n-1),  s_Y^2 = RSS_Y / (n-1)
    ACME_t(rho) = a * (b + t c - lambda(rho))            (a: T -> M slope; b, c: M and T x M slopes)
    Var ACME_t(rho) = (b + t c - lambda)^2 Var(a) + a^2 Var(b + t c)   (R's delta method, SUR covariance:
                      Var(a) = s_M^2 [(Z'Z)^-1]_TT, Var(b, c) = s_Y^2 [(W'W)^-1]_{M, TxM})

ACME_t = 0 at rho_t = k / sqrt(1 + k^2) with k = (b + t c) s_M / s_Y. The R^2 products at that point are
R*^2_M R*^2_Y = rho_t^2 (shares of the residual variances explained by the confounder) and
R~^2_M R~^2_Y = rho_t^2 (1 - R^2_M)(1 - R^2_Y) (shares of the total variances).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.optimize import brentq

ARMS = {"control": 0.0, "treated": 1.0, "average": 0.5}
SUPPORTED = (("gaussian", "gaussian"), ("probit", "gaussian"), ("gaussian", "probit"))


@dataclass(eq=False)
class RhoSensitivity:
    """ACME as a function of rho, with the rho and R^2 products at which the ACME is zero.

    ``frame`` has one row per rho x arm: ``rho, arm, acme, se, ci_lower, ci_upper, r2star_prod,
    r2tilde_prod``. ``rho_zero``, ``r2star_zero`` and ``r2tilde_zero`` map each arm to its value.
    """

    unit: str
    frame: pd.DataFrame
    rho_zero: dict
    r2star_zero: dict
    r2tilde_zero: dict
    r2_mediator: float
    r2_outcome: float
    level: float
    interaction: bool

    @property
    def arms(self) -> list[str]:
        """The arms worth showing: control and treated with a T x M interaction, else one ACME."""
        return ["control", "treated"] if self.interaction else ["average"]

    def acme(self, arm: str = "average") -> pd.DataFrame:
        """The rows of one arm, indexed by rho."""
        if arm not in ARMS:
            raise ValueError(f"arm: expected one of {list(ARMS)}, got {arm!r}")
        return self.frame[self.frame.arm == arm].set_index("rho")

    def summary(self) -> str:
        """Text in the layout of R's ``summary(medsens(...))``."""
        pct = f"{self.level:.0%}"
        lines = ["Mediation Sensitivity Analysis for Average Causal Mediation Effect", f"Unit: {self.unit}",
                 f"R^2 of the mediator model: {self.r2_mediator:.4f}; of the outcome model: {self.r2_outcome:.4f}"]
        for arm in self.arms:
            label = "ACME" if arm == "average" else f"ACME ({arm})"
            rows = self.acme(arm).reset_index()
            region = rows[(rows.ci_lower <= 0) & (rows.ci_upper >= 0)]
            lines.append("")
            if len(region):
                lines.append(f"Sensitivity region for {label} (rho where the {pct} CI covers 0):")
                lines.append(f"{'Rho':>8}{label:>16}{'CI Lower':>12}{'CI Upper':>12}{'R^2_M*R^2_Y*':>14}"
                             f"{'R^2_M~R^2_Y~':>14}")
                for r in region.itertuples():
                    lines.append(f"{r.rho:>8.4f}{r.acme:>16.4f}{r.ci_lower:>12.4f}{r.ci_upper:>12.4f}"
                                 f"{r.r2star_prod:>14.4f}{r.r2tilde_prod:>14.4f}")
            lines.append(f"Rho at which {label} = 0: {self.rho_zero[arm]:.4f}")
            lines.append(f"R^2_M*R^2_Y* at which {label} = 0: {self.r2star_zero[arm]:.4f}")
            lines.append(f"R^2_M~R^2_Y~ at which {label} = 0: {self.r2tilde_zero[arm]:.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path, *, arms=None, dpi: int = 120) -> Path:
        """Save a PNG of ACME(rho) with its CI band, the zero line and the rho at which ACME = 0."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - plotting is optional
        from matplotlib.figure import Figure  # noqa: PLC0415

        arms = list(arms) if arms is not None else self.arms
        fig = Figure(figsize=(4.2 * len(arms), 3.6))
        FigureCanvasAgg(fig)
        for i, arm in enumerate(arms):
            ax = fig.add_subplot(1, len(arms), i + 1)
            rows = self.acme(arm)
            rho = rows.index.to_numpy()
            ax.fill_between(rho, rows.ci_lower, rows.ci_upper, color="0.8", label=f"{self.level:.0%} CI")
            ax.plot(rho, rows.acme, color="k", lw=1.5, label="ACME(rho)")
            ax.axhline(0.0, color="k", lw=0.8)
            ax.axvline(0.0, color="k", lw=0.8)
            ax.axvline(self.rho_zero[arm], color="C3", ls="--", lw=1.0,
                       label=f"ACME = 0 at rho = {self.rho_zero[arm]:.2f}")
            ax.set_xticks([-1.0, -0.5, 0.0, 0.5, 1.0])
            ax.set_xlabel("sensitivity parameter rho = corr(e_M, e_Y)")
            ax.set_ylabel("ACME" if arm == "average" else f"ACME ({arm})")
            ax.set_title(f"{self.unit}: ACME({arm})" if arm != "average" else f"{self.unit}: ACME(rho)")
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")
        return path


def rho_sensitivity(result, unit: str | None = None, rho_grid=None, *, n_sims: int = 1000,
                    random_state=0) -> RhoSensitivity:
    """ACME as a function of rho for a ParametricMediation result, for the model pairs R ``medsens`` covers.

    - gaussian mediator, gaussian outcome (lm/lm): the closed form of the module doc;
    - probit mediator, gaussian outcome: the outcome's errors have mean rho sigma lambda_i given M, T, X
      (lambda_i the probit generalized residual), so the outcome coefficients solve OLS of Y - rho sigma lambda
      on the outcome design, with sigma^2 = s^2 / (1 - rho^2 h2) (see the module doc); delta-method SE;
    - gaussian mediator, probit outcome: the latent outcome error given e_M is N(rho e_M / s_M, 1 - rho^2), so
      the outcome is a probit with offset rho / sqrt(1 - rho^2) e_M / s_M, refitted per rho, and its
      coefficients rescaled by sqrt(1 - rho^2); SE and percentile CI from ``n_sims`` quasi-Bayes draws.
      ACME_t is zero where the refitted M slope b + t c is; the root reported for "average" is where
      b + c / 2 is zero (exact without a T x M interaction), searched in [-0.99, 0.99].

    Parameters
    ----------
    result : MediationResult from ``ParametricMediation`` (scalar mediator, no weights or clusters).
    unit : the unit (default: the only one).
    rho_grid : values of rho in (-1, 1); default ``np.linspace(-0.9, 0.9, 37)``.
    n_sims, random_state : draws and seed of the quasi-Bayes SE (probit outcome only).

    Returns
    -------
    RhoSensitivity

    Raises
    ------
    NotImplementedError for other family pairs (a logit mediator or outcome, a probit mediator with a probit
    outcome), a vector mediator, sampling weights or clusters, or a mediator model that adjusts for columns
    the outcome model does not.

    Examples
    --------
    >>> from deconfound import simulate
    >>> from deconfound.estimators.parametric import ParametricMediation
    >>> data, _ = simulate.topic_mediation(1000, seed=1)
    >>> res = ParametricMediation(n_sims=50).fit(data)
    >>> sens = rho_sensitivity(res, rho_grid=[0.0, 0.3])
    >>> bool(np.isclose(sens.acme().loc[0.0, "acme"], res.effect("u0", "nie").estimate))
    True
    >>> abs(sens.rho_zero["average"]) > 0.3
    True
    """
    rho = np.linspace(-0.9, 0.9, 37) if rho_grid is None else np.asarray(rho_grid, dtype=float).reshape(-1)
    if len(rho) == 0 or not np.all(np.isfinite(rho)) or np.any(np.abs(rho) >= 1):
        raise ValueError(f"rho_grid: expected finite values in (-1, 1), got {rho[:6].tolist()}")
    unit, info = _parametric_info(result, unit)
    z = stats.norm.ppf(0.5 + result.level / 2)
    pair = (info.get("mediator_family", "gaussian"), info["outcome_family"])
    if pair == ("probit", "gaussian"):
        curves, r2m, r2y = _probit_mediator(info, rho), info["rho_parts"]["latent_r2"], float(info["outcome_r2"])
    elif pair == ("gaussian", "probit"):
        curves = _probit_outcome(info, rho, n_sims, random_state, result.level)
        r2m, r2y = float(info["mediator_r2"][0]), info["rho_parts"]["latent_r2"]
    else:
        curves, r2m, r2y = _linear_linear(info, rho), float(info["mediator_r2"][0]), float(info["outcome_r2"])
    rows, rho_zero, r2star, r2tilde = [], {}, {}, {}
    for arm, (acme, se, ci, root) in curves.items():
        lo, hi = ci if ci is not None else (acme - z * se, acme + z * se)
        rows.append(pd.DataFrame({"rho": rho, "arm": arm, "acme": acme, "se": se, "ci_lower": lo, "ci_upper": hi,
                                  "r2star_prod": rho**2, "r2tilde_prod": rho**2 * (1 - r2m) * (1 - r2y)}))
        rho_zero[arm] = float(root)
        r2star[arm] = rho_zero[arm] ** 2
        r2tilde[arm] = rho_zero[arm] ** 2 * (1 - r2m) * (1 - r2y)
    return RhoSensitivity(unit=unit, frame=pd.concat(rows, ignore_index=True), rho_zero=rho_zero,
                          r2star_zero=r2star, r2tilde_zero=r2tilde, r2_mediator=r2m, r2_outcome=r2y,
                          level=result.level, interaction=bool(info["interaction"]))


def _slopes(info, v):
    """(b, c) of the outcome's M and T x M terms and their covariance entries (v_bb, v_bc, v_cc) from v."""
    g = np.asarray(info["outcome_coef"], dtype=float)
    inter = bool(info["interaction"])
    return g[2], (g[3] if inter else 0.0), v[2, 2], (v[2, 3] if inter else 0.0), (v[3, 3] if inter else 0.0)


def _linear_linear(info, rho):
    """lm/lm: ACME_t(rho) = a (b + t c - lambda(rho)), R's delta-method SE, closed-form root."""
    n = info["n"]
    a = float(info["mediator_coef"][1, 0])
    s_m2 = float(info["mediator_rss"][0, 0]) / (n - 1)
    var_a = s_m2 * float(info["mediator_xtx_inv"][1, 1])
    s_y2 = float(info["outcome_rss"]) / (n - 1)
    b, c, v_bb, v_bc, v_cc = _slopes(info, s_y2 * np.asarray(info["outcome_xtx_inv"], dtype=float))
    lam = rho * np.sqrt(s_y2 / s_m2) / np.sqrt(1 - rho**2)
    out = {}
    for arm, t in ARMS.items():
        slope = b + t * c
        acme = a * (slope - lam)
        se = np.sqrt((slope - lam) ** 2 * var_a + a**2 * (v_bb + 2 * t * v_bc + t**2 * v_cc))
        k = slope * np.sqrt(s_m2 / s_y2)
        out[arm] = (acme, se, None, k / np.sqrt(1 + k**2))
    return out


def _probit_mediator(info, rho):
    """Probit mediator, lm outcome: b_t(rho) = b_t - rho sigma(rho) delta_t; ACME_t = b_t(rho) D."""
    parts = info["rho_parts"]
    n, p2 = info["n"], len(info["outcome_coef"])
    s2 = float(info["outcome_rss"]) / (n - p2)
    sigma = np.sqrt(s2 / (1 - rho**2 * parts["h2"]))
    delta = parts["delta"]
    dd, dgrad = parts["shift"], np.asarray(parts["shift_grad"], dtype=float)
    var_d = float(dgrad @ np.asarray(info["mediator_cov"], dtype=float) @ dgrad)
    xtx = np.asarray(info["outcome_xtx_inv"], dtype=float)
    b, c, v_bb, v_bc, v_cc = _slopes(info, xtx)
    inter = bool(info["interaction"])
    out = {}
    for arm, t in ARMS.items():
        d_t = delta[2] + (t * delta[3] if inter else 0.0)
        slope = b + t * c - rho * sigma * d_t
        var_slope = sigma**2 * (v_bb + 2 * t * v_bc + t**2 * v_cc)
        acme = slope * dd
        se = np.sqrt(dd**2 * var_slope + slope**2 * var_d)
        r = (b + t * c) / (np.sqrt(s2) * d_t) if d_t != 0 else np.inf
        root = np.sign(r) * np.sqrt(r**2 / (1 + parts["h2"] * r**2)) if np.isfinite(r) else np.nan
        out[arm] = (acme, se, None, root)
    return out


def _probit_outcome(info, rho, n_sims, random_state, level):
    """lm mediator, probit outcome: refit the outcome probit with offset kappa e_M / s_M per rho."""
    import statsmodels.api as sm  # noqa: PLC0415 - slow import, needed here only

    parts = info["rho_parts"]
    model, resid = parts["model"], parts["resid"]
    family = sm.families.Binomial(link=sm.families.links.Probit())

    def refit(r):
        scale = np.sqrt(1 - r**2)
        fit = sm.GLM(model.y, model.w, family=family, offset=r / scale * resid).fit()
        return np.asarray(fit.params) * scale, np.asarray(fit.cov_params()) * scale**2

    keys = {"control": [("nie", "control")], "treated": [("nie", "treated")],
            "average": [("nie", "control"), ("nie", "treated")]}
    a = (1 - level) / 2
    acme = {arm: np.empty(len(rho)) for arm in ARMS}
    se, ci = {arm: np.empty(len(rho)) for arm in ARMS}, {arm: np.empty((2, len(rho))) for arm in ARMS}
    saved = model.gamma, model.out_cov, model.l_gamma
    try:
        for i, r in enumerate(rho):
            model.gamma, model.out_cov = refit(r)
            model.l_gamma = np.linalg.cholesky(model.out_cov)
            rng = np.random.default_rng(random_state)
            point = model.means(model.point_params(), None, "integrate", rng)
            draws = model.means(model.quasi_bayes_params(int(n_sims), rng), None, "integrate", rng)
            for arm, ks in keys.items():
                pe = np.mean([point[:, t, 1] - point[:, t, 0] for t in _arms(ks)], axis=0)[0]
                dr = np.mean([draws[:, t, 1] - draws[:, t, 0] for t in _arms(ks)], axis=0)
                acme[arm][i], se[arm][i] = pe, np.std(dr, ddof=1)
                ci[arm][:, i] = np.quantile(dr, [a, 1 - a])
    finally:
        model.gamma, model.out_cov, model.l_gamma = saved
    inter = bool(info["interaction"])
    out = {}
    for arm, t in ARMS.items():
        def slope(r, t=t):  # ACME_t = 0 exactly where the outcome's M slope b + t c is 0
            g = refit(r)[0]
            return g[2] + (t * g[3] if inter else 0.0)
        lo, hi = -0.99, 0.99
        root = brentq(slope, lo, hi, xtol=1e-10) if slope(lo) * slope(hi) < 0 else np.nan
        out[arm] = (acme[arm], se[arm], ci[arm], root)
    return out


def _arms(keys):
    return [0 if arm == "control" else 1 for _, arm in keys]


def _parametric_info(result, unit):
    units = list(getattr(result, "effects", {}))
    if unit is None:
        if len(units) != 1:
            raise ValueError(f"unit: expected one of {units[:10]} (the result has {len(units)} units), got None")
        unit = units[0]
    if unit not in units:
        raise KeyError(f"unit: expected one of {units[:10]}, got {unit!r}")
    info = (result.diagnostics.get(unit) or {}).get("parametric") if isinstance(result.diagnostics, dict) else None
    if info is None:
        raise NotImplementedError(f"rho sensitivity: expected a ParametricMediation result, got one from "
                                  f"{result.estimator!r}; Imai's rho applies to the parametric estimator only")
    pair = (info.get("mediator_family", "gaussian"), info["outcome_family"])
    if pair not in SUPPORTED:
        raise NotImplementedError(f"rho sensitivity: implemented for the (mediator, outcome) family pairs "
                                  f"{SUPPORTED} (as R medsens), got mediator_family={pair[0]!r} and "
                                  f"outcome_family={pair[1]!r}")
    if info.get("robust"):
        raise NotImplementedError("rho sensitivity: implemented without sampling weights or clusters, got a fit "
                                  "with weights or a cluster")
    if info["dim"] != 1:
        raise NotImplementedError(f"rho sensitivity: implemented for a scalar mediator, got unit {unit!r} with "
                                  f"{info['dim']} columns (fit a single coordinate as its own unit)")
    extra = sorted(set(info["first_stage"]) - set(info["second_stage"]))
    if extra:
        raise NotImplementedError(f"rho sensitivity: expected the mediator model's covariates among the outcome "
                                  f"model's, got {extra} in the mediator model only")
    return unit, info
