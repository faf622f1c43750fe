"""Weighting (inverse probability) mediation, Huber (2014). (The entropy-balanced total effect is in
``eb_total.py``; ``EntropyBalancedTotalEffect`` still imports from here.)

Huber (2014), as in R ``causalweight::medweight``: with p(X) = P(T=1|X) and p(M,X) = P(T=1|M,X),

    E[Y(1, M(1))] = E[Y T / p(X)]                                  E[Y(0, M(0))] = E[Y (1-T) / (1-p(X))]
    E[Y(1, M(0))] = E[Y T (1-p(M,X)) / (p(M,X) (1-p(X)))]          E[Y(0, M(1))] = E[Y (1-T) p(M,X) / ((1-p(M,X)) p(X))]

each computed as a normalized (Hajek) weighted mean over all rows: no row is dropped on p(M,X), since M is
post-treatment and the kept rows would be no population for which the effects are defined. With
``population="att"`` the four means are averages over the treated rows' X (Hsu, Lai & Lieli style weights):

    E[Y(1, M(1)) | T=1] = E[Y T] / P(T=1)                          E[Y(0, M(0)) | T=1] ~ E[Y (1-T) odds(X)]
    E[Y(1, M(0)) | T=1] ~ E[Y T odds(X) (1-p(M,X)) / p(M,X)]       E[Y(0, M(1)) | T=1] ~ E[Y (1-T) p(M,X) / (1-p(M,X))]

(~: up to the Hajek normalization), odds(X) = p(X) / (1 - p(X)). The propensity models are in ``_learners.py``.

Entropy balancing as a propensity model. The ATT weights of the controls, w_j (summing to 1), are proportional
to exp(lambda'c(x_j)): the odds p/(1-p) of a logistic model. Since the odds weights of the controls sum to n1,
odds(x_j) = n1 w_j on the controls; symmetrically the ATC weights of the treated give 1/odds(x_i) = n0 v_i.
So p(X) = n1 w_j / (1 + n1 w_j) on controls and 1 / (1 + n0 v_i) on the treated. With one-hot topics both
equal the topic's share of treated rows, n1(x)/n(x), exactly; in general the implied 1/p(X) and 1/(1-p(X))
weights balance every covariate to its pooled mean exactly.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import PositivityError
from ..graph import resolve
from ..inference import Effect
from .._calibration import SEPARATION_SHARE, few, warn_uncalibrated
from ..parallel import progress_iter
from ..positivity import check_positivity, level_counts, outside_population, population_note, positivity_message
from ..results import MediationResult, add_derived
from ..weights import eb_weights_batch
from ._learners import (DEFAULT_LEARNER, TINY, _check_common, _design, _hajek, _kish, _mu_scores, default_c, eb_odds,
                        features, fit_pmx, logit_odds, run_bootstrap, standardize)
from .base import MediationEstimator, attach_roles, check_units, register, sample_roles
from .eb_total import EntropyBalancedTotalEffect  # noqa: F401 - re-exported: its old import path
from .paths import check_paths

MU_KEYS = ("y11", "y10", "y01", "y00")  # E[Y(1,M(1))], E[Y(1,M(0))], E[Y(0,M(1))], E[Y(0,M(0))]
MIN_ESS = 10  # below this Kish ESS of a cross-world mean no estimate is returned (no CLT to lean on)
_EFFECTS = (("te", "average"), ("nie", "treated"), ("nie", "control"), ("nde", "control"), ("nde", "treated"))


# ---- Huber's weighted means ---------------------------------------------------------------------------------
def _huber_weights(t, h, p, pop):
    """Per-row weights of the four means (population ``pop``) and their derivatives in h and (sign of) gamma.

    h is odds(X) on controls and 1/odds(X) on treated rows; q, o are the same odds of p(M,X)."""
    tr = t == 1
    p = np.clip(p, TINY, 1 - TINY)
    q, o = (1 - p) / p, p / (1 - p)
    if pop == "att":
        a = {"y11": tr * 1.0, "y00": np.where(tr, 0.0, h), "y10": np.where(tr, q / h, 0.0), "y01": np.where(tr, 0.0, o)}
        dadh = {"y11": np.zeros(len(t)), "y00": (~tr) * 1.0, "y10": np.where(tr, -q / h**2, 0.0),
                "y01": np.zeros(len(t))}
    else:
        a = {"y11": np.where(tr, 1 + h, 0.0), "y00": np.where(tr, 0.0, 1 + h),
             "y10": np.where(tr, q * (1 + 1 / h), 0.0), "y01": np.where(tr, 0.0, o * (1 + 1 / h))}
        dadh = {"y11": tr * 1.0, "y00": (~tr) * 1.0, "y10": np.where(tr, -q / h**2, 0.0),
                "y01": np.where(tr, 0.0, -o / h**2)}
    dgamma = {"y11": 0.0, "y00": 0.0, "y10": -1.0, "y01": 1.0}
    return a, dadh, dgamma


def _contrasts(mu):
    """TE, NIE(treated), NIE(control), NDE(control), NDE(treated) from the four means (same order as _EFFECTS)."""
    return np.array([mu["y11"] - mu["y00"], mu["y11"] - mu["y10"], mu["y01"] - mu["y00"], mu["y10"] - mu["y00"],
                     mu["y11"] - mu["y01"]])


def _unit(m, bm, t, y, f, h, px_blocks, est, fixed_c, *, analytic: bool):
    """One unit: the four means (and their scores and diagnostics when ``analytic``)."""
    z = features(m, bm.values, est.pca, f)
    p, c, pmx_block = fit_pmx(z, bm.values.shape[1], t, f, est.mediator_learner, fixed_c, est.random_state,
                              blocks=analytic)
    trim = float(est.trim)
    keep = ((p >= trim) & (p <= 1 - trim)).astype(float)
    a, dadh, dgamma = _huber_weights(t, h, p, est.population)
    w = f * keep
    mu = {k: _hajek(a[k], y, w) for k in MU_KEYS}
    tr = t == 1
    kept1, kept0 = float((w * tr).sum()), float((w * ~tr).sum())
    on = w > 0
    separated = bool(on[tr].any() and on[~tr].any() and p[tr & on].min() > p[~tr & on].max())
    cross_ess = min(_kish(a[k], w) for k in ("y10", "y01"))
    ok = kept1 >= 2 and kept0 >= 2 and not separated and cross_ess >= MIN_ESS
    if not analytic:
        return _contrasts(mu) if ok else np.full(len(_EFFECTS), np.nan)
    out = ~keep.astype(bool)
    diag = {"n_kept": int(keep.sum()), "n_trimmed": int(out.sum()), "n_trimmed_treated": int((out & tr).sum()),
            "n_trimmed_control": int((out & ~tr).sum()), "share_trimmed": float(out.mean()),
            "share_extreme": float(np.mean((p < 0.01) | (p > 0.99))), "pmx_min": float(p.min()),
            "pmx_max": float(p.max()), "n_features": int(z.shape[1]), "C": c if c is None else float(c)}
    for k in MU_KEYS:
        ak = a[k] * keep
        diag[f"ess_{k}"] = _kish(a[k], w)
        diag[f"max_share_{k}"] = float(ak.max() / ak.sum()) if ak.sum() > 0 else float("nan")
    diag["separable"] = bool(max(diag["share_trimmed"], diag["share_extreme"]) > est.warn_share)
    diag["separated"] = separated
    if not ok:
        return None, None, diag, c
    scores = {k: _mu_scores(a[k], dadh[k], dgamma[k], y, mu[k], keep, px_blocks, pmx_block) for k in MU_KEYS}
    diag["se"] = ("influence: p(X) and p(M,X) estimated" if pmx_block is not None else
                  "influence: p(X) estimated, p(M,X) treated as known")
    if c is not None and np.isfinite(c) and est.mediator_learner is None:
        diag["se"] += " (the cross-validated penalty treated as fixed)"
    return mu, scores, diag, c


def _assemble(raw: dict, level: float) -> dict:
    """One te row, nie/nde per arm, averages and proportions mediated."""
    out = {("te", "average"): raw["te"], ("nie", "treated"): raw["nie_treated"],
           ("nie", "control"): raw["nie_control"], ("nde", "control"): raw["nde_control"],
           ("nde", "treated"): raw["nde_treated"]}
    return add_derived(out)


def _nan_effects(level):
    nan = Effect(float("nan"), float("nan"), (float("nan"), float("nan")), float("nan"), level, method="failed")
    return {key: nan for key in [("te", "average"), *[(e, arm) for e in ("nie", "nde", "prop_mediated")
                                                      for arm in ("control", "treated", "average")]]}


_NAMES = ("te", "nie_treated", "nie_control", "nde_control", "nde_treated")


class _WeightingStatistic:
    """The weighting estimates of several units for one count vector (for :func:`deconfound.bootstrap`).

    p(X) is refitted (entropy balancing with ``base_weights=counts``) once per replicate and shared by the
    units; p(M,X) is refitted per unit with the regularization chosen on the full sample."""

    def __init__(self, est, units, cols, cs, sw=None):
        self.est, self.units, self.cols, self.cs, self.sw = est, list(units), list(cols), dict(cs), sw
        self.names = [f"{u}:{nm}" for u in self.units for nm in _NAMES]

    def _units(self, data, bm, f, h):
        t, y = data.t.astype(int), data.y.astype(float)
        return np.concatenate([_unit(data.mediator(u), bm, t, y, f, h, [], self.est, self.cs.get(u), analytic=False)
                               for u in self.units])

    def __call__(self, data, counts):
        f = np.asarray(counts, dtype=float) * (1.0 if self.sw is None else self.sw)
        bm = _design(data, self.cols)
        t = data.t.astype(int)
        table = level_counts(bm.topics, t, f, "ate")
        if table["unsupported"].any():
            raise PositivityError(positivity_message(table[table["unsupported"]], "ate", "weighting mediation"))
        h = (eb_odds if self.est.propensity == "eb" else logit_odds)(bm, t, f, blocks=False)[0]
        return self._units(data, bm, f, h)

    def batch(self, data, counts):
        """All replicates' entropy balancing in one batched solve; p(M,X) per replicate and unit."""
        counts = np.atleast_2d(counts).astype(float) * (1.0 if self.sw is None else self.sw)
        bm = _design(data, self.cols)
        if self.est.propensity != "eb" or bm.values.shape[1] == 0:
            return np.vstack([self(data, row) for row in counts])
        t = data.t.astype(int)
        tr = t == 1
        w_att = eb_weights_batch(bm, t, counts, estimand="ATT", on_failure="nan").weights
        w_atc = eb_weights_batch(bm, t, counts, estimand="ATC", on_failure="nan").weights
        out = np.full((len(counts), len(self.names)), np.nan)
        for b, f in enumerate(counts):
            pos = f > 0
            h = np.ones(len(t))
            h[~tr & pos] = f[tr].sum() * w_att[b, ~tr & pos] / f[~tr & pos]
            h[tr & pos] = f[~tr].sum() * w_atc[b, tr & pos] / f[tr & pos]
            if np.all(np.isfinite(h)) and np.all(h[pos] > 0):
                out[b] = self._units(data, bm, f, h)
        return out


