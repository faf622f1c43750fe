"""Numerical helpers of the parametric estimator: (weighted) least squares and GLM fits, CR1 sandwiches,
stacked refits for the bootstrap, Gaussian integrals of the inverse links, and the HC3 Wald test of omitted
terms and the per-arm RESET that parametric, dml and interventional use for their specification checks."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse, stats
from scipy.linalg import solve_triangular
from scipy.special import expit, ndtr

from ..errors import ConvergenceError, DataError

_TABLE_STEP = 0.05  # eta spacing of the logit-normal tables


def _ols(x: np.ndarray, y: np.ndarray, names: list[str], what: str, weights=None):
    """(Weighted) OLS: coefficients, (X'WX)^-1 and the residuals y - X b; DataError on a rank-deficient design.

    R comes from a QR of X (also the rank check); the coefficients solve the corrected semi-normal equations
    R'R b = X'y with one refinement step, which is as accurate as a full QR solve and much cheaper.
    """
    if weights is not None:  # WLS = OLS on rows scaled by sqrt(w)
        root = np.sqrt(weights)
        coef, inv, _ = _ols(x * root[:, None], y * (root[:, None] if y.ndim == 2 else root), names, what)
        return coef, inv, y - x @ coef
    n, p = x.shape
    if n <= p:
        raise DataError(f"{what}: expected more rows than columns, got {n} rows and {p} columns")
    r = np.linalg.qr(x, mode="r")
    rel = np.abs(np.diag(r)) / np.maximum(np.linalg.norm(x, axis=0), 1e-300)  # 0 for a dependent column
    bad = np.flatnonzero(rel <= 1e-8)
    if len(bad):
        raise DataError(f"{what}: expected linearly independent columns, got {names[bad[0]]!r} collinear with "
                        f"the columns before it ({', '.join(map(repr, names[:bad[0]][-4:]))})")

    def solve(rhs):
        return solve_triangular(r, solve_triangular(r, rhs, trans="T"))

    coef = solve(x.T @ y)
    coef = coef + solve(x.T @ (y - x @ coef))
    r_inv = solve_triangular(r, np.eye(p))
    return coef, r_inv @ r_inv.T, y - x @ coef


def _chol(cov: np.ndarray) -> np.ndarray:
    """A square root L with L L' = cov (Cholesky, or the eigen root for a semi-definite cov)."""
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        return vecs * np.sqrt(np.clip(vals, 0, None))


def _chol2(v: np.ndarray):
    """Lower Cholesky entries (l00, l10, l11) of a stack of 2 x 2 covariances (rank 1 allowed)."""
    l00 = np.sqrt(np.clip(v[:, 0, 0], 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        l10 = np.where(l00 > 0, v[:, 1, 0] / l00, 0.0)
    return l00, l10, np.sqrt(np.clip(v[:, 1, 1] - l10**2, 0, None))


def _inv_link(eta: np.ndarray, family: str) -> np.ndarray:
    return ndtr(eta) if family == "probit" else expit(eta)


def _integrated_mean(eta: np.ndarray, var: np.ndarray, family: str) -> np.ndarray:
    """E[g^-1(eta + e)] with e ~ N(0, var) (var per draw, eta per row and draw).

    Probit: Phi(eta / sqrt(1 + var)), exact. Logit: the trapezoid rule in z = e / sd (:func:`_logit_normal`);
    with many rows, on a per-draw table over eta read by cubic Hermite interpolation.
    """
    if family == "probit":
        return ndtr(eta / np.sqrt(1.0 + var))
    sd = np.sqrt(np.clip(var, 0, None)) * np.ones(np.shape(eta)[-1:])
    eta = np.asarray(eta, dtype=float)
    if eta.ndim != 2:
        return _logit_normal(eta, sd)[0]
    lo, hi = eta.min(0), eta.max(0)
    size = int(np.ceil(np.max(hi - lo) / _TABLE_STEP)) + 2
    if 2 * size >= eta.shape[0]:
        return _logit_normal(eta, sd)[0]
    # cubic Hermite table: error <= step^4 / 384 * max|F^(4)| < 2.1e-9 at step <= 0.05 (|expit^(4)| <= 0.128)
    step = np.where(hi > lo, (hi - lo) / (size - 1), 1.0)
    f, df = _logit_normal(lo + step * np.arange(size)[:, None], sd, derivative=True)
    pos = (eta - lo) / step
    k = np.clip(np.floor(pos).astype(np.intp), 0, size - 2)
    u = pos - k
    take = lambda a, i: np.take_along_axis(a, i, axis=0)  # noqa: E731
    u2, u3 = u * u, u * u * u
    return ((2 * u3 - 3 * u2 + 1) * take(f, k) + (u3 - 2 * u2 + u) * step * take(df, k)
            + (3 * u2 - 2 * u3) * take(f, k + 1) + (u3 - u2) * step * take(df, k + 1))


def _logit_normal(eta: np.ndarray, sd: np.ndarray, derivative: bool = False):
    """E[expit(eta + sd z)] (and its derivative in eta) by the trapezoid rule in z ~ N(0, 1).

    The rule converges geometrically here: its error is about exp(-2 pi^2 / (sd h)) (expit has poles pi / sd
    off the real axis), so the step h = min(0.5, 0.7 / sd) keeps it near 1e-12; the grid stops at |z| = 6.7.
    """
    h = min(0.5, 0.7 / max(float(np.max(sd, initial=0.0)), 1e-12))
    k = int(np.ceil(6.7 / h))  # the normal mass beyond 6.7 is 2e-11
    f = np.zeros(np.shape(eta))
    df = np.zeros(np.shape(eta)) if derivative else None
    for z in h * np.arange(-k, k + 1):
        p = expit(eta + sd * z)
        w = h * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
        f += w * p
        if derivative:
            df += w * p * (1 - p)
    return f, df


def _solve_stack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a stack of symmetric systems a[s] x = b[s]; the pseudo-inverse covers a level absent from a resample."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("sij,sj->si", np.linalg.pinv(a, hermitian=True), b)


def _gram(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stack of weighted Gram matrices x' diag(w[:, s]) x, shape (S, p, p)."""
    return np.matmul(x.T[None] * w.T[:, None, :], x)


def _glm(w: np.ndarray, y: np.ndarray, family: str, what: str, weights=None, groups=None):
    """Binomial GLM fit with statsmodels; separation or non-convergence raises ConvergenceError.

    With sampling ``weights`` (var_weights) or cluster ``groups`` the covariance is the CR1 sandwich
    (statsmodels' ``cov_type="cluster"``; rows are their own clusters when only weights are given).
    """
    import statsmodels.api as sm  # noqa: PLC0415 - statsmodels is slow to import; only needed here
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning, SpecificationWarning  # noqa: PLC0415

    link = sm.families.links.Probit() if family == "probit" else sm.families.links.Logit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("ignore", SpecificationWarning)  # the var_weights sandwich is checked by hand in tests
        try:
            model = sm.GLM(y, w, family=sm.families.Binomial(link=link), var_weights=weights)
            if weights is None and groups is None:
                res = model.fit()
            else:
                groups = np.arange(len(y)) if groups is None else groups
                res = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        except PerfectSeparationWarning as exc:
            raise ConvergenceError(f"{what}: expected a finite {family} MLE, got perfect separation ({exc})") from None
    if not getattr(res, "converged", True):
        raise ConvergenceError(f"{what}: expected the {family} IRLS fit to converge, got no convergence")
    return np.asarray(res.params, dtype=float), np.asarray(res.cov_params(), dtype=float)


def _glm_batch(w, y, counts, start, family, max_iter: int = 50, tol: float = 1e-9) -> np.ndarray:
    """Binomial GLM MLEs for a stack of count-weighted resamples at once (Fisher scoring from ``start``)."""
    s = counts.shape[1]
    gam = np.repeat(start[None], s, axis=0)
    done = np.zeros(s, bool)
    for _ in range(max_iter):
        eta = w @ gam.T
        if family == "probit":
            mu = np.clip(ndtr(eta), 1e-12, 1 - 1e-12)
            dmu = np.exp(-0.5 * eta**2) / np.sqrt(2 * np.pi)
            var = mu * (1 - mu)
            score_w, info_w = dmu / var, dmu**2 / var
        else:
            mu = expit(eta)
            score_w, info_w = np.ones_like(mu), mu * (1 - mu)
        score = (counts * score_w * (y[:, None] - mu)).T @ w
        step = _solve_stack(_gram(w, counts * info_w), score)
        step[done] = 0.0
        gam += step
        done |= np.abs(step).max(1) <= tol * (1.0 + np.abs(gam).max(1))
        if done.all():
            return gam
    bad = np.flatnonzero(~done)
    raise ConvergenceError(f"bootstrap: expected every {family} outcome refit to converge in {max_iter} "
                           f"iterations, got {len(bad)} that did not (likely separation in a resample); "
                           f"use method='quasi-bayes'")


def cluster_sums(values: np.ndarray, groups) -> np.ndarray:
    """Sums of the rows of ``values`` (n, ...) within each group (codes 0..G-1; None: every row alone)."""
    if groups is None:
        return values
    n = len(values)
    member = sparse.csr_matrix((np.ones(n), (groups, np.arange(n))), shape=(int(groups.max()) + 1, n))
    return (member @ values.reshape(n, -1)).reshape((-1, *values.shape[1:]))


def cr1_factor(n: int, p: int, groups) -> float:
    """The CR1 small-sample factor G/(G-1) (n-1)/(n-p) (HC1's n/(n-p) when every row is its own cluster)."""
    g = n if groups is None else int(groups.max()) + 1
    return g / (g - 1) * (n - 1) / (n - p)


def robust_cov(x: np.ndarray, resid: np.ndarray, bread: np.ndarray, weights, groups) -> np.ndarray:
    """CR1 sandwich of a (weighted) least-squares fit: c B (sum_g u_g u_g') B with u_g = sum_{i in g} w_i x_i r_i."""
    r = resid if weights is None else resid * weights
    u = cluster_sums(x * r[:, None], groups)
    return cr1_factor(len(x), x.shape[1], groups) * bread @ (u.T @ u) @ bread


def hc3_wald(design, r, cols):
    """Wald statistic, its degrees of freedom and the residual sum of squares of the OLS fit of ``r`` on
    ``design``, testing the coefficients ``cols`` with the HC3 covariance (MacKinnon & White 1985), so that an
    unequal noise variance is no curve."""
    bread = np.linalg.pinv(design.T @ design)
    coef = bread @ (design.T @ r)
    resid = r - design @ coef
    lev = np.sum((design @ bread) * design, axis=1)  # BLAS; einsum over three operands is O(n p^2) in C loops
    meat = (design.T * (resid / np.clip(1 - lev, 1e-12, None)) ** 2) @ design
    cov = bread[cols] @ meat @ bread[:, cols]
    return (float(coef[cols] @ np.linalg.pinv(cov) @ coef[cols]), int(np.linalg.matrix_rank(cov)),
            float(resid @ resid))


def arm_reset(t, r, base, fitted=None) -> tuple[float, float]:
    """Ramsey's RESET within each arm of ``t``: ``(p, share)``. In arm a, ``r`` is regressed on ``base`` and on
    z^2, z^3 (z: the standardized ``fitted``, by default the arm's own OLS fit of ``r`` on ``base``); p is the HC3
    Wald test of z^2, z^3 of both arms jointly, and share the part of the residual sum of squares without them
    that they explain (how much curve the fit misses). NaN with fewer than 4 residual degrees of freedom."""
    wald, k, rss = 0.0, 0, np.zeros(2)
    for a in (0, 1):
        rows = t == a
        b, ra = base[rows], r[rows]
        coef, *_ = np.linalg.lstsq(b, ra, rcond=None)
        f = b @ coef if fitted is None else fitted[rows]
        z = (f - f.mean()) / max(float(f.std()), 1e-300)
        full = np.column_stack([b, z**2, z**3])
        if len(ra) - np.linalg.matrix_rank(full) < 4:
            return float("nan"), float("nan")
        stat, rank, rss_full = hc3_wald(full, ra, [full.shape[1] - 2, full.shape[1] - 1])
        rss += (float(((ra - b @ coef) ** 2).sum()), rss_full)
        wald, k = wald + stat, k + rank
    if rss[0] <= 0 or k == 0:
        return float("nan"), float("nan")
    return float(stats.chi2.sf(wald, k)), float((rss[0] - rss[1]) / rss[0])
