"""Omitted-variable-bias (OVB) bounds, robustness values, benchmarks against observed confounders, and plots.

The bound is Chernozhukov, Cinelli, Newey, Sharma & Syrgkanis (2022), "Long Story Short": for a target
theta = E[m(W; g)] with outcome nuisance g and Riesz representer alpha, a latent confounder can move theta by

    |bias| <= |rho| * sqrt(cf_y * cf_d / (1 - cf_d)) * sqrt(sigma2 * nu2),

with sigma2 = E[(Y - g)^2] and nu2 = E[alpha^2]. ``cf_y`` is the share of the outcome residual variance the
latent confounder explains (a partial R^2), ``cf_d`` is 1 - R^2 of the Riesz representer on its long version
(for a binary treatment: how much the confounder improves the propensity), and ``rho`` is the correlation of
the two gaps (|rho| <= 1; rho = 1 is the worst case). Names follow DoubleML; EconML calls them ``c_y``,
``c_t``, ``rho``; DoWhy ``partial_r2_confounder_outcome`` / ``partial_r2_confounder_treatment``.

The confidence bounds use the delta method on (theta, sigma2, nu2) with their joint covariance, exactly as
``econml.validate.sensitivity_analysis.sensitivity_interval`` does (two-sided, alpha / 2 on each side);
``sides=1`` gives DoubleML's one-sided bounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .medsens import rho_sensitivity  # noqa: F401 - re-export: Imai's rho sensitivity (parametric estimator)
from .results import MediationResult

OVB_KEYS = ("sigma2", "nu2", "psi_sigma2", "psi_nu2")
FRAME_COLUMNS = ["unit", "effect", "arm", "theta", "theta_lower", "theta_upper", "ci_lower", "ci_upper", "rv",
                 "rva"]
EFFECT_NAMES = {"te": "TE", "nie": "NIE", "nde": "NDE"}
ROW_KEYS = (("te", "average"), ("nie", "control"), ("nie", "treated"), ("nie", "average"), ("nde", "control"),
            ("nde", "treated"), ("nde", "average"))


# ---- the pure core --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OVBBounds:
    """Bounds on theta and on its confidence interval under a latent confounder of given strength."""

    theta: float
    theta_lower: float
    theta_upper: float
    ci_lower: float
    ci_upper: float
    bias: float


def sensitivity_covariance(psi_theta, psi_sigma2, psi_nu2) -> np.ndarray:
    """The covariance of the estimates (theta, sigma2_1, nu2_1, ..., sigma2_J, nu2_J) from their centred
    influence values (J = 1 for a single regression: a 3 x 3 matrix).

    ``cov = Psi' Psi / n^2`` with ``Psi = [psi_theta, psi_sigma2_1, psi_nu2_1, ...]`` (n x (1 + 2J)), so
    ``cov[0, 0]`` equals the squared standard error of :meth:`deconfound.inference.Effect.from_scores`.
    ``psi_sigma2`` and ``psi_nu2`` are n-vectors (J = 1) or n x J arrays.
    """
    s2 = np.asarray(psi_sigma2, dtype=float)
    n2 = np.asarray(psi_nu2, dtype=float)
    s2 = s2.reshape(len(s2), -1)
    n2 = n2.reshape(len(n2), -1)
    if s2.shape != n2.shape:
        raise ValueError(f"psi_sigma2, psi_nu2: expected the same shape, got {s2.shape} and {n2.shape}")
    cols = [np.asarray(psi_theta, dtype=float).reshape(-1)]
    for j in range(s2.shape[1]):
        cols += [s2[:, j], n2[:, j]]
    psi = np.column_stack(cols)
    n = psi.shape[0]
    if n == 0:
        raise ValueError("influence values: expected at least one row, got none")
    return psi.T @ psi / n**2


def _check_strengths(cf_y, cf_d, rho) -> tuple[float, float, float]:
    cf_y, cf_d, rho = float(cf_y), float(cf_d), float(rho)
    if not 0 <= cf_y < 1:
        raise ValueError(f"cf_y: expected a number in [0, 1), got {cf_y}")
    if not 0 <= cf_d < 1:
        raise ValueError(f"cf_d: expected a number in [0, 1), got {cf_d}")
    if not -1 <= rho <= 1:
        raise ValueError(f"rho: expected a number in [-1, 1], got {rho}")
    return cf_y, cf_d, rho


def _check_pieces(sigma2, nu2, cov) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigma2 and nu2 as arrays over the J regressions of the target (J = 1: one regression)."""
    sigma2 = np.atleast_1d(np.asarray(sigma2, dtype=float))
    nu2 = np.atleast_1d(np.asarray(nu2, dtype=float))
    if sigma2.shape != nu2.shape or sigma2.ndim != 1:
        raise ValueError(f"sigma2, nu2: expected one value per regression each, got shapes {sigma2.shape}, {nu2.shape}")
    if not (np.all(np.isfinite(sigma2)) and np.all(sigma2 > 0)):
        raise ValueError(f"sigma2: expected positive outcome residual variances, got {sigma2.tolist()}")
    if not (np.all(np.isfinite(nu2)) and np.all(nu2 > 0)):
        raise ValueError(f"nu2: expected positive Riesz representer variances, got {nu2.tolist()} "
                         "(a non-positive value points to extreme propensities)")
    cov = np.asarray(cov, dtype=float)
    k = 1 + 2 * len(sigma2)
    if cov.shape != (k, k):
        raise ValueError(f"cov: expected a {k} x {k} covariance of (theta, sigma2, nu2 per regression), "
                         f"got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ValueError("cov: expected finite entries, got NaN/inf")
    return sigma2, nu2, cov


def _quantile(level: float, sides: int) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level}")
    if sides not in (1, 2):
        raise ValueError(f"sides: expected 1 (DoubleML) or 2 (EconML), got {sides}")
    alpha = 1 - level
    return float(stats.norm.ppf(1 - alpha / sides))


