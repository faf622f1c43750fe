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

A binary mediator (``mediator_family="logit"`` or ``"probit"``, one 0/1 column) has a GLM mediator model, and
E[Y(t, M(t'))] is the exact two-term sum p_i(t') E[Y | t, 1, x_i] + (1 - p_i(t')) E[Y | t, 0, x_i] with
p_i(t') = P(M = 1 | t', x_i); ``"simulate"`` draws M ~ Bernoulli(p_i(t')) instead, as R does.

Sampling weights enter the fits (weighted least squares, weighted GLM) and every average over rows; with
weights or a cluster the coefficient covariance of the quasi-Bayes draws is the CR1 sandwich (rows are their
own clusters when only weights are given), and the bootstrap resamples whole clusters.

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
from scipy import stats
from scipy import sparse
from scipy.special import ndtr

from .._calibration import few, is_conservative_width, warn_uncalibrated
from ..errors import CalibrationWarning, DataError
from ..graph import resolve
from ..inference import Effect, cluster_counts, stratified_counts
from ..parallel import progress_iter
from ..positivity import check_positivity
from ..results import MediationResult, add_derived
from ._glm import (_chol, _chol2, _glm, _glm_batch, _gram, _integrated_mean, _inv_link, _logit_normal,  # noqa: F401
                   _ols, _solve_stack, cluster_sums, cr1_factor, hc3_wald, robust_cov)
from .base import MediationEstimator, attach_roles, check_units, register, sample_roles
from .paths import check_paths

FAMILIES = ("gaussian", "logit", "probit")
METHODS = ("quasi-bayes", "bootstrap")
NOISE = ("integrate", "simulate")
CHEAP_DRAWS, DRAWS = 10_000, 1_000  # default n_sims: quasi-Bayes with a gaussian outcome, everything else
_BUDGET = 1 << 22  # elements of one (rows x draws) work array; fixed, so chunking never changes the numbers


@register("parametric")
class ParametricMediation(MediationEstimator):
    """Imai-Keele-Tingley parametric mediation: OLS mediator model, gaussian/logit/probit outcome model.

    Parameters
    ----------
    outcome_family : ``"gaussian"`` (OLS), ``"logit"`` or ``"probit"`` (binomial GLM; Y must be 0/1).
    interaction : add the T x M columns to the outcome model, so that the ACME may differ between arms
        (default True). Without them the ACMEs of both arms are biased whenever the outcome has a T x M
        interaction (1.3-4.7 SE on the grid's interaction process, coverage 0.00-0.70 from n = 300), and the
        test that warns about it fires in only about a third of such data sets at n = 300. With them the
        linear process, which has no interaction, still covers 0.94-0.96 at n = 300 (docs/coverage.md).
    method : ``"quasi-bayes"`` (draw coefficients from their asymptotic normal) or ``"bootstrap"``
        (resample rows within treatment arms and refit).
    n_sims : number of quasi-Bayes draws or bootstrap replicates. None (default): 10,000 draws for a gaussian
        outcome model, whose draws cost little, and 1,000 draws (logit, probit) or replicates (bootstrap)
        otherwise. With 1,000 draws the SE of one fit carries a Monte Carlo error of about 2% and the CI limits
        about 4%, and a fixed seed repeats that error on every data set: over 1,000 simulated data sets at
        n = 300 a unit's TE covered 0.929 (SE/SD 0.92) with 1,000 draws of one seed's stream.
    drop_unsupported : a topic with rows in one arm only raises PositivityError (default); True drops its rows
        first (:func:`deconfound.positivity.check_positivity`; the dropped topics in ``data.meta``).
    level : confidence level of the percentile intervals.
    random_state : int seed (each unit gets its own stream derived from the seed and the unit name),
        a numpy Generator, or None.
    mediator_noise : ``"integrate"`` (exact expectation over the mediator noise; default) or ``"simulate"``
        (one simulated mediator per row and draw, as R `mediation` and statsmodels do).
    mediator_family : ``"gaussian"`` (OLS, any number of columns) or ``"logit"`` / ``"probit"`` (binomial GLM
        of a single 0/1 mediator column).

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

    def __init__(self, outcome_family: str = "gaussian", interaction: bool = True, method: str = "quasi-bayes",
                 n_sims: int | None = None, level: float = 0.95, random_state=0, mediator_noise: str = "integrate",
                 mediator_family: str = "gaussian", drop_unsupported: bool = False):
        self.drop_unsupported = drop_unsupported
        self.outcome_family = outcome_family
        self.interaction = interaction
        self.method = method
        self.n_sims = n_sims
        self.level = level
        self.random_state = random_state
        self.mediator_noise = mediator_noise
        self.mediator_family = mediator_family

    def _check_settings(self) -> None:
        for name, value, allowed in (("outcome_family", self.outcome_family, FAMILIES),
                                     ("mediator_family", self.mediator_family, FAMILIES),
                                     ("method", self.method, METHODS),
                                     ("mediator_noise", self.mediator_noise, NOISE)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
        n_sims = self.n_sims
        if n_sims is not None and (isinstance(n_sims, bool) or not isinstance(n_sims, (int, np.integer)) or n_sims < 2):
            raise ValueError(f"n_sims: expected None or an integer >= 2, got {n_sims!r}")
        if not 0 < float(self.level) < 1:
            raise ValueError(f"level: expected a number in (0, 1), got {self.level!r}")
        if not isinstance(self.interaction, (bool, np.bool_)):
            raise TypeError(f"interaction: expected a bool, got {type(self.interaction).__name__}")

    @property
    def draws(self) -> int:
        """The number of draws or replicates that ``n_sims`` resolves to (see the class docstring)."""
        if self.n_sims is not None:
            return int(self.n_sims)
        cheap = self.method == "quasi-bayes" and self.outcome_family == "gaussian"
        return CHEAP_DRAWS if cheap else DRAWS

    def fit(self, data, *, graph=None, units=None, cluster=None, weights=None, counts=None,
            progress=None) -> MediationResult:
        """Fit both models per unit and simulate the effects; see the class docstring.

        ``cluster`` and ``weights`` (per-row arrays or confounder column names; default the data's own roles)
        give cluster-robust (CR1) quasi-Bayes draws or a cluster bootstrap, and sampling-weighted fits and
        averages. ``counts``: an (n_sims, n) matrix of resample counts for ``method="bootstrap"`` (e.g. from
        :func:`deconfound.bootstrap.draw_counts`), so that separate fits share their resamples.
        """
        self._check_settings()
        units = check_units(data, units)
        data = attach_roles(data, cluster, weights)  # the roles follow the rows positivity may drop
        if counts is not None:
            counts = np.asarray(counts)
            if self.method != "bootstrap" or counts.shape != (self.draws, data.n):
                raise ValueError(f"counts: expected method='bootstrap' and shape ({self.draws}, {data.n}), got "
                                 f"method={self.method!r} and shape {counts.shape}")
        g, adj = resolve(graph, data)
        data = check_positivity(data, adj.union, drop_unsupported=self.drop_unsupported, what="parametric mediation")
        cluster, weights = sample_roles(data)
        groups = None if cluster is None else np.unique(cluster, return_inverse=True)[1].reshape(-1)
        y = np.asarray(data.y, dtype=float)
        if self.outcome_family != "gaussian":
            levels = np.unique(y)
            if not set(levels.tolist()) <= {0.0, 1.0}:
                raise DataError(f"outcome {data.outcome_name!r}: expected binary 0/1 values for the "
                                f"{self.outcome_family} outcome family, got values {levels[:6].tolist()}"
                                f"{' ...' if len(levels) > 6 else ''}")
        notes = []
        if self.outcome_family == "gaussian" and set(np.unique(y).tolist()) <= {0.0, 1.0}:
            notes.append(warn_uncalibrated("parametric-binary", n=data.n, n_treated=data.n_treated))
        roomy = [u for u in units if is_conservative_width(data.mediator(u).shape[1], data.n)]
        if roomy:
            notes.append(warn_uncalibrated("parametric-conservative", n=data.n, n_treated=data.n_treated,
                                           conservative=True, what=f" (units {few(roomy)}: "
                                           f"{data.mediator(roomy[0]).shape[1]} columns for {data.n} rows)"))
        x1, names1 = _confounder_design(data, adj.first_stage)
        x2, names2 = _confounder_design(data, adj.second_stage)
        patterns = _patterns(x1, x2, weights)
        effects, diagnostics = {}, {}
        for unit in progress_iter(units, "parametric: units", progress):  # a bar on a terminal only
            model = _Model(data, unit, x1, names1, x2, names2, self.outcome_family, bool(self.interaction), patterns,
                           mediator_family=self.mediator_family, weights=weights, groups=groups)
            model.fit()
            note = _specification_note(model)
            if note:
                warnings.warn(note, CalibrationWarning, stacklevel=2)
                notes.append(note)
            rng = _unit_rng(self.random_state, unit)
            effects[unit], info = self._effects(model, rng, counts)
            diagnostics[unit] = {"parametric": info}
            te = effects[unit][("te", "average")]
            if te.ci[0] <= 0 <= te.ci[1]:
                notes.append(f"unit {unit!r}: the total effect's CI covers 0, so Prop. Mediated is unstable")
        notes.append(check_paths("parametric", data, units, adj.union, diagnostics))
        notes = [note for note in notes if note]
        if not adj.identified:
            notes.insert(0, f"graph {g.name}: effects are not identified (latent {list(adj.latent)}); the models "
                            f"adjust for the observed {list(adj.union)} only")
        settings = {"outcome_family": self.outcome_family, "mediator_family": self.mediator_family,
                    "cluster": None if groups is None else int(groups.max()) + 1, "weights": weights is not None,
                    "interaction": bool(self.interaction),
                    "method": self.method, "n_sims": self.draws, "mediator_noise": self.mediator_noise,
                    "point_estimate": "plug-in"}
        return MediationResult(estimator="parametric", effects=effects, n=data.n, n_treated=data.n_treated,
                               population="ate", graph=g.name, adjustment=adj.as_dict(), level=self.level,
                               random_state=self.random_state, settings=settings, diagnostics=diagnostics,
                               warnings=notes)

    def _effects(self, model: "_Model", rng: np.random.Generator, counts=None):
        q_hat = model.means(model.point_params(), None, "integrate", rng)[0]
        if self.method == "quasi-bayes":
            q = model.means(model.quasi_bayes_params(self.draws, rng), None, self.mediator_noise, rng)
        else:
            q = model.bootstrap(self.draws, self.mediator_noise, rng, counts)
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


def _patterns(x1: np.ndarray, x2: np.ndarray, weights=None):
    """Distinct covariate rows: rows sharing one (e.g. a topic) share E[Y | t, M(t'), x], so the integrated
    expectations are computed once per pattern. Returns (x1 rows, x2 rows, (weighted) share of rows,
    pattern x row map)."""
    n = len(x1)
    xx = np.column_stack([x1, x2])
    if xx.shape[1]:
        rows, inv = np.unique(xx, axis=0, return_inverse=True)
    else:
        rows, inv = np.zeros((1, 0)), np.zeros(n, dtype=np.intp)
    inv = inv.reshape(-1)
    share = np.bincount(inv, weights=weights, minlength=len(rows)) / n
    member = sparse.csr_matrix((np.ones(n), (inv, np.arange(n))), shape=(len(rows), n))
    return rows[:, :x1.shape[1]], rows[:, x1.shape[1]:], share, member


def _omitted_wald(model: "_Model", extra) -> tuple[float, float]:
    """HC3 Wald statistic and p-value (chi-squared) of adding the columns ``extra`` to the gaussian outcome
    model (NaN, 1 when they add nothing): the test dml's RESET uses, so unequal noise variance is no curve."""
    w1 = np.column_stack([model.w, extra])
    rank = np.linalg.matrix_rank(w1)
    if model.n <= rank or rank <= np.linalg.matrix_rank(model.w):  # no residual df, or nothing added
        return float("nan"), 1.0
    stat, k, _ = hc3_wald(w1, model.y, list(range(model.w.shape[1], w1.shape[1])))
    return (float(stat), float(stats.chi2.sf(stat, k))) if k else (float("nan"), 1.0)


def _specification_note(model: "_Model", alpha: float = 0.01, reset_alpha: float = 0.001) -> str | None:
    """A note when the gaussian outcome model is rejected: without the T x M columns, first by an HC3 Wald test
    at ``alpha`` of those columns (the interaction cell of docs/coverage.md); then by Ramsey's RESET at
    ``reset_alpha`` (the squared and cubed fitted values; an outcome nonlinear in T, M or X, the probit cell).
    Its effects are then biased."""
    if model.family != "gaussian" or model.robust:
        return None
    stat, p = (np.nan, 1.0) if model.interaction else _omitted_wald(model, model.t[:, None] * model.m)
    if p < alpha:
        return (f"parametric: unit {model.unit!r}'s outcome shows a T x M interaction that the model with "
                f"interaction=False leaves out (HC3 Wald chi2 = {stat:.3g}, p = {p:.2g}); its ACMEs are then biased "
                "in both arms (see the interaction cell of docs/coverage.md): refit with interaction=True, the default")
    fitted = model.w @ np.asarray(model.gamma).reshape(-1)
    z = (fitted - fitted.mean()) / max(float(fitted.std()), 1e-300)
    stat, p = _omitted_wald(model, np.column_stack([z**2, z**3]))
    if p < reset_alpha:
        return (f"parametric: unit {model.unit!r}'s outcome is not linear in the default model's terms (RESET "
                f"HC3 Wald chi2 = {stat:.3g}, p = {p:.2g}); its effects are then biased (see the probit cell of "
                "docs/coverage.md): use dml, or an outcome_family that fits the outcome")
    return None


class _Model:
    """The two fitted models of one unit, and the maps from parameter draws to E[Y(t, M(t'))]."""

    def __init__(self, data, unit, x1, names1, x2, names2, family, interaction, patterns=None, *,
                 mediator_family="gaussian", weights=None, groups=None):
        self.unit, self.family, self.interaction = unit, family, interaction
        self.med_family, self.sw, self.groups = mediator_family, weights, groups
        self.robust = weights is not None or groups is not None
        self.row_w = None if weights is None else weights / weights.sum()
        self.m = np.asarray(data.mediator(unit), dtype=float)
        self.t = np.asarray(data.t, dtype=float)
        self.y = np.asarray(data.y, dtype=float)
        self.x1, self.x2 = x1, x2
        self.n, self.d = self.m.shape
        if mediator_family != "gaussian":
            levels = np.unique(self.m)
            if self.d != 1 or not set(levels.tolist()) <= {0.0, 1.0}:
                raise DataError(f"mediator unit {unit!r}: expected one 0/1 column for the {mediator_family} "
                                f"mediator family, got {self.d} column(s) with values {levels[:6].tolist()}")
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
        patterns = _patterns(x1, x2, weights) if patterns is None else patterns
        self.x1u, self.x2u, self.pattern_share, self.pattern_of = patterns

    # ---- fitting ------------------------------------------------------------------------------
    def fit(self) -> None:
        self.p1 = self.z.shape[1]
        what = f"mediator model of unit {self.unit!r}"
        self.b_med, self.zz_inv, resid = _ols(self.z, self.m, self.z_names, what, self.sw)
        self.med_rss = self.sigma = self.med_u = None
        if self.med_family == "gaussian":
            wr = resid if self.sw is None else resid * self.sw[:, None]
            self.med_rss = resid.T @ wr
            self.sigma = self.med_rss / (self.n - self.p1)
            self.l_sigma = _chol(self.sigma)
            centred = self.m - np.average(self.m, axis=0, weights=self.sw)
            total = np.einsum("ij,ij->j", centred, centred if self.sw is None else centred * self.sw[:, None])
            self.med_r2 = 1.0 - np.diag(self.med_rss) / total
            self.med_cov = self.sigma[0, 0] * self.zz_inv if self.d == 1 else None  # of a scalar mediator's B
            if self.robust:  # cluster sums of z_i (w_i r_i)', scaled so that cov(vec B) = B u'u B
                u = cluster_sums(self.z[:, :, None] * wr[:, None, :], self.groups)
                self.med_u = u * np.sqrt(cr1_factor(self.n, self.p1, self.groups))
                if self.d == 1:
                    self.med_cov = self.zz_inv @ (self.med_u[..., 0].T @ self.med_u[..., 0]) @ self.zz_inv
        else:
            self.b_med, self.med_cov = _glm(self.z, self.m[:, 0], self.med_family, what, self.sw, self.groups)
            self.b_med = self.b_med[:, None]
            self.med_r2 = None
        self.l_med = _chol(self.med_cov) if self.med_family != "gaussian" else None
        what = f"outcome model of unit {self.unit!r}" + (
            f" (with its {self.d} T x M columns; interaction=False drops them)" if self.interaction else "")
        self.out_rss = self.out_r2 = self.ww_inv = None
        if self.family == "gaussian":
            self.gamma, self.ww_inv, resid = _ols(self.w, self.y, self.w_names, what, self.sw)
            wr = resid if self.sw is None else resid * self.sw
            self.out_rss = float(resid @ wr)
            if self.robust:
                self.out_cov = robust_cov(self.w, resid, self.ww_inv, self.sw, self.groups)
            else:
                self.out_cov = self.ww_inv * self.out_rss / (self.n - self.w.shape[1])
            ybar = np.average(self.y, weights=self.sw)
            self.out_r2 = 1.0 - self.out_rss / float(((self.y - ybar) ** 2 * (1 if self.sw is None else self.sw)).sum())
        else:
            _ols(self.w, self.y, self.w_names, what)  # rank check with named columns
            self.gamma, self.out_cov = _glm(self.w, self.y, self.family, what, self.sw, self.groups)
        self.l_gamma = _chol(self.out_cov)

    def betas(self, gam: np.ndarray) -> np.ndarray:
        """(S, 2, d): the mediator slopes b + t c of the outcome model for t = 0, 1."""
        b = gam[:, self.sl_b]
        c = gam[:, self.sl_c] if self.interaction else np.zeros_like(b)
        return np.stack([b, b + c], axis=1)

    def point_params(self):
        gam = self.gamma[None]
        if self.med_family != "gaussian":
            return gam, self.b_med[:, 0][None]
        beta = self.betas(gam)
        h = np.einsum("pd,std->stp", self.b_med, beta)
        v = np.einsum("std,de,sue->stu", beta, self.sigma, beta)
        return gam, h, v

    def quasi_bayes_params(self, n_sims: int, rng: np.random.Generator):
        """Draw outcome coefficients, then the mediator projections B_s (b + t c) given them (see module doc)."""
        gam = self.gamma + rng.standard_normal((n_sims, len(self.gamma))) @ self.l_gamma.T
        if self.med_family != "gaussian":
            return gam, self.b_med[:, 0] + rng.standard_normal((n_sims, self.p1)) @ self.l_med.T
        beta = self.betas(gam)
        u = beta @ self.l_sigma  # u_t' u_t' = beta_t' Sigma beta_t'
        v = np.einsum("std,sud->stu", u, u)
        if self.robust:  # B_s = B + (Z'WZ)^-1 sum_g u_g e_gs: exactly the CR1 covariance of vec B
            e = rng.standard_normal((n_sims, len(self.med_u)))
            b_s = self.b_med + np.einsum("pq,sqd->spd", self.zz_inv,
                                         (e @ self.med_u.reshape(len(self.med_u), -1)).reshape(n_sims, self.p1, -1))
            return gam, np.einsum("spd,std->stp", b_s, beta), v
        l00, l10, l11 = _chol2(v)
        e = rng.standard_normal((n_sims, self.p1, 2))
        zeta = np.stack([l00[:, None] * e[..., 0], l10[:, None] * e[..., 0] + l11[:, None] * e[..., 1]], axis=1)
        l_x = np.linalg.cholesky(self.zz_inv)
        h = np.einsum("pd,std->stp", self.b_med, beta) + np.einsum("pq,stq->stp", l_x, zeta)
        return gam, h, v

    def bootstrap(self, n_sims: int, noise: str, rng: np.random.Generator, given=None) -> np.ndarray:
        """Q[s, t, t'] for n_sims resamples (within treatment arms; whole clusters with a cluster), refitted."""
        chunk = int(max(1, min(n_sims, _BUDGET // (self.n * max(self.w.shape[1], self.d, 4)))))
        strata = self.t
        if self.groups is not None and np.any(np.bincount(self.groups, weights=self.t)
                                              % np.bincount(self.groups) != 0):
            strata = None  # clusters hold both arms: resample clusters unstratified
        out = []
        for start in range(0, n_sims, chunk):
            size = min(chunk, n_sims - start)
            if given is not None:
                counts = given[start:start + size].T.astype(float)
            elif self.groups is None:
                counts = stratified_counts(self.t, size, rng).T.astype(float)
            else:
                counts = cluster_counts(self.groups, size, rng, strata=strata).T.astype(float)
            out.append(self.resample_means(counts if self.sw is None else counts * self.sw[:, None], noise, rng))
        return np.concatenate(out)

    def resample_means(self, counts: np.ndarray, noise: str, rng: np.random.Generator) -> np.ndarray:
        """Q[s, t, t'] with both models refitted on the resamples given by ``counts`` (n, S), at once."""
        if self.family == "gaussian":
            gam = _solve_stack(_gram(self.w, counts), (counts * self.y[:, None]).T @ self.w)
        else:
            gam = _glm_batch(self.w, self.y, counts, self.gamma, self.family)
        share = counts / counts.sum(0)
        if self.med_family != "gaussian":
            alpha = _glm_batch(self.z, self.m[:, 0], counts, self.b_med[:, 0], self.med_family)
            return self.binary_means(gam, alpha, share, noise, rng)
        beta = self.betas(gam)
        proj = [self.m @ beta[:, t].T for t in (0, 1)]  # (n, S) each: M_i' beta_t
        zgram = _gram(self.z, counts)
        h = np.stack([_solve_stack(zgram, (counts * proj[t]).T @ self.z) for t in (0, 1)], axis=1)
        resid = [proj[t] - self.z @ h[:, t].T for t in (0, 1)]
        v = np.empty((counts.shape[1], 2, 2))
        for t, u in ((0, 0), (0, 1), (1, 1)):
            v[:, t, u] = v[:, u, t] = (resid[t] * resid[u] * counts).sum(0) / (self.n - self.p1)
        return self.potential_means(gam, h, v, share, noise, rng)

    # ---- effects ------------------------------------------------------------------------------
    def means(self, params, weights, noise: str, rng: np.random.Generator) -> np.ndarray:
        """Q[s, t, t'] for the parameter sets of :meth:`point_params` / :meth:`quasi_bayes_params`."""
        if self.med_family != "gaussian":
            return self.binary_means(*params, weights, noise, rng)
        return self.potential_means(*params, weights, noise, rng)

    def _rows(self, weights, noise):
        """(x1, x2, weights, shared): the rows to average over (patterns when integrating) and their weights."""
        shared = weights is None  # one weight vector for every draw
        if noise == "integrate":  # one row per covariate pattern, weighted by its share of the rows
            return self.x1u, self.x2u, (self.pattern_share[:, None] if shared else self.pattern_of @ weights), shared
        if shared and self.row_w is not None:
            weights = self.row_w[:, None]
        return self.x1, self.x2, weights, shared

    def binary_means(self, gam, alpha, weights, noise: str, rng: np.random.Generator) -> np.ndarray:
        """Q[s, t, t'] for a binary mediator: sum over m in {0, 1} of P(M = m | t', x) E[Y | t, m, x]."""
        s = gam.shape[0]
        x1, x2, weights, shared = self._rows(weights, noise)
        q = np.empty((s, 2, 2))
        chunk = max(1, _BUDGET // len(x1))
        link = (lambda e: e) if self.family == "gaussian" else (lambda e: _inv_link(e, self.family))  # noqa: E731
        for a in range(0, s, chunk):
            sl = slice(a, min(s, a + chunk))
            w = None if weights is None else weights if shared else weights[:, sl]
            lin_m = x1 @ alpha[sl, 2:].T + alpha[sl, 0]
            lin_y = x2 @ gam[sl, self.sl_x].T + gam[sl, 0]
            slope = self.betas(gam[sl])[:, :, 0]  # (cs, 2)
            for tp in (0, 1):
                p = _inv_link(lin_m + tp * alpha[sl, 1], self.med_family)
                if noise == "simulate":
                    draw = (rng.random(p.shape) < p).astype(float)
                for t in (0, 1):
                    base = lin_y + t * gam[sl, 1]
                    if noise == "simulate":
                        mean = link(base + slope[:, t] * draw)
                    else:
                        mean = p * link(base + slope[:, t]) + (1 - p) * link(base)
                    q[sl, t, tp] = mean.mean(0) if w is None else (mean * w).sum(0)
        return q

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
        x1, x2, weights, shared = self._rows(weights, noise)
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
        if weights is None and self.row_w is None:
            x1bar, x2bar, sw2 = self.x1.mean(0)[None], self.x2.mean(0)[None], np.full(len(const), 1.0 / self.n)
        elif weights is None:
            x1bar, x2bar = (self.row_w @ self.x1)[None], (self.row_w @ self.x2)[None]
            sw2 = np.full(len(const), float(self.row_w @ self.row_w))
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
        out = {"outcome_family": self.family, "mediator_family": self.med_family, "interaction": self.interaction,
                "n": self.n, "dim": self.d, "robust": self.robust,
                "first_stage": self.first_stage, "second_stage": self.second_stage,
                "mediator_names": self.z_names, "mediator_coef": self.b_med, "mediator_xtx_inv": self.zz_inv,
                "mediator_cov": self.med_cov,
                "mediator_rss": self.med_rss, "mediator_sigma": self.sigma, "mediator_r2": self.med_r2,
                "outcome_names": self.w_names, "outcome_coef": self.gamma, "outcome_cov": self.out_cov,
                "outcome_xtx_inv": self.ww_inv, "outcome_rss": self.out_rss, "outcome_r2": self.out_r2}
        if self.d == 1 and not self.robust:
            out["rho_parts"] = self._rho_parts()
        return out

    def _rho_parts(self):
        """Pieces of Imai rho sensitivity beyond lm/lm (``deconfound.medsens``), for a scalar mediator."""
        if self.med_family == "probit" and self.family == "gaussian":
            za = self.z @ self.b_med[:, 0]
            pdf, cdf = np.exp(-0.5 * za**2) / np.sqrt(2 * np.pi), ndtr(za)
            lam = np.where(self.m[:, 0] == 1, pdf / cdf, -pdf / (1 - cdf))  # E[e_M | M, T, X]
            delta = self.ww_inv @ (self.w.T @ lam)
            fitted = self.w @ delta
            zt = [self.z.copy(), self.z.copy()]
            zt[0][:, 1], zt[1][:, 1] = 0.0, 1.0
            p = [ndtr(z @ self.b_med[:, 0]) for z in zt]
            dens = [np.exp(-0.5 * (z @ self.b_med[:, 0]) ** 2) / np.sqrt(2 * np.pi) for z in zt]
            return {"delta": delta, "h2": float(fitted @ fitted) / (self.n - self.w.shape[1]),
                    "shift": float(np.mean(p[1] - p[0])),
                    "shift_grad": (dens[1][:, None] * zt[1] - dens[0][:, None] * zt[0]).mean(0),
                    "latent_r2": float(np.var(za) / (np.var(za) + 1.0))}
        if self.med_family == "gaussian" and self.family == "probit":
            eta = self.w @ self.gamma
            return {"model": self, "resid": (self.m[:, 0] - self.z @ self.b_med[:, 0]) / np.sqrt(self.sigma[0, 0]),
                    "latent_r2": float(np.var(eta) / (np.var(eta) + 1.0))}
        return None
