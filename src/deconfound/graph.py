"""Causal graphs: read .gml/.dot files, check them against the data, and identify adjustment sets with DoWhy.

This is the only module that imports dowhy (lazily).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from .errors import GraphError

ROLES = ("T", "M", "Y")
GRAPH_DIRS = [Path(__file__).resolve().parent / "graphs"]  # the shipped graphs (package data)
DEFAULT_GRAPH = "topic_mediation"


@dataclass(frozen=True)
class AdjustmentSets:
    """Confounder columns to adjust for in each stage, as identified by DoWhy."""

    first_stage: tuple[str, ...]  # T -> M (and the propensity p(X))
    second_stage: tuple[str, ...]  # M -> Y (outcome model, besides T)
    total: tuple[str, ...]  # T -> Y backdoor set
    identified: bool = True
    latent: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"first_stage": list(self.first_stage), "second_stage": list(self.second_stage),
                "total": list(self.total), "identified": self.identified, "latent": list(self.latent)}

    @property
    def union(self) -> tuple[str, ...]:
        seen = dict.fromkeys(self.first_stage + self.second_stage + self.total)
        return tuple(seen)


def graph_path(name) -> Path:
    """Resolve a graph name (``"topic_mediation"``) or a path to a file.

    An existing file wins. Otherwise a bare name, or the shipped spelling ``graphs/<name>.gml`` (as the docs
    write it, from any folder), resolves through ``$DECONFOUND_GRAPHS`` and then the graphs installed with the
    package. Any other missing path is an error, never a silent built-in graph.
    """
    p = Path(name)
    if p.suffix in (".gml", ".dot") and p.exists():
        return p
    shipped = len(p.parts) == 2 and p.parts[0] == "graphs" and p.suffix in (".gml", ".dot")
    if len(p.parts) > 1 and not shipped:  # an explicit path that does not exist: never a built-in graph
        raise GraphError(f"graph: expected an existing .gml/.dot file, got the missing path {str(name)!r}")
    stem = p.stem if p.suffix else str(name)
    dirs = ([Path(os.environ["DECONFOUND_GRAPHS"])] if "DECONFOUND_GRAPHS" in os.environ else []) + GRAPH_DIRS
    for d in dirs:
        for suffix in (".gml", ".dot"):
            cand = d / f"{stem}{suffix}"
            if cand.exists():
                return cand
    known = sorted({f.stem for d in dirs if d.exists() for f in d.glob("*.gml")})
    raise GraphError(f"graph: expected a .gml/.dot path or one of {known}, got {str(name)!r}")


def _read(path: Path) -> nx.DiGraph:
    try:
        if path.suffix == ".dot":
            g = nx.DiGraph(nx.nx_pydot.read_dot(str(path)))
        else:
            g = nx.read_gml(str(path), label="label")
    except Exception as exc:  # noqa: BLE001 - any parse failure is reported with the file name
        raise GraphError(f"graph {path.name}: expected valid {path.suffix[1:].upper()}, got a parse error: {exc}") from exc
    if not g.is_directed():
        raise GraphError(f"graph {path.name}: expected a directed graph, got an undirected one")
    g = nx.DiGraph(g)
    if path.suffix == ".dot":  # pydot keeps the quotes of attribute values ('"no"')
        for _, attrs in g.nodes(data=True):
            for key, value in attrs.items():
                if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
                    attrs[key] = value[1:-1]
    return g


class CausalGraph:
    """A DAG whose nodes are roles (``T``, ``M``, ``Y``, ``X``) or confounder column names.

    ``X`` stands for the whole confounder set of the data; ``M`` for the current unit's mediator block.
    A node with attribute ``observed "no"`` is latent: it is never adjusted for.

    Examples
    --------
    >>> import networkx as nx
    >>> from deconfound import simulate
    >>> data, _ = simulate.topic_mediation(300, seed=0)
    >>> g = CausalGraph(nx.DiGraph([("topic", "T"), ("topic", "M"), ("topic", "Y"), ("T", "M"), ("T", "Y"),
    ...                             ("M", "Y")]), name="mine")
    >>> sets = g.adjustment_sets(data)
    >>> print(sets.first_stage, sets.second_stage, sets.identified)
    ('topic',) ('topic',) True
    >>> print(load_graph("unadjusted_mediation").adjustment_sets(data).second_stage)
    ()
    """

    def __init__(self, graph: nx.DiGraph, name: str = "graph"):
        self.nx = nx.DiGraph(graph)
        self.name = name
        try:
            cycle = nx.find_cycle(self.nx)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([str(e[0]) for e in cycle] + [str(cycle[-1][1])])
            raise GraphError(f"graph {name}: expected a DAG, got the cycle {path}")
        for role in ROLES:
            if role not in self.nx:
                raise GraphError(f"graph {name}: expected a node for role {role!r}, got nodes {sorted(self.nx.nodes)}")
        for a, b in (("T", "M"), ("M", "Y")):
            if not self.nx.has_edge(a, b):
                raise GraphError(f"graph {name}: expected the mediation edge {a} -> {b}, got none")

    @property
    def latent(self) -> list[str]:
        return [n for n, d in self.nx.nodes(data=True) if str(d.get("observed", "yes")).lower() in ("no", "0", "false")]

    @property
    def confounder_nodes(self) -> list[str]:
        return [n for n in self.nx.nodes if n not in ROLES and n not in self.latent]

    def _columns(self, node: str, data) -> list[str]:
        if node == "X":
            return data.confounder_names
        return [node]

    def check(self, data) -> None:
        """Match observed confounder nodes to the data's columns; raise GraphError naming any that are missing."""
        for node in self.confounder_nodes:
            if node != "X" and node not in data.confounder_names:
                raise GraphError(f"graph {self.name}: node {node!r} expected a confounder column of the data "
                                 f"{data.confounder_names}, got none")

    def to_dowhy(self, data, unit: str | None = None):
        """The DoWhy ``CausalModel`` over one column per observed node (M as the unit's first coordinate)."""
        self.check(data)
        CausalModel = _dowhy_causal_model()

        unit = unit or data.units[0]
        cols = {"T": data.t.astype(bool), "Y": data.y, "M": data.mediator(unit)[:, 0].astype(float)}
        for node in self.confounder_nodes:
            if node == "X":
                design, _ = data.x_design()
                cols["X"] = design[:, 0] if design.shape[1] else np.zeros(data.n)
            else:
                col = data.x[node]
                cols[node] = col.cat.codes.to_numpy() if isinstance(col.dtype, pd.CategoricalDtype) else col.to_numpy()
        g = self.nx.copy()
        for node in self.latent:
            g.nodes[node]["observed"] = "no"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CausalModel(data=pd.DataFrame(cols), treatment="T", outcome="Y", graph=g)

    def adjustment_sets(self, data) -> AdjustmentSets:
        """First-stage (T->M), second-stage (M->Y) and total (T->Y) confounder columns, identified by DoWhy."""
        self.check(data)
        key = (tuple(sorted(self.nx.edges)), tuple(self.latent), tuple(data.confounder_names))
        first, second, total = _identify(self, key, data)
        identified = first is not None and second is not None
        order = {c: i for i, c in enumerate(data.confounder_names)}

        def expand(nodes):  # data column order, whatever order DoWhy returns (it varies with PYTHONHASHSEED)
            cols = {c for nd in (nodes or []) if nd not in ROLES for c in self._columns(nd, data)}
            return tuple(sorted(cols, key=order.__getitem__))

        if not identified:  # latent confounding: adjust for the observed part, flag it
            observed = expand(self.confounder_nodes)
            return AdjustmentSets(observed, observed, expand(total) or observed, identified=False,
                                  latent=tuple(self.latent))
        return AdjustmentSets(expand(first), expand(second), expand(total), latent=tuple(self.latent))

    def __repr__(self) -> str:
        return f"CausalGraph({self.name!r}, edges={sorted(self.nx.edges)})"