def _resolve_cov(cov, psi_theta, psi_sigma2, psi_nu2):
    if cov is not None:
        return cov
    if psi_theta is None or psi_sigma2 is None or psi_nu2 is None:
        raise ValueError("covariance: expected either cov or all of psi_theta, psi_sigma2, psi_nu2, got neither")
    return sensitivity_covariance(psi_theta, psi_sigma2, psi_nu2)


def _bounds(theta, sigma2, nu2, cov, strength, z) -> tuple[float, float, float, float, float]:
    """theta -/+ strength * sum_j sqrt(sigma2_j nu2_j) and its delta-method confidence bounds."""
    bias = strength * float(np.sum(np.sqrt(sigma2 * nu2)))
    half = strength / 2
    grads = []
    for sign in (-1.0, 1.0):
        g = [1.0]
        for s2, v2 in zip(sigma2, nu2):
            g += [sign * half * np.sqrt(v2 / s2), sign * half * np.sqrt(s2 / v2)]
        grads.append(np.array(g))
    sd_lo, sd_hi = (float(np.sqrt(max(g @ cov @ g, 0.0))) for g in grads)
    lo, hi = theta - bias, theta + bias
    return lo, hi, lo - z * sd_lo, hi + z * sd_hi, bias


def ovb_bounds(theta, sigma2, nu2, *, cov=None, psi_theta=None, psi_sigma2=None, psi_nu2=None, cf_y=0.03,
               cf_d=0.03, rho=1.0, level=0.95, sides=2) -> OVBBounds:
    """OVB bounds on theta and on its CI (a pure function).

    Parameters
    ----------
    theta, sigma2, nu2 : the estimate, E[(Y - g)^2] and E[alpha^2]; for a target built from J regressions
        (a natural indirect effect: the outcome regression on (T, M, X), its nested regression on (T, X), and
        the regression of the other potential outcome) one value of each per regression; the bias bound is
        then the sum over regressions of sqrt(sigma2_j nu2_j), times the common strength.
    cov : covariance of the estimates (theta, sigma2_1, nu2_1, ...); or give the influence values
        ``psi_theta``, ``psi_sigma2``, ``psi_nu2`` (centred, one per row) and it is computed from them.
    cf_y, cf_d, rho : confounder strengths (DoubleML names; EconML ``c_y``, ``c_t``, ``rho``).
    level : confidence level; ``sides=2`` puts (1 - level) / 2 in each tail (EconML), ``sides=1`` puts
        1 - level in each (DoubleML).

    Returns
    -------
    OVBBounds

    Examples
    --------
    >>> b = ovb_bounds(1.0, 4.0, 1.0, cov=np.diag([0.01, 0.0, 0.0]), cf_y=0.5, cf_d=0.5, rho=1.0)
    >>> round(b.theta_lower, 6), round(b.theta_upper, 6)   # 1 -/+ sqrt(0.5 * 1) * sqrt(4 * 1)
    (-0.414214, 2.414214)
    """
    cf_y, cf_d, rho = _check_strengths(cf_y, cf_d, rho)
    sigma2, nu2, cov = _check_pieces(sigma2, nu2, _resolve_cov(cov, psi_theta, psi_sigma2, psi_nu2))
    z = _quantile(level, sides)
    strength = abs(rho) * np.sqrt(cf_y) * np.sqrt(cf_d / (1 - cf_d))
    lo, hi, ci_lo, ci_hi, bias = _bounds(float(theta), sigma2, nu2, cov, strength, z)
    return OVBBounds(float(theta), float(lo), float(hi), float(ci_lo), float(ci_hi), float(bias))


