"""Causal graphs: reading GML and DOT, checks against the data, and DoWhy's adjustment sets."""
from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from deconfound import GraphError, MediationData, load_graph
from deconfound.graph import CausalGraph, graph_path, resolve

GRAPHS = Path(__file__).resolve().parents[2] / "src" / "deconfound" / "graphs"  # shipped as package data
FULL_EDGES = {("X", "T"), ("X", "M"), ("X", "Y"), ("T", "M"), ("T", "Y"), ("M", "Y")}


def write_dot(path: Path, body: str) -> Path:
    path.write_text("digraph G {\n" + body + "\n}\n")
    return path


def write_gml(path: Path, nodes, edges) -> Path:
    ids = {n: i for i, n in enumerate(nodes)}
    lines = ["graph [", "  directed 1"]
    lines += [f'  node [ id {i} label "{n}" ]' for n, i in ids.items()]
    lines += [f"  edge [ source {ids[a]} target {ids[b]} ]" for a, b in edges]
    path.write_text("\n".join(lines + ["]"]) + "\n")
    return path


@pytest.fixture
def two_confounders(sim_small):
    data, _ = sim_small
    length = np.random.default_rng(0).normal(size=data.n)
    x = data.x.assign(length=length)
    return data.replace(x=x)


# ---- loading ------------------------------------------------------------------------------------------------
def test_builtin_graphs_by_name():
    assert set(load_graph("topic_mediation").nx.edges) == FULL_EDGES
    assert set(load_graph("unadjusted_mediation").nx.edges) == {("T", "M"), ("T", "Y"), ("M", "Y")}
    latent = load_graph("latent_topic")
    assert latent.latent == ["U"]
    assert set(latent.nx.edges) == FULL_EDGES | {("U", "T"), ("U", "M"), ("U", "Y")}
    assert load_graph().name == "topic_mediation"  # the default


@pytest.mark.parametrize("name", ["topic_mediation", "unadjusted_mediation", "latent_topic"])
def test_graph_files_start_with_a_comment(name):
    first = (GRAPHS / f"{name}.gml").read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20


def test_load_by_path_str_and_path():
    p = GRAPHS / "topic_mediation.gml"
    assert set(load_graph(p).nx.edges) == FULL_EDGES
    assert set(load_graph(str(p)).nx.edges) == FULL_EDGES
    assert graph_path("unadjusted_mediation") == GRAPHS / "unadjusted_mediation.gml"


def test_load_passthrough():
    g = load_graph("topic_mediation")
    assert load_graph(g) is g
    built = load_graph(nx.DiGraph(list(FULL_EDGES)))
    assert isinstance(built, CausalGraph) and set(built.nx.edges) == FULL_EDGES


def test_unknown_name_lists_known():
    with pytest.raises(GraphError, match="topic_mediation") as info:
        load_graph("no_such_graph")
    assert "'no_such_graph'" in str(info.value)


def test_missing_explicit_path_is_an_error_not_a_builtin(tmp_path):
    with pytest.raises(GraphError, match="missing path"):
        load_graph(tmp_path / "topic_mediation.gml")
    with pytest.raises(GraphError, match="missing path"):
        load_graph("mine/topic_mediation.gml")  # only the docs' spelling graphs/<name> falls back


def test_docs_spelling_resolves_from_any_folder(tmp_path, monkeypatch):
    """`--graph graphs/topic_mediation.gml` (the tutorial's) works outside the repository, through the package."""
    import deconfound

    monkeypatch.chdir(tmp_path)
    shipped = Path(deconfound.__file__).resolve().parent / "graphs"
    for spelling in ("graphs/topic_mediation.gml", "topic_mediation", "topic_mediation.gml"):
        assert graph_path(spelling) == shipped / "topic_mediation.gml", spelling
    assert set(load_graph("graphs/unadjusted_mediation.gml").nx.edges) == {("T", "M"), ("T", "Y"), ("M", "Y")}
    with pytest.raises(GraphError, match="one of \\['latent_topic', 'topic_mediation', 'unadjusted_mediation'\\]"):
        load_graph("graphs/no_such_graph.gml")
    # a file of that name in the current folder still wins over the shipped one
    (tmp_path / "graphs").mkdir()
    own = write_gml(tmp_path / "graphs" / "topic_mediation.gml", ["T", "M", "Y"], [("T", "M"), ("M", "Y")])
    assert graph_path("graphs/topic_mediation.gml") == Path("graphs/topic_mediation.gml")
    assert set(load_graph("graphs/topic_mediation.gml").nx.edges) == {("T", "M"), ("M", "Y")} and own.exists()


