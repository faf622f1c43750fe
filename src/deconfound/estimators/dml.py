"""Multiply robust mediation with cross-fitting (Farbmacher, Huber, Laffers, Langen & Spindler 2022).

The estimator of METHODS.md section 5.4, as in R ``causalweight::medDML`` but with K-fold cross-fitting. For
D = d and d' = 1 - d, with p_d(X) = P(D=d | X), p_d(M,X) = P(D=d | M,X), mu(d,M,X) = E[Y | D=d,M,X],
mu(d,X) = E[Y | D=d,X] and the nested omega(d,X) = E[mu(d,M,X) | D=d',X]:

    E[Y(d, M(d'))]:  psi = 1{D=d} p_d'(M,X) / (p_d(M,X) p_d'(X)) (Y - mu(d,M,X))
                           + 1{D=d'} / p_d'(X) (mu(d,M,X) - omega(d,X)) + omega(d,X)
    E[Y(d, M(d))]:   psi = 1{D=d} / p_d(X) (Y - mu(d,X)) + mu(d,X)

Each potential-outcome mean is ``mean(psi)``; effects are differences of the means, and their standard errors
come from differences of the per-row scores (:class:`~deconfound.inference.Effect`).

Fitting, per fold k (train = the other folds, split once more into halves A and B by a fixed seed):
p_d(X), p_d(M,X) and mu(d,X) on all of train; mu(d,M,X) on A; omega(d,X) on B, regressing A's mu(d,M,X)
predictions on X among B's rows with D = d'. All are predicted on fold k. p_d(X) and mu(d,X) do not depend on
the unit and are fitted once for all units.
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .._calibration import curve_what, few, is_curved, warn_uncalibrated
from ..errors import DataError, PositivityError
from ..folds import data_folds, fold_strata, make_folds
from ..graph import resolve
from ..parallel import progress_iter, run_tasks
from ..positivity import check_positivity
from ..results import MediationResult
from ._learners import EPV
from .base import MediationEstimator, attach_roles, check_units, register, sample_roles
from .dml_scores import CONTRASTS, TERMS, aggregate_unit, overlap_rows, unit_effects  # noqa: F401 - re-exported
from .paths import check_paths

POPULATIONS = ("ate", "att")
N_REP, TRIM, CLIP = 3, 0.0, 0.01  # defaults: see DMLMediation's docstring
# mediator features (after pca) from which the default fit's NIE CIs were too wide, below CONSERVATIVE_EPV rows
# of the smaller arm per feature: 50 columns at n = 2,000 (19 rows per feature) covered 0.985-0.99 (SE/SD
# 1.10-1.15, 200 data sets), 200 columns at n = 9,000 (22) 0.95-1.00; at n = 3,500 (33) and 5,000 (47)
# 0.935-0.945 (SE/SD 0.95-1.07, 200 each) and 10,000 (93) 0.95 (SE/SD 1.01-1.07, 100). 20 columns at n = 300
# covered 0.91-0.93 (SE/SD 1.01-1.07)
CONSERVATIVE_WIDTH, CONSERVATIVE_EPV = 50, 30
# a block of CONSERVATIVE_WIDTH or more columns biased the NIE up and the NDE down although the propensity
# models were unpenalized. With 576 columns at features / sqrt(rows of the smaller arm) = 8.2, 6.7 and 5.8
# (n = 10,000, 15,000, 20,000) NIE(treated) was 1.6, 0.97 and 0.82 SE off and some effect covered 0.66-0.90;
# at 4.5 (300 columns, n = 9,000) 0.59 SE (coverage 0.90); at 3.8 (250 columns) 0.38 SE with NDE(control)
# 0.53 SE too small (coverage 0.90); at 3.0 (200 columns) and 1.7 (50, n = 2,000) 0.27 SE, every effect
# 0.90-1.00. "Thin": fewer than THIN_EPV rows per feature, or a ratio of THIN_SCALE or more (between 3.0 and 3.8)
THIN_EPV, THIN_SCALE = 10, 3.5


# ---- learners -------------------------------------------------------------------------------------------
def default_outcome_learner():
    """Standardize, then ridge regression with the penalty chosen by efficient leave-one-out CV."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))