def robustness_value(theta, sigma2, nu2, *, cov=None, psi_theta=None, psi_sigma2=None, psi_nu2=None,
                     kind="theta", level=0.95, null=0.0, sides=2) -> float:
    """The robustness value: the smallest r with cf_y = cf_d = r (rho = 1) whose bound reaches ``null``.

    ``kind="theta"`` (RV) bounds theta itself and has the closed form r = (-a^2 + sqrt(a^4 + 4 a^2)) / 2 with
    a = |theta - null| / sum_j sqrt(sigma2_j nu2_j); ``kind="ci"`` (RVa) bounds the CI and is found by Brent's method.
    It is 0 when the CI (for RVa) already contains ``null``. This is the quantity EconML's ``RV`` finds by
    bisection (which stops when the bound is within 1e-6 of the null).

    Examples
    --------
    >>> r = robustness_value(1.0, 1.0, 1.0, cov=np.zeros((3, 3)))
    >>> round(float(r / np.sqrt(1 - r)), 12)   # the bound r / sqrt(1 - r) * sqrt(sigma2 nu2) equals theta
    1.0
    """
    if kind not in ("theta", "ci"):
        raise ValueError(f"kind: expected 'theta' (RV) or 'ci' (RVa), got {kind!r}")
    sigma2, nu2, cov = _check_pieces(sigma2, nu2, _resolve_cov(cov, psi_theta, psi_sigma2, psi_nu2))
    theta, null = float(theta), float(null)
    scale = float(np.sum(np.sqrt(sigma2 * nu2)))
    if kind == "theta":
        a2 = ((theta - null) / scale) ** 2
        # r^2 + a^2 r - a^2 = 0, written without cancellation for small a
        return float(2 * a2 / (a2 + np.sqrt(a2**2 + 4 * a2))) if a2 > 0 else 0.0
    z = _quantile(level, sides)
    upper = theta < null  # which side of the interval moves towards the null

    def gap(r):
        strength = r / np.sqrt(1 - r)  # sqrt(r * r / (1 - r)) with rho = 1
        _, _, ci_lo, ci_hi, _ = _bounds(theta, sigma2, nu2, cov, strength, z)
        return (null - ci_hi) if upper else (ci_lo - null)

    if gap(0.0) <= 0:
        return 0.0
    top = 1 - 1e-15
    if gap(top) > 0:
        return 1.0
    return float(optimize.brentq(gap, 0.0, top, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500))


# ---- results ----------------------------------------------------------------------------------------
def _row_label(unit, effect, arm) -> str:
    name = EFFECT_NAMES.get(effect, effect)
    return f"{unit} {name} ({arm})" if effect != "te" else f"{unit} {name}"


