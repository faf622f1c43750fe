"""Joint mediators: the NIE through a set of units at once, the individual NIEs and their interaction.

The set's blocks are stacked into one mediator block (``MediationData.replace``), and the estimator is fitted
on the joint block and on every unit in ONE paired fit, so that the interaction

    interaction(arm) = NIE_joint(arm) - sum_u NIE_u(arm)

has a valid standard error: score-based estimators (dml, weighting) share their rows and folds, so the
difference of scores is the interaction's influence function; the parametric estimator is run as a bootstrap
whose replicates are the same resamples for every block (quasi-Bayes draws of separately fitted models have
no joint distribution). The patching estimator patches the set at once (the Patcher's unit sets, every unit
of the set with its own donor values in the same prompt), and the joint block and every unit share the
bootstrap resamples and the donor weights of each replicate (the NIE of its one arm: treated for ablation,
control for injection). For a unit, the other units of the set are part of the direct path, so with an
M1 x M2 term in the outcome the interaction is nonzero (and of opposite signs in the two arms).
Layer 5: imports data helpers, bootstrap, inference and the estimators.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .bootstrap import draw_counts
from .errors import DataError
from .estimators.base import check_units, sample_roles
from .inference import Effect

ARMS = ("control", "treated", "average")


@dataclass(eq=False)
class JointMediation:
    """The NIE of a set of units jointly, per unit, summed, and the interaction (joint minus sum).

    ``effects[(part, arm)]`` is an Effect with part ``"joint"``, each unit name, ``"sum"`` or
    ``"interaction"``; ``result`` is the underlying MediationResult (units: the joint block, then the units).
    """

    name: str
    units: list
    effects: dict
    result: object
    arms: tuple = ARMS

    def effect(self, part: str = "interaction", arm: str | None = None) -> Effect:
        """``effects[(part, arm)]``; ``arm`` defaults to ``"average"``, or to the one arm of a patching fit."""
        arm = ("average" if "average" in self.arms else self.arms[0]) if arm is None else arm
        if (part, arm) not in self.effects:
            raise KeyError(f"part, arm: expected one of {sorted(self.effects)[:8]} ..., got {(part, arm)!r}")
        return self.effects[(part, arm)]

    def to_frame(self) -> pd.DataFrame:
        """One row per part x arm: estimate, se, ci_lower, ci_upper, p_value."""
        rows = [{"part": part, "arm": arm, "estimate": e.estimate, "se": e.se, "ci_lower": e.ci[0],
                 "ci_upper": e.ci[1], "p_value": e.p_value} for (part, arm), e in self.effects.items()]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = [f"Joint mediation through {self.name} ({', '.join(self.units)}), estimator "
                 f"{self.result.estimator}, level {self.result.level:.0%}",
                 f"{'part':<24}{'arm':<10}{'estimate':>12}{'se':>12}{'p':>10}"]
        for (part, arm), e in self.effects.items():
            lines.append(f"{part:<24}{arm:<10}{e.estimate:>12.4g}{e.se:>12.4g}{e.p_value:>10.3g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def stack_units(data, units, name: str):
    """``data`` with the joint block ``name`` (the units' columns side by side) and the units themselves."""
    blocks = {name: np.hstack([np.asarray(data.mediator(u)) for u in units])}
    blocks.update({u: data.mediator(u) for u in units})
    columns = {name: [c for u in units for c in data.columns_of(u)], **{u: data.columns_of(u) for u in units}}
    return data.replace(mediators=blocks, mediator_columns=columns)


def joint_mediation(estimator, data, units, *, name=None, graph=None, **fit_kw) -> JointMediation:
    """Fit ``estimator`` on the stacked block of ``units`` and on each unit; return the joint, individual and
    interaction NIEs per arm (see the module doc).

    Parameters
    ----------
    estimator : a ParametricMediation (run as a paired bootstrap of ``n_sims`` resamples, 1,000 by default),
        DMLMediation, WeightingMediation (paired through their scores or bootstrap draws) or PatchingMediation
        (the set patched at once; paired through its bootstrap resamples; every donor strategy).
    data : MediationData
    units : two or more unit names; for patching also a dict (data unit -> patch unit), as in its ``fit``.
    name : the joint block's name (default the unit names joined by ``"+"``).
    graph : as for ``fit``.
    fit_kw : passed to ``fit`` (e.g. ``cluster=``, ``weights=``; ``patcher=`` for patching).

    Raises
    ------
    ModelSiteError (patching) when two units write the same coordinates of one site, or the patcher is a
    first-order ``LinearizedPatcher`` (additive over units: its interaction would be 0 by construction).

    Examples
    --------
    >>> from deconfound import simulate
    >>> from deconfound.estimators.parametric import ParametricMediation
    >>> data, truth = simulate.topic_mediation(1000, n_units=2, n_spurious=0, seed=1)
    >>> out = joint_mediation(ParametricMediation(n_sims=200), data, ["u0", "u1"])
    >>> inter = out.effect("interaction", "average")
    >>> abs(inter.estimate) < 3 * inter.se
    True
    """
    kind = getattr(estimator, "name", type(estimator).__name__)
    specs = None
    if isinstance(units, dict):
        if kind != "patching":
            raise TypeError(f"units: expected a list of unit names for the {kind} estimator, got a dict (data unit "
                            "-> patch unit is for patching only)")
        specs = dict(units)
        units = list(units)
    units = check_units(data, units)
    if len(units) < 2 or len(set(units)) != len(units):
        raise DataError(f"units: expected two or more distinct units, got {units}")
    name = "+".join(units) if name is None else str(name)
    if name in units:
        raise DataError(f"name: expected a name other than the units {units}, got {name!r}")
    stacked = stack_units(data, units, name)
    fit_units = [name, *units]
    if kind == "patching":
        specs = {u: u for u in units} if specs is None else specs
        fit_units = {name: [specs[u] for u in units], **{u: specs[u] for u in units}}
        result = estimator.fit(stacked, graph=graph, units=fit_units, **fit_kw)
    elif kind == "parametric":
        est = type(estimator)(**{**estimator.get_params(), "method": "bootstrap"})
        cluster, _ = sample_roles(stacked, fit_kw.get("cluster"), None)
        stratify = ("treatment",)
        if cluster is not None:
            codes = np.unique(cluster, return_inverse=True)[1].reshape(-1)
            if np.any(np.bincount(codes, weights=stacked.t) % np.bincount(codes) != 0):
                stratify = None
        seed = est.random_state if isinstance(est.random_state, (int, np.integer)) else 0
        counts = draw_counts(stacked, est.draws, stratify=stratify, random_state=seed, cluster=cluster)
        result = est.fit(stacked, graph=graph, units=fit_units, counts=counts, **fit_kw)
    else:
        result = estimator.fit(stacked, graph=graph, units=fit_units, **fit_kw)
    effects = {}
    arms = tuple(arm for arm in ARMS if ("nie", arm) in result.effects[name])
    for arm in arms:
        joint = result.effect(name, "nie", arm)
        parts = [result.effect(u, "nie", arm) for u in units]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        effects[("joint", arm)] = joint
        for u, part in zip(units, parts):
            effects[(u, arm)] = part
        effects[("sum", arm)] = total
        effects[("interaction", arm)] = joint - total
    return JointMediation(name=name, units=units, effects=effects, result=result, arms=arms)
