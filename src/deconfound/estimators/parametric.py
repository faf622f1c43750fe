"""Parametric mediation (Imai, Keele & Tingley 2010), vectorized over simulation draws.

Mediator model: OLS of the unit's block M (n x d, one regression per column, jointly) on [1, T, X1].
Outcome model: OLS, logit or probit GLM of Y on [1, T, M, (T*M), X2]. X1 and X2 are the first- and
second-stage adjustment sets that the graph identifies.

For a parameter set, E[Y(t, M(t'))] is the row average of E[g(eta) | t, t', x_i], where the outcome's linear
predictor eta = g0 + gT t + (b + t c)'M + gX'x is Gaussian over the mediator noise M(t') ~ N(mu_i(t'), Sigma):
mean eta_i = g0 + gT t + (b + t c)'mu_i(t') + gX'x_i, variance v_t = (b + t c)' Sigma (b + t c). So the
mediator noise is integrated out: exactly for the identity link (linearity) and probit (Phi(m / sqrt(1 + v))),
to about 1e-9 for logit (trapezoid rule, tabulated over eta when rows are many). Rows that share a covariate
pattern (a topic) share these expectations, so they are computed once per pattern.
``mediator_noise="simulate"`` draws one mediator per row and draw instead, as R `mediation` and statsmodels
`Mediation` do.

Quasi-Bayes draws both coefficient vectors from their asymptotic normals (Sigma held at its estimate, as R
and statsmodels do). Only the projections B (b + t c) of the mediator coefficients enter, and they are drawn
directly: B_s = B + L_X E_s L_S' with E_s iid N(0, 1) gives B_s beta ~ N(B beta, (beta' Sigma beta) (Z'Z)^-1),
jointly over beta = b and b + c, so the cost does not grow with d. The bootstrap resamples rows (within
treatment arms) and refits both models on the same resample, all replicates of a chunk at once.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np
from scipy import sparse
from scipy.linalg import solve_triangular
from scipy.special import expit, ndtr

from ..errors import ConvergenceError, DataError
from ..graph import resolve
from ..inference import Effect, stratified_counts
from ..positivity import check_positivity
from ..results import MediationResult, add_derived
from .base import MediationEstimator, check_units, register

FAMILIES = ("gaussian", "logit", "probit")
METHODS = ("quasi-bayes", "bootstrap")
NOISE = ("integrate", "simulate")
_BUDGET = 1 << 22  # elements of one (rows x draws) work array; fixed, so chunking never changes the numbers
_TABLE_STEP = 0.05  # eta spacing of the logit-normal tables


@register("parametric")
class ParametricMediation(MediationEstimator):
    """Imai-Keele-Tingley parametric mediation: OLS mediator model, gaussian/logit/probit outcome model.

    Parameters
    ----------
    outcome_family : ``"gaussian"`` (OLS), ``"logit"`` or ``"probit"`` (binomial GLM; Y must be 0/1).
    interaction : add the T x M columns to the outcome model (ACME differs between arms).
    method : ``"quasi-bayes"`` (draw coefficients from their asymptotic normal) or ``"bootstrap"``
        (resample rows within treatment arms and refit).
    n_sims : number of draws or bootstrap replicates.
    drop_unsupported : a topic with rows in one arm only raises PositivityError (default); True drops its rows
        first (:func:`deconfound.positivity.check_positivity`; the dropped topics in ``data.meta``).
    level : confidence level of the percentile intervals.
    random_state : int seed (each unit gets its own stream derived from the seed and the unit name),
        a numpy Generator, or None.
    mediator_noise : ``"integrate"`` (exact expectation over the mediator noise; default) or ``"simulate"``
        (one simulated mediator per row and draw, as R `mediation` and statsmodels do).

    Notes
    -----
    The point estimate is the plug-in g-formula at the fitted coefficients (mediator noise integrated
    exactly). R and statsmodels report the mean of the draws instead; the two differ by Monte Carlo error
    and a Jensen term of order 1/n. SE, percentile CI and p-value come from the draws (the p-value by the
    add-one rule of :func:`deconfound.inference.draw_p_value`, never 0).

    Examples
    --------
    >>> from deconfound import simulate
    >>> data, truth = simulate.topic_mediation(2000, seed=3)
    >>> res = ParametricMediation(n_sims=200).fit(data)
    >>> abs(res.effect("u0", "nie").estimate - truth.value("u0", "nie")) < 3 * res.effect("u0", "nie").se
    True
    """

    def __init__(self, outcome_family: str = "gaussian", interaction: bool = False, method: str = "quasi-bayes",
                 n_sims: int = 1000, level: float = 0.95, random_state=0, mediator_noise: str = "integrate",
                 drop_unsupported: bool = False):
        self.drop_unsupported = drop_unsupported
        self.outcome_family = outcome_family
        self.interaction = interaction
        self.method = method
        self.n_sims = n_sims
        self.level = level
        self.random_state = random_state
        self.mediator_noise = mediator_noise

    def _check_settings(self) -> None:
        for name, value, allowed in (("outcome_family", self.outcome_family, FAMILIES),
                                     ("method", self.method, METHODS),
                                     ("mediator_noise", self.mediator_noise, NOISE)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
        if isinstance(self.n_sims, bool) or not isinstance(self.n_sims, (int, np.integer)) or self.n_sims < 2:
            raise ValueError(f"n_sims: expected an integer >= 2, got {self.n_sims!r}")
        if not 0 < float(self.level) < 1:
            raise ValueError(f"level: expected a number in (0, 1), got {self.level!r}")
        if not isinstance(self.interaction, (bool, np.bool_)):
            raise TypeError(f"interaction: expected a bool, got {type(self.interaction).__name__}")

    def fit(self, data, *, graph=None, units=None) -> MediationResult:
        """Fit both models per unit and simulate the effects; see the class docstring."""
        self._check_settings()
        units = check_units(data, units)
        g, adj = resolve(graph, data)
        data = check_positivity(data, adj.union, drop_unsupported=self.drop_unsupported, what="parametric mediation")
        y = np.asarray(data.y, dtype=float)
        if self.outcome_family != "gaussian":
            levels = np.unique(y)
            if not set(levels.tolist()) <= {0.0, 1.0}:
                raise DataError(f"outcome {data.outcome_name!r}: expected binary 0/1 values for the "
                                f"{self.outcome_family} outcome family, got values {levels[:6].tolist()}"
                                f"{' ...' if len(levels) > 6 else ''}")
        x1, names1 = _confounder_design(data, adj.first_stage)
        x2, names2 = _confounder_design(data, adj.second_stage)
        patterns = _patterns(x1, x2)
        effects, diagnostics, notes = {}, {}, []
        for unit in units:
            model = _Model(data, unit, x1, names1, x2, names2, self.outcome_family, bool(self.interaction), patterns)
            model.fit()
            rng = _unit_rng(self.random_state, unit)
            effects[unit], info = self._effects(model, rng)
            diagnostics[unit] = {"parametric": info}
            te = effects[unit][("te", "average")]
            if te.ci[0] <= 0 <= te.ci[1]:
                notes.append(f"unit {unit!r}: the total effect's CI covers 0, so Prop. Mediated is unstable")
        if not adj.identified:
            notes.insert(0, f"graph {g.name}: effects are not identified (latent {list(adj.latent)}); the models "
                            f"adjust for the observed {list(adj.union)} only")
        settings = {"outcome_family": self.outcome_family, "interaction": bool(self.interaction),
                    "method": self.method, "n_sims": int(self.n_sims), "mediator_noise": self.mediator_noise,
                    "point_estimate": "plug-in"}
        return MediationResult(estimator="parametric", effects=effects, n=data.n, n_treated=data.n_treated,
                               population="ate", graph=g.name, adjustment=adj.as_dict(), level=self.level,
                               random_state=self.random_state, settings=settings, diagnostics=diagnostics,
                               warnings=notes)

    def _effects(self, model: "_Model", rng: np.random.Generator):
        q_hat = model.potential_means(*model.point_params(), None, "integrate", rng)[0]
        if self.method == "quasi-bayes":
            q = model.potential_means(*model.quasi_bayes_params(self.n_sims, rng), None, self.mediator_noise, rng)
        else:
            q = model.bootstrap(self.n_sims, self.mediator_noise, rng)
        point, draws = _contrasts(q_hat[None]), _contrasts(q)
        out = {key: Effect.from_draws(float(point[key][0]), draws[key], level=self.level) for key in point}
        return add_derived(out), model.info()


def _contrasts(q: np.ndarray) -> dict:
    """NIE/NDE per arm and TE from Q[s, t, t'] = E[Y(t, M(t'))]."""
    return {("nie", "control"): q[:, 0, 1] - q[:, 0, 0], ("nie", "treated"): q[:, 1, 1] - q[:, 1, 0],
            ("nde", "control"): q[:, 1, 0] - q[:, 0, 0], ("nde", "treated"): q[:, 1, 1] - q[:, 0, 1],
            ("te", "average"): q[:, 1, 1] - q[:, 0, 0]}


def _unit_rng(random_state, unit: str) -> np.random.Generator:
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state: expected a non-negative int, a numpy Generator or None, got {random_state!r}")
    return np.random.default_rng([int(random_state), zlib.crc32(unit.encode())])


def _confounder_design(data, names) -> tuple[np.ndarray, list[str]]:
    """Design of the adjustment columns; dummies of levels absent from the data are dropped."""
    x, labels = data.x_design(list(names))
    keep = np.any(x != 0, axis=0) if x.shape[1] else np.zeros(0, bool)
    return x[:, keep], [lab for lab, k in zip(labels, keep) if k]


def _patterns(x1: np.ndarray, x2: np.ndarray):
    """Distinct covariate rows: rows sharing one (e.g. a topic) share E[Y | t, M(t'), x], so the integrated
    expectations are computed once per pattern. Returns (x1 rows, x2 rows, share of rows, pattern x row map)."""
    n = len(x1)
    xx = np.column_stack([x1, x2])
    if xx.shape[1]:
        rows, inv = np.unique(xx, axis=0, return_inverse=True)
    else:
        rows, inv = np.zeros((1, 0)), np.zeros(n, dtype=np.intp)
    inv = inv.reshape(-1)
    share = np.bincount(inv, minlength=len(rows)) / n
    member = sparse.csr_matrix((np.ones(n), (inv, np.arange(n))), shape=(len(rows), n))
    return rows[:, :x1.shape[1]], rows[:, x1.shape[1]:], share, member


def _ols(x: np.ndarray, y: np.ndarray, names: list[str], what: str):
    """OLS: coefficients, (X'X)^-1 and residuals; raises DataError on a rank-deficient design.

    R comes from a QR of X (also the rank check); the coefficients solve the corrected semi-normal equations
    R'R b = X'y with one refinement step, which is as accurate as a full QR solve and much cheaper.
    """
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


class _Model:
    """The two fitted models of one unit, and the maps from parameter draws to E[Y(t, M(t'))]."""

    def __init__(self, data, unit, x1, names1, x2, names2, family, interaction, patterns=None):
        self.unit, self.family, self.interaction = unit, family, interaction
        self.m = np.asarray(data.mediator(unit), dtype=float)
        self.t = np.asarray(data.t, dtype=float)
        self.y = np.asarray(data.y, dtype=float)
        self.x1, self.x2 = x1, x2
        self.n, self.d = self.m.shape
        tn = data.treatment_name
        mcols = list(data.columns_of(unit))
        self.z = np.column_stack([np.ones(self.n), self.t, x1])
        self.z_names = ["Intercept", tn, *names1]
        blocks = [np.ones(self.n), self.t, self.m]
        self.w_names = ["Intercept", tn, *mcols]
        if interaction:
            blocks.append(self.t[:, None] * self.m)
            self.w_names += [f"{tn}:{c}" for c in mcols]
        blocks.append(x2)
        self.w_names += list(names2)
        self.w = np.column_stack(blocks)
        d, q2 = self.d, x2.shape[1]
        self.sl_b = slice(2, 2 + d)
        self.sl_c = slice(2 + d, 2 + 2 * d) if interaction else None
        self.sl_x = slice(self.w.shape[1] - q2, self.w.shape[1])
        self.first_stage, self.second_stage = list(names1), list(names2)
        patterns = _patterns(x1, x2) if patterns is None else patterns
        self.x1u, self.x2u, self.pattern_share, self.pattern_of = patterns

    # ---- fitting ------------------------------------------------------------------------------
    def fit(self) -> None:
        self.b_med, self.zz_inv, resid = _ols(self.z, self.m, self.z_names, f"mediator model of unit {self.unit!r}")
        self.p1 = self.z.shape[1]
        self.med_rss = resid.T @ resid
        self.sigma = self.med_rss / (self.n - self.p1)
        self.l_sigma = _chol(self.sigma)
        centred = self.m - self.m.mean(0)
        self.med_r2 = 1.0 - np.diag(self.med_rss) / np.einsum("ij,ij->j", centred, centred)
        what = f"outcome model of unit {self.unit!r}"
        self.out_rss = self.out_r2 = self.ww_inv = None
        if self.family == "gaussian":
            self.gamma, self.ww_inv, resid = _ols(self.w, self.y, self.w_names, what)
            self.out_rss = float(resid @ resid)
            self.out_cov = self.ww_inv * self.out_rss / (self.n - self.w.shape[1])
            self.out_r2 = 1.0 - self.out_rss / float(((self.y - self.y.mean()) ** 2).sum())
        else:
            _ols(self.w, self.y, self.w_names, what)  # rank check with named columns
            self.gamma, self.out_cov = _glm(self.w, self.y, self.family, what)
        self.l_gamma = _chol(self.out_cov)

    def betas(self, gam: np.ndarray) -> np.ndarray:
        """(S, 2, d): the mediator slopes b + t c of the outcome model for t = 0, 1."""
        b = gam[:, self.sl_b]
        c = gam[:, self.sl_c] if self.interaction else np.zeros_like(b)
        return np.stack([b, b + c], axis=1)

    def point_params(self):
        gam = self.gamma[None]
        beta = self.betas(gam)
        h = np.einsum("pd,std->stp", self.b_med, beta)
        v = np.einsum("std,de,sue->stu", beta, self.sigma, beta)
        return gam, h, v

    def quasi_bayes_params(self, n_sims: int, rng: np.random.Generator):
        """Draw outcome coefficients, then the mediator projections B_s (b + t c) given them (see module doc)."""
        gam = self.gamma + rng.standard_normal((n_sims, len(self.gamma))) @ self.l_gamma.T
        beta = self.betas(gam)
        u = beta @ self.l_sigma  # u_t' u_t' = beta_t' Sigma beta_t'
        v = np.einsum("std,sud->stu", u, u)
        l00, l10, l11 = _chol2(v)
        e = rng.standard_normal((n_sims, self.p1, 2))
        zeta = np.stack([l00[:, None] * e[..., 0], l10[:, None] * e[..., 0] + l11[:, None] * e[..., 1]], axis=1)
        l_x = np.linalg.cholesky(self.zz_inv)
        h = np.einsum("pd,std->stp", self.b_med, beta) + np.einsum("pq,stq->stp", l_x, zeta)
        return gam, h, v

    def bootstrap(self, n_sims: int, noise: str, rng: np.random.Generator) -> np.ndarray:
        """Q[s, t, t'] for n_sims resamples (within treatment arms), both models refitted on each."""
        chunk = int(max(1, min(n_sims, _BUDGET // (self.n * max(self.w.shape[1], self.d, 4)))))
        out = []
        for start in range(0, n_sims, chunk):
            counts = stratified_counts(self.t, min(chunk, n_sims - start), rng).T.astype(float)
            out.append(self.resample_means(counts, noise, rng))
        return np.concatenate(out)

    def resample_means(self, counts: np.ndarray, noise: str, rng: np.random.Generator) -> np.ndarray:
        """Q[s, t, t'] with both models refitted on the resamples given by ``counts`` (n, S), at once."""
        if self.family == "gaussian":
            gam = _solve_stack(_gram(self.w, counts), (counts * self.y[:, None]).T @ self.w)
        else:
            gam = _glm_batch(self.w, self.y, counts, self.gamma, self.family)
        beta = self.betas(gam)
        proj = [self.m @ beta[:, t].T for t in (0, 1)]  # (n, S) each: M_i' beta_t
        zgram = _gram(self.z, counts)
        h = np.stack([_solve_stack(zgram, (counts * proj[t]).T @ self.z) for t in (0, 1)], axis=1)
        resid = [proj[t] - self.z @ h[:, t].T for t in (0, 1)]
        v = np.empty((counts.shape[1], 2, 2))
        for t, u in ((0, 0), (0, 1), (1, 1)):
            v[:, t, u] = v[:, u, t] = (resid[t] * resid[u] * counts).sum(0) / (self.n - self.p1)
        return self.potential_means(gam, h, v, counts / self.n, noise, rng)

    # ---- effects ------------------------------------------------------------------------------
    def potential_means(self, gam, h, v, weights, noise: str, rng: np.random.Generator) -> np.ndarray:
        """Q[s, t, t'] = sum_i w_i E[Y_i(t, M_i(t'))] for S parameter sets.

        gam: (S, p2) outcome coefficients; h: (S, 2, p1) mediator projections B (b + t c); v: (S, 2, 2)
        covariances (b + t c)' Sigma (b + t c'); weights: None (uniform) or (n, S), columns summing to 1.
        """
        s = gam.shape[0]
        const = np.empty((s, 2, 2))
        for t in (0, 1):
            for tp in (0, 1):
                const[:, t, tp] = gam[:, 0] + t * gam[:, 1] + h[:, t, 0] + tp * h[:, t, 1]
        gx = gam[:, self.sl_x]
        if self.family == "gaussian":
            return self._gaussian_means(const, h, gx, v, weights, noise, rng)
        shared = weights is None  # one weight vector for every draw
        if noise == "integrate":  # one row per covariate pattern, weighted by its share of the rows
            x1, x2 = self.x1u, self.x2u
            weights = self.pattern_share[:, None] if shared else self.pattern_of @ weights
        else:
            x1, x2 = self.x1, self.x2
        q = np.empty((s, 2, 2))
        chunk = max(1, _BUDGET // len(x1))
        for a in range(0, s, chunk):
            sl = slice(a, min(s, a + chunk))
            w = None if weights is None else weights if shared else weights[:, sl]
            rows = [x1 @ h[sl, t, 2:].T + x2 @ gx[sl].T for t in (0, 1)]  # (rows, cs) each
            for tp in (0, 1):
                if noise == "simulate":
                    l00, l10, l11 = _chol2(v[sl])
                    z0 = rng.standard_normal((len(x1), len(l00)))
                    z1 = rng.standard_normal(z0.shape) if self.interaction else 0.0
                    eps = (l00 * z0, l10 * z0 + l11 * z1)
                for t in (0, 1):
                    eta = rows[t] + const[sl, t, tp]
                    if noise == "simulate":
                        mean = _inv_link(eta + eps[t], self.family)
                    else:
                        mean = _integrated_mean(eta, v[sl, t, t], self.family)
                    q[sl, t, tp] = mean.mean(0) if w is None else (mean * w).sum(0)
        return q

    def _gaussian_means(self, const, h, gx, v, weights, noise, rng):
        """Identity link: the row average passes through the linear predictor, so only column means enter."""
        if weights is None:
            x1bar, x2bar, sw2 = self.x1.mean(0)[None], self.x2.mean(0)[None], np.full(len(const), 1.0 / self.n)
        else:
            x1bar, x2bar, sw2 = weights.T @ self.x1, weights.T @ self.x2, (weights**2).sum(0)
        q = const + np.einsum("sq,sq->s", x2bar, gx)[:, None, None]
        for t in (0, 1):
            q[:, t, :] += np.einsum("sq,sq->s", x1bar, h[:, t, 2:])[:, None]
        if noise == "simulate":  # the row average of the simulated mediator noise, drawn exactly
            l00, l10, l11 = _chol2(v * sw2[:, None, None])
            for tp in (0, 1):
                z0 = rng.standard_normal(len(q))
                z1 = rng.standard_normal(len(q)) if self.interaction else 0.0
                q[:, 0, tp] += l00 * z0
                q[:, 1, tp] += l10 * z0 + l11 * z1
        return q

    def info(self) -> dict:
        """What rho sensitivity and users need: coefficients, covariances, residual sums of squares, R^2."""
        return {"outcome_family": self.family, "interaction": self.interaction, "n": self.n, "dim": self.d,
                "first_stage": self.first_stage, "second_stage": self.second_stage,
                "mediator_names": self.z_names, "mediator_coef": self.b_med, "mediator_xtx_inv": self.zz_inv,
                "mediator_rss": self.med_rss, "mediator_sigma": self.sigma, "mediator_r2": self.med_r2,
                "outcome_names": self.w_names, "outcome_coef": self.gamma, "outcome_cov": self.out_cov,
                "outcome_xtx_inv": self.ww_inv, "outcome_rss": self.out_rss, "outcome_r2": self.out_r2}


def _glm(w: np.ndarray, y: np.ndarray, family: str, what: str):
    """Binomial GLM fit with statsmodels; separation or non-convergence raises ConvergenceError."""
    import statsmodels.api as sm  # noqa: PLC0415 - statsmodels is slow to import; only needed here
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning  # noqa: PLC0415

    link = sm.families.links.Probit() if family == "probit" else sm.families.links.Logit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        try:
            res = sm.GLM(y, w, family=sm.families.Binomial(link=link)).fit()
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