def test_dot_file(tmp_path, sim_small):
    data, _ = sim_small
    p = write_dot(tmp_path / "mine.dot", '// topic graph\n  X -> T; X -> M; X -> Y;\n  "T" -> "M"; T -> Y; M -> Y;')
    g = load_graph(p)
    assert set(g.nx.edges) == FULL_EDGES and g.name == "mine"
    sets = g.adjustment_sets(data)
    assert (sets.first_stage, sets.second_stage, sets.identified) == (("topic",), ("topic",), True)


def test_dot_latent_attribute(tmp_path, sim_small):
    data, _ = sim_small
    p = write_dot(tmp_path / "lat.dot", ' U [observed="no"];\n X -> T; X -> M; X -> Y; U -> T; U -> M; U -> Y;\n'
                                        ' T -> M; T -> Y; M -> Y;')
    g = load_graph(p)
    assert g.latent == ["U"]
    sets = g.adjustment_sets(data)
    assert sets.identified is False and sets.latent == ("U",)


# ---- structural checks --------------------------------------------------------------------------------------
def test_cycle_is_named(tmp_path):
    p = write_gml(tmp_path / "cyc.gml", ["X", "T", "M", "Y"],
                  [("X", "T"), ("T", "M"), ("M", "Y"), ("Y", "X"), ("T", "Y")])
    with pytest.raises(GraphError, match="cycle") as info:
        load_graph(p)
    msg = str(info.value)
    cycle = msg.split("cycle ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    steps = list(zip(cycle[:-1], cycle[1:]))
    g = nx.DiGraph([("X", "T"), ("T", "M"), ("M", "Y"), ("Y", "X"), ("T", "Y")])
    assert all(g.has_edge(a, b) for a, b in steps)  # the named cycle is a real cycle of the file


def test_cycle_in_dot(tmp_path):
    with pytest.raises(GraphError, match=r"cycle M -> Y -> M|cycle Y -> M -> Y"):
        load_graph(write_dot(tmp_path / "c.dot", "T -> M; M -> Y; Y -> M;"))


@pytest.mark.parametrize("drop", ["T", "M", "Y"])
def test_missing_role_node_named(tmp_path, drop):
    edges = [e for e in FULL_EDGES if drop not in e]
    nodes = sorted({n for e in edges for n in e})
    with pytest.raises(GraphError, match=f"role '{drop}'"):
        load_graph(write_gml(tmp_path / "g.gml", nodes, edges))


@pytest.mark.parametrize("edge", [("T", "M"), ("M", "Y")])
def test_missing_mediation_edge_named(tmp_path, edge):
    edges = FULL_EDGES - {edge}
    with pytest.raises(GraphError, match=f"{edge[0]} -> {edge[1]}"):
        load_graph(write_gml(tmp_path / "g.gml", ["X", "T", "M", "Y"], edges))


def test_undirected_graph_rejected(tmp_path):
    p = tmp_path / "u.gml"
    p.write_text('graph [ node [ id 0 label "T" ] node [ id 1 label "M" ] edge [ source 0 target 1 ] ]\n')
    with pytest.raises(GraphError, match="directed"):
        load_graph(p)


def test_parse_error_names_file(tmp_path):
    p = tmp_path / "broken.gml"
    p.write_text("graph [ directed 1 node [ id 0 ")
    with pytest.raises(GraphError, match="broken.gml"):
        load_graph(p)


def test_confounder_node_not_in_data_named(sim_small):
    data, _ = sim_small
    g = load_graph(nx.DiGraph([("length", "T"), ("length", "Y"), ("T", "M"), ("M", "Y"), ("T", "Y")]))
    with pytest.raises(GraphError, match="'length'") as info:
        g.adjustment_sets(data)
    assert "topic" in str(info.value)
    with pytest.raises(GraphError, match="'length'"):
        g.to_dowhy(data)


# ---- adjustment sets ----------------------------------------------------------------------------------------
def test_adjustment_topic_mediation(sim_small):
    data, _ = sim_small
    sets = load_graph("topic_mediation").adjustment_sets(data)
    assert sets.first_stage == ("topic",) and sets.second_stage == ("topic",) and sets.total == ("topic",)
    assert sets.identified and sets.latent == ()
    assert sets.as_dict()["first_stage"] == ["topic"] and sets.union == ("topic",)


def test_adjustment_unadjusted_is_empty(sim_small):
    data, _ = sim_small
    sets = load_graph("unadjusted_mediation").adjustment_sets(data)
    assert (sets.first_stage, sets.second_stage, sets.total) == ((), (), ())
    assert sets.identified


def test_adjustment_latent_topic_not_identified(sim_small):
    data, _ = sim_small
    sets = load_graph("latent_topic").adjustment_sets(data)
    assert sets.identified is False
    assert sets.latent == ("U",)
    assert sets.first_stage == ("topic",)  # the observed part is still adjusted for, and the result is flagged


def test_x_node_means_every_confounder(two_confounders):
    sets = load_graph("topic_mediation").adjustment_sets(two_confounders)
    assert sets.first_stage == ("topic", "length") and sets.second_stage == ("topic", "length")


def test_individual_confounder_nodes(two_confounders):
    g = load_graph(nx.DiGraph([("topic", "T"), ("topic", "M"), ("topic", "Y"), ("T", "M"), ("T", "Y"), ("M", "Y")]))
    sets = g.adjustment_sets(two_confounders)
    assert sets.first_stage == ("topic",) and sets.second_stage == ("topic",)  # 'length' is not in the graph


def test_stage_specific_sets(two_confounders):
    """A confounder of M -> Y only belongs to the second stage; one of T -> M only to the first (DoWhy)."""
    g = load_graph(nx.DiGraph([("topic", "M"), ("topic", "Y"), ("length", "T"), ("length", "M"),
                               ("T", "M"), ("T", "Y"), ("M", "Y")]))
    sets = g.adjustment_sets(two_confounders)
    assert sets.first_stage == ("length",)
    assert sets.second_stage == ("topic",)


def test_resolve_defaults_to_topic_mediation(sim_small):
    data, _ = sim_small
    g, sets = resolve(None, data)
    assert g.name == "topic_mediation" and sets.first_stage == ("topic",)
    g2, sets2 = resolve("unadjusted_mediation", data)
    assert g2.name == "unadjusted_mediation" and sets2.union == ()


def test_no_confounders_in_data():
    r = np.random.default_rng(0)
    data = MediationData.from_arrays(t=np.tile([0, 1], 10), y=r.normal(size=20), mediators={"m": r.normal(size=20)})
    sets = load_graph("topic_mediation").adjustment_sets(data)
    assert sets.union == ()


def test_to_dowhy_returns_causal_model(sim_small):
    from dowhy import CausalModel

    data, _ = sim_small
    model = load_graph("topic_mediation").to_dowhy(data)
    assert isinstance(model, CausalModel)
    assert list(model._treatment) == ["T"] and list(model._outcome) == ["Y"]
    frame = model._data
    assert isinstance(frame, pd.DataFrame) and len(frame) == data.n
    np.testing.assert_array_equal(frame["M"].to_numpy(), data.mediator("u0")[:, 0].astype(float))
    model_u1 = load_graph("topic_mediation").to_dowhy(data, unit="u1")
    np.testing.assert_array_equal(model_u1._data["M"].to_numpy(), data.mediator("u1")[:, 0].astype(float))


def test_x_and_a_named_column_are_not_counted_twice(two_confounders):
    g = load_graph(nx.DiGraph([("X", "T"), ("X", "M"), ("X", "Y"), ("topic", "T"), ("topic", "Y"), ("T", "M"),
                               ("T", "Y"), ("M", "Y")]))
    sets = g.adjustment_sets(two_confounders)
    assert sorted(sets.first_stage) == ["length", "topic"] and len(set(sets.total)) == len(sets.total)