def _cv_logistic(cv=3, Cs=None, max_iter: int = 2000, legacy_attributes: bool = False):
    """L2 ``LogisticRegressionCV`` on the log loss over C in logspace(-4, 2, 7) (or ``Cs``)."""
    kwargs = dict(Cs=np.logspace(-4, 2, 7) if Cs is None else Cs, cv=cv, scoring="neg_log_loss", max_iter=max_iter)
    params = inspect.signature(LogisticRegressionCV.__init__).parameters
    if "l1_ratios" in params:  # scikit-learn >= 1.8: pure L2 without the deprecation warnings
        kwargs["l1_ratios"] = (0.0,)
    if "use_legacy_attributes" in params:  # EconML's model selection reads the pre-1.10 attributes
        kwargs["use_legacy_attributes"] = bool(legacy_attributes)
    return LogisticRegressionCV(**kwargs)


class EPVLogistic(ClassifierMixin, BaseEstimator):
    """Logistic regression that is unpenalized when the smaller class has at least ``epv`` rows per feature,
    and otherwise L2-penalized with C chosen by 3-fold CV of the log loss (``LogisticRegressionCV``).

    The rule is weighting's (``EPV`` = 5). With few features the cross-validated penalty only shrinks p(M,X)
    toward p(X), and the weights then under-correct the outcome model: see DMLMediation's Notes."""

    def __init__(self, epv: float = EPV, Cs=None, cv=3, max_iter: int = 2000):
        self.epv = epv
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter

    def fit(self, X, y, sample_weight=None):
        X, y = np.asarray(X, dtype=float), np.asarray(y)
        self.classes_, counts = np.unique(y, return_counts=True)
        self.penalized_ = bool(counts.min() < self.epv * X.shape[1])
        if self.penalized_:
            model = _cv_logistic(self.cv, self.Cs, self.max_iter)
        else:
            model = LogisticRegression(C=np.inf, tol=1e-8, max_iter=self.max_iter)
        with warnings.catch_warnings():  # near-separated arms: the clip of p(M,X) handles the extreme fits
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = model.fit(X, y, sample_weight=sample_weight)
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(np.asarray(X, dtype=float))

    def predict(self, X):
        return self.model_.predict(np.asarray(X, dtype=float))


def default_propensity_learner(*, legacy_attributes: bool = False, cv=3):
    """Standardize, then :class:`EPVLogistic` (unpenalized with enough rows per feature, else L2 with the
    penalty chosen by 3-fold CV on the log loss).

    ``legacy_attributes=True`` is EconML's version: standardize + ``LogisticRegressionCV`` always, with
    scikit-learn's pre-1.10 fitted attributes, which EconML's model selection reads (it fails on the new scalar
    ``C_``); EconML also replaces ``cv`` by its own folds.
    """
    if not legacy_attributes:
        return make_pipeline(StandardScaler(), EPVLogistic(cv=cv))
    return make_pipeline(StandardScaler(), _cv_logistic(cv, legacy_attributes=True))


def _name(learner) -> str:
    if hasattr(learner, "steps"):
        return "Pipeline(" + ", ".join(type(s).__name__ for _, s in learner.steps) + ")"
    return type(learner).__name__


def check_learners(outcome, propensity):
    """The (outcome, propensity) learners to use; TypeError naming a learner that cannot do its job."""
    outcome = default_outcome_learner() if outcome is None else outcome
    propensity = default_propensity_learner() if propensity is None else propensity
    for role, est in (("outcome_learner", outcome), ("propensity_learner", propensity)):
        if not (hasattr(est, "fit") and hasattr(est, "get_params")):
            raise TypeError(f"{role}: expected a scikit-learn estimator, got {type(est).__name__}")
    if not hasattr(outcome, "predict"):
        raise TypeError(f"outcome_learner: expected a regressor with predict, got {_name(outcome)}")
    if not hasattr(propensity, "predict_proba"):
        raise TypeError(f"propensity_learner: expected a classifier with predict_proba, got {_name(propensity)}, "
                        "which has none")
    return outcome, propensity


