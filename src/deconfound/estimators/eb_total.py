"""The total effect of T on Y with entropy balancing weights (``eb_total``), with clusters and sampling weights.

The arm means are Hajek means whose weights come from entropy balancing (:mod:`deconfound.weights`); their
influence values stack the balancing equations (``_learners.eb_block``), as the weighting estimator's do.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..graph import resolve
from ..inference import Effect
from ..positivity import check_positivity, population_note
from ..results import MediationResult
from ..weights import eb_ate, eb_att, eb_weights_batch
from ._learners import _check_common, _design, _hajek, _kish, _mu_scores, eb_block, run_bootstrap
from .base import MediationEstimator, attach_roles, check_units, register, sample_roles


@register("eb_total")
class EntropyBalancedTotalEffect(MediationEstimator):
    """The total effect of T on Y with entropy balancing weights on the graph's total-effect adjustment set.

    ``population="att"`` (default): treated mean minus the EB-weighted control mean (controls balanced to the
    treated topic means). ``"ate"``: both arms balanced to the pooled means. One row is reported,
    ``("te", "average")``; the result's ``population`` says which. A treated topic without controls (ATT), or
    any topic seen in one arm only (ATE), raises PositivityError unless ``drop_unsupported=True``.

    SEs: with ``n_boot=0`` the influence function of the Hajek mean stacked with the estimating equations of
    entropy balancing (so the estimated weights are accounted for; with one-hot topics this is the
    post-stratification variance); with ``n_boot > 0`` a bootstrap stratified by T that refits the weights in
    every replicate (vectorized over replicates).

    ``fit(data, cluster=, weights=)`` (or the data's roles). Sampling weights are the base weights of entropy
    balancing: the balance targets (treated or pooled covariate means) and every mean are weighted, and the
    influence values carry the weights (the linearization variance of a weighted estimator). Clusters make
    the influence SE cluster-robust (CR1 on the values summed within clusters) and the bootstrap resample whole
    clusters (within arms when every cluster lies in one arm).

    Examples
    --------
    >>> from deconfound.simulate import topic_mediation
    >>> data, truth = topic_mediation(3000, seed=0)
    >>> te = EntropyBalancedTotalEffect().fit(data).effect("u0", "te", "average")
    >>> bool(abs(te.estimate - truth.value("u0", "te", "average", "att")) < 3 * te.se)
    True
    """

    def __init__(self, population: str = "att", n_boot: int = 0, level: float = 0.95, random_state=0,
                 drop_unsupported: bool = False):
        self.population = population
        self.drop_unsupported = drop_unsupported
        self.n_boot = n_boot
        self.level = level
        self.random_state = random_state

    def statistic(self, data, *, graph=None):
        """The EB total effect as a counts statistic for :mod:`deconfound.bootstrap` (name ``"te"``), the
        weights refitted for every count vector (all replicates in one batched solve); the data's sampling
        ``weights`` role, if any, multiplies the counts."""
        pop = str(self.population).lower()
        if pop not in ("att", "ate"):
            raise ValueError(f"population: expected 'att' or 'ate', got {self.population!r}")
        _, adj = resolve(graph, data)
        return _TotalStatistic(list(adj.total), pop, sample_roles(data)[1])

    def fit(self, data, *, graph=None, units=None, n_jobs=1, backend="local", cluster=None,
            weights=None) -> MediationResult:
        """The TE, reported for every unit in ``units`` (default all). ``cluster`` (labels per row or a
        confounder column; default the data's role) and sampling ``weights``: see the class notes."""
        _check_common(self.level, self.n_boot)
        pop = str(self.population).lower()
        if pop not in ("att", "ate"):
            raise ValueError(f"population: expected 'att' or 'ate', got {self.population!r}")
        units = check_units(data, units)
        g, adj = resolve(graph, data)
        cols = list(adj.total)
        data = attach_roles(data, cluster, weights)  # the roles follow the rows dropped below
        data = check_positivity(data, cols, estimand=pop, drop_unsupported=self.drop_unsupported,
                                what="entropy balancing total effect")
        cluster, sw = sample_roles(data)
        bm = _design(data, cols)
        t, y = data.t.astype(int), data.y.astype(float)
        level = float(self.level)
        te, info = _eb_total(bm, t, y, pop, level, sw, cluster)
        warns = []
        if self.n_boot:
            boot, caught = run_bootstrap(_TotalStatistic(cols, pop, sw), data, self, cluster, level, n_jobs, backend)
            warns += caught
            te = boot.effect(0)
            info["se"] = f"bootstrap: {boot.n_boot - boot.n_failed} of {boot.n_boot} replicates"
        if not adj.identified:
            warns.append(f"graph {g.name}: effects not identified (latent {list(adj.latent)}); adjusted for the "
                         "observed confounders only")
        for msg in warns:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        effects = {u: {("te", "average"): te} for u in units}
        settings = {"population": pop, "n_boot": int(self.n_boot), "adjusted_for": cols,
                    "positivity_dropped": data.meta.get("positivity_dropped", []),
                    "cluster": None if cluster is None else int(len(np.unique(cluster))), "weights": sw is not None}
        note = population_note(data, pop)
        if note:
            settings["population_note"] = note
        return MediationResult(estimator=self.name, effects=effects, n=data.n, n_treated=data.n_treated,
                               population="overlap" if note else pop, graph=g.name, adjustment=adj.as_dict(),
                               level=level, random_state=self.random_state, settings=settings,
                               diagnostics={u: info for u in units}, warnings=warns)


def _eb_total(bm, t, y, pop, level, sw=None, cluster=None):
    """EB total effect with its stacked influence function; returns (Effect, diagnostics).

    Each arm's mean is a Hajek mean sum(f a y) / sum(f a) with f the sampling weights (1 without) and a the
    tilt exp(lambda'c) of entropy balancing, scaled so that the balancing equations read mean(f (S a W - R W))
    = 0 (S: the rows reweighted, R: the target rows, W = [1, c(x)])."""
    n = len(t)
    tr = t == 1
    f = np.ones(n) if sw is None else sw
    w_design = np.column_stack([np.ones(n), bm.values])
    if pop == "att":
        if bm.values.shape[1]:
            fit = eb_att(bm, t, base_weights=sw)
            h = np.where(tr, 0.0, f[tr].sum() * fit.weights / f)
        else:
            fit, h = None, np.where(tr, 0.0, f[tr].sum() / f[~tr].sum())
        arms = {"y1": (tr * 1.0, []), "y0": (h, [eb_block(w_design, ~tr, tr, np.where(tr, 0.0, h), f)])}
    else:
        if bm.values.shape[1]:
            fit = eb_ate(bm, t, base_weights=sw)
            h = f.sum() * fit.weights / f
        else:
            fit, h = None, np.where(tr, f.sum() / f[tr].sum(), f.sum() / f[~tr].sum())
        everyone = np.ones(n, bool)
        arms = {"y1": (np.where(tr, h, 0.0), [eb_block(w_design, tr, everyone, np.where(tr, h, 0.0), f)]),
                "y0": (np.where(tr, 0.0, h), [eb_block(w_design, ~tr, everyone, np.where(tr, 0.0, h), f)])}
    pots = {}
    for key, (a, blocks) in arms.items():
        mu = _hajek(a, y, f)
        dadh = (a > 0) * 1.0
        pots[key] = Effect.from_scores(mu, _mu_scores(a, dadh, 0.0, y, mu, f, blocks, None), level=level,
                                       clusters=cluster)
    te = pots["y1"] - pots["y0"]
    info = {"se": "influence: entropy balancing weights estimated", "potential_outcomes": pots,
            "ess_treated": _kish(arms["y1"][0] * f), "ess_control": _kish(arms["y0"][0] * f)}
    if fit is not None:
        info.update(weights=fit.diagnostics, balance=fit.balance_table(), topic_counts=fit.topic_counts())
    return te, info


class _TotalStatistic:
    """The EB total effect for a matrix of counts at once (one batched entropy balancing solve)."""

    names = ["te"]

    def __init__(self, cols, pop, sw=None):
        self.cols, self.pop, self.sw = list(cols), pop, sw

    def batch(self, data, counts):
        counts = np.atleast_2d(counts).astype(float) * (1.0 if self.sw is None else self.sw)
        t = data.t.astype(int)
        if self.cols:
            w = eb_weights_batch(data.x[self.cols], t, counts, estimand=self.pop.upper(), on_failure="nan").weights
        else:
            w = counts.copy()
            for arm in (0, 1):
                w[:, t == arm] /= w[:, t == arm].sum(axis=1, keepdims=True)
        return (np.where(t == 1, w, -w) @ data.y.astype(float))[:, None]

    def __call__(self, data, counts):
        return self.batch(data, np.asarray(counts)[None, :])[0]
