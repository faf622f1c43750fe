"""MediationResult: effects per unit, effect and arm, with statsmodels-style summaries."""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .inference import Effect, bh_qvalues

EFFECTS = ("nie", "nde", "te", "prop_mediated")
ARMS = ("control", "treated", "average")
POPULATIONS = ("ate", "att", "atc", "overlap")
# the arm whose total effect is the population's one TE (patching's TE_ATT is the treated arm's)
_TE_ARM = {"att": "treated", "atc": "control"}
COLUMNS = ["unit", "effect", "arm", "population", "estimate", "se", "ci_lower", "ci_upper", "p_value"]
INFERENCE_NAMES = {"influence": "influence function", "percentile": "percentile of draws",
                   "bootstrap-normal": "normal, SE from draws", "analytic": "analytic SE", "normal": "normal"}
# R `mediation` row names
ROW_NAMES = {("nie", "control"): "ACME (control)", ("nie", "treated"): "ACME (treated)",
             ("nde", "control"): "ADE (control)", ("nde", "treated"): "ADE (treated)",
             ("te", "average"): "Total Effect", ("prop_mediated", "control"): "Prop. Mediated (control)",
             ("prop_mediated", "treated"): "Prop. Mediated (treated)", ("nie", "average"): "ACME (average)",
             ("nde", "average"): "ADE (average)", ("prop_mediated", "average"): "Prop. Mediated (average)",
             ("te", "treated"): "Total Effect (treated)", ("te", "control"): "Total Effect (control)"}
ESTIMAND_NAMES = {"nie": "NIE (ACME)", "nde": "NDE (ADE)", "te": "TE", "prop_mediated": "NIE/TE"}
ROW_ORDER = [("nie", "control"), ("nie", "treated"), ("nde", "control"), ("nde", "treated"), ("te", "average"),
             ("te", "treated"), ("te", "control"), ("prop_mediated", "control"), ("prop_mediated", "treated"),
             ("nie", "average"), ("nde", "average"), ("prop_mediated", "average")]


def one_total_effect(effects: dict[tuple[str, str], Effect]) -> dict[tuple[str, str], Effect]:
    """``effects`` without ("te", "treated") / ("te", "control") rows that repeat ("te", "average").

    A result has one total effect, in its population; a per-arm copy of the same number (same object, or same
    estimate and SE) is dropped. A TE row by arm that differs from the average is kept.
    """
    te = effects.get(("te", "average"))
    if te is None:
        return dict(effects)
    return {k: e for k, e in effects.items()
            if not (k[0] == "te" and k[1] != "average" and (e is te or (e.estimate == te.estimate and e.se == te.se)))}


def add_derived(effects: dict[tuple[str, str], Effect]) -> dict[tuple[str, str], Effect]:
    """Fill averages and proportions mediated from the per-arm NIE/NDE and the TE present in ``effects``.

    Per-arm copies of the one total effect are dropped (:func:`one_total_effect`).
    """
    out = one_total_effect(effects)
    for kind in ("nie", "nde"):
        if (kind, "average") not in out and (kind, "control") in out and (kind, "treated") in out:
            out[(kind, "average")] = (out[(kind, "control")] + out[(kind, "treated")]).scale(0.5)
    te = out.get(("te", "average"))
    if te is not None:
        for arm in ARMS:
            if (("nie", arm) in out) and (("prop_mediated", arm) not in out):
                out[("prop_mediated", arm)] = out[("nie", arm)].ratio(te)
    return out