def child_seed(random_state, *keys):
    """A deterministic int seed for a sub-task ``keys`` of ``random_state`` (None stays None)."""
    if random_state is None:
        return None
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31 - 1))
    return int(np.random.SeedSequence([int(random_state), *keys]).generate_state(1)[0] % (2**31 - 1))


def seeded_clone(learner, seed):
    """A clone of ``learner`` whose unset ``random_state`` parameters (also nested ones) are ``seed``."""
    est = clone(learner)
    if seed is not None:
        unset = {k: seed for k, v in est.get_params(deep=True).items()
                 if (k == "random_state" or k.endswith("__random_state")) and v is None}
        if unset:
            est.set_params(**unset)
    return est


def cross_fit_splits(data, n_folds: int, random_state, cluster=None):
    """``(folds, halves)``: the shared folds and the fixed A/B split used for the nested regression (whole
    clusters in one fold and one half when ``cluster`` labels are given)."""
    folds = data_folds(data, n_folds, random_state=random_state, cluster=cluster)
    halves = make_folds(data.n, 2, strata=fold_strata(data), random_state=child_seed(random_state, 1),
                        groups=cluster)
    return folds, halves


def _check_rows(mask, what: str, fold: int, need_both: np.ndarray | None = None):
    count = int(mask.sum())
    if count < 2:
        raise PositivityError(f"fold {fold}: expected at least 2 rows to fit {what}, got {count}")
    if need_both is not None and len(np.unique(need_both[mask])) < 2:
        raise PositivityError(f"fold {fold}: expected both treatment arms to fit {what}, got only "
                              f"T={int(need_both[mask][0])}")


def _fit_predict_proba(learner, seed, Z, t, train, test, what, fold):
    """P(T=1 | Z) on ``test`` from a classifier fitted on ``train`` (a constant if Z has no columns)."""
    _check_rows(train, what, fold, need_both=t)
    if Z.shape[1] == 0:
        return np.full(int(test.sum()), t[train].mean())
    est = seeded_clone(learner, seed).fit(Z[train], t[train])
    classes = list(est.classes_)
    return est.predict_proba(Z[test])[:, classes.index(1)]


def _fit_predict(learner, seed, Z, target, train, tests, what, fold):
    """Predictions of a regressor fitted on ``train`` for each boolean mask in ``tests``."""
    _check_rows(train, what, fold)
    if Z.shape[1] == 0:
        mean = float(np.mean(target[train]))
        return [np.full(int(m.sum()), mean) for m in tests]
    est = seeded_clone(learner, seed).fit(Z[train], target[train])
    return [np.asarray(est.predict(Z[m]), dtype=float).reshape(-1) for m in tests]


# ---- nuisances ------------------------------------------------------------------------------------------
def shared_nuisances(t, y, x_first, x_total, folds, *, outcome, propensity, random_state):
    """Out-of-fold p_1(X) (on the first-stage set) and mu(d,X) (on the total set), shared by all units."""
    n = len(t)
    p1x, mux = np.empty(n), np.empty((n, 2))
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        p1x[test] = _fit_predict_proba(propensity, child_seed(random_state, 2, k), x_first, t, train, test,
                                       "p(X)", k)
        for d in (0, 1):
            mux[test, d] = _fit_predict(outcome, child_seed(random_state, 3, k, d), x_total, y, train & (t == d),
                                        [test], f"mu({d},X)", k)[0]
    return p1x, mux


