"""MediationResult: effects per unit, effect and arm, with statsmodels-style summaries."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .inference import Effect, bh_qvalues

EFFECTS = ("nie", "nde", "te", "prop_mediated")
ARMS = ("control", "treated", "average")
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


def add_derived(effects: dict[tuple[str, str], Effect]) -> dict[tuple[str, str], Effect]:
    """Fill averages and proportions mediated from the per-arm NIE/NDE/TE present in ``effects``."""
    out = dict(effects)
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
    nie/nde/te/prop_mediated and ``arm`` one of control/treated/average.

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
    ['unit', 'effect', 'arm', 'estimate', 'se', 'ci_lower', 'ci_upper', 'p_value', 'q_value']
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
        try:
            return self.effects[unit][(effect, arm)]
        except KeyError:
            have = sorted(self.effects[unit])
            raise KeyError(f"effect/arm: expected one of {have}, got {(effect, arm)}") from None

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per unit x effect x arm, with BH q-values across units per effect/arm."""
        rows = []
        for unit, effs in self.effects.items():
            for (kind, arm), e in effs.items():
                rows.append({"unit": unit, "effect": kind, "arm": arm, "estimate": e.estimate, "se": e.se,
                             "ci_lower": e.ci[0], "ci_upper": e.ci[1], "p_value": e.p_value})
        frame = pd.DataFrame(rows, columns=["unit", "effect", "arm", "estimate", "se", "ci_lower", "ci_upper",
                                            "p_value"])
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
        return [("Estimator", self.estimator), ("Estimand", estimand), ("Population", self.population.upper()),
                ("Graph", self.graph or "-"),
                ("Adjust T->M", ", ".join(adj.get("first_stage", ())) or "none"),
                ("Adjust M->Y", ", ".join(adj.get("second_stage", ())) or "none"),
                ("n (n1, n0)", f"{self.n} ({self.n_treated}, {self.n_control})"),
                ("CI level", f"{self.level:.0%}"), ("Seed", str(self.random_state))]

    def summary(self, unit: str | None = None) -> str:
        """statsmodels-style text table with R `mediation` row names."""
        if unit is not None and unit not in self.effects:
            raise KeyError(f"unit: expected one of {self.units[:10]}, got {unit!r}")
        units = [unit] if unit is not None else self.units
        width = 78
        lines = ["=" * width, f"{'Causal mediation analysis':^{width}}", "=" * width]
        pending = None  # two short header fields per line; a long one gets a line of its own
        for key, value in self._header():
            if len(value) > 24:
                lines.extend([pending.rstrip()] if pending else [])
                lines.append(f"{key + ':':<14}{value}")
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
            lo_name, hi_name = f"{(1 - self.level) / 2:.1%}", f"{(1 + self.level) / 2:.1%}"
            lines.append(f"{'':<26}{'Estimate':>10}{'Std.Err':>10}{lo_name:>10}{hi_name:>10}{'p-value':>10}")
            effs = self.effects[u]
            for key in ROW_ORDER:
                if key in effs:
                    e = effs[key]
                    lines.append(f"{ROW_NAMES[key]:<26}{e.estimate:>10.4f}{e.se:>10.4f}{e.ci[0]:>10.4f}"
                                 f"{e.ci[1]:>10.4f}{e.p_value:>10.4f}")
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

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        head = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self._header())
        return (f"<table>{head}</table>" + self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.4f}"))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
