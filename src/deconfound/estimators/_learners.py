"""The propensity models of the weighting estimator, with the influence blocks of their estimating equations.

p(X) = P(T=1|X): implied by entropy balancing (default) or an unpenalized logistic regression. Both are returned
as h: the odds p/(1-p) on control rows and 1/odds on treated rows.

p(M,X) = P(T=1|M,X): by default an unpenalized logistic regression on the standardized [M, X] (scikit-learn)
when there are at least ``EPV`` rows of the smaller arm per feature; otherwise a logistic regression with an L2
penalty on the mediator columns only, its strength chosen by 5-fold cross-validated deviance (glum, which takes
a penalty per coefficient). Any scikit-learn classifier can replace it.

Also the Hajek means that ``weighting`` and ``eb_total`` share, with their stacked influence values
(``_mu_scores``; sampling or frequency weights enter as the per-row multiplier ``keep``).
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ..bootstrap import bootstrap
from ..errors import PositivityError
from ..weights import balance_matrix, eb_atc, eb_att

TINY = 1e-12
EPV = 5  # rows of the smaller arm per feature below which p(M,X) is penalized (Vittinghoff & McCulloch 2007)
CV_CS = np.logspace(-4, 4, 10)   # inverse penalties (sum-of-losses scale) tried by cross-validation
DEFAULT_LEARNER = (f"logistic regression on the standardized [M, X]: unpenalized when the smaller arm has at "
                   f"least {EPV} rows per feature; otherwise an L2 penalty on the mediator columns only (X and the "
                   "intercept unpenalized), strength chosen by 5-fold stratified CV of the deviance over "
                   "C in logspace(-4, 4, 10) (glum)")


# ---- p(X) ---------------------------------------------------------------------------------------------------
def eb_block(w_design, source, target, h, f=None):
    """Influence of an entropy balancing fit on h = exp(alpha'W) (source rows): (phi (n, p), dh/dalpha (n, p)).

    The fit solves mean(f (S h W - R W)) = 0 (S: source rows, R: target rows, f: sampling weights, default
    1), so phi = -f g J^{-1} with g = S h W - R W and J = mean(f S h W W')."""
    n = len(h)
    f = np.ones(n) if f is None else f
    sh = np.where(source, h, 0.0)
    g = f[:, None] * (sh[:, None] * w_design - target[:, None] * w_design)
    jac = (w_design * (f * sh)[:, None]).T @ w_design / n
    phi = -g @ np.linalg.pinv(jac).T
    return phi, sh[:, None] * w_design


def eb_odds(bm, t, f, *, blocks: bool):
    """h = odds p/(1-p) on controls (ATT fit) and 1/odds on treated (ATC fit); influence blocks if asked."""
    tr = t == 1
    n1, n0 = float(f[tr].sum()), float(f[~tr].sum())
    h = np.ones(len(t))
    pos = f > 0
    info = {}
    if bm.values.shape[1] == 0:
        h[~tr], h[tr] = n1 / n0, n0 / n1
    else:
        att, atc = eb_att(bm, t, base_weights=f), eb_atc(bm, t, base_weights=f)
        c, r = ~tr & pos, tr & pos
        h[c] = n1 * att.weights[c] / f[c]
        h[r] = n0 * atc.weights[r] / f[r]
        info = {"att": att, "atc": atc}
    if (h[pos] <= 0).any():
        k = int((h[pos] <= 0).sum())
        raise PositivityError(f"p(X): expected 0 < p(X) < 1, got {k} rows forced to p(X) = 0 or 1 by entropy "
                              "balancing (a covariate value seen in one arm only)")
    out = []
    if blocks:
        w = np.column_stack([np.ones(len(t)), bm.values])
        out = [eb_block(w, ~tr, tr, h), eb_block(w, tr, ~tr, h)]
    return h, out, info


def logit_odds(bm, t, f, *, blocks: bool):
    """The same h from an unpenalized logistic regression of T on c(x) (intercept only without covariates)."""
    tr = t == 1
    n = len(t)
    w = np.column_stack([np.ones(n), bm.values])
    if bm.values.shape[1] == 0:
        p = np.full(n, f[tr].sum() / f.sum())
    else:
        model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=5000).fit(bm.values, t, sample_weight=f)
        p = model.predict_proba(bm.values)[:, 1]
    p = np.clip(p, TINY, 1 - TINY)
    h = np.where(tr, (1 - p) / p, p / (1 - p))
    out = []
    if blocks:
        hess = (w * (p * (1 - p))[:, None]).T @ w / n
        phi = (w * (t - p)[:, None]) @ np.linalg.pinv(hess).T
        out = [(phi, np.where(tr, -h, h)[:, None] * w)]
    return h, out, {}


# ---- p(M, X) ------------------------------------------------------------------------------------------------
def features(m, xc, pca, f):
    """[M, X], the mediator block replaced by its top ``pca`` principal components when it is wider.

    The PCA weights the rows by f (bootstrap counts times sampling weights): a count of k is k copies of the
    row, so a replicate refits it on its own resample, and a weight of 0.5 is half a row, not none."""
    m = np.asarray(m, dtype=float)
    if pca is not None and m.shape[1] > pca:
        w = f / f.sum()
        centred = m - w @ m
        # by hand: scikit-learn's PCA takes no row weights
        vecs = np.linalg.eigh((centred * w[:, None]).T @ centred)[1]  # eigenvalues ascending
        m = centred @ vecs[:, ::-1][:, :int(pca)]
    return np.column_stack([m, xc]) if xc.shape[1] else m


def standardize(z, n_x, f):
    """(z standardized with f-weighted moments, the same with an intercept column, the penalty mask: 1 on the
    mediator columns). Constant columns (an empty topic level) are dropped: they carry no information."""
    wts = f / f.sum()
    mu = wts @ z
    sd = np.sqrt(wts @ (z - mu) ** 2)
    varies = sd > 1e-12
    zs = ((z - mu) / np.where(varies, sd, 1.0))[:, varies]
    zt = np.column_stack([np.ones(len(z)), zs])
    mask = np.r_[0.0, (np.arange(z.shape[1]) < z.shape[1] - n_x)[varies].astype(float)]
    return zs, zt, mask


def default_c(zs, t, f, mask, random_state) -> float:
    """The default learner's C: inf (unpenalized) when the smaller arm has EPV rows per feature, else by CV."""
    if min(f[t == 1].sum(), f[t == 0].sum()) >= EPV * zs.shape[1]:
        return float("inf")
    from glum import GeneralizedLinearRegressorCV

    total = f.sum()
    folds = StratifiedKFold(5, shuffle=True, random_state=random_state)
    model = GeneralizedLinearRegressorCV(family="binomial", l1_ratio=0, P2=mask[1:], alphas=np.sort(1 / (CV_CS * total))[::-1],
                                         cv=folds, gradient_tol=1e-8)
    model.fit(zs, t, sample_weight=f)
    return float(1 / (model.alpha_ * total))


def _penalized(zs, t, f, mask, c):
    """(intercept and coefficients, penalty vector) of the logistic regression with penalty mask / c."""
    if np.isinf(c):
        model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=1000)
        model.fit(zs, t, sample_weight=f)
        return np.r_[model.intercept_, model.coef_.ravel()], np.zeros(len(mask))
    from glum import GeneralizedLinearRegressor

    alpha = 1 / (c * f.sum())
    model = GeneralizedLinearRegressor(family="binomial", l1_ratio=0, P2=mask[1:], alpha=alpha, gradient_tol=1e-10)
    model.fit(zs, t, sample_weight=f)
    return np.r_[model.intercept_, model.coef_], mask / c