@dataclass(eq=False)
class SensitivityResult:
    """OVB bounds for every unit x effect x arm of a result. ``to_frame()`` is the tidy table."""

    frame: pd.DataFrame
    cf_y: float
    cf_d: float
    rho: float
    level: float
    estimator: str = ""
    null: float = 0.0
    sides: int = 2
    pieces: dict = field(default_factory=dict, repr=False)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> str:
        """Text in DoubleML's layout: Scenario, Bounds with CI, Robustness values (in %)."""
        f = self.frame
        labels = [_row_label(u, e, a) for u, e, a in zip(f.unit, f.effect, f.arm)]
        w = max([12, *map(len, labels)])
        bar = lambda title: f"{'-' * 18} {title:<17} {'-' * 18}"
        lines = [f"{'=' * 18} Sensitivity Analysis {'=' * 18}", "", bar("Scenario"),
                 f"Estimator: {self.estimator or '-'}",
                 f"Significance Level: level={self.level}" + ("" if self.sides == 2 else " (one-sided)"),
                 f"Sensitivity parameters: cf_y={self.cf_y}; cf_d={self.cf_d}, rho={self.rho}", "",
                 bar("Bounds with CI"),
                 f"{'':<{w}}{'CI lower':>12}{'theta lower':>13}{'theta':>11}{'theta upper':>13}{'CI upper':>11}"]
        for lab, r in zip(labels, f.itertuples()):
            lines.append(f"{lab:<{w}}{r.ci_lower:>12.6f}{r.theta_lower:>13.6f}{r.theta:>11.6f}"
                         f"{r.theta_upper:>13.6f}{r.ci_upper:>11.6f}")
        lines += ["", bar("Robustness Values"), f"{'':<{w}}{'H_0':>8}{'RV (%)':>12}{'RVa (%)':>12}"]
        for lab, r in zip(labels, f.itertuples()):
            lines.append(f"{lab:<{w}}{self.null:>8.1f}{100 * r.rv:>12.6f}{100 * r.rva:>12.6f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _ovb_of(result: MediationResult, unit: str) -> dict:
    diag = result.diagnostics.get(unit) if isinstance(result.diagnostics, dict) else None
    ovb = diag.get("ovb") if isinstance(diag, dict) else None
    if not ovb:
        raise ValueError(
            f"sensitivity_analysis: expected a result whose diagnostics[{unit!r}]['ovb'] holds the OVB pieces "
            f"{list(OVB_KEYS)} per (effect, arm), got a {result.estimator!r} result without them. Of the "
            "registered estimators only 'dml' stores them: refit with get_estimator('dml') for this bound "
            "(weighting, eb_total, econml and patching results carry none); for a parametric result use "
            "rho_sensitivity.")
    return ovb


def _pieces(result: MediationResult, unit: str, key, ovb: dict) -> dict:
    piece = ovb[key]
    missing = [k for k in OVB_KEYS if k not in piece]
    if missing:
        raise ValueError(f"sensitivity_analysis: expected OVB pieces {list(OVB_KEYS)} for unit {unit!r} {key}, "
                         f"got a {result.estimator!r} result missing {missing}")
    eff = result.effects[unit][key]
    if eff.scores is None:
        raise ValueError(f"sensitivity_analysis: expected influence scores on the {key} effect of unit {unit!r} "
                         f"(the CI bound needs them), got a {eff.method!r} effect from {result.estimator!r}")
    return dict(theta=eff.estimate, sigma2=np.atleast_1d(np.asarray(piece["sigma2"], float)),
                nu2=np.atleast_1d(np.asarray(piece["nu2"], float)),
                cov=sensitivity_covariance(eff.scores, piece["psi_sigma2"], piece["psi_nu2"]))


def _ovb_keys(result: MediationResult, unit: str, ovb: dict, effects) -> list:
    """The stored (effect, arm) keys in display order; TE once (its arms are the same ATE)."""
    return [k for k in ROW_KEYS if k in ovb and k in result.effects[unit] and k[0] in effects]


def sensitivity_analysis(result: MediationResult, *, cf_y=0.03, cf_d=0.03, rho=1.0, level=0.95, null=0.0,
                         sides=2, units=None, effects=("te", "nie", "nde")) -> SensitivityResult:
    """OVB bounds and robustness values for TE, NIE and NDE of every unit of a score-based result.

    Parameters
    ----------
    result : a MediationResult carrying ``diagnostics[unit]["ovb"][(effect, arm)]`` (see
        :mod:`deconfound.estimators.base`) and influence scores on its effects, e.g. from ``dml``.
    cf_y, cf_d, rho : strengths of the latent confounder (DoubleML names; defaults as DoubleML's).
    level, sides : CI level; two-sided as EconML (default) or one-sided as DoubleML.
    null : the value that RV and RVa measure the distance to.
    units, effects : restrict the rows.

    Returns
    -------
    SensitivityResult with ``to_frame()`` columns
    ``unit, effect, arm, theta, theta_lower, theta_upper, ci_lower, ci_upper, rv, rva``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(1000, seed=4)
    >>> dml = get_estimator("dml", n_folds=3, propensity_learner=LogisticRegression(), random_state=0)
    >>> res = dml.fit(data)
    >>> sens = sensitivity_analysis(res, cf_y=0.03, cf_d=0.03, rho=1.0)
    >>> row = sens.to_frame().set_index(["effect", "arm"]).loc[("nie", "average")]
    >>> bool(row.theta_lower < row.theta < row.theta_upper and 0 < row.rva < row.rv < 1)
    True
    >>> flat = sensitivity_analysis(res, rho=0.0).to_frame().set_index(["effect", "arm"]).loc[("nie", "average")]
    >>> bool(np.allclose([flat.ci_lower, flat.ci_upper], res.effect("u0", "nie", "average").ci))  # no confounding
    True
    """
    if not isinstance(result, MediationResult):
        raise TypeError(f"result: expected a MediationResult, got {type(result).__name__}")
    cf_y, cf_d, rho = _check_strengths(cf_y, cf_d, rho)
    units = result.units if units is None else ([units] if isinstance(units, str) else list(units))
    rows, pieces = [], {}
    for unit in units:
        if unit not in result.effects:
            raise KeyError(f"unit: expected one of {result.units[:10]}, got {unit!r}")
        ovb = _ovb_of(result, unit)
        for key in _ovb_keys(result, unit, ovb, effects):
            p = _pieces(result, unit, key, ovb)
            b = ovb_bounds(**p, cf_y=cf_y, cf_d=cf_d, rho=rho, level=level, sides=sides)
            rv = robustness_value(**p, kind="theta", level=level, null=null, sides=sides)
            rva = robustness_value(**p, kind="ci", level=level, null=null, sides=sides)
            rows.append(dict(unit=unit, effect=key[0], arm=key[1], theta=b.theta, theta_lower=b.theta_lower,
                             theta_upper=b.theta_upper, ci_lower=b.ci_lower, ci_upper=b.ci_upper, rv=rv, rva=rva))
            pieces[(unit, *key)] = p
    if not rows:
        raise ValueError(f"sensitivity_analysis: expected OVB pieces for effects {list(effects)}, got none in the "
                         f"{result.estimator!r} result")
    return SensitivityResult(pd.DataFrame(rows, columns=FRAME_COLUMNS), cf_y, cf_d, rho, level,
                             estimator=result.estimator, null=null, sides=sides, pieces=pieces)


# ---- benchmarking against observed confounders -------------------------------------------------------
def _fit_estimator(obj, estimator):
    """(estimator, long result or None) from an estimator, or from a result plus the estimator that made it."""
    if isinstance(obj, MediationResult):
        if estimator is None or not hasattr(estimator, "fit"):
            raise ValueError(f"sensitivity_benchmark: expected estimator=... (the estimator that made this "
                             f"{obj.estimator!r} result) to refit without the benchmark confounders, got {estimator!r}")
        return estimator, obj
    if hasattr(obj, "fit"):
        return obj, None
    raise TypeError(f"result_or_estimator: expected a MediationResult or an estimator with fit(), got "
                    f"{type(obj).__name__}")


def _graph_without(graph, drop):
    from .graph import DEFAULT_GRAPH, CausalGraph, load_graph  # noqa: PLC0415

    g = load_graph(DEFAULT_GRAPH if graph is None else graph)
    present = [d for d in drop if d in g.nx]
    if not present:
        return g
    h = g.nx.copy()
    h.remove_nodes_from(present)
    return CausalGraph(h, name=f"{g.name}-without-{'+'.join(present)}")


def benchmark_strengths(long: dict, short: dict) -> dict:
    """Implied cf_y, cf_d, rho of the dropped confounders from the long and short fits' pieces.

    ``long`` and ``short`` hold theta, sigma2, nu2 (scalars, or one value per regression of the target). The
    dropped confounders' gains relative to the long fit, per regression j and then the largest over j (a
    latent confounder as strong as the benchmark in every regression):

        g_y = (sigma2_short - sigma2_long) / sigma2_long,   g_d = (nu2_long - nu2_short) / nu2_long,

    floored at 0, with cf_y = g_y and cf_d = g_d / (1 + g_d) (so cf_d / (1 - cf_d) = g_d). ``rho`` is the
    observed shift over the k = 1 bound at |rho| = 1, clipped to [-1, 1] as DoubleML does. Nothing is widened
    to fit: when the OVB model with these gains cannot produce the shift the benchmark itself caused,
    ``shortfall`` (the part of |theta_short - theta_long| the k = 1 bound leaves out) is positive and says so.
    """
    s_l, s_s = np.atleast_1d(np.asarray(long["sigma2"], float)), np.atleast_1d(np.asarray(short["sigma2"], float))
    n_l, n_s = np.atleast_1d(np.asarray(long["nu2"], float)), np.atleast_1d(np.asarray(short["nu2"], float))
    if s_l.shape != s_s.shape or n_l.shape != n_s.shape:
        raise ValueError(f"benchmark: expected the long and short fits to carry the same regressions, got "
                         f"{s_l.shape} and {s_s.shape}")
    g_y = float(np.max(np.maximum((s_s - s_l) / s_l, 0.0)))
    g_d = float(np.max(np.maximum((n_l - n_s) / n_l, 0.0)))
    delta = float(short["theta"] - long["theta"])
    cf_y = min(g_y, 1 - 1e-12)
    bound1 = np.sqrt(cf_y * g_d) * float(np.sum(np.sqrt(s_l * n_l)))  # the k = 1 bound at |rho| = 1
    rho = float(np.sign(delta) * min(1.0, abs(delta) / bound1)) if bound1 > 0 else (1.0 if delta >= 0 else -1.0)
    return dict(cf_y=cf_y, cf_d=g_d / (1 + g_d), rho=rho, delta_theta=delta, theta_long=float(long["theta"]),
                theta_short=float(short["theta"]), gain_y=g_y, gain_d=g_d, shortfall=max(abs(delta) - bound1, 0.0),
                sigma2_long=s_l.tolist(), sigma2_short=s_s.tolist(), nu2_long=n_l.tolist(), nu2_short=n_s.tolist())


def scaled_strengths(bench: dict, k: float) -> tuple[float, float]:
    """(cf_y, cf_d) of a confounder k times as strong as the benchmark (gains scaled by k; cf_y kept < 1)."""
    return min(k * bench["gain_y"], 1 - 1e-12), k * bench["gain_d"] / (1 + k * bench["gain_d"])


@dataclass(eq=False)
class BenchmarkResult:
    """Strength of observed confounders (``benchmarks``) and the bounds k times that strength implies."""

    drop: list
    benchmarks: pd.DataFrame
    bounds: pd.DataFrame
    level: float
    long: MediationResult = field(repr=False)
    short: MediationResult = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per unit x effect x arm x k: the bounds on theta and its CI."""
        return self.bounds.copy()

    def sentences(self) -> list[str]:
        name = " + ".join(self.drop)
        out = []
        for r in self.bounds.itertuples():
            what = EFFECT_NAMES.get(r.effect, r.effect) + ("" if r.effect == "te" else f" ({r.arm})")
            out.append(f"An unobserved confounder {r.k:g}x as strong as {name} would move {what} of {r.unit} "
                       f"from {r.theta:.4f} to [{r.theta_lower:.4f}, {r.theta_upper:.4f}] "
                       f"({self.level:.0%} CI [{r.ci_lower:.4f}, {r.ci_upper:.4f}]).")
        return out

    def summary(self) -> str:
        lines = [f"Benchmark: dropping {self.drop}", self.benchmarks[
            ["unit", "effect", "arm", "cf_y", "cf_d", "rho", "theta_long", "theta_short", "delta_theta", "shortfall"]
        ].to_string(index=False, float_format=lambda v: f"{v:.4f}"), ""]
        return "\n".join(lines + self.sentences())

    def __str__(self) -> str:
        return self.summary()


def sensitivity_benchmark(result_or_estimator, data, drop=None, *, graph=None, units=None,
                          effects=("te", "nie", "nde"), ks=(1, 2, 3), level=0.95, sides=2,
                          estimator=None) -> BenchmarkResult:
    """How strong are observed confounders, and what would a latent one k times as strong do?

    Refits the estimator without the confounder columns ``drop`` (DoubleML's ``sensitivity_benchmark``
    idea), derives their implied cf_y, cf_d and rho (:func:`benchmark_strengths`) and the shift in theta, and
    bounds the long (full) estimate against a latent confounder k times as strong, for each k in ``ks``.

    Parameters
    ----------
    result_or_estimator : an estimator (fitted here on ``data``), or the result of one; then pass the
        estimator that made it as ``estimator=`` (same settings and seed, so the two fits share their folds).
    data : the MediationData the long result came from.
    drop : confounder columns to drop (nodes of the same name are removed from the graph too). Default: every
        confounder column the graph adjusts for in the long fit (its first-stage, second-stage and total
        adjustment sets); a ValueError if it adjusts for none.

    Returns
    -------
    BenchmarkResult: ``benchmarks`` (cf_y, cf_d, rho, theta_long, theta_short, delta_theta per row),
    ``to_frame()`` (bounds per k) and ``summary()`` ("... k x as strong as topic would move NIE to [a, b]").

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(1000, seed=4)
    >>> est = get_estimator("dml", n_folds=3, propensity_learner=LogisticRegression(), random_state=0)
    >>> bench = sensitivity_benchmark(est, data, drop=["topic"], effects=("nie",), ks=(1, 2))
    >>> print(bench.to_frame().k.tolist()[:2], bench.benchmarks.arm.tolist())
    [1, 2] ['control', 'treated', 'average']
    >>> print(bench.sentences()[-1].split(" would")[0])
    An unobserved confounder 2x as strong as topic
    """
    if drop is not None:
        drop = [drop] if isinstance(drop, str) else list(drop)
        missing = [d for d in drop if d not in data.confounder_names]
        if not drop or missing:
            raise ValueError(f"drop: expected confounder columns from {data.confounder_names}, got {drop}")
    est, long = _fit_estimator(result_or_estimator, estimator)
    if long is None:
        long = est.fit(data, graph=graph, units=units)
    if drop is None:
        adj = long.adjustment or {}
        used = {c for key in ("first_stage", "second_stage", "total") for c in adj.get(key, ())}
        drop = [c for c in data.confounder_names if c in used]
        if not drop:
            raise ValueError(f"drop: expected confounder columns to benchmark against, got none: graph "
                             f"{long.graph!r} adjusts for no column of {data.confounder_names}; pass drop=[...]")
    units = long.units if units is None else ([units] if isinstance(units, str) else list(units))
    short_data = data.replace(x=data.x.drop(columns=drop))
    short = est.fit(short_data, graph=_graph_without(graph, drop), units=units)
    bench_rows, bound_rows = [], []
    for unit in units:
        ovb_l, ovb_s = _ovb_of(long, unit), _ovb_of(short, unit)
        for key in _ovb_keys(long, unit, ovb_l, effects):
            if key not in ovb_s or key not in short.effects.get(unit, {}):
                continue
            pl, ps = _pieces(long, unit, key, ovb_l), _pieces(short, unit, key, ovb_s)
            b = benchmark_strengths(pl, ps)
            bench_rows.append(dict(unit=unit, effect=key[0], arm=key[1], **b))
            for k in ks:
                cf_y, cf_d = scaled_strengths(b, k)
                ob = ovb_bounds(**pl, cf_y=cf_y, cf_d=cf_d, rho=abs(b["rho"]), level=level, sides=sides)
                bound_rows.append(dict(unit=unit, effect=key[0], arm=key[1], k=k, cf_y=cf_y, cf_d=cf_d,
                                       rho=abs(b["rho"]), theta=ob.theta, theta_lower=ob.theta_lower,
                                       theta_upper=ob.theta_upper, ci_lower=ob.ci_lower, ci_upper=ob.ci_upper))
    if not bench_rows:
        raise ValueError(f"sensitivity_benchmark: expected OVB pieces for {list(effects)} in both fits, got none")
    return BenchmarkResult(drop, pd.DataFrame(bench_rows), pd.DataFrame(bound_rows), level, long, short)


# ---- contour plot ---------------------------------------------------------------------------------------
def contour_levels(z, n: int = 20) -> tuple[np.ndarray, float]:
    """Colour levels symmetric about 0 (white), whatever the sign of the bounds: the same colour means the same
    distance from the null on every plot. Returns (levels, vmax)."""
    vmax = float(np.max(np.abs(z))) or 1.0
    return np.linspace(-vmax, vmax, n + 1), vmax


def sensitivity_plot(source, path, *, unit=None, effect="nie", arm="average", kind="theta", rho=1.0,
                     level=0.95, sides=2, benchmark: BenchmarkResult | None = None, cf_max=None,
                     grid=41, title=None):
    """Contour of the bound nearest the null over (cf_y, cf_d), with the estimate, benchmarks and zero line.

    ``source`` is a SensitivityResult or a MediationResult with OVB pieces. ``kind="theta"`` plots the bound
    on theta, ``"ci"`` the bound on the CI. Benchmarks (k = 1, 2, ... times the dropped confounders) are
    drawn at their (cf_y, cf_d). The PNG is written with matplotlib's Agg canvas (no pyplot state).
    Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - plotting only
    from matplotlib.colors import Normalize  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    if kind not in ("theta", "ci"):
        raise ValueError(f"kind: expected 'theta' or 'ci', got {kind!r}")
    if isinstance(source, SensitivityResult):
        units = sorted({k[0] for k in source.pieces})
        unit = unit if unit is not None else (units[0] if len(units) == 1 else None)
        p = source.pieces.get((unit, effect, arm))
        if p is None:
            raise KeyError(f"unit/effect/arm: expected one of {sorted(source.pieces)[:10]}, got {(unit, effect, arm)}")
    elif isinstance(source, MediationResult):
        unit = unit if unit is not None else (source.units[0] if len(source.units) == 1 else None)
        if unit not in source.effects:
            raise KeyError(f"unit: expected one of {source.units[:10]}, got {unit!r}")
        p = _pieces(source, unit, (effect, arm), _ovb_of(source, unit))
    else:
        raise TypeError(f"source: expected a SensitivityResult or MediationResult, got {type(source).__name__}")
    marks = []
    if benchmark is not None:
        rows = benchmark.bounds
        rows = rows[(rows.unit == unit) & (rows.effect == effect) & (rows.arm == arm)]
        marks = [(r.k, r.cf_y, r.cf_d) for r in rows.itertuples()]
    top = cf_max or max([0.15, *(1.2 * max(cy, cd) for _, cy, cd in marks)])
    top = min(top, 0.99)
    axis = np.linspace(0, top, grid)
    lower_side = p["theta"] >= 0
    z = np.empty((grid, grid))
    for i, cd in enumerate(axis):
        for j, cy in enumerate(axis):
            b = ovb_bounds(**p, cf_y=cy, cf_d=cd, rho=rho, level=level, sides=sides)
            z[i, j] = (b.theta_lower if lower_side else b.theta_upper) if kind == "theta" else \
                (b.ci_lower if lower_side else b.ci_upper)
    fig = Figure(figsize=(6, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    levels, vmax = contour_levels(z)
    filled = ax.contourf(axis, axis, z, levels=levels, cmap="RdBu", norm=Normalize(-vmax, vmax))
    fig.colorbar(filled, ax=ax, label=f"{'lower' if lower_side else 'upper'} bound ({kind})")
    lines = ax.contour(axis, axis, z, levels=8, colors="k", linewidths=0.5)
    ax.clabel(lines, fontsize=7, fmt="%.3g")
    if z.min() < 0 < z.max():
        ax.contour(axis, axis, z, levels=[0.0], colors="red", linewidths=2)
    ax.plot([0], [0], "k*", markersize=12, clip_on=False)
    ax.annotate(f"estimate {p['theta']:.3g}", (0, 0), textcoords="offset points", xytext=(6, 6))
    for k, cy, cd in marks:
        ax.plot([cy], [cd], "D", color="orange", markeredgecolor="k")
        ax.annotate(f"{k:g}x {'+'.join(benchmark.drop)}", (cy, cd), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("cf_y (outcome)")
    ax.set_ylabel("cf_d (treatment)")
    what = EFFECT_NAMES.get(effect, effect) + ("" if effect == "te" else f" ({arm})")
    ax.set_title(title or f"{unit}: {what}, rho={rho}")
    fig.savefig(path, format="png", dpi=100)
    return path


__all__ = ["OVBBounds", "ovb_bounds", "robustness_value", "sensitivity_covariance", "sensitivity_analysis",
           "SensitivityResult", "benchmark_strengths", "scaled_strengths", "sensitivity_benchmark",
           "BenchmarkResult", "sensitivity_plot", "rho_sensitivity"]
