"""EconML variants: the total effect, and NIE = TE - CDE as a comparison estimator.

This is the only module that imports econml, lazily inside :func:`_econml`. EconML has no mediation
estimands; what it has (METHODS.md 5.4) is the TE and, with the mediator among the controls, the controlled
direct effect (CDE), each with analytic inference and omitted-variable-bias sensitivity
(``sensitivity_summary``, ``sensitivity_interval``, ``robustness_value``; Chernozhukov et al. 2022).

Propensities are clipped explicitly (``min_propensity``, default 0.05): EconML's default of 1e-6 lets the
inverse-propensity weights explode (PEERS.md: an ATE of -4408 against a truth of 1.5).
"""
from __future__ import annotations

import numpy as np

from .._calibration import warn_uncalibrated
from .._validation import refuse_roles
from ..errors import MissingDependencyError
from ..graph import resolve
from ..inference import Effect
from ..positivity import check_positivity
from ..results import MediationResult, add_derived
from .base import MediationEstimator, check_units, register
from .dml import check_learners, child_seed, default_propensity_learner, seeded_clone


def _econml():
    """The econml modules used here, or MissingDependencyError with the install command."""
    try:
        from econml.dml import LinearDML  # noqa: PLC0415 - lazy: import deconfound stays light
        from econml.dr import DRLearner  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - econml is a core dependency
        raise MissingDependencyError("EconML estimators: expected the econml package, got an ImportError "
                                     f"({exc}); install it with `pip install 'econml>=0.15'`") from exc
    return DRLearner, LinearDML


def _design(data, names) -> np.ndarray:
    w = data.x_design(names)[0]
    # EconML's nuisance models need at least one column; a constant adjusts for nothing
    return w if w.shape[1] else np.ones((data.n, 1))


