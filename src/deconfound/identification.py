"""What a mediation analysis claims, and what the claim rests on: written out from the causal graph and the data.

:func:`identification` reads the graph (its adjustment sets, latent nodes and any treatment-induced
mediator-outcome confounders), counts positivity per confounder cell, and, when given, reads the sensitivity
results, then states the causal claim, the assumptions it needs and what happens if they fail.
``Identification.to_markdown()`` is the section a report prints.

Examples
--------
>>> from deconfound import simulate
>>> data, _ = simulate.topic_mediation(400, n_topics=3, seed=0)
>>> ident = identification("topic_mediation", data)
>>> ident.identified, ident.adjustment.first_stage
(True, ('topic',))
>>> [name for name, _ in ident.assumptions][:2]
['Consistency and no interference', 'No unobserved T-M and T-Y confounding']
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd

from .graph import ROLES, AdjustmentSets, resolve
from .positivity import level_counts

EFFECT_WORDS = {"nie": "natural indirect effect (NIE)", "nde": "natural direct effect (NDE)",
                "te": "total effect (TE)"}
POPULATION_WORDS = {"ate": "all rows", "att": "the treated rows (T = 1)", "atc": "the control rows (T = 0)",
                    "overlap": "the overlap population stated in the result"}


@dataclass(eq=False)
class Identification:
    """The claim, the adjustment sets, the assumptions (name, statement) and the positivity table."""

    claim: str
    adjustment: AdjustmentSets
    assumptions: list
    positivity: pd.DataFrame
    if_they_fail: list = field(default_factory=list)
    graph: str = ""

    @property
    def identified(self) -> bool:
        return self.adjustment.identified

    def to_markdown(self) -> str:
        adj = self.adjustment
        lines = [f"**Causal claim.** {self.claim}", "",
                 f"**Adjustment sets** (from the graph `{self.graph}`): T -> M and p(X): "
                 f"{_names(adj.first_stage)}; M -> Y: {_names(adj.second_stage)}; T -> Y: {_names(adj.total)}."
                 + ("" if adj.identified else f" The graph has latent node(s) {_names(adj.latent)}: the effects are "
                    "NOT identified; the estimates adjust for the observed part only."), "",
                 "**Assumptions.**", ""]
        lines += [f"{i}. *{name}.* {text}" for i, (name, text) in enumerate(self.assumptions, 1)]
        if len(self.positivity):
            bad = self.positivity[~self.positivity.supported]
            lines += ["", f"Positivity per confounder cell ({len(self.positivity)} cells, "
                          f"{len(bad)} without both arms):", "", _md(self.positivity)]
        lines += ["", "**If they fail.**", ""]
        lines += [f"- {s}" for s in (self.if_they_fail or ["No sensitivity analysis was run."])]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def identification(graph, data, *, effect: str = "nie", population: str = "ate", mediator: str = "unit",
                   estimator: str | None = None, sensitivity=None, benchmark=None) -> Identification:
    """State the identification of ``effect`` on ``population`` under ``graph`` for ``data``.

    Parameters
    ----------
    graph : a graph name, path or CausalGraph (None: the default).
    mediator : ``"unit"`` (a generic mediator) or ``"layer"``: the mediator is a layer of a network whose
        earlier layers are affected by T and affect both the layer and Y (treatment-induced mediator-outcome
        confounders), which the claim must account for.
    estimator : the registry name; ``"patching"`` sets the mediator by intervention, so the M -> Y
        ignorability is not needed for it.
    sensitivity, benchmark : a :class:`~deconfound.sensitivity.SensitivityResult` and/or a
        ``BenchmarkResult``, read for the "if they fail" sentences.
    """
    if effect not in EFFECT_WORDS:
        raise ValueError(f"effect: expected one of {sorted(EFFECT_WORDS)}, got {effect!r}")
    if population not in POPULATION_WORDS:
        raise ValueError(f"population: expected one of {sorted(POPULATION_WORDS)}, got {population!r}")
    if mediator not in ("unit", "layer"):
        raise ValueError(f"mediator: expected 'unit' or 'layer', got {mediator!r}")
    g, adj = resolve(graph, data)
    patching = estimator == "patching"
    claim = (f"The {EFFECT_WORDS[effect]} of the treatment `{data.treatment_name}` on the outcome "
             f"`{data.outcome_name}` through each mediator unit, averaged over {POPULATION_WORDS[population]}, "
             + ("is computed by intervening on the unit inside the model (activation patching)."
                if patching else "is identified from the observed data under the assumptions below."))
    adjusted = _names(adj.union)
    assumptions = [("Consistency and no interference",
                    "each prompt's outcome depends only on its own treatment and mediator values.")]
    ignorability = (f"given {adjusted}, no unobserved variable drives both T and M, or both T and Y."
                    if adj.identified else
                    f"violated by the graph itself: the latent {_names(adj.latent)} drives T, M and Y.")
    assumptions.append(("No unobserved T-M and T-Y confounding", ignorability))
    if not patching:
        assumptions.append(("No unobserved M-Y confounding",
                            f"given T and {_names(adj.second_stage)}, nothing unobserved drives both M and Y."))
    induced = _induced_confounders(g.nx)
    if mediator == "layer":
        text = ("for one layer l, the earlier layers are affected by T and affect both layer l and Y: they are "
                "treatment-induced mediator-outcome confounders. The natural NIE of layer l is then not identified "
                "from (T, X, M_l, Y) alone; a per-layer observational NIE adjusted for X mixes in paths through "
                "earlier layers. Patching sets layer l while the earlier layers keep their treated values, which "
                "is an interventional (not a natural) indirect effect.")
    elif induced:
        text = (f"the graph has treatment-induced confounders of M and Y ({_names(induced)}): the natural effects "
                "are not identified; interventional effects are.")
    else:
        text = "the graph has no node affected by T that affects both M and Y."
    assumptions.append(("No treatment-induced M-Y confounding", text))
    pos = positivity_table(data, adj.union)
    unsupported = pos[~pos.supported] if len(pos) else pos
    assumptions.append(("Positivity", (f"every cell of {adjusted} has treated and control rows."
                                       if not len(unsupported) else
                                       f"fails in {len(unsupported)} cell(s) (listed below); estimates there "
                                       "rest on extrapolation unless those cells are dropped.")))
    return Identification(claim, adj, assumptions, pos, _if_they_fail(sensitivity, benchmark, adjusted),
                          graph=g.name)


def positivity_table(data, columns) -> pd.DataFrame:
    """Treated and control counts per cell of the categorical ``columns`` (numeric columns are skipped): the
    counts of :func:`deconfound.positivity.level_counts` on the joint cells; a cell is supported when it has
    both arms."""
    cats = [c for c in columns if c in data.x.columns and not pd.api.types.is_numeric_dtype(data.x[c])]
    if not cats:
        return pd.DataFrame(columns=["cell", "n_treated", "n_control", "supported"])
    codes, cells = pd.factorize(data.x[cats].astype(str).agg(" | ".join, axis=1), sort=True)
    tab = level_counts({"cell": (codes, tuple(cells))}, np.asarray(data.t, dtype=float), np.ones(data.n), "ate")
    return pd.DataFrame({"cell": tab["level"].astype(str), "n_treated": tab["n1"], "n_control": tab["n0"],
                         "supported": ~tab["unsupported"]})


def _induced_confounders(g: nx.DiGraph) -> list[str]:
    """Nodes other than the roles that T affects and that affect both M and Y."""
    out = []
    for node in nx.descendants(g, "T"):
        if node in ROLES:
            continue
        down = nx.descendants(g, node)
        if "M" in down and "Y" in down:
            out.append(node)
    return sorted(out)


def _if_they_fail(sensitivity, benchmark, adjusted) -> list[str]:
    out = []
    if sensitivity is not None:
        f = sensitivity.to_frame()
        for effect in ("nie", "te"):
            rows = f[f.effect == effect]
            if len(rows):
                r = rows.loc[rows.rv.idxmin()]
                out.append(f"An unobserved confounder that explains {100 * r.rv:.1f}% of the residual variation of "
                           f"both the outcome and the treatment's Riesz representer would bring the "
                           f"{effect.upper()} of {r.unit} ({r.arm}) to 0, the least robust row; "
                           f"{100 * r.rva:.1f}% would bring its CI to include 0 (robustness values RV, RVa).")
    if benchmark is not None:
        out += benchmark.sentences()[:3]
        short = getattr(benchmark, "benchmarks", pd.DataFrame())
        if "shortfall" in short and (short.shortfall > 0).any():
            out.append(f"For {int((short.shortfall > 0).sum())} row(s) the OVB model cannot reproduce the shift that "
                       f"dropping {', '.join(benchmark.drop)} itself caused (positive shortfall): read those bounds "
                       "as too narrow.")
    if not out:
        out.append(f"No sensitivity analysis was run: nothing bounds the bias from confounding beyond {adjusted}.")
    return out


def _names(cols) -> str:
    return ", ".join(f"`{c}`" for c in cols) if len(cols) else "nothing"


def _md(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(rows)
