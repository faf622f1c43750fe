"""Many estimators side by side on the same data, folds and resamples; localization of per-unit effects."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._validation import check_random_state
from .estimators.base import get_estimator
from .inference import Effect, draw_p_value
from .multiplicity import joint_draws as _joint_draws

# ---------------------------------------------------------------------------------------------------------
# Localization indices (METHODS.md section 7)


def localization_indices(effects, *, top_k: int = 3, mass: float = 0.8) -> dict[str, float]:
    """Indices of how concentrated a curve of per-unit effects is.

    ``p_u = |a_u| / sum |a|``; returns normalized entropy H(p)/log(L) (1 = spread evenly), the Gini of |a|
    (0 = even, ->1 = one unit), the top-k share, the number of units holding ``mass`` of sum |a|, and
    peak-to-mean max|a| / mean|a|.

    Examples
    --------
    >>> r = localization_indices([1.0, 1.0, 1.0, 1.0])
    >>> round(r["entropy"], 6), round(r["gini"], 6), r["units_for_80"]
    (1.0, 0.0, 4.0)
    """
    a = np.abs(np.asarray(effects, dtype=float))
    return {k: float(v[0]) for k, v in localization_matrix(a[None, :], top_k=top_k, mass=mass).items()}


def localization_matrix(a, *, top_k: int = 3, mass: float = 0.8) -> dict[str, np.ndarray]:
    """Vectorized :func:`localization_indices` over the rows of ``a`` (draws x units)."""
    a = np.abs(np.asarray(a, dtype=float))
    draws, n_units = a.shape
    total = a.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, a / total, 1.0 / n_units)
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1) / np.log(n_units) if n_units > 1 else np.ones(draws)
    srt = np.sort(a, axis=1)
    idx = np.arange(1, n_units + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gini = np.where(total[:, 0] > 0,
                        (2 * (srt * idx).sum(axis=1) / (n_units * total[:, 0])) - (n_units + 1) / n_units, 0.0)
    desc = srt[:, ::-1]
    share = np.cumsum(desc, axis=1) / np.where(total > 0, total, 1.0)
    top = share[:, min(top_k, n_units) - 1]
    need = (share < mass - 1e-12).sum(axis=1) + 1
    peak = np.where(total[:, 0] > 0, desc[:, 0] / (total[:, 0] / n_units), np.nan)
    return {"entropy": ent, "gini": gini, f"top{top_k}_share": top, f"units_for_{int(mass * 100)}": need.astype(float),
            "peak_to_mean": peak}


def joint_draws(result, units, effect="nie", arm="treated", *, n_draws=2000, random_state=0, xi=None) -> np.ndarray:
    """A (draws x units) matrix of joint draws of the units' effects (see :func:`deconfound.multiplicity.joint_draws`).

    Bootstrap draws of equal length are stacked (the same resamples for every unit); influence scores give a
    multiplier bootstrap with one N(0, 1) multiplier per row shared by all units (``xi`` may be passed so two
    results share it: a paired comparison).
    """
    return _joint_draws(result, units, effect, arm, n_draws=n_draws, random_state=random_state, xi=xi)[0]


LOCALIZATION_METHODS = ("debiased", "abs")
MAX_SIGNAL_CV = 0.3  # above it, sum(a^2 - s^2) is too noisy for a ratio of moments to mean anything


def _moments(a, s2):
    a2 = a**2
    return (a2 - s2).sum(axis=-1), (a2**2 - 6 * a2 * s2 + 3 * s2**2).sum(axis=-1)


def debiased_indices(estimates, ses, draws=None) -> dict[str, np.ndarray]:
    """Localization of a curve from noise-corrected squared effects.

    With ``a_u ~ N(alpha_u, s_u^2)``, ``S2 = sum(a^2 - s^2)`` and ``S4 = sum(a^4 - 6 a^2 s^2 + 3 s^4)`` are
    unbiased for ``sum alpha^2`` and ``sum alpha^4`` (Hermite moments), so none of the returned indices is
    pushed toward "spread" by a larger SE, unlike indices of ``|a|``:

    * ``concentration`` = S4 / S2^2: the Herfindahl index of the shares ``alpha_u^2 / sum alpha^2`` (1/L when
      every unit carries the same effect, 1 when one unit carries it all). The tested index.
    * ``effective_units`` = 1 / concentration, and ``renyi2_entropy`` = log(effective_units) / log(L)
      (order-2 Renyi entropy of the shares, 1 = spread evenly): descriptive transforms of it.
    * ``signal_cv``: the coefficient of variation of S2 (NaN without draws; infinite when S2 <= 0, a curve
      with no squared effect above its noise). The ratio is reliable when it is small; above
      ``MAX_SIGNAL_CV`` the curve's total effect is too noisy to say how it is spread, and the indices are NaN.

    ``draws`` (draws x units, joint draws of the curve) adds the second-order correction of the ratio,
    ``- (3 S4 var(S2) / S2^4 - 2 cov(S2, S4) / S2^3)``, and returns ``linear``: the first-order (delta method)
    draws of each index, which :func:`localization` and :func:`localization_difference` use for SEs. The
    (co)variances of S2 and S4 come from the draws' deviations times unbiased gradients (``2 a`` and
    ``4 (a^3 - 3 a s^2)``), so the draws' own noise is not counted twice.

    Examples
    --------
    >>> r = debiased_indices([1.0, 1.0, 1.0, 1.0], [0.0] * 4)
    >>> round(float(r["concentration"]), 6), round(float(r["effective_units"]), 6)
    (0.25, 4.0)
    """
    a = np.asarray(estimates, dtype=float)
    s2 = np.asarray(ses, dtype=float) ** 2
    n_units = a.shape[-1]
    sum2, sum4 = _moments(a, s2)
    conc = sum4 / sum2**2 if sum2 > 0 else np.nan
    out = {"signal_cv": np.nan if sum2 > 0 else np.inf}  # S2 <= 0: no squared effect above the noise at all
    lin = None
    if draws is not None and sum2 > 0:
        # first-order draws of S2 and S4, with unbiased gradients (2 a and 4 He3(a) = 4 (a^3 - 3 a s^2)): the
        # moments of the draws themselves would add the draws' own noise a second time
        delta = np.asarray(draws, dtype=float) - a
        d2, d4 = delta @ (2 * a), delta @ (4 * (a**3 - 3 * a * s2))
        cov = np.cov(d2, d4)
        out["signal_cv"] = float(np.sqrt(cov[0, 0]) / sum2)
        conc = conc - (3 * sum4 * cov[0, 0] / sum2**4 - 2 * cov[0, 1] / sum2**3)
        lin = conc + (d4 - d4.mean()) / sum2**2 - 2 * sum4 * (d2 - d2.mean()) / sum2**3
        if out["signal_cv"] > MAX_SIGNAL_CV:
            conc, lin = np.nan, np.full_like(lin, np.nan)
    log_l = np.log(n_units) if n_units > 1 else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        point = {"concentration": conc, "effective_units": 1.0 / conc, "renyi2_entropy": -np.log(conc) / log_l}
    out.update({k: float(v) for k, v in point.items()})
    if lin is not None:  # first order: d(1/c) = -dc / c^2, d(-log c / log L) = -dc / (c log L)
        out["linear"] = {"concentration": lin, "effective_units": point["effective_units"] - (lin - conc) / conc**2,
                         "renyi2_entropy": point["renyi2_entropy"] - (lin - conc) / (conc * log_l)}
    return out


def _check_method(method):
    if method not in LOCALIZATION_METHODS:
        raise ValueError(f"method: expected one of {list(LOCALIZATION_METHODS)}, got {method!r}")


def _curve_indices(result, units, effect, arm, draws, method, top_k):
    """(point indices, draw indices) of one result's curve under ``method``."""
    effs = [result.effect(u, effect, arm) for u in units]
    est = np.array([e.estimate for e in effs])
    if method == "abs":
        return localization_indices(est, top_k=top_k), localization_matrix(draws, top_k=top_k), np.nan
    se = np.array([e.se for e in effs])
    if not np.isfinite(se).all():
        bad = [u for u, v in zip(units, se) if not np.isfinite(v)]
        raise ValueError(f"localization (debiased): expected a finite SE for every unit, got none for {bad}")
    r = debiased_indices(est, se, draws)
    point = {k: r[k] for k in ("concentration", "effective_units", "renyi2_entropy")}
    return point, r.get("linear", {k: np.full(len(draws), np.nan) for k in point}), r["signal_cv"]