class _EconMLBase(MediationEstimator):
    def __init__(self, *, method: str = "dr", model_regression=None, model_propensity=None, n_folds: int = 5,
                 min_propensity: float = 0.05, trimming_threshold=None, c_y: float = 0.05, c_t: float = 0.05,
                 rho: float = 1.0, population: str = "ate", level: float = 0.95, random_state=0,
                 drop_unsupported: bool = False):
        self.drop_unsupported = drop_unsupported
        self.method = method
        self.model_regression = model_regression
        self.model_propensity = model_propensity
        self.n_folds = n_folds
        self.min_propensity = min_propensity
        self.trimming_threshold = trimming_threshold
        self.c_y = c_y
        self.c_t = c_t
        self.rho = rho
        self.population = population
        self.level = level
        self.random_state = random_state

    def _check(self):
        if self.method not in ("dr", "linear_dml"):
            raise ValueError(f"method: expected 'dr' (DRLearner) or 'linear_dml' (LinearDML), got {self.method!r}")
        if not 0 < float(self.min_propensity) < 0.5:
            raise ValueError(f"min_propensity: expected a number in (0, 0.5), got {self.min_propensity!r}")
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, (int, np.integer)) or self.n_folds < 2:
            raise ValueError(f"n_folds: expected an int >= 2, got {self.n_folds!r}")
        if not 0 < float(self.level) < 1:
            raise ValueError(f"level: expected a number in (0, 1), got {self.level!r}")
        if self.population == "att":
            raise NotImplementedError(
                f"{type(self).__name__}: population='att' is not available: EconML's DRLearner and LinearDML "
                "with a constant final model estimate the ATE only (their effect_inference on the treated rows "
                "returns the same constant), and neither has an ATT method; use "
                "DMLMediation(population='att') for the ATT versions of TE, NIE and NDE")
        if self.population != "ate":
            raise ValueError(f"population: expected 'ate' or 'att', got {self.population!r}")
        prop = default_propensity_learner(legacy_attributes=True, cv=None) if self.model_propensity is None \
            else self.model_propensity
        return check_learners(self.model_regression, prop)

    def _fit_ate(self, y, t, w, tag: int):
        """Fit one EconML model of the ATE of ``t`` given controls ``w``; return (Effect, diagnostics)."""
        DRLearner, LinearDML = _econml()
        reg, prop = self._check()
        seed = child_seed(self.random_state, 20, tag)
        reg, prop = seeded_clone(reg, seed), seeded_clone(prop, seed)
        if self.method == "dr":
            est = DRLearner(model_propensity=prop, model_regression=reg, min_propensity=float(self.min_propensity),
                            trimming_threshold=self.trimming_threshold, cv=int(self.n_folds), random_state=seed)
        else:
            est = LinearDML(model_y=reg, model_t=prop, discrete_treatment=True, cv=int(self.n_folds),
                            random_state=seed)
        est.fit(y, t, X=None, W=w, cache_values=True)
        inf = est.ate_inference()
        ate, se = float(np.ravel(inf.mean_point)[0]), float(np.ravel(inf.stderr_mean)[0])
        nuis = est._cached_values.nuisances  # out-of-fold nuisances kept by cache_values=True
        if self.method == "dr":
            y_pred, _, raw = nuis
            p1 = np.asarray(raw)[:, 1]
            pseudo = np.asarray(y_pred)[:, 1] - np.asarray(y_pred)[:, 0]
            trimmed = int(getattr(est.ortho_learner_model_final_, "n_samples_trimmed_", 0) or 0)
            # without trimming EconML's ATE is mean(pseudo) and its SE is sd(pseudo)/sqrt(n): keep the scores
            eff = (Effect.from_scores(ate, pseudo - ate, level=self.level) if trimmed == 0
                   else Effect.from_se(ate, se, level=self.level))
        else:
            y_res = np.asarray(nuis[0], dtype=float).reshape(len(t), -1)[:, 0]
            t_res = np.asarray(nuis[1], dtype=float).reshape(len(t), -1)[:, 0]
            p1 = t - t_res
            trimmed = 0
            # the final stage regresses y_res on t_res: its influence function, whose SE is EconML's HC0 SE
            eff = Effect.from_scores(ate, t_res * (y_res - ate * t_res) / np.mean(t_res**2), level=self.level)
        clip = float(self.min_propensity)
        kwargs = dict(T=1) if self.method == "dr" else {}
        alpha = 1 - float(self.level)
        sens = dict(c_y=self.c_y, c_t=self.c_t, rho=self.rho, alpha=alpha)
        econ = {"ate": ate, "stderr": se, "c_y": self.c_y, "c_t": self.c_t, "rho": self.rho}
        try:
            econ.update({
                "sensitivity_summary": str(est.sensitivity_summary(**kwargs, **sens)),
                "sensitivity_interval_theta": tuple(map(float, est.sensitivity_interval(
                    **kwargs, **sens, interval_type="theta"))),
                "sensitivity_interval_ci": tuple(map(float, est.sensitivity_interval(**kwargs, **sens,
                                                                                    interval_type="ci"))),
                "robustness_value": float(est.robustness_value(**kwargs, alpha=alpha, interval_type="ci")),
                "robustness_value_theta": float(est.robustness_value(**kwargs, alpha=alpha,
                                                                     interval_type="theta"))})
        except ValueError as exc:  # EconML's OVB pieces can come out negative (near-separated propensities)
            econ.update({"sensitivity_summary": f"not available: EconML raised {exc}",
                         "sensitivity_interval_theta": (np.nan, np.nan), "sensitivity_interval_ci": (np.nan, np.nan),
                         "robustness_value": np.nan, "robustness_value_theta": np.nan,
                         "sensitivity_error": str(exc)})
        diag = {"n_outside_clip": int(((p1 < clip) | (p1 > 1 - clip)).sum()), "min_propensity": clip,
                "propensity_range": (float(p1.min()), float(p1.max())), "n_trimmed": trimmed,
                "robustness_value": econ["robustness_value"], "econml": econ}
        return eff, diag

    def _result(self, data, g, adj, effects, diagnostics, warns):
        settings, population = self.get_params(), "ate"
        trimmed = max(int(d.get("n_trimmed", 0)) for d in diagnostics.values()) if diagnostics else 0
        if trimmed:  # econml_te only: econml_diff refuses trimming_threshold
            population = "overlap"
            settings["population_note"] = (f"rows whose p(X) EconML kept (trimming_threshold="
                                           f"{self.trimming_threshold!r}): {trimmed} of {data.n} rows dropped")
            warns.append(f"EconML trimmed {trimmed} of {data.n} rows (trimming_threshold={self.trimming_threshold!r}); "
                         "the TE refers to the overlap population of the kept rows, not to all rows")
        if not adj.identified:
            warns.append(f"graph {g.name}: effects not identified (latent {list(adj.latent)}); adjusted for the "
                         "observed confounders only")
        for u, diag in diagnostics.items():
            for part, d in ([("", diag)] if "te" not in diag else [(k, diag[k]) for k in ("te", "cde")]):
                if d["n_outside_clip"]:
                    warns.append(f"unit {u!r}{' ' + part if part else ''}: {d['n_outside_clip']} propensities "
                                 f"outside ({d['min_propensity']}, {1 - d['min_propensity']}) were clipped")
                if "sensitivity_error" in d["econml"]:
                    warns.append(f"unit {u!r}{' ' + part if part else ''}: EconML's sensitivity analysis failed "
                                 f"({d['econml']['sensitivity_error']}); its robustness values are NaN")
        return MediationResult(
            estimator=self.name, effects=effects, n=data.n, n_treated=data.n_treated, population=population,
            graph=g.name, adjustment=adj.as_dict(), level=float(self.level), random_state=self.random_state,
            settings=settings, diagnostics=diagnostics, warnings=warns)