# ---- estimators ---------------------------------------------------------------------------------------------
@register("weighting")
class WeightingMediation(MediationEstimator):
    """Inverse probability weighting mediation (Huber 2014; R ``causalweight::medweight``).

    Parameters
    ----------
    propensity : ``"eb"`` (default: p(X) implied by entropy balancing, see the module notes) or ``"logit"``
        (unpenalized logistic regression of T on the confounders).
    mediator_learner : scikit-learn classifier for p(M,X) on the standardized [M, X]; cloned before fitting.
        Default (None): a logistic regression, unpenalized when the smaller arm has at least 5 rows per
        feature of [M, X]; otherwise with an L2 penalty on the mediator columns only (the confounders and the
        intercept unpenalized, so an irrelevant mediator gives p(M,X) = p(X) rather than a shrunken topic
        model), its C chosen among ``logspace(-4, 4, 10)`` by 5-fold stratified cross-validated deviance
        (glum), folds seeded by ``random_state``. ``diagnostics[unit]["C"]`` is ``inf`` when unpenalized.
    pca : None, or the number of principal components of the mediator block used instead of its columns
        when it has more (fitted inside the estimator, the rows weighted by their sampling weights; refitted
        per replicate).
    population : ``"ate"`` (default) or ``"att"``: the four means, and so every effect, averaged over the
        treated rows' confounder distribution (NIE(treated) = E[Y(1, M(1)) - Y(1, M(0)) | T=1], ...), the
        population of the patching estimator.
    trim : 0 (default): no row is dropped. A positive value drops the rows with p(M,X) outside
        [trim, 1 - trim] (causalweight's rule). M is post-treatment, so the kept rows are selected on an
        outcome of T: the result's population is then ``"overlap"``, with a warning and a
        ``settings["population_note"]``; on a linear SEM with a strong T -> M path it moves the NIE by many SEs.
    drop_unsupported : a topic without the rows the population needs (both arms for the ATE, controls for a
        treated topic for the ATT) raises PositivityError (default); True drops its rows first
        (:func:`deconfound.positivity.check_positivity`), recorded in ``settings``; the result's population is
        then ``"overlap"``, named in ``settings["population_note"]``. With ``population="att"`` a topic with
        controls only is outside the population (weight 0) and its rows are left out (``settings["outside_population"]``).
    n_boot : 0 (default) for influence-function SEs; > 0 for a bootstrap stratified by T that refits p(X)
        and p(M,X) in every replicate (percentile CIs; a cross-validated penalty is kept from the full sample).
    level : CI level.
    random_state : seed of the CV folds and the bootstrap.
    warn_share : warn (and flag ``separable``) when more than this share of rows has p(M,X) below 0.01 or
        above 0.99 (or is trimmed).

    Notes
    -----
    Influence-function SEs (``n_boot=0``) account for the estimation of p(X) (entropy balancing or logistic)
    and, when the mediator learner is the default or a plain L2 scikit-learn logistic regression, of p(M,X),
    by stacking their estimating equations (a cross-validated C, the PCA, the standardization and a trimming
    set are treated as fixed). With any other learner p(M,X) is treated as known; ``diagnostics[unit]["se"]``
    says which. The weights are Hajek-normalized and never capped: ``max_share_<mean>`` reports the largest
    normalized weight of each mean and a warning names means with a Kish ESS below max(10, n/100).

    ``result.diagnostics[unit]`` holds ``n_kept``, ``n_trimmed`` (and per arm), ``share_trimmed``,
    ``share_extreme`` (p(M,X) < 0.01 or > 0.99), the p(M,X) range, the Kish ESS and largest weight share of
    each weighted mean (``ess_y11``, ..., ``max_share_y11``, ...), ``separable`` and ``potential_outcomes``
    (the four means as Effects). No OVB pieces are stored: the estimator has no outcome model (use ``dml``).

    Examples
    --------
    >>> from deconfound.simulate import topic_mediation
    >>> data, truth = topic_mediation(3000, n_units=2, seed=0)   # u1 only tracks the topic: true NIE 0
    >>> adj = WeightingMediation().fit(data, units=["u1"])
    >>> raw = WeightingMediation().fit(data, units=["u1"], graph="unadjusted_mediation")
    >>> e, r = adj.effect("u1", "nie", "treated"), raw.effect("u1", "nie", "treated")
    >>> bool(abs(e.estimate) < 3 * e.se), bool(r.estimate > 5 * r.se)
    (True, True)
    """

    def __init__(self, propensity: str = "eb", mediator_learner=None, pca: int | None = None,
                 population: str = "ate", trim: float = 0.0, drop_unsupported: bool = False, n_boot: int = 0,
                 level: float = 0.95, random_state=0, warn_share: float = 0.10):
        self.propensity = propensity
        self.mediator_learner = mediator_learner
        self.pca = pca
        self.population = population
        self.trim = trim
        self.drop_unsupported = drop_unsupported
        self.n_boot = n_boot
        self.level = level
        self.random_state = random_state
        self.warn_share = warn_share

    def _check(self):
        _check_common(self.level, self.n_boot)
        if not 0 <= float(self.trim) < 0.5:
            raise ValueError(f"trim: expected a number in [0, 0.5), got {self.trim!r}")
        if not 0 < float(self.warn_share) <= 1:
            raise ValueError(f"warn_share: expected a number in (0, 1], got {self.warn_share!r}")
        if self.propensity not in ("eb", "logit"):
            raise ValueError(f"propensity: expected 'eb' or 'logit', got {self.propensity!r}")
        if self.population not in ("ate", "att"):
            raise ValueError(f"population: expected 'ate' or 'att', got {self.population!r}")
        if self.pca is not None and (isinstance(self.pca, bool) or not isinstance(self.pca, (int, np.integer))
                                     or self.pca < 1):
            raise ValueError(f"pca: expected None or an int >= 1, got {self.pca!r}")
        if self.mediator_learner is not None and not hasattr(self.mediator_learner, "predict_proba"):
            raise TypeError(f"mediator_learner: expected a classifier with predict_proba, got "
                            f"{type(self.mediator_learner).__name__}")

    def statistic(self, data, *, graph=None, units=None):
        """The estimator as a counts statistic for :mod:`deconfound.bootstrap` (e.g. a paired bootstrap of the
        topic-adjusted against the unadjusted graph on the same resamples).

        Returns an object with ``__call__(data, counts)``, a vectorized ``batch`` and ``names``
        ``"<unit>:te"``, ``"<unit>:nie_treated"``, ``"<unit>:nie_control"``, ``"<unit>:nde_control"``,
        ``"<unit>:nde_treated"``. p(X) and p(M,X) are refitted for every count vector; the default learner's C
        (inf when unpenalized) is chosen once here, on the full sample, as in ``fit(n_boot>0)``.
        """
        self._check()
        units = check_units(data, units)
        _, adj = resolve(graph, data)
        cols = list(dict.fromkeys(adj.first_stage + adj.second_stage))
        cs, widths = {}, {}
        if self.mediator_learner is None:
            bm, f, t = _design(data, cols), np.ones(data.n), data.t.astype(int)
            for u in units:
                z = features(data.mediator(u), bm.values, self.pca, f)
                zs, _, mask = standardize(z, bm.values.shape[1], f)
                cs[u], widths[u] = default_c(zs, t, f, mask, self.random_state), z.shape[1]
            _warn_penalized(data, t, f, {u: w for u, w in widths.items() if np.isfinite(cs[u])})
        return _WeightingStatistic(self, units, cols, cs)

    def fit(self, data, *, graph=None, units=None, n_jobs=1, backend="local", cluster=None,
            weights=None, progress=None) -> MediationResult:
        """Estimate every unit in ``units`` (default all). ``n_jobs`` parallelizes bootstrap replicates.

        ``cluster`` (labels per row or a confounder column; default the data's role) makes the influence SEs
        cluster-robust and the bootstrap resample whole clusters. Sampling ``weights`` weight every fit and
        mean; their SE needs ``n_boot > 0`` (the bootstrap reweights each resample). ``progress``: a bar over
        the units (True), none (False), or one only on a terminal (None).
        """
        self._check()
        units = check_units(data, units)
        data = attach_roles(data, cluster, weights)  # the roles follow the rows dropped below
        if data.weights is not None and not self.n_boot:
            raise NotImplementedError("weighting with sampling weights: expected n_boot > 0 (bootstrap SE), got "
                                      "n_boot=0; the influence-function SE is implemented for unweighted rows only")
        g, adj = resolve(graph, data)
        cols = list(dict.fromkeys(adj.first_stage + adj.second_stage))
        data = check_positivity(data, cols, estimand=self.population, drop_unsupported=self.drop_unsupported,
                                what="weighting mediation")
        data = outside_population(data, cols, self.population)  # ATT: control-only topics weigh 0
        cluster, sw = sample_roles(data)
        warn_uncalibrated("weighting", n=data.n, n_treated=data.n_treated)
        bm = _design(data, cols)
        t, y = data.t.astype(int), data.y.astype(float)
        f = np.ones(data.n) if sw is None else sw
        odds = eb_odds if self.propensity == "eb" else logit_odds
        h, px_blocks, eb_info = odds(bm, t, f, blocks=True)
        px = np.where(t == 1, 1 / (1 + h), h / (1 + h))
        level = float(self.level)
        effects, diagnostics, warns, cs = {}, {}, [], {}
        for u in progress_iter(units, "weighting: units", progress):
            mu, scores, diag, c = _unit(data.mediator(u), bm, t, y, f, h, px_blocks, self, None, analytic=True)
            cs[u] = c if self.mediator_learner is None else None
            diag.update(px_min=float(px.min()), px_max=float(px.max()))
            diagnostics[u] = diag
            warns += _unit_warnings(u, diag, data.n, self)
            if mu is None:
                effects[u] = _nan_effects(level)
                continue
            pots = {k: Effect.from_scores(mu[k], scores[k], level=level, clusters=cluster) for k in MU_KEYS}
            diag["potential_outcomes"] = pots
            raw = dict(zip(_NAMES, [pots["y11"] - pots["y00"], pots["y11"] - pots["y10"], pots["y01"] - pots["y00"],
                                    pots["y10"] - pots["y00"], pots["y11"] - pots["y01"]]))
            effects[u] = _assemble(raw, level)
        ok = [u for u in units if "potential_outcomes" in diagnostics[u]]
        near = [u for u in ok if diagnostics[u]["share_extreme"] > SEPARATION_SHARE]
        if near:
            warn_uncalibrated("weighting-separation", n=data.n, n_treated=data.n_treated,
                              share_extreme=max(diagnostics[u]["share_extreme"] for u in near),
                              what=f" (units {few(near)})")
        if self.mediator_learner is None:
            _warn_penalized(data, t, f, {u: diagnostics[u]["n_features"] for u in ok
                                         if np.isfinite(diagnostics[u]["C"])})
        check_paths("weighting", data, units, cols, diagnostics, warn_units=ok)
        if self.n_boot and ok:
            boot, caught = run_bootstrap(_WeightingStatistic(self, ok, cols, cs, sw), data, self, cluster, level,
                                         n_jobs, backend)
            warns += caught
            for u in ok:
                draws = boot.effects([f"{u}:{nm}" for nm in _NAMES])
                effects[u] = _assemble({nm: draws[f"{u}:{nm}"] for nm in _NAMES}, level)
                diagnostics[u]["se"] = f"bootstrap: {boot.n_boot - boot.n_failed} of {boot.n_boot} replicates"
        if not adj.identified:
            warns.append(f"graph {g.name}: effects not identified (latent {list(adj.latent)}); adjusted for the "
                         "observed confounders only")
        for msg in warns:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        if eb_info:
            diagnostics["_weights"] = {"att": eb_info["att"].diagnostics, "atc": eb_info["atc"].diagnostics,
                                       "balance_att": eb_info["att"].balance_table(),
                                       "balance_atc": eb_info["atc"].balance_table(),
                                       "topic_counts": eb_info["att"].topic_counts()}
        settings = {"propensity": self.propensity, "mediator_learner": repr(self.mediator_learner)
                    if self.mediator_learner is not None else DEFAULT_LEARNER,
                    "pca": self.pca, "trim": float(self.trim), "n_boot": int(self.n_boot),
                    "adjusted_for": cols, "warn_share": float(self.warn_share),
                    "positivity_dropped": data.meta.get("positivity_dropped", []),
                    "outside_population": data.meta.get("outside_population", [])}
        pop, note = self.population, population_note(data, self.population)
        if note:
            pop, settings["population_note"] = "overlap", note
        if self.trim > 0:
            pop = "overlap"
            settings["population_note"] = (f"the rows with p(M,X) in [{self.trim:g}, {1 - self.trim:g}], weighted to "
                                           f"the {self.population.upper()}: a set selected on the mediator, which "
                                           "is post-treatment, so not a population of units defined before T")
            warns.append(f"trim={self.trim:g} drops rows on p(M,X), a function of the post-treatment mediator: "
                         "the effects refer to a selected set of rows, not to a population (use trim=0)")
            warnings.warn(warns[-1], RuntimeWarning, stacklevel=2)
        return MediationResult(estimator=self.name, effects=effects, n=data.n, n_treated=data.n_treated,
                               population=pop, graph=g.name, adjustment=adj.as_dict(), level=level,
                               random_state=self.random_state, settings=settings, diagnostics=diagnostics,
                               warnings=warns)