def l2_logistic_c(model):
    """C of a fitted plain L2 scikit-learn logistic regression with intercept, or None (no IF correction)."""
    if not isinstance(model, LogisticRegression) or not model.fit_intercept or model.class_weight is not None:
        return None
    ratio = getattr(model, "l1_ratio_", getattr(model, "l1_ratio", 0.0))
    penalty = getattr(model, "penalty", "l2")
    if np.any(np.ravel(ratio if ratio is not None else 0.0) != 0) or penalty in ("l1", "elasticnet"):
        return None
    c = model.C_ if hasattr(model, "C_") else model.C
    return float(np.ravel(c)[0])


def fit_pmx(z, n_x, t, f, learner, fixed_c, random_state, *, blocks: bool):
    """p(M,X) by a classifier on the standardized z, whose last ``n_x`` columns are the confounders.

    Returns (p, C, influence block or None); C is inf for the unpenalized default and None for a learner
    whose estimating equations are unknown. ``fixed_c`` reuses a C chosen before (bootstrap replicates)."""
    n = len(t)
    zs, zt, mask = standardize(z, n_x, f)
    if learner is None:
        c = fixed_c if fixed_c is not None else default_c(zs, t, f, mask, random_state)
        gamma, pen = _penalized(zs, t, f, mask, c)
        p = expit(zt @ gamma)
    else:
        model = clone(learner)
        try:
            model.fit(zs, t, **({} if np.all(f == 1) else {"sample_weight": f}))
        except TypeError:  # a learner without sample_weight: materialize the frequencies
            rows = np.repeat(np.arange(n), f.astype(np.int64))
            model.fit(zs[rows], t[rows])
        p = model.predict_proba(zs)[:, list(model.classes_).index(1)]
        c = l2_logistic_c(model)
        if c is not None:
            gamma = np.concatenate([np.ravel(model.intercept_), np.ravel(model.coef_)])
            pen = np.r_[0.0, np.full(zs.shape[1], 1.0 / c)]
    block = None
    if blocks and c is not None:
        pp = np.clip(p, TINY, 1 - TINY)
        hess = (zt * (pp * (1 - pp))[:, None]).T @ zt / n + np.diag(pen) / n
        score = zt * (t - p)[:, None] - pen * gamma / n
        block = (score @ np.linalg.pinv(hess).T, zt)
    return p, c, block