@register("econml_te")
class EconMLTotalEffect(_EconMLBase):
    """The total effect (ATE) with EconML, adjusting for the graph's total (T -> Y backdoor) set.

    Parameters
    ----------
    method : ``"dr"`` (``DRLearner`` with a constant final model; default) or ``"linear_dml"`` (``LinearDML``).
    model_regression, model_propensity : scikit-learn regressor / classifier (``predict_proba``); defaults as
        in :class:`~deconfound.estimators.dml.DMLMediation`. Cloned and seeded.
    n_folds : EconML's ``cv``.
    min_propensity : clip propensities to [min_propensity, 1 - min_propensity] (DRLearner; default 0.05).
        LinearDML divides by no propensity; the count outside the band is still reported.
    trimming_threshold : EconML's Crump-style trimming (None, a float or ``"auto"``), DRLearner only. When
        it drops rows, the TE is that of the kept rows: ``result.population`` is then "overlap",
        ``settings["population_note"]`` says how many rows were dropped and the result warns.
    c_y, c_t, rho : confounding strengths for EconML's sensitivity interval (EconML's defaults).
    population : ``"ate"`` (default). ``"att"`` raises NotImplementedError: EconML has no ATT for these
        models (use :class:`~deconfound.estimators.dml.DMLMediation` with ``population="att"``).
    drop_unsupported : a topic with rows in one arm only raises PositivityError (default); True drops its rows
        first (:func:`deconfound.positivity.check_positivity`; the dropped topics in ``data.meta``).
    level, random_state : CI level; seed.

    Notes
    -----
    The TE does not depend on the unit: it is estimated once and the same Effect is reported for every unit,
    as the one total-effect row ``("te", "average")``. Without trimming the Effect keeps per-row scores, so it
    can be differenced with other score-based Effects on the same rows: DRLearner's pseudo-outcomes (the SE
    equals EconML's ``stderr_mean``) or the influence function of LinearDML's final regression of the outcome
    residual on the treatment residual (the SE is EconML's HC1 SE times sqrt((n - 1) / n)). ``diagnostics[unit]`` holds ``n_outside_clip``, ``propensity_range``,
    ``robustness_value`` and ``econml`` (``sensitivity_summary`` as text, ``sensitivity_interval_theta`` /
    ``_ci``, ``robustness_value`` / ``_theta`` at ``alpha = 1 - level``). When EconML's sensitivity step raises
    (its OVB pieces can come out negative when the propensities are near 0 or 1), the effects are kept, those
    values are NaN, ``econml["sensitivity_error"]`` holds the message and the result carries a warning.

    Examples
    --------
    >>> from deconfound import simulate
    >>> data, truth = simulate.topic_mediation(1000, seed=4)
    >>> res = EconMLTotalEffect(n_folds=3, random_state=0).fit(data)
    >>> te = res.effect("u0", "te", "average")
    >>> abs(te.estimate - truth.value("u0", "te")) < 3 * te.se
    True
    >>> res.diagnostics["u0"]["n_outside_clip"] >= 0
    True
    """

    def fit(self, data, *, graph=None, units=None) -> MediationResult:
        self._check()
        units = check_units(data, units)
        refuse_roles(data, self.name)
        g, adj = resolve(graph, data)
        data = check_positivity(data, adj.union, drop_unsupported=self.drop_unsupported, what="EconML")
        eff, diag = self._fit_ate(data.y, data.t.astype(int), _design(data, adj.total), 0)
        effects = {u: {("te", "average"): eff} for u in units}
        return self._result(data, g, adj, effects, {u: dict(diag) for u in units}, [])