def unit_nuisances(m, t, y, x_first, x_second, folds, halves, *, outcome, propensity, pca, random_state):
    """Out-of-fold p_1(M,X), mu(d,M,X) and omega(d,X) for one unit's mediator block ``m``."""
    n = len(t)
    p1mx, mumx, omega = np.empty(n), np.empty((n, 2)), np.empty((n, 2))
    m = np.asarray(m, dtype=float)
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        a, b = train & (halves == 0), train & (halves == 1)
        feats = m
        if pca is not None:  # fitted on the training folds only, never on fold k
            comps = min(int(pca), m.shape[1], int(train.sum()))
            reducer = PCA(n_components=comps, random_state=child_seed(random_state, 4, k)).fit(m[train])
            feats = reducer.transform(m)
        z = np.hstack([feats, x_second])
        p1mx[test] = _fit_predict_proba(propensity, child_seed(random_state, 5, k), z, t, train, test, "p(M,X)", k)
        for d in (0, 1):
            on_test, on_b = _fit_predict(outcome, child_seed(random_state, 6, k, d), z, y, a & (t == d), [test, b],
                                         f"mu({d},M,X)", k)
            nested = np.zeros(n)
            nested[b] = on_b
            omega[test, d] = _fit_predict(outcome, child_seed(random_state, 7, k, d), x_first, nested,
                                          b & (t == 1 - d), [test], f"omega({d},X)", k)[0]
            mumx[test, d] = on_test
    return p1mx, mumx, omega


def _fit_unit(m, t, y, x_first, x_second, keep, splits, settings):
    """One unit's effects: nuisances and scores on every sample split, then their aggregation."""
    per_rep = []
    for folds, halves, shared, seed in splits:
        nuis = unit_nuisances(m, t, y, x_first, x_second, folds, halves, outcome=settings["outcome"],
                              propensity=settings["propensity"], pca=settings["pca"], random_state=seed)
        per_rep.append(unit_effects(t, y, keep, shared, nuis, clip=settings["clip"],
                                    normalize=settings["normalize"], population=settings["population"],
                                    level=settings["level"], cluster=settings["cluster"], weights=settings["weights"],
                                    x=x_second))
    return aggregate_unit(per_rep, settings["level"])