# ---- Hajek means with estimated weights (weighting and eb_total) -------------------------------------------
def _design(data, cols):
    """Balance functions c(x) of the confounder columns ``cols`` (one-hot topics, soft topics as given)."""
    return balance_matrix(data.x[list(cols)]) if cols else balance_matrix(np.zeros((data.n, 0)))


def _hajek(a, y, w):
    aw = a * w
    total = aw.sum()
    return float(aw @ y / total) if total > 0 else float("nan")


def _kish(a, w=None):
    """Kish ESS (sum a w)^2 / sum a^2 w of weights a on rows with frequency weights w (default 1)."""
    w = np.ones(len(a)) if w is None else w
    den = (a**2) @ w
    return float((a @ w) ** 2 / den) if den > 0 else 0.0


def _mu_scores(a, dadh, dgamma, y, mu, keep, px_blocks, pmx_block):
    """Influence values of a Hajek mean with estimated weights (M-estimation, stacked)."""
    ak = a * keep
    r = keep * (y - mu)
    s = ak * (y - mu)
    for phi, dh in px_blocks:
        s = s + phi @ ((dadh * r)[:, None] * dh).mean(axis=0)
    if pmx_block is not None and dgamma != 0:
        phi, zt = pmx_block
        s = s + phi @ ((dgamma * a * r)[:, None] * zt).mean(axis=0)
    return s / ak.mean()


def run_bootstrap(stat, data, est, cluster, level, n_jobs, backend):
    """``est.n_boot`` replicates of ``stat`` (:func:`deconfound.bootstrap.bootstrap`, seeded by
    ``est.random_state``): whole clusters when given (within arms when every cluster lies in one arm), else
    rows within arms. Returns (the BootstrapResult, the warnings it raised as text)."""
    strata = ("treatment",) if cluster is None or _arm_constant(cluster, data.t) else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boot = bootstrap(stat, data, n_boot=int(est.n_boot), random_state=est.random_state, level=level,
                         n_jobs=n_jobs, backend=backend, cluster=cluster, stratify=strata)
    return boot, [str(w.message) for w in caught]


def _arm_constant(cluster, t) -> bool:
    """True when every cluster lies in one treatment arm (then the cluster bootstrap stratifies by arm)."""
    codes = np.unique(cluster, return_inverse=True)[1].reshape(-1)
    return bool(np.all(np.bincount(codes, weights=t) % np.bincount(codes) == 0))


def _check_common(level, n_boot):
    if not 0 < float(level) < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot: expected an int >= 0 (0 = influence-function SEs), got {n_boot!r}")
