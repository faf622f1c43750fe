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

ARMS = {"control": 0.0, "treated": 1.0, "average": 0.5}


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


def rho_sensitivity(result, unit: str | None = None, rho_grid=None) -> RhoSensitivity:
    """ACME(rho) for a ParametricMediation result, as R ``medsens`` computes it (closed form; see module doc).

    Parameters
    ----------
    result : MediationResult from ``ParametricMediation`` (gaussian outcome, scalar mediator).
    unit : the unit (default: the only one).
    rho_grid : values of rho in (-1, 1); default ``np.linspace(-0.9, 0.9, 37)``.

    Returns
    -------
    RhoSensitivity

    Raises
    ------
    NotImplementedError for a logit/probit outcome, a vector mediator, or a mediator model that adjusts for
    columns the outcome model does not.

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
    n = info["n"]
    a = float(info["mediator_coef"][1, 0])
    s_m2 = float(info["mediator_rss"][0, 0]) / (n - 1)
    var_a = s_m2 * float(info["mediator_xtx_inv"][1, 1])
    g = np.asarray(info["outcome_coef"], dtype=float)
    s_y2 = float(info["outcome_rss"]) / (n - 1)
    v = s_y2 * np.asarray(info["outcome_xtx_inv"], dtype=float)
    inter = bool(info["interaction"])
    b, c = g[2], (g[3] if inter else 0.0)
    v_bb, v_bc, v_cc = v[2, 2], (v[2, 3] if inter else 0.0), (v[3, 3] if inter else 0.0)
    lam = rho * np.sqrt(s_y2 / s_m2) / np.sqrt(1 - rho**2)
    r2m, r2y = float(info["mediator_r2"][0]), float(info["outcome_r2"])
    z = stats.norm.ppf(0.5 + result.level / 2)
    rows, rho_zero, r2star, r2tilde = [], {}, {}, {}
    for arm, t in ARMS.items():
        slope = b + t * c
        acme = a * (slope - lam)
        se = np.sqrt((slope - lam) ** 2 * var_a + a**2 * (v_bb + 2 * t * v_bc + t**2 * v_cc))
        rows.append(pd.DataFrame({"rho": rho, "arm": arm, "acme": acme, "se": se, "ci_lower": acme - z * se,
                                  "ci_upper": acme + z * se, "r2star_prod": rho**2,
                                  "r2tilde_prod": rho**2 * (1 - r2m) * (1 - r2y)}))
        k = slope * np.sqrt(s_m2 / s_y2)
        rho_zero[arm] = float(k / np.sqrt(1 + k**2))
        r2star[arm] = rho_zero[arm] ** 2
        r2tilde[arm] = rho_zero[arm] ** 2 * (1 - r2m) * (1 - r2y)
    return RhoSensitivity(unit=unit, frame=pd.concat(rows, ignore_index=True), rho_zero=rho_zero,
                          r2star_zero=r2star, r2tilde_zero=r2tilde, r2_mediator=r2m, r2_outcome=r2y,
                          level=result.level, interaction=inter)


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
    if info["outcome_family"] != "gaussian":
        raise NotImplementedError(f"rho sensitivity: implemented for a gaussian (OLS) outcome, got "
                                  f"outcome_family={info['outcome_family']!r}")
    if info["dim"] != 1:
        raise NotImplementedError(f"rho sensitivity: implemented for a scalar mediator, got unit {unit!r} with "
                                  f"{info['dim']} columns (fit a single coordinate as its own unit)")
    extra = sorted(set(info["first_stage"]) - set(info["second_stage"]))
    if extra:
        raise NotImplementedError(f"rho sensitivity: expected the mediator model's covariates among the outcome "
                                  f"model's, got {extra} in the mediator model only")
    return unit, info
