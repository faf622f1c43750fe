"""Many estimators side by side on the same data, folds and resamples; localization of per-unit effects."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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


def localization(result, *, effect="nie", arm="treated", units=None, level=0.95, n_draws=2000, random_state=0,
                 xi=None, top_k: int = 3) -> pd.DataFrame:
    """Localization indices of one result's per-unit curve, each with a bootstrap CI.

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(800, n_units=3, seed=1)   # u2 only tracks the topic
    >>> res = get_estimator("weighting", random_state=0).fit(data)
    >>> loc = localization(res, effect="nie", arm="average").set_index("index")
    >>> print(loc.index.tolist())
    ['entropy', 'gini', 'top3_share', 'units_for_80', 'peak_to_mean']
    >>> bool(loc.loc["entropy", "ci_lower"] <= loc.loc["entropy", "estimate"] <= loc.loc["entropy", "ci_upper"])
    True
    """
    units = list(units or result.units)
    point = localization_indices([result.effect(u, effect, arm).estimate for u in units], top_k=top_k)
    draws = localization_matrix(joint_draws(result, units, effect, arm, n_draws=n_draws, random_state=random_state,
                                            xi=xi), top_k=top_k)
    a = (1 - level) / 2
    rows = [{"index": k, "estimate": v, "ci_lower": float(np.nanquantile(draws[k], a)),
             "ci_upper": float(np.nanquantile(draws[k], 1 - a)), "se": float(np.nanstd(draws[k], ddof=1))}
            for k, v in point.items()]
    return pd.DataFrame(rows)


def localization_difference(adjusted, unadjusted, *, effect="nie", arm="treated", units=None, level=0.95,
                            n_draws=2000, random_state=0, top_k: int = 3) -> pd.DataFrame:
    """Adjusted minus unadjusted localization indices, with a paired bootstrap CI.

    Both results must come from the same rows (and, for bootstrap draws, the same resamples); scores share one
    multiplier per row. A CI below 0 for entropy (above 0 for gini/peak) would mean *more* localized after
    adjustment; "less localized after adjustment" means entropy difference > 0 with its CI above 0.

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(800, n_units=3, seed=1)   # u2 only tracks the topic
    >>> est = get_estimator("weighting", random_state=0)
    >>> adj, raw = est.fit(data), est.fit(data, graph="unadjusted_mediation")
    >>> diff = localization_difference(adj, raw, effect="nie", arm="average").set_index("index")
    >>> bool(diff.loc["entropy", "ci_upper"] < 0)    # concentrated on u0, u1 once u2 drops out
    True
    """
    units = list(units or adjusted.units)
    first = adjusted.effect(units[0], effect, arm)
    xi = None
    if first.scores is not None:
        xi = check_random_state(random_state).standard_normal((n_draws, len(first.scores)))
    da = localization_matrix(joint_draws(adjusted, units, effect, arm, xi=xi, n_draws=n_draws), top_k=top_k)
    du = localization_matrix(joint_draws(unadjusted, units, effect, arm, xi=xi, n_draws=n_draws), top_k=top_k)
    pa = localization_indices([adjusted.effect(u, effect, arm).estimate for u in units], top_k=top_k)
    pu = localization_indices([unadjusted.effect(u, effect, arm).estimate for u in units], top_k=top_k)
    a = (1 - level) / 2
    rows = []
    for k in pa:
        d = da[k] - du[k]
        lo, hi = np.nanquantile(d, [a, 1 - a])
        rows.append({"index": k, "adjusted": pa[k], "unadjusted": pu[k], "difference": pa[k] - pu[k],
                     "ci_lower": float(lo), "ci_upper": float(hi),
                     "p_value": draw_p_value(d)})
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

        With ``reference`` (e.g. the interventional patching estimate), only pairs against it, with a
        ``disagrees`` flag (the difference's CI excludes 0).
        """
        keys = list(self.results)
        rows = []
        for i, ka in enumerate(keys):
            for kb in keys[i + 1:]:
                if reference is not None and reference not in (ka[0], kb[0]):
                    continue
                if reference is not None and kb[0] == reference:
                    ka, kb = kb, ka
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
                    rows.append({"a": f"{ka[0]}@{ka[1]}", "b": f"{kb[0]}@{kb[1]}", "unit": u, "effect": effect,
                                 "arm": arm, "difference": d.estimate, "se": d.se, "ci_lower": d.ci[0],
                                 "ci_upper": d.ci[1], "p_value": d.p_value, "paired": paired,
                                 "disagrees": bool(d.ci[0] > 0 or d.ci[1] < 0)})
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
                       refuters=None, progress: bool | None = False) -> Comparison:
    """Run every estimator under every graph on ``data`` and return a tidy :class:`Comparison`.

    ``estimators`` is a list of names or instances, or a dict label -> name/instance. Every estimator that
    has a ``random_state`` (and ``n_folds``) gets the same value, so folds and resamples are shared and the
    comparison is paired. ``patcher`` is passed to estimators whose ``fit`` takes one. ``sensitivity`` (a
    dict of ``sensitivity_analysis`` options) adds RV/RVa where the result supports it; ``refuters`` (names in
    ``deconfound.refute``) adds a pass/fail column. ``progress``: a tqdm bar (True), none (False), or one only
    on a terminal (None).

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