_CACHE: dict = {}


def _dowhy_causal_model():
    """DoWhy's CausalModel, imported lazily; sympy's init_printing (run by dowhy) must not keep the REPL's
    displayhook, so it is restored."""
    import sys  # noqa: PLC0415

    hook = sys.displayhook
    try:
        from dowhy import CausalModel  # noqa: PLC0415 - lazy: import deconfound stays light
    finally:
        sys.displayhook = hook
    return CausalModel


def _identify(graph: CausalGraph, key, data):
    if key in _CACHE:
        return _CACHE[key]
    model = graph.to_dowhy(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nie = model.identify_effect(estimand_type="nonparametric-nie")
        ate = model.identify_effect(estimand_type="nonparametric-ate")
    first = (nie.mediation_first_stage_confounders or {}).get("backdoor")
    second = (nie.mediation_second_stage_confounders or {}).get("backdoor")
    total = (ate.backdoor_variables or {}).get("backdoor")
    _CACHE[key] = (first, second, total)
    return _CACHE[key]


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime: float) -> CausalGraph:
    p = Path(path)
    return CausalGraph(_read(p), name=p.stem)


def load_graph(path_or_name=DEFAULT_GRAPH) -> CausalGraph:
    """Load a graph by name (``"topic_mediation"``, ``"unadjusted_mediation"``, ``"latent_topic"``) or path.

    Examples
    --------
    >>> g = load_graph("topic_mediation")
    >>> sorted(g.nx.successors("X"))
    ['M', 'T', 'Y']
    """
    if isinstance(path_or_name, CausalGraph):
        return path_or_name
    if isinstance(path_or_name, nx.DiGraph):
        return CausalGraph(path_or_name)
    p = graph_path(path_or_name)
    return _load_cached(str(p.resolve()), p.stat().st_mtime)  # absolute: a relative name differs by cwd


def resolve(graph, data) -> tuple[CausalGraph, AdjustmentSets]:
    """The graph (default topic_mediation) and its adjustment sets for ``data``."""
    g = load_graph(DEFAULT_GRAPH if graph is None else graph)
    return g, g.adjustment_sets(data)


def confounders_replaced(graph, old: str | None, new: list[str]):
    """The graph to use after confounder columns change (the refuters that add or regroup confounders).

    A graph with the node ``X`` (the whole confounder set) needs no change. In a graph that names confounders
    one by one, ``old`` (if it is a node) is replaced by the nodes ``new`` with its edges; with ``old=None`` the
    ``new`` nodes are added as common causes of T, M and Y. A column that was not a node stays unadjusted.
    """
    g = load_graph(DEFAULT_GRAPH if graph is None else graph)
    if "X" in g.nx or (old is not None and old not in g.nx):
        return g
    h = g.nx.copy()
    targets = ["T", "M", "Y"] if old is None else list(h.successors(old))
    if old is not None:
        h.remove_node(old)
    for node in new:
        h.add_edges_from((node, t) for t in targets)
    return CausalGraph(h, name=f"{g.name}+{'+'.join(new)}")
