"""The identification section: read from the graph and the data, checked against hand counts and graphs."""
import networkx as nx
import numpy as np
import pandas as pd
import pytest

from deconfound import CausalGraph, MediationData, simulate
from deconfound.identification import identification, positivity_table


def test_default_graph_claim_sets_and_positivity_counts():
    data, truth = simulate.topic_mediation(300, n_topics=3, seed=2)
    ident = identification(None, data, effect="nie", population="att")
    assert ident.identified and ident.adjustment.first_stage == ("topic",)
    tab = ident.positivity.set_index("cell")
    for k in range(3):
        rows = truth.topic == k
        assert tab.loc[f"t{k}", "n_treated"] == int(data.t[rows].sum())
        assert tab.loc[f"t{k}", "n_control"] == int((1 - data.t[rows]).sum())
    md = ident.to_markdown()
    assert "natural indirect effect (NIE)" in md and "treated rows" in md and "`topic`" in md
    assert "No sensitivity analysis was run" in md


def test_latent_graph_is_flagged_unidentified():
    data, _ = simulate.topic_mediation(300, n_topics=3, seed=2)
    ident = identification("latent_topic", data)
    assert not ident.identified
    text = dict(ident.assumptions)["No unobserved T-M and T-Y confounding"]
    assert "violated by the graph itself" in text and "`U`" in text
    assert "NOT identified" in ident.to_markdown()


def test_cell_without_controls_is_listed():
    n = 40
    topic = np.array(["a", "b"] * (n // 2))
    t = np.where(topic == "a", 1, (np.arange(n) // 2) % 2)  # topic a: treated only
    data = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u": np.zeros((n, 1))},
                                     x=pd.DataFrame({"topic": topic}))
    pos = positivity_table(data, ["topic"]).set_index("cell")
    assert pos.loc["a", "n_control"] == 0 and not pos.loc["a", "supported"] and pos.loc["b", "supported"]
    ident = identification(None, data)
    assert "fails in 1 cell" in dict(ident.assumptions)["Positivity"]


def test_treatment_induced_confounder_and_layers():
    g = nx.DiGraph([("X", "T"), ("X", "M"), ("X", "Y"), ("T", "M"), ("T", "Y"), ("M", "Y"), ("T", "Z"),
                    ("Z", "M"), ("Z", "Y")])
    data, _ = simulate.topic_mediation(200, n_topics=2, seed=0)
    data = data.replace(x=data.x.assign(Z=np.random.default_rng(0).normal(size=data.n)))
    ident = identification(CausalGraph(g, name="induced"), data)
    assert "`Z`" in dict(ident.assumptions)["No treatment-induced M-Y confounding"]
    plain, _ = simulate.topic_mediation(200, n_topics=2, seed=0)
    layer = identification(None, plain, mediator="layer", estimator="patching")
    text = dict(layer.assumptions)["No treatment-induced M-Y confounding"]
    assert "earlier layers" in text and "interventional" in text
    assert "No unobserved M-Y confounding" not in dict(layer.assumptions)  # patching intervenes on M


def test_sensitivity_sentences_and_bad_arguments():
    from deconfound import get_estimator
    from deconfound.sensitivity import sensitivity_analysis

    data, _ = simulate.topic_mediation(600, seed=3)
    sens = sensitivity_analysis(get_estimator("dml", n_folds=3, random_state=0).fit(data))
    ident = identification(None, data, sensitivity=sens)
    rv = sens.to_frame().query("effect == 'nie'").rv.min()
    assert f"{100 * rv:.1f}%" in ident.to_markdown()
    with pytest.raises(ValueError, match="effect: expected one of"):
        identification(None, data, effect="ate")
    with pytest.raises(ValueError, match="mediator: expected 'unit' or 'layer'"):
        identification(None, data, mediator="neuron")