@register("econml_diff")
class EconMLDifferenceMediation(_EconMLBase):
    """NIE = TE - CDE with EconML: the difference method, a comparison variant.

    The TE adjusts for the graph's total set; the CDE is the ATE of T with the mediator block added to the
    second-stage controls, E[mu(1,M,X) - mu(0,M,X)], averaged over everyone's (M, X). Both come from
    DRLearner (or LinearDML) on the same data and the same folds; the NIE's SE comes from the difference of the
    two models' score vectors (DRLearner's pseudo-outcomes, or the influence function of LinearDML's final
    regression). With separate folds for the two models, the fold-to-fold noise of the nuisances entered TE - CDE
    but not the scores: on the linear process at n = 2,000 (100 data sets) a zero NIE had SE/SD 0.74 and its
    test rejected 0.12; with shared folds SE/SD 1.01 and 0.02.

    Valid only without a T x M interaction (and with a model in which the CDE does not depend on m): then
    CDE = NDE and TE - CDE = NIE. With an interaction the CDE averages the direct effect over the mixed
    mediator distribution of both arms, so TE - CDE is neither NIE(treated), NIE(control) nor their mean: it is
    biased. Use :class:`~deconfound.estimators.dml.DMLMediation` then. Effects: te, and nie/nde under arm
    "average" only (population "ate"; "att" raises NotImplementedError). Parameters as :class:`EconMLTotalEffect`,
    except ``trimming_threshold``, which must be None: EconML would trim the CDE's rows on P(T | M, X), a selection
    on the post-treatment mediator, and the TE's on P(T | X), so TE - CDE would mix two populations.

    Examples
    --------
    >>> from deconfound import simulate
    >>> data, truth = simulate.topic_mediation(1000, seed=4)          # no T x M interaction: TE - CDE = NIE
    >>> res = EconMLDifferenceMediation(n_folds=3, random_state=0).fit(data)
    >>> nie = res.effect("u0", "nie", "average")
    >>> abs(nie.estimate - truth.value("u0", "nie")) < 3 * nie.se
    True
    """

    def fit(self, data, *, graph=None, units=None) -> MediationResult:
        self._check()
        units = check_units(data, units)
        refuse_roles(data, self.name)
        g, adj = resolve(graph, data)
        data = check_positivity(data, adj.union, drop_unsupported=self.drop_unsupported, what="EconML")
        t, y = data.t.astype(int), data.y
        if self.trimming_threshold is not None:
            raise ValueError(f"trimming_threshold: expected None for econml_diff, got {self.trimming_threshold!r}: "
                             "EconML would trim the CDE's rows on P(T | M, X) (a selection on the mediator) and the "
                             "TE's on P(T | X), so TE - CDE would mix two populations; use econml_te for a trimmed "
                             "TE, or dml(trim=...) for effects on a pre-treatment overlap population")
        warn_uncalibrated("econml_diff", n=data.n, n_treated=data.n_treated)
        te, te_diag = self._fit_ate(y, t, _design(data, adj.total), 0)
        x_second = data.x_design(adj.second_stage)[0]
        effects, diagnostics, warns = {}, {}, []
        for i, u in enumerate(units):
            w = np.hstack([x_second, data.mediator(u).astype(float)])
            cde, cde_diag = self._fit_ate(y, t, w, 0)  # the TE's folds: the nuisances' noise cancels in TE - CDE
            nie = te - cde  # untrimmed fits keep their scores: the SE of the difference of the two score vectors
            effs = {("te", "average"): te, ("nie", "average"): nie, ("nde", "average"): cde}
            effects[u] = add_derived(effs)
            diagnostics[u] = {"te": te_diag, "cde": cde_diag, "te_robustness_value": te_diag["robustness_value"],
                              "cde_robustness_value": cde_diag["robustness_value"]}
        return self._result(data, g, adj, effects, diagnostics, warns)