def _wald(estimate, draws, level):
    """Normal CI and p-value centred on ``estimate`` with the SD of the draws (NaN draws dropped)."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    se = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    p = float(2 * stats.norm.sf(abs(estimate) / se)) if se > 0 else float("nan")
    return estimate - z * se, estimate + z * se, se, p


def localization(result, *, effect="nie", arm="treated", units=None, level=0.95, n_draws=2000, random_state=0,
                 xi=None, top_k: int = 3, method: str = "debiased") -> pd.DataFrame:
    """Localization indices of one result's per-unit curve, each with a CI.

    ``method="debiased"`` (default): :func:`debiased_indices`, with normal CIs centred on the estimate and the
    SD of the indices over joint draws of the curve. ``method="abs"``: the indices of ``|estimate|`` of
    :func:`localization_indices` with percentile CIs; they grow toward "spread" as the SEs grow, so do not
    compare them between curves of unequal precision.

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(800, n_units=3, seed=1)   # u2 only tracks the topic
    >>> res = get_estimator("weighting", random_state=0).fit(data)
    >>> print(localization(res, effect="nie", arm="average")["index"].tolist())
    ['concentration', 'effective_units', 'renyi2_entropy']
    >>> loc = localization(res, effect="nie", arm="average", method="abs").set_index("index")
    >>> bool(loc.loc["entropy", "ci_lower"] <= loc.loc["entropy", "estimate"] <= loc.loc["entropy", "ci_upper"])
    True
    """
    _check_method(method)
    units = list(units or result.units)
    draws = joint_draws(result, units, effect, arm, n_draws=n_draws, random_state=random_state, xi=xi)
    point, dr, cv = _curve_indices(result, units, effect, arm, draws, method, top_k)
    a = (1 - level) / 2
    rows = []
    for k, v in point.items():
        if method == "abs":
            lo, hi = np.nanquantile(dr[k], [a, 1 - a])
            se = float(np.nanstd(dr[k], ddof=1))
        else:
            lo, hi, se, _ = _wald(v, dr[k], level)
        rows.append({"index": k, "estimate": v, "ci_lower": float(lo), "ci_upper": float(hi), "se": se,
                     "method": method, "signal_cv": cv})
    return pd.DataFrame(rows)


def localization_difference(adjusted, unadjusted, *, effect="nie", arm="treated", units=None, level=0.95,
                            n_draws=2000, random_state=0, top_k: int = 3, method: str = "debiased") -> pd.DataFrame:
    """Adjusted minus unadjusted localization indices, with a paired CI and p-value.

    Both results must come from the same rows (and, for bootstrap draws, the same resamples); scores share one
    multiplier per row. ``method="debiased"`` (default) compares :func:`debiased_indices`: the test of equal
    localization is the ``concentration`` row (normal CI and p-value from the SD of the paired differences
    over the draws); "less localized after adjustment" means its difference is below 0 with the CI below 0.
    Its size stays at the nominal level when the adjusted curve is noisier than the unadjusted one.
    ``method="abs"`` gives the indices of ``|estimate|`` with percentile CIs (entropy difference > 0 means
    less localized), which are biased toward "less localized" for the noisier curve.

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(800, n_units=3, seed=1)   # u2 only tracks the topic
    >>> est = get_estimator("weighting", random_state=0)
    >>> adj, raw = est.fit(data), est.fit(data, graph="unadjusted_mediation")
    >>> diff = localization_difference(adj, raw, effect="nie", arm="average").set_index("index")
    >>> bool(diff.loc["concentration", "ci_lower"] > 0)    # concentrated on u0, u1 once u2 drops out
    True
    """
    _check_method(method)
    units = list(units or adjusted.units)
    first = adjusted.effect(units[0], effect, arm)
    xi = None
    if first.scores is not None:
        xi = check_random_state(random_state).standard_normal((n_draws, len(first.scores)))
    pa, da, cva = _curve_indices(adjusted, units, effect, arm,
                            joint_draws(adjusted, units, effect, arm, xi=xi, n_draws=n_draws), method, top_k)
    pu, du, cvu = _curve_indices(unadjusted, units, effect, arm,
                            joint_draws(unadjusted, units, effect, arm, xi=xi, n_draws=n_draws), method, top_k)
    a = (1 - level) / 2
    rows = []
    for k in pa:
        d = da[k] - du[k]
        if method == "abs":
            lo, hi = np.nanquantile(d, [a, 1 - a])
            p = draw_p_value(d)
            se = float(np.nanstd(d, ddof=1))
        else:
            lo, hi, se, p = _wald(pa[k] - pu[k], d, level)
        rows.append({"index": k, "adjusted": pa[k], "unadjusted": pu[k], "difference": pa[k] - pu[k], "se": se,
                     "ci_lower": float(lo), "ci_upper": float(hi), "p_value": p, "method": method,
                     "signal_cv_adjusted": cva, "signal_cv_unadjusted": cvu})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Comparing estimators


@dataclass
class Comparison:
    """Results of several estimators x graphs on one dataset."""

    results: dict[tuple[str, str], object]
    frame: pd.DataFrame
    runtimes: dict[tuple[str, str], float] = field(default_factory=dict)
    level: float = 0.95

    def agreement(self, *, effect="nie", arm="treated", reference: str | None = None) -> pd.DataFrame:
        """Pairwise differences per unit with CIs (paired through scores/draws when both allow it).

        With ``reference`` (e.g. the interventional patching estimate), only pairs against it, the reference in
        column ``a``. ``population_a`` / ``population_b`` name each fit's population (ate, att, ...): only pairs
        with the same population are ``comparable``, and only those get a ``disagrees`` flag (the difference's CI
        excludes 0); for the others it is None, since two different estimands need not agree. ``estimand_a`` /
        ``estimand_b`` name the effect each fit reports (patching with a mean donor reports a mean-patch
        contrast, whose gap to the NIE is in that fit's ``diagnostics[unit]["exact_gap"]``).
        """
        keys = list(self.results)
        rows = []
        for i, first in enumerate(keys):
            for second in keys[i + 1:]:
                if reference is not None and reference not in (first[0], second[0]):
                    continue
                # the reference goes in column a; new names, so the outer loop's key is never overwritten
                swap = reference is not None and second[0] == reference and first[0] != reference
                ka, kb = (second, first) if swap else (first, second)
                ra, rb = self.results[ka], self.results[kb]
                for u in [u for u in ra.units if u in rb.units]:
                    try:
                        ea, eb = ra.effect(u, effect, arm), rb.effect(u, effect, arm)
                    except KeyError:
                        continue
                    paired = _pairable(ra, rb, ea, eb)
                    if paired:
                        d = ea - eb
                    else:  # different resampling schemes: independent normal approximation, flagged
                        se = float(np.hypot(ea.se, eb.se))
                        d = Effect.from_se(ea.estimate - eb.estimate, se, level=self.level)
                    pa, pb = getattr(ra, "population", None), getattr(rb, "population", None)
                    rows.append({"a": f"{ka[0]}@{ka[1]}", "b": f"{kb[0]}@{kb[1]}", "unit": u, "effect": effect,
                                 "arm": arm, "estimand_a": _estimand(ra, effect),
                                 "estimand_b": _estimand(rb, effect), "population_a": pa, "population_b": pb,
                                 "comparable": pa == pb,
                                 "difference": d.estimate, "se": d.se, "ci_lower": d.ci[0],
                                 "ci_upper": d.ci[1], "p_value": d.p_value, "paired": paired,
                                 "disagrees": bool(d.ci[0] > 0 or d.ci[1] < 0) if pa == pb else None})
        return pd.DataFrame(rows)

    def localization(self, *, effect="nie", arm="treated", **kw) -> pd.DataFrame:
        """Localization indices with CIs for every estimator x graph."""
        out = []
        for (est, graph), res in self.results.items():
            try:
                tab = localization(res, effect=effect, arm=arm, **kw)
            except (ValueError, KeyError):
                continue
            out.append(tab.assign(estimator=est, graph=graph))
        return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _estimand(res, effect) -> str:
    """The result's name for ``effect`` (patching with a mean donor: the mean-patch contrast)."""
    return res.settings.get("estimand", "NIE") if effect == "nie" and res.settings else effect.upper()


def _pairable(ra, rb, ea, eb) -> bool:
    """Scores on the same rows pair; draws pair only when both results used the same resamples."""
    if ea.scores is not None and eb.scores is not None:
        return len(ea.scores) == len(eb.scores)
    key_a, key_b = ra.settings.get("resample_key"), rb.settings.get("resample_key")
    return (ea.draws is not None and eb.draws is not None and key_a is not None and key_a == key_b
            and len(ea.draws) == len(eb.draws))


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def compare_estimators(data, *, estimators, graphs=("topic_mediation", "unadjusted_mediation"), units=None,
                       patcher=None, folds: int | None = None, random_state=0, sensitivity: dict | None = None,
                       refuters=None, progress: bool | None = False, population: str | None = "auto") -> Comparison:
    """Run every estimator under every graph on ``data`` and return a tidy :class:`Comparison`.

    ``estimators`` is a list of names or instances, or a dict label -> name/instance. Every estimator that
    has a ``random_state`` (and ``n_folds``) gets the same value, so folds and resamples are shared and the
    comparison is paired. ``patcher`` is passed to estimators whose ``fit`` takes one. ``sensitivity`` (a
    dict of ``sensitivity_analysis`` options) adds RV/RVa where the result supports it; ``refuters`` (names in
    ``deconfound.refute``) adds a pass/fail column. ``progress``: a tqdm bar (True), none (False), or one only
    on a terminal (None).

    ``population`` is given to every estimator that takes one. ``"auto"`` (default): ``"att"`` when an
    interventional estimator runs with ``patcher`` (patching estimates effects on the treated, so the
    observational fits then estimate the same population), otherwise each estimator keeps its own; None leaves
    every estimator as it is.

    Examples
    --------
    >>> from deconfound import simulate
    >>> data, truth = simulate.topic_mediation(800, n_units=3, seed=1)
    >>> comp = compare_estimators(data, estimators=["parametric", "weighting"], random_state=0)
    >>> print(sorted(comp.results)[:2])
    [('parametric', 'topic_mediation'), ('parametric', 'unadjusted_mediation')]
    >>> agree = comp.agreement(effect="nie", arm="average")
    >>> same = agree[agree.a.str.endswith("@topic_mediation") & agree.b.str.endswith("@topic_mediation")]
    >>> print(len(same), bool(same.disagrees.any()))        # the two adjusted fits agree on every unit
    3 False
    """
    if not isinstance(estimators, dict):
        estimators = {(e if isinstance(e, str) else getattr(e, "name", type(e).__name__)): e for e in estimators}
    if isinstance(graphs, str):
        graphs = [graphs]
    if population == "auto":
        interventional = any(_accepts((get_estimator(e) if isinstance(e, str) else e).fit, "patcher")
                             for e in estimators.values())
        population = "att" if patcher is not None and interventional else None
    results, runtimes, frames = {}, {}, []
    from tqdm.auto import tqdm  # noqa: PLC0415

    bar = tqdm(total=len(estimators) * len(graphs), desc="estimators x graphs", disable=None if progress is None else not progress)
    for label, est in estimators.items():
        for graph in graphs:
            bar.set_postfix_str(f"{label} @ {graph}")
            bar.update(1)
            inst = get_estimator(est) if isinstance(est, str) else est
            params = inst.get_params() if hasattr(inst, "get_params") else {}
            shared = {"random_state": random_state}
            if population is not None and not _accepts(inst.fit, "patcher"):
                shared["population"] = population
            if folds is not None:
                shared["n_folds"] = folds
            inst.set_params(**{k: v for k, v in shared.items() if k in params})
            kwargs = {"graph": graph, "units": units}
            if patcher is not None and _accepts(inst.fit, "patcher"):
                kwargs["patcher"] = patcher
            elif _accepts(inst.fit, "patcher"):
                continue  # an interventional estimator without a model: skip
            start = time.perf_counter()
            res = inst.fit(data, **kwargs)
            runtimes[(label, str(graph))] = time.perf_counter() - start
            results[(label, str(graph))] = res
            frame = res.to_frame().assign(estimator=label, graph=str(graph),
                                          runtime_s=runtimes[(label, str(graph))])
            frame = _add_robustness(frame, res, inst, data, graph, sensitivity, refuters, random_state)
            frames.append(frame)
    bar.close()
    cols = ["estimator", "graph", "unit", "effect", "arm", "estimate", "se", "ci_lower", "ci_upper", "p_value",
            "runtime_s", "rv", "rva", "refutation_passed"]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    for c in cols:
        if c not in frame:
            frame[c] = np.nan
    return Comparison(results, frame[cols + [c for c in frame.columns if c not in cols]], runtimes)


def _add_robustness(frame, res, inst, data, graph, sensitivity, refuters, random_state):
    frame = frame.assign(rv=np.nan, rva=np.nan, refutation_passed=None)
    if sensitivity is not None:
        from . import sensitivity as sens  # noqa: PLC0415 - same layer as compare's callers

        try:
            s = sens.sensitivity_analysis(res, **sensitivity).to_frame()
        except ValueError:  # the estimator stores no OVB pieces (e.g. weighting, parametric): RV stays NaN
            s = None
        if s is not None:
            frame = frame.drop(columns=["rv", "rva"]).merge(s[["unit", "effect", "arm", "rv", "rva"]],
                                                            on=["unit", "effect", "arm"], how="left")
    if refuters:
        from . import refute  # noqa: PLC0415

        passed = {}
        for name in refuters:
            r = getattr(refute, name)(inst, data, graph=graph, random_state=random_state).to_frame()
            for row in r.itertuples():
                key = (row.unit, row.effect, row.arm)
                passed[key] = bool(passed.get(key, True) and row.passed)
        frame["refutation_passed"] = [passed.get((u, e, a)) for u, e, a in zip(frame.unit, frame.effect, frame.arm)]
    return frame