# ---- estimator ------------------------------------------------------------------------------------------
@register("dml")
class DMLMediation(MediationEstimator):
    """Multiply robust NIE/NDE/TE with K-fold cross-fitting (Farbmacher et al. 2022).

    Parameters
    ----------
    outcome_learner : scikit-learn regressor for mu(d,M,X), mu(d,X) and omega(d,X); cloned per fold and
        seeded. Default: standardize + ``RidgeCV``.
    propensity_learner : scikit-learn classifier with ``predict_proba`` for p(X) and p(M,X). Default:
        standardize + :class:`EPVLogistic`: an unpenalized logistic regression when the smaller arm of the
        training rows has at least ``EPV`` (5) rows per feature, else L2 with the penalty chosen by 3-fold CV
        of the log loss (``LogisticRegressionCV``).
    n_folds : K for cross-fitting (default 5). Folds come from :func:`deconfound.folds.data_folds` with
        ``random_state``, so they are the same for every unit and every estimator.
    n_rep : number of sample splits (repeated cross-fitting; default 3). Split 0 uses
        ``random_state``, split r > 0 the seed ``child_seed(random_state, 9, r)``. Each effect is the median
        over the splits and its SE is sqrt(median_r(se_r^2 + (theta_r - theta)^2)) (Chernozhukov et al. 2018;
        DoubleML's ``n_rep``), so the split-to-split variation is part of the SE. The default was chosen on
        the framing data (see below).
    trim : rows with the out-of-fold p_1(X) outside [trim, 1 - trim] are dropped (default 0: none). This
        selects on a pre-treatment variable only, so the kept rows are a population (``result.population`` is
        then "overlap" and ``settings["population_note"]`` says which rows). Chosen once, on split 0.
    clip : p_1(M,X) is clipped to [clip, 1 - clip] inside the weights (default 0.01); no row is dropped.
        ``diagnostics[unit]["n_clipped"]`` counts the rows that hit the cap and a warning names them.
    normalize : divide each inverse-probability weight by its mean (default True, as causalweight).
    population : ``"ate"`` (default) or ``"att"``: NIE(treated), NIE(control), NDE and TE averaged over the
        treated rows, E[Y(d, M(d')) | T=1] (see :mod:`~deconfound.estimators.dml_scores` for the scores).
    pca : None, or the number of principal components of the mediator block, fitted on the training folds
        only (never on the held-out fold).
    drop_unsupported : a topic with rows in one arm only raises PositivityError (default); True drops its rows
        first (:func:`deconfound.positivity.check_positivity`; the dropped topics in ``data.meta``).
    level : CI level.
    random_state : seed of the folds, the nested split and every learner's unset ``random_state``.

    Notes
    -----
    Why no trimming on p(M,X). causalweight drops rows with p_d(M,X) p_d'(X) < 0.05. M is post-treatment,
    so those rows are not a population for which E[Y(d, M(d'))] is defined. On a linear SEM with a strong
    T -> M path and a T x M interaction (T -> M coefficient 1, 4 topics, n = 2000, 60 replications, the case
    of ``tests/unit/test_dml.py``), that rule dropped 8% of the rows and put the NIE(treated) 4.2 SE and the
    TE 2.9 SE off the truth on average (coverage 0.00 and 0.08). Keeping every row with normalized weights
    was unbiased (mean z within 0.11 for all five effects, coverage 0.95-1.0), with p(M,X) clipped at 0.01
    or 0.05 alike. With a T -> M coefficient of 2 (p(M,X) outside [0.05, 0.95] for half the rows) all three
    no-drop variants stayed unbiased (mean z within 0.15, coverage 0.92-1.0); the cap 0.01 lowered the
    NIE(treated) sd from 0.175 to 0.156, the cap 0.05 to 0.119. A higher cap trades variance for a bias that
    grows with the outcome models' error (the cap is a wrong p(M,X), corrected only by mu(d,M,X)); 0.01 keeps
    the weights below 100 / p(X) and bites only on near-separated rows.

    Outcome learner. A linear mu(d,M,X) that misses the outcome's curve leaves the estimator consistent while
    p(X) and p(M,X) are right, but its estimated influence function omits the error of the fitted
    propensities, so the SE is too small: on the probit process of docs/coverage.md (n = 2,000) NIE(treated)
    covered 0.885 with SE/SD 0.85 (200 data sets). A ridge on cubic B-splines of each column covered 0.91-0.98
    there, but where the mediator nearly separates the arms (the interaction process) its extrapolation into the
    other arm's range of M biased NIE and NDE (coverage 0.81-0.89, against 0.92-0.95 for the ridge), so the
    default stays linear. Each fit tests its outcome regressions instead (``curvature_p``, ``curvature_share``) and warns
    when they miss a curve.

    Propensity learner. The default used to cross-validate the L2 penalty of every logistic regression. At
    n = 300 (linear process, 4 topics, 200 data sets) the CV penalty shrank p(M,X) toward p(X), the weights
    then corrected the ridge outcome model too little, and NIE(treated) covered 0.92 (bias -0.23 SE, SE/SD
    0.88). Unpenalized where the rows allow (the rule of ``weighting``'s p(M,X)), it covered 0.95 (bias -0.18
    SE, SE/SD 0.93); on the binary process at n = 300 NIE(treated) went from 0.92 to 0.95 and on the
    interaction process at n = 2,000 nothing changed (100 data sets each). Over the full grid (n = 300 with 200
    data sets, 2,000 with 100, 10,000 with 50) the new default covered 0.90-0.98 on the linear, interaction and
    binary processes.

    Repeated splits. On the framing data shipped with statsmodels (n = 265), the NIE (average) over
    ``random_state`` 0..7 ranged 0.074-0.110 (sd 0.013, half an SE) with one split, 0.078-0.098 (sd 0.0067)
    with ``n_rep=3`` and 0.073-0.101 (sd 0.0087) with ``n_rep=5``; the mean SE grew by 9% and 11%. (With the
    earlier CV-penalized propensity learner: sd 0.016, 0.0065 and 0.0061.) Five splits cost 5/3 of three for no
    more stability, so the default is 3 (three times the cost of one split).

    ``result.effects[unit]`` holds nie/nde for arms control/treated/average, one te row ("te", "average")
    and prop_mediated. With ``n_rep`` > 1 every effect (also NDE, averages and prop_mediated) is aggregated
    on its own, so NIE + NDE equals TE within each split but only up to the split spread after taking
    medians; the aggregated Effect's per-row scores are the mean of the splits' scores rescaled to the
    aggregated SE, so differences with other Effects carry the split variance approximately.

    ``result.diagnostics[unit]`` holds ``n_kept``, ``n_trimmed``, ``n_clipped``, ``trim``, ``clip``,
    ``n_rep``, ``curvature_p`` and ``curvature_share`` (:func:`~deconfound.estimators.dml_scores.curvature`,
    medians over the splits; a fit with the default outcome learner warns when p < CURVATURE_ALPHA and
    share >= CURVATURE_SHARE; both are NaN, and nothing is tested, when an arm has fewer than 4 rows more than
    the test's columns), the propensity ranges, ``potential_outcomes`` (the four E[Y(d, M(d'))] as Effects), ``ovb``
    and, with ``n_rep`` > 1, ``split``: per (effect, arm) the per-split ``estimates`` and ``ses`` and their
    ``min``, ``max`` and ``sd``.

    ``ovb[(effect, arm)] = {"sigma2", "nu2", "psi_sigma2", "psi_nu2"}`` for te (arm "average") and nie/nde
    (every arm). alpha is the weight multiplying the outcome residual in the scores above: for
    E[Y(d, M(d'))], alpha = 1{D=d} p_d'(M,X) / (p_d(M,X) p_d'(X)) (which is 1{D=d}/p_d(X) when d' = d; for
    the ATT times p_1(X) / P(T=1)), after normalization; an effect's alpha is the difference of its two
    terms' alphas (the mean of the two arms' for "average"). For te, sigma2 = mean((Y - mu(D,X))^2) and
    alpha = D/p_1(X) - (1-D)/p_0(X), as in EconML's DRLearner; for nie/nde, sigma2 = mean((Y - mu(D,M,X))^2),
    the long regression. nu2 = mean(alpha^2). Means are over the kept rows; psi_sigma2 and psi_nu2 are the
    centred per-row values, length n, zero on trimmed rows and scaled by n / n_kept like the effect scores
    (so mean(psi**2) / n is the variance of sigma2 / nu2). The nested term's weight 1{D=d'}/p_d'(X) is not
    part of alpha. With ``n_rep`` > 1, sigma2 and nu2 are the medians over the splits and the psi vectors
    their means.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from deconfound import simulate
    >>> data, truth = simulate.topic_mediation(1000, seed=4)
    >>> est = DMLMediation(n_folds=3, propensity_learner=LogisticRegression(), random_state=0)  # fast
    >>> res = est.fit(data)                                              # graph: topic_mediation
    >>> nie = res.effect("u0", "nie", "average")
    >>> abs(nie.estimate - truth.value("u0", "nie")) < 3 * nie.se
    True
    >>> print(res.adjustment["first_stage"], res.adjustment["second_stage"])
    ['topic'] ['topic']
    >>> res.diagnostics["u0"]["n_trimmed"], res.population             # no row dropped by default
    (0, 'ate')
    """

    def __init__(self, *, outcome_learner=None, propensity_learner=None, n_folds: int = 5, n_rep: int = N_REP,
                 trim: float = TRIM, clip: float = CLIP, normalize: bool = True, population: str = "ate",
                 pca: int | None = None, level: float = 0.95, random_state=0, drop_unsupported: bool = False):
        self.drop_unsupported = drop_unsupported
        self.outcome_learner = outcome_learner
        self.propensity_learner = propensity_learner
        self.n_folds = n_folds
        self.n_rep = n_rep
        self.trim = trim
        self.clip = clip
        self.normalize = normalize
        self.population = population
        self.pca = pca
        self.level = level
        self.random_state = random_state

    def _check(self, data):
        for name in ("n_folds", "n_rep"):
            value, low = getattr(self, name), 2 if name == "n_folds" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if self.n_folds > data.n // 2:
            raise DataError(f"n_folds: expected at most n/2 = {data.n // 2} folds for {data.n} rows, "
                            f"got {self.n_folds}")
        for name in ("trim", "clip"):
            if not 0 <= float(getattr(self, name)) < 0.5:
                raise ValueError(f"{name}: expected a number in [0, 0.5), got {getattr(self, name)!r}")
        if self.population not in POPULATIONS:
            raise ValueError(f"population: expected one of {POPULATIONS}, got {self.population!r}")
        if self.pca is not None and (isinstance(self.pca, bool) or not isinstance(self.pca, (int, np.integer))
                                     or self.pca < 1):
            raise ValueError(f"pca: expected None or an int >= 1, got {self.pca!r}")
        if not 0 < float(self.level) < 1:
            raise ValueError(f"level: expected a number in (0, 1), got {self.level!r}")
        return check_learners(self.outcome_learner, self.propensity_learner)

    def _warn_wide(self, data, units, n_x):
        """Warn when the default learners meet a block with fewer than EPV rows of the smaller arm per feature,
        or one of at least CONSERVATIVE_WIDTH features that is thin (fewer than THIN_EPV rows per feature, or
        features >= THIN_SCALE sqrt(rows): its NIE came out biased) or not, with fewer than CONSERVATIVE_EPV rows
        per feature (its NIE CIs came out too wide)."""
        if self.propensity_learner is not None or self.outcome_learner is not None:
            return
        small = int(min(data.n_treated, data.n - data.n_treated))
        width = {u: data.mediator(u).shape[1] for u in units}
        feats = {u: min(w, self.pca or w) + n_x for u, w in width.items()}
        wide = [u for u in units if small < EPV * feats[u]]
        if wide:
            warn_uncalibrated("dml-wide", n=data.n, n_treated=data.n_treated, wide=True,
                              what=f" (units {few(wide)}: {feats[wide[0]]} features "
                                   f"of [M, X] for {small} rows in the smaller arm)")
        block = [u for u in units if u not in wide and feats[u] - n_x >= CONSERVATIVE_WIDTH]
        thin = [u for u in block if small < THIN_EPV * feats[u] or feats[u] >= THIN_SCALE * np.sqrt(small)]
        if thin:
            warn_uncalibrated("dml-thin", n=data.n, n_treated=data.n_treated, thin=True,
                              what=f" (units {few(thin)}: {feats[thin[0]]} features of [M, X] for {small} rows "
                                   "in the smaller arm)")
        roomy = [u for u in block if u not in thin and small < CONSERVATIVE_EPV * feats[u]]
        if roomy:
            warn_uncalibrated("dml-conservative", n=data.n, n_treated=data.n_treated, conservative=True,
                              what=f" (units {few(roomy)}: {feats[roomy[0]] - n_x} mediator features)")

    def fit(self, data, *, graph=None, units=None, n_jobs=1, backend="local", cluster=None,
            weights=None, progress=None) -> MediationResult:
        """Estimate every unit in ``units`` (default all).

        ``cluster`` (labels per row, or a confounder column name; default the data's own role) puts whole
        clusters in one fold and makes every SE cluster-robust (scores summed within clusters); sampling
        ``weights`` weight every mean of the scores (the nuisance learners are fitted unweighted).

        Units are independent tasks run by :func:`deconfound.parallel.run_tasks`: ``backend="local"`` uses
        joblib with ``n_jobs`` workers; ``"dask"`` (the active client) or a ``distributed.Client`` runs them
        on a Dask cluster. Every seed is fixed from ``random_state`` before dispatch, so the numbers do not
        depend on the backend or on ``n_jobs``.
        """
        units = check_units(data, units)
        outcome, propensity = self._check(data)
        g, adj = resolve(graph, data)
        data = attach_roles(data, cluster, weights)  # the roles follow the rows positivity may drop
        data = check_positivity(data, adj.union, drop_unsupported=self.drop_unsupported, what="DML mediation")
        cluster, weights = sample_roles(data)
        x_first = data.x_design(adj.first_stage)[0]
        x_second = data.x_design(adj.second_stage)[0]
        self._warn_wide(data, units, x_second.shape[1])
        x_total = data.x_design(adj.total)[0]
        t, y = data.t.astype(int), data.y.astype(float)
        splits = []
        for r in range(int(self.n_rep)):  # split 0 uses random_state itself: n_rep=1 is plain cross-fitting
            seed = self.random_state if r == 0 else child_seed(self.random_state, 9, r)
            folds, halves = cross_fit_splits(data, int(self.n_folds), seed, cluster)
            shared = shared_nuisances(t, y, x_first, x_total, folds, outcome=outcome, propensity=propensity,
                                      random_state=seed)
            splits.append((folds, halves, shared, seed))
        keep = overlap_rows(splits[0][2][0], float(self.trim))  # chosen once, on the first split's p(X)
        settings = dict(outcome=outcome, propensity=propensity, pca=self.pca, clip=float(self.clip),
                        normalize=bool(self.normalize), population=self.population, level=float(self.level),
                        cluster=cluster, weights=weights)
        common = dict(t=t, y=y, x_first=x_first, x_second=x_second, keep=keep, splits=splits, settings=settings)
        if backend == "local" and int(n_jobs) == 1:  # serial: read one unit at a time (lazy, memory-mapped data)
            out = [_fit_unit(data.mediator(u), **common) for u in progress_iter(units, "dml: units", progress)]
        else:
            out = run_tasks(_fit_unit, [data.mediator(u) for u in units], backend=backend, n_jobs=n_jobs,
                            shared=common, progress=bool(progress), desc="dml: units")
        n_trimmed = int((~keep).sum())
        curved = [u for u, (_, diag) in zip(units, out) if is_curved(diag)]
        if curved and self.outcome_learner is None:
            warn_uncalibrated("dml-curved", n=data.n, n_treated=data.n_treated, curved=True,
                              what=curve_what(curved, out[units.index(curved[0])][1]))
        effects, diagnostics, warns = {}, {}, []
        for u, (eff, diag) in zip(units, out):
            effects[u] = eff
            diagnostics[u] = {"n_kept": int(keep.sum()), "n_trimmed": n_trimmed, "trim": float(self.trim),
                              "clip": float(self.clip), "n_rep": int(self.n_rep), **diag}
            if diag["n_clipped"]:
                warns.append(f"unit {u!r}: p(M,X) of {diag['n_clipped']} of {int(keep.sum())} rows was outside "
                             f"[{self.clip:g}, {1 - self.clip:g}] and clipped to it in the weights")
        check_paths("dml", data, units, adj.union, diagnostics, rows=keep if n_trimmed else None)
        settings = self.get_params()
        population = self.population
        if n_trimmed:
            population = "overlap"
            who = "treated rows" if self.population == "att" else "rows"
            settings["population_note"] = (
                f"{who} with {self.trim:g} <= p(X) <= {1 - self.trim:g} (out-of-fold p(X) of the first split): "
                f"{n_trimmed} of {data.n} rows dropped on the pre-treatment propensity")
            warns.append(f"trimmed {n_trimmed} of {data.n} rows with p(X) outside [{self.trim:g}, "
                         f"{1 - self.trim:g}]; effects refer to the overlap population of the "
                         f"{int(keep.sum())} kept rows")
        if not adj.identified:
            warns.append(f"graph {g.name}: effects not identified (latent {list(adj.latent)}); adjusted for the "
                         "observed confounders only")
        return MediationResult(
            estimator=self.name, effects=effects, n=data.n, n_treated=data.n_treated, population=population,
            graph=g.name, adjustment=adj.as_dict(), level=float(self.level), random_state=self.random_state,
            settings=settings, diagnostics=diagnostics, warnings=warns)