def _warn_penalized(data, t, f, widths: dict) -> None:
    """The calibration warning for the units (-> their number of features of [M, X]) whose default p(M,X)
    learner is penalized: its cross-validated penalty shrinks their NIEs toward 0."""
    if not widths:
        return
    named = ", ".join(f"{u!r} ({k} features)" for u, k in list(widths.items())[:5])
    more = f" and {len(widths) - 5} more" if len(widths) > 5 else ""
    arm = min(f[t == 1].sum(), f[t == 0].sum())
    warn_uncalibrated("weighting-penalized", n=data.n, n_treated=data.n_treated, penalized=True, stacklevel=4,
                      what=f" (units {named}{more} of [M, X] for {arm:g} rows in the smaller arm)")


def _unit_warnings(u, diag, n, est) -> list:
    out = []
    if diag["separable"]:  # a unit without an estimate for other reasons: "no estimate" says why
        out.append(f"unit {u!r}: p(M,X) is near-separable: {diag['share_extreme']:.1%} of the {n} rows have "
                   f"p(M,X) below 0.01 or above 0.99 (range {diag['pmx_min']:.3g} to {diag['pmx_max']:.3g}); the "
                   "cross-world means rest on few rows and may be unstable")
    if diag["n_trimmed"]:
        out.append(f"unit {u!r}: trimmed {diag['n_trimmed']} of {n} rows ({diag['n_trimmed_treated']} treated, "
                   f"{diag['n_trimmed_control']} control) with p(M,X) outside [{est.trim:g}, {1 - est.trim:g}]; "
                   f"effects refer to the {diag['n_kept']} kept rows")
    if "se" not in diag:
        why = ("p(M,X) separates the arms completely (every treated row above every control row)"
               if diag["separated"] else
               f"a cross-world mean rests on fewer than {MIN_ESS} effective rows (Kish ESS y10="
               f"{diag['ess_y10']:.1f}, y01={diag['ess_y01']:.1f}) or fewer than 2 rows of an arm are left")
        out.append(f"unit {u!r}: no estimate: {why}; the NIE is not identified from these data (no overlap in "
                   "M given X); effects are NaN")
    else:
        low = {k: diag[f"ess_{k}"] for k in ("y10", "y01") if diag[f"ess_{k}"] < max(10.0, 0.01 * n)}
        if low:
            out.append(f"unit {u!r}: cross-world weights concentrated on few rows (Kish ESS "
                       + ", ".join(f"{k}={v:.1f}" for k, v in low.items()) + f" of n={n})")
    return out
