"""Tests of the two paths of a unit's NIE, T -> M and M -> Y, and the warning when neither is distinguishable from 0.

A natural NIE is 0 when T does not move M or when M does not move Y. Where both paths are 0 (a unit that only
tracks the topic), the NIE estimate is a product of two noisy near-zero pieces: its SE is too large, a 95% CI
covers nearly always and the test of a zero NIE rejects well below 5%. The joint-significance test (both paths
significant, MacKinnon et al. 2002) keeps its size there and has more power.

Both tests are Wald tests of linear projections (the same for every estimator, so they do not depend on its
learners): the block M in the regression of T on [1, X, M], and the columns M and T x M in the regression of Y on
[1, T, X, T x X, M, T x M]. Their covariance is HC3, or CR1 with an F(q, G - 1) reference when the data carry
cluster labels (with 30 clusters and cluster effects in M and Y, HC3 rejected a zero path 20-81% of the time).
A test gives ``nan`` (and no warning) when it cannot speak:

- fewer than ``ROWS_PER_TESTED`` rows per tested column (under a double null, 10 columns at n = 300 rejected
  M -> Y 11% of the time, 50 columns 42%), or a block wider than ``MAX_WIDTH``;
- a tested column with nothing left after the other columns (a constant, a copy of a confounder dummy), or a
  row whose leverage from the tested columns is at least ``MAX_LEVERAGE`` (a column carried by a few rows).
  Such columns gave p-values near 0: a unit active in 0.5% of 300 rows had both paths "significant" in 17% of
  double nulls (none now; the tests are nan there).

Sampling weights are not used, and the confounders enter linearly: a confounder that drives M and Y along a
curve makes M stand in for the curve, and the tests reject (they then only fail to warn).
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from .._calibration import few
from ..errors import NullPathsWarning
from ._glm import hc3_wald, robust_cov

ALPHA = 0.05  # a path "indistinguishable from 0": its p-value at least this
MAX_WIDTH = 50
ROWS_PER_TESTED = 30
MAX_LEVERAGE = 0.5  # a row's leverage from the tested columns above which HC3 and CR1 cannot be trusted

# the zero NIE of the grid's topic tracker u1 (T -> M and M -> Y both 0; one column; the linear, probit and binary
# processes at n = 300, 2,000 and 10,000; 100-400 data sets a cell), per estimator: what its CIs and test did
# (econml_diff's test is oversized there instead, and has its own warning)
MEASURED = {
    "parametric": "the NIE CIs are too wide and its test is conservative (coverage 0.98-1.00, test rejecting at "
                  "most 0.02",
    "weighting": "the NIE CIs are too wide and its test is conservative (coverage 1.00, test rejecting 0",
    "dml": "the NIE CIs are too wide and its test is conservative (coverage 0.98-1.00, test rejecting at most 0.02",
    "interventional": "the NIE CIs can be too wide (coverage 0.93-0.985 in most cells, but 1.00 for NIE(treated) "
                      "on the probit and binary processes at n = 10,000 with SE/SD 1.35-1.8; test rejecting at "
                      "most 0.07",
}


def _wald_p(design: np.ndarray, r: np.ndarray, cols: list[int], groups=None) -> float:
    n = len(r)
    if n < ROWS_PER_TESTED * len(cols) or n - np.linalg.matrix_rank(design) < 10:
        return float("nan")
    tested, rest = design[:, cols], np.delete(design, cols, axis=1)
    left = tested - rest @ np.linalg.lstsq(rest, tested, rcond=None)[0]
    if np.any(np.linalg.norm(left, axis=0) <= 1e-8 * np.maximum(np.linalg.norm(tested, axis=0), 1e-300)):
        return float("nan")  # a column the other columns already hold
    added = np.sum((left @ np.linalg.pinv(left.T @ left)) * left, axis=1)  # the tested columns' own leverage
    if np.max(added) >= MAX_LEVERAGE:
        return float("nan")  # a column carried by a few rows (a rare topic's own leverage does not count)
    if groups is None:
        stat, rank, _ = hc3_wald(design, r, cols)
        return float(stats.chi2.sf(stat, rank)) if rank else float("nan")
    g = int(groups.max()) + 1
    if g - 1 < len(cols):
        return float("nan")
    bread = np.linalg.pinv(design.T @ design)
    coef = bread @ (design.T @ r)
    cov = robust_cov(design, r - design @ coef, bread, None, groups)[np.ix_(cols, cols)]
    rank = int(np.linalg.matrix_rank(cov))
    stat = float(coef[cols] @ np.linalg.pinv(cov) @ coef[cols])
    return float(stats.f.sf(stat / rank, rank, g - 1)) if rank else float("nan")


def path_p_values(t, y, x, m, groups=None) -> dict:
    """``{"t_to_m": p, "m_to_y": p}`` for one unit: ``t`` (n,) 0/1, ``y`` (n,), ``x`` (n, p) confounder design
    without intercept, ``m`` (n,) or (n, d), ``groups`` cluster codes 0..G-1 or None. A test is ``nan`` where
    it cannot speak (see the module docstring).

    >>> rng = np.random.default_rng(0)
    >>> t = rng.integers(0, 2, 400); m = rng.normal(size=400) + t; y = m + rng.normal(size=400)
    >>> p = path_p_values(t, y, np.zeros((400, 0)), m)
    >>> bool(p["t_to_m"] < 1e-6 and p["m_to_y"] < 1e-6)
    True
    """
    t = np.asarray(t, dtype=float)
    m = np.asarray(m, dtype=float).reshape(len(t), -1)
    x = np.asarray(x, dtype=float).reshape(len(t), -1)
    d = m.shape[1]
    if d > MAX_WIDTH:
        return {"t_to_m": float("nan"), "m_to_y": float("nan")}
    one = np.ones((len(t), 1))
    base = np.column_stack([one, x])
    p_tm = _wald_p(np.column_stack([base, m]), t, list(range(base.shape[1], base.shape[1] + d)), groups)
    # T x X too: M's dependence on X would otherwise carry a T x X term of Y into T x M
    design = np.column_stack([base, t, t[:, None] * x, m, t[:, None] * m])
    start = base.shape[1] + 1 + x.shape[1]
    p_my = _wald_p(design, np.asarray(y, dtype=float), list(range(start, start + 2 * d)), groups)
    return {"t_to_m": p_tm, "m_to_y": p_my}


def unit_paths(data, units, confounders, rows=None) -> dict:
    """:func:`path_p_values` of every unit, adjusting for the confounder columns ``confounders`` (cluster-robust
    when the data carry cluster labels), on the rows where the boolean mask ``rows`` holds (default all)."""
    keep = slice(None) if rows is None else np.asarray(rows, dtype=bool)
    x = data.x_design(list(confounders))[0][keep]
    t, y = data.t[keep], np.asarray(data.y, dtype=float)[keep]
    groups = data.cluster_codes()
    groups = None if groups is None else np.unique(groups[keep], return_inverse=True)[1].reshape(-1)  # 0..G-1
    return {u: path_p_values(t, y, x, np.asarray(data.mediator(u))[keep], groups) for u in units}


def check_paths(estimator: str, data, units, confounders, diagnostics: dict, *, warn_units=None,
                rows=None) -> str | None:
    """The path tests of every unit into ``diagnostics[unit]["paths"]`` (on the rows ``rows`` holds: those an
    estimator kept), and :func:`warn_null_paths` over ``warn_units`` (default all): what each NIE estimator runs
    at the end of a fit. Returns the message."""
    paths = unit_paths(data, units, confounders, rows)
    for u in units:
        diagnostics[u]["paths"] = paths[u]
    shown = paths if warn_units is None else {u: paths[u] for u in warn_units}
    return warn_null_paths(estimator, shown, stacklevel=4)


def both_null(p: dict) -> bool:
    """Both p-values of :func:`path_p_values` at least ALPHA (False when either is nan)."""
    return bool(p["t_to_m"] >= ALPHA and p["m_to_y"] >= ALPHA)


def warn_null_paths(estimator: str, paths: dict, *, stacklevel: int = 3) -> str | None:
    """Warn (NullPathsWarning, naming the units) when some units have both paths indistinguishable from 0;
    returns the message."""
    null = [u for u, p in paths.items() if both_null(p)]
    if not null:
        return None
    first = paths[null[0]]
    msg = (f"{estimator} (units {few(null)}: at {null[0]!r} T -> M p = {first['t_to_m']:.2g}, M -> Y p = "
           f"{first['m_to_y']:.2g}): neither path of the NIE is distinguishable from 0 (Wald p >= {ALPHA:g} on "
           f"each), where {MEASURED[estimator]} for a topic tracker's zero NIE; see docs/coverage.md). A "
           "non-significant NIE there does not show "
           "that it is 0, and the TE and NDE are not affected. Read the paths in "
           "result.diagnostics[unit]['paths'] (the NIE is supported when both are below 0.05)")
    warnings.warn(NullPathsWarning(msg, units=null), stacklevel=stacklevel)
    return msg