@dataclass(eq=False)
class MediationResult:
    """Effects of one estimator on one dataset, for one or many units.

    ``effects[unit][(effect, arm)]`` is an :class:`~deconfound.inference.Effect`; ``effect`` is one of
    nie/nde/te/prop_mediated and ``arm`` one of control/treated/average. Every effect refers to
    ``population``: "ate" (all rows), "att" (the treated rows), "atc" (the controls) or "overlap" (a
    population the estimator chose, described in ``settings["population_note"]``). There is one total
    effect per unit, ``("te", "average")``: the TE of that population (``effect(u, "te", "treated")`` reads it
    too when the population is "att", and ``"control"`` when it is "atc"; otherwise a KeyError).

    ``settings`` records how the effects were computed; :meth:`summary` prints these keys when present:
    ``"method"`` (e.g. "quasi-Bayesian"), the number of draws or folds (``"n_draws"``, ``"n_sims"``,
    ``"n_boot"`` (0 = none), ``"n_folds"``, ``"n_rep"``), ``"families"`` (the model families or learners,
    a dict such as ``{"mediator": "gaussian", "outcome": "logit"}`` or a string; otherwise the
    ``"*_family"`` and non-default ``"*_learner"`` keys) and ``"population_note"``.

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(1000, n_units=2, seed=1)
    >>> res = get_estimator("parametric", n_sims=200, random_state=0).fit(data)
    >>> print(res.units, res.n, res.population)
    ['u0', 'u1'] 1000 ate
    >>> nie = res.effect("u1", "nie", "average")         # u1 only tracks the topic: true NIE 0
    >>> bool(nie.ci[0] <= 0 <= nie.ci[1])
    True
    >>> frame = res.to_frame()
    >>> print(frame.columns.tolist())
    ['unit', 'effect', 'arm', 'population', 'estimate', 'se', 'ci_lower', 'ci_upper', 'p_value', 'q_value']
    >>> print(res.summary(unit="u0").splitlines()[1].strip())
    Causal mediation analysis
    """

    estimator: str
    effects: dict[str, dict[tuple[str, str], Effect]]
    n: int
    n_treated: int
    population: str = "ate"
    graph: str = ""
    adjustment: dict = field(default_factory=dict)
    level: float = 0.95
    random_state: object = None
    settings: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def __post_init__(self):
        if self.population not in POPULATIONS:
            raise ValueError(f"population: expected one of {list(POPULATIONS)}, got {self.population!r}")
        # Prop. Mediated = NIE / TE is unstable when TE may be 0: say so, whichever estimator built the result
        flagged = [u for u, effs in self.effects.items()
                   if ("te", "average") in effs and any(k == "prop_mediated" for k, _ in effs)
                   and effs[("te", "average")].ci[0] <= 0 <= effs[("te", "average")].ci[1]
                   and not any(f"unit {u!r}" in w and "Prop. Mediated" in w for w in map(str, self.warnings))]
        if flagged:
            shown = ", ".join(repr(u) for u in flagged[:10]) + (" ..." if len(flagged) > 10 else "")
            msg = f"the total effect's CI covers 0 for {len(flagged)} unit(s) ({shown}): Prop. Mediated is unstable there"
            if msg not in self.warnings:  # dataclasses.replace runs this again
                self.warnings.append(msg)

    @property
    def units(self) -> list[str]:
        return list(self.effects)

    @property
    def n_control(self) -> int:
        return self.n - self.n_treated

    def effect(self, unit: str | None = None, effect: str = "nie", arm: str = "average") -> Effect:
        """One Effect; ``unit`` defaults to the only unit."""
        if unit is None:
            if len(self.effects) != 1:
                raise ValueError(f"unit: expected one of {self.units[:10]} (result has {len(self.units)} units), got None")
            unit = self.units[0]
        if unit not in self.effects:
            raise KeyError(f"unit: expected one of {self.units[:10]}, got {unit!r}")
        effs = self.effects[unit]
        if (effect, arm) in effs:
            return effs[(effect, arm)]
        pop_arm = _TE_ARM.get(self.population)  # the ATT is the treated arm's TE, the ATC the controls'
        if effect == "te" and arm in ("average", pop_arm):
            te = effs.get(("te", "average"), effs.get(("te", pop_arm)))
            if te is not None:
                return te
        have = sorted(one_total_effect(effs))
        note = (f"; the total effect has one row, ('te', 'average'), for population {self.population!r}"
                if effect == "te" else "")
        raise KeyError(f"effect/arm: expected one of {have}, got {(effect, arm)}{note}")

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per unit x effect x arm, with BH q-values across units per effect/arm.

        ``population`` is the result's population on every row; the proportion mediated has a CI and no SE
        (``se`` is NaN), as in R `mediation`.
        """
        rows = []
        for unit, effs in self.effects.items():
            for (kind, arm), e in one_total_effect(effs).items():
                se = float("nan") if kind == "prop_mediated" else e.se
                rows.append({"unit": unit, "effect": kind, "arm": arm, "population": self.population,
                             "estimate": e.estimate, "se": se, "ci_lower": e.ci[0], "ci_upper": e.ci[1],
                             "p_value": e.p_value})
        frame = pd.DataFrame(rows, columns=COLUMNS)
        if len(frame):
            frame["q_value"] = frame.groupby(["effect", "arm"])["p_value"].transform(lambda p: bh_qvalues(p.to_numpy()))
            order = {k: i for i, k in enumerate(EFFECTS)}
            arm_order = {a: i for i, a in enumerate(ARMS)}
            frame = frame.assign(_e=frame.effect.map(order), _a=frame.arm.map(arm_order))
            frame = frame.sort_values(["_e", "_a"], kind="stable").drop(columns=["_e", "_a"])
            frame = frame.sort_values("unit", key=lambda s: s.map({u: i for i, u in enumerate(self.units)}),
                                      kind="stable").reset_index(drop=True)
        return frame

    # ---- printing ---------------------------------------------------------------------------
    def _header(self) -> list[tuple[str, str]]:
        adj = self.adjustment or {}
        kinds = {k for effs in self.effects.values() for k, _ in effs}
        order = [*EFFECTS, *sorted(kinds - set(EFFECTS))]
        estimand = ", ".join(ESTIMAND_NAMES.get(k, k) for k in order if k in kinds) or "-"
        inference = sorted({INFERENCE_NAMES.get(e.method, e.method) for effs in self.effects.values()
                            for e in effs.values() if e.method not in ("none", "failed")})
        population = self.population.upper()
        if self.settings.get("population_note"):
            population += f" ({self.settings['population_note']})"
        rows = [("Estimator", self.estimator), ("Population", population), ("Method", _method(self.settings)),
                ("Inference", ", ".join(inference) or "-"), ("Models", _families(self.settings)),
                ("Estimand", estimand), ("Graph", self.graph or "-"),
                ("Adjust T->M", ", ".join(adj.get("first_stage", ())) or "none"),
                ("Adjust M->Y", ", ".join(adj.get("second_stage", ())) or "none")]
        if "total" in adj:
            rows.append(("Adjust T->Y", ", ".join(adj["total"]) or "none"))
        rows += [("n (n1, n0)", f"{self.n} ({self.n_treated}, {self.n_control})"),
                 ("CI level", f"{self.level:.0%}"), ("Seed", str(self.random_state))]
        return [(k, v) for k, v in rows if v]

    def summary(self, unit: str | None = None) -> str:
        """statsmodels-style text table with R `mediation` row names.

        Numbers are printed by magnitude: the NIE/NDE/TE rows of a unit share one format with five
        significant digits of their largest value (scientific outside [1e-3, 1e5)), the proportions mediated
        another; the proportion mediated has a CI and no SE ("-"), as in R. One Total Effect row, in the
        result's population.
        """
        if unit is not None and unit not in self.effects:
            raise KeyError(f"unit: expected one of {self.units[:10]}, got {unit!r}")
        units = [unit] if unit is not None else self.units
        width = 78
        lines = ["=" * width, f"{'Causal mediation analysis':^{width}}", "=" * width]
        pending = None  # two short header fields per line; a long one gets a line of its own
        for key, value in self._header():
            if len(value) > 24:  # a line of its own, wrapped under its value's column
                lines.extend([pending.rstrip()] if pending else [])
                wrapped = textwrap.wrap(value, width - 14, break_on_hyphens=False) or [value]
                lines.append(f"{key + ':':<14}{wrapped[0]}")
                lines.extend(" " * 14 + part for part in wrapped[1:])
                pending = None
            elif pending is None:
                pending = f"{key + ':':<14}{value:<25}"
            else:
                lines.append(pending + f"{key + ':':<14}{value}")
                pending = None
        lines.extend([pending.rstrip()] if pending else [])
        for u in units:
            lines.append("-" * width)
            lines.append(f"Unit: {u}")
            lines.extend(self._table(u))
            diag = self.diagnostics.get(u) if isinstance(self.diagnostics, dict) else None
            if isinstance(diag, dict):
                short = {k: v for k, v in diag.items() if isinstance(v, (int, float, str, np.floating))}
                if short:
                    lines.append("Diagnostics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in short.items()))
        if self.warnings:
            lines.append("-" * width)
            lines.extend(f"Warning: {w}" for w in self.warnings)
        lines.append("=" * width)
        return "\n".join(lines)

    def _table(self, unit: str) -> list[str]:
        """The effect rows of one unit, columns separated by at least one space whatever the magnitudes."""
        effs = one_total_effect(self.effects[unit])
        keys = [k for k in ROW_ORDER if k in effs] + sorted(k for k in effs if k not in ROW_ORDER)
        fmt = {}
        for group in (True, False):  # proportions mediated (unitless) apart from the effects (outcome units)
            members = [k for k in keys if (k[0] == "prop_mediated") == group]
            values = [v for k in members for v in (effs[k].estimate, *effs[k].ci)]
            values += [effs[k].se for k in members if k[0] != "prop_mediated"]
            fmt.update(dict.fromkeys(members, number_format(values)))
        cells = []
        for key in keys:
            e, f = effs[key], fmt[key]
            name = ROW_NAMES.get(key, f"{key[0]} ({key[1]})")
            if key[0] == "te" and key[1] != "average" and ("te", "average") not in effs:
                name = "Total Effect"  # the result's one TE, stored under its arm
            se = "-" if key[0] == "prop_mediated" else f(e.se)
            cells.append([name, f(e.estimate), se, f(e.ci[0]), f(e.ci[1]), p_format(e.p_value)])
        head = ["", "Estimate", "Std.Err", f"{(1 - self.level) / 2:.1%}", f"{(1 + self.level) / 2:.1%}", "p-value"]
        widths = [max(26, *(len(c[0]) + 1 for c in cells))]
        widths += [max(10, *(len(c[j]) + 1 for c in cells)) for j in range(1, 6)]
        return [f"{row[0]:<{widths[0]}}" + "".join(f"{v:>{w}}" for v, w in zip(row[1:], widths[1:]))
                for row in [head, *cells]]

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        head = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self._header())
        return (f"<table>{head}</table>" + self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.4g}"))


def number_format(values, digits: int = 5):
    """A formatter shared by numbers on one scale: ``digits`` significant digits of the largest ``|value|``.

    Fixed point when the largest is in [1e-3, 1e5), scientific otherwise; NaN prints "NaN".

    Examples
    --------
    >>> f = number_format([0.00012345, -0.0000021])
    >>> f(0.00012345), f(-0.0000021)
    ('1.2345e-04', '-2.1000e-06')
    >>> f = number_format([12.3456, 0.5])
    >>> f(12.3456), f(0.5)
    ('12.346', '0.500')
    """
    finite = np.abs(np.asarray([v for v in values if np.isfinite(v)], dtype=float))
    big = float(finite.max()) if finite.size else 1.0
    if big == 0.0 or 1e-3 <= big < 1e5:
        decimals = digits - 1 - (int(np.floor(np.log10(big))) if big > 0 else 0)
        spec = f".{max(decimals, 0)}f"
    else:
        spec = f".{digits - 1}e"
    return lambda v: "NaN" if not np.isfinite(v) else format(float(v), spec)


def p_format(p: float) -> str:
    """A p-value: four decimals, or two significant digits in scientific notation below 1e-4."""
    if not np.isfinite(p):
        return "NaN"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _method(settings: dict) -> str:
    """How the effects were computed, from the documented settings keys."""
    parts = [str(settings["method"])] if settings.get("method") else []
    for key, word in (("n_draws", "draws"), ("n_sims", "draws"), ("n_boot", "bootstrap replicates"),
                      ("n_folds", "folds"), ("n_rep", "repeated splits")):
        value = settings.get(key)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > (1 if key == "n_rep" else 0):
            parts.append(f"{int(value)} {word}")
    return ", ".join(parts)


def _families(settings: dict) -> str:
    """Model families or learners: ``settings["families"]``, else the ``*_family`` and set ``*_learner`` keys."""
    fam = settings.get("families")
    if isinstance(fam, dict):
        return ", ".join(f"{k} {v}" for k, v in fam.items())
    if fam:
        return str(fam)
    parts = [f"{k[:-len('_family')]} {v}" for k, v in settings.items() if k.endswith("_family") and v]
    parts += [f"{k[:-len('_learner')]} {_learner_name(v)}" for k, v in settings.items()
              if k.endswith("_learner") and v is not None]
    return ", ".join(parts)


def _learner_name(learner) -> str:
    if isinstance(learner, str):
        return learner.split("(")[0] if "(" in learner else learner
    steps = getattr(learner, "steps", None)  # a scikit-learn Pipeline: name its steps
    if isinstance(steps, list) and all(isinstance(s, tuple) and len(s) == 2 for s in steps):
        return f"{type(learner).__name__}({', '.join(type(s[1]).__name__ for s in steps)})"
    return type(learner).__name__


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
