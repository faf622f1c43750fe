"""Neuron-level units, first-order (attribution) patching and the neuron demo's analysis, on a tiny model.

Oracles: the blocks the units are cut from; the exact patching engine (first order must match it to O(eps^2));
closed forms of the patching estimator under a linear outcome (NIE_j = sum_i v_i grad_ij (h_ij - donor_j) with
the donor the plain or entropy-balanced control mean); BH q-values recomputed with ``bh_qvalues``.
"""
import json

import numpy as np
import pandas as pd
import pytest

from deconfound.data import MediationData
from deconfound.errors import DataError, ModelSiteError
from deconfound.inference import bh_qvalues
from deconfound.neurons import NEURON_META, group_name, neuron_units, parse_unit, patch_units, top_coords


def _blocks(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"mlp_neurons.L1": rng.normal(size=(n, 5)).astype(np.float32),
            "mlp_neurons.L3": rng.normal(size=(n, 4)).astype(np.float32)}


def _data(n=8, seed=0):
    t = np.tile([0, 1], n // 2)
    return MediationData.from_arrays(t=t, y=np.arange(n, dtype=float), mediators=_blocks(n, seed),
                                     x=pd.DataFrame({"topic": np.array(["a", "b"])[np.arange(n) // 4]}),
                                     meta={"source": "test"})


# ---- units ------------------------------------------------------------------------------------------------------
def test_neuron_units_cut_blocks_into_named_coordinates_and_groups():
    data = _data()
    g = group_name("mlp_neurons.L1", "top2")
    nd = neuron_units(data, ["mlp_neurons.L1", "mlp_neurons.L3"], coords={"mlp_neurons.L1": [4, 0]},
                      groups={g: ("mlp_neurons.L1", [3, 1])})
    assert nd.units == ["mlp_neurons.L1[4]", "mlp_neurons.L1[0]", g]  # L3 has no singles in the dict
    block = data.mediator("mlp_neurons.L1")
    np.testing.assert_array_equal(nd.mediator("mlp_neurons.L1[4]"), block[:, [4]])
    np.testing.assert_array_equal(nd.mediator(g), block[:, [3, 1]])  # the given order, not sorted
    assert nd.meta[NEURON_META][g] == {"site": "mlp_neurons.L1", "coords": [3, 1]}
    assert nd.meta["neuron_sites"] == {"mlp_neurons.L1": 5, "mlp_neurons.L3": 4} and nd.meta["source"] == "test"
    assert patch_units(nd) == {"mlp_neurons.L1[4]": "mlp_neurons.L1[4]", "mlp_neurons.L1[0]": "mlp_neurons.L1[0]",
                               g: "mlp_neurons.L1[3,1]"}
    np.testing.assert_array_equal(nd.t, data.t)
    np.testing.assert_array_equal(nd.y, data.y)
    every = neuron_units(data, "mlp_neurons.L3")
    assert every.units == [f"mlp_neurons.L3[{j}]" for j in range(4)]
    assert parse_unit("mlp_neurons.L3[2]") == ("mlp_neurons.L3", "2") and parse_unit("mlp_out.L2") == ("mlp_out.L2", None)
    assert patch_units(data) == {u: u for u in data.units}  # no record: whole sites


def test_neuron_units_round_trip_through_save_and_lazy_load(tmp_path):
    data = _data()
    g = group_name("mlp_neurons.L3", "top3")
    nd = neuron_units(data, ["mlp_neurons.L3"], groups={g: ("mlp_neurons.L3", [2, 0, 3])})
    nd.save(tmp_path / "nd")
    back = MediationData.load(tmp_path / "nd", mmap=True)
    assert back.units == nd.units and patch_units(back) == patch_units(nd)
    for u in nd.units:
        np.testing.assert_array_equal(back.mediator(u), nd.mediator(u))
    data.save(tmp_path / "d")
    lazy = MediationData.load(tmp_path / "d", mmap=True)
    from_lazy = neuron_units(lazy.subset(np.arange(1, 7)), ["mlp_neurons.L1"])
    for j in range(5):
        np.testing.assert_array_equal(from_lazy.mediator(f"mlp_neurons.L1[{j}]"),
                                      data.mediator("mlp_neurons.L1")[1:7, [j]])


@pytest.mark.parametrize("kwargs,match", [
    (dict(sites=["mlp_neurons.L9"]), "mlp_neurons.L9"),
    (dict(sites="mlp_neurons.L1", coords=[5]), r"distinct integers in \[0, 5\)"),
    (dict(sites="mlp_neurons.L1", coords=[1, 1]), "distinct"),
    (dict(sites="mlp_neurons.L1", coords=[0.5]), "integers"),
    (dict(sites="mlp_neurons.L1", groups={"g": ("mlp_neurons.L3", [0])}), "site in"),
    (dict(sites="mlp_neurons.L1", coords=[0], groups={"mlp_neurons.L1[0]": ("mlp_neurons.L1", [1])}), "duplicate"),
    (dict(sites="mlp_neurons.L1", coords={}), "at least one"),
    (dict(sites=[]), "at least one site"),
])
def test_neuron_units_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        neuron_units(_data(), **kwargs)


def test_group_names_and_top_coords():
    assert group_name("mlp_neurons.L2", "top16") == "mlp_neurons.L2[top16]"
    for bad in ("3,4", "", "a]"):
        with pytest.raises(DataError, match="group label"):
            group_name("mlp_neurons.L2", bad)
    assert top_coords([1.0, -1.0, 0.5, np.nan, 2.0], 4).tolist() == [4, 0, 1, 2]  # ties: lower index first
    assert top_coords([np.nan, 0.0], 2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="k"):
        top_coords([1.0, 2.0], 3)
    with pytest.raises(DataError, match="not-a-unit"):
        patch_units(_data(), ["not-a-unit"])


# ---- first-order patching on a tiny model -----------------------------------------------------------------------
WORDS = ("the game was great and the team played you are a stupid idiot the doctor said shut up you dumb fool "
         "nobody likes he walks the dog in the park every").split()
BAD = ["stupid", "idiot", "dumb", "fool"]
SITES = ["mlp_neurons.L1", "mlp_neurons.L2"]


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from deconfound.lm.models import tiny_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = tiny_model("llama", seed=3, n_layers=3, d_mlp=48)
    rng = np.random.default_rng(1)
    prompts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))) for _ in range(40)]
    t = np.array([int(any(w in p.split() for w in BAD)) for p in prompts])
    topic = np.array(["sport", "news", "health"])[np.arange(40) % 3]
    patcher = Patcher(lm, prompts, outcome=NextTokenMass(lm.tokenizer.convert_tokens_to_ids(BAD)), site="mlp_neurons")
    acts = patcher.activations(SITES)
    data = MediationData.from_arrays(t=t, y=patcher.base_scores(), mediators=acts, x=pd.DataFrame({"topic": topic}))
    return lm, patcher, data


@pytest.mark.lm
def test_first_order_scores_match_exact_patching_to_second_order(tiny):
    from deconfound.lm.attribution import LinearizedPatcher

    _, patcher, data = tiny
    lin = LinearizedPatcher(patcher, SITES)
    assert lin.own_patch_gap < 1e-6
    h = lin.activations["mlp_neurons.L1"]
    np.testing.assert_allclose(h, data.mediator("mlp_neurons.L1"), atol=1e-5)
    delta = np.random.default_rng(0).normal(size=h.shape)
    rows = np.arange(data.n)
    errs = []
    for eps in (0.1, 0.05):
        exact = patcher.scores("mlp_neurons.L1", rows, (h + eps * delta).astype(np.float32))
        approx = lin.scores("mlp_neurons.L1", rows, h + eps * delta)
        assert np.abs(exact - patcher.base_scores()).max() > 10 * np.abs(exact - approx).max()  # a real change
        errs.append(np.abs(exact - approx).max())
    assert 3.0 < errs[0] / errs[1] < 5.0  # the error is second order: halving eps quarters it
    # a coordinate subset: only those gradient columns count
    v = h[:, [7, 3]] + 0.2
    got = lin.evaluate([("mlp_neurons.L1[7,3]", rows, v)], grad=True)[0]
    g = lin.gradients["mlp_neurons.L1"]
    np.testing.assert_allclose(got.scores, patcher.base_scores() + 0.2 * (g[:, 7] + g[:, 3]), rtol=1e-12)
    np.testing.assert_array_equal(got.grad, g[:, [7, 3]])


@pytest.mark.lm
def test_first_order_patcher_errors(tiny):
    from deconfound.lm.attribution import LinearizedPatcher
    from deconfound.lm.patch import Patcher

    lm, patcher, data = tiny
    lin = LinearizedPatcher(patcher, ["mlp_neurons.L1"], prompts=np.flatnonzero(data.t == 1))
    with pytest.raises(ModelSiteError, match="mlp_neurons.L2"):
        lin.unit("mlp_neurons.L2[3]")
    control = int(np.flatnonzero(data.t == 0)[0])
    with pytest.raises(DataError, match="gradients"):
        lin.scores("mlp_neurons.L1[0]", [control], [[0.0]])
    with pytest.raises(DataError, match=r"expected shape \(1, 1\)"):
        lin.scores("mlp_neurons.L1[0]", [int(np.flatnonzero(data.t == 1)[0])], [[0.0, 1.0]])
    with pytest.raises(ModelSiteError, match="whole site"):
        LinearizedPatcher(patcher, ["mlp_neurons.L1[2]"])
    with pytest.raises(ValueError, match="differentiable"):
        LinearizedPatcher(Patcher(lm, patcher.prompts[:3], outcome="generate"), ["mlp_neurons.L1"])


@pytest.mark.lm
def test_patching_estimator_on_first_order_patcher_matches_closed_forms(tiny):
    from deconfound.estimators.patching import PatchingMediation
    from deconfound.lm.attribution import LinearizedPatcher
    from deconfound.weights import eb_att

    _, patcher, data = tiny
    treated = np.flatnonzero(data.t == 1)
    lin = LinearizedPatcher(patcher, SITES, prompts=treated)
    nd = neuron_units(data, SITES, coords=[0, 5, 11, 47])
    est = PatchingMediation(donors="eb_mean", n_boot=20, donor_bootstrap="repatch", random_state=0)
    un = est.fit(nd, graph="unadjusted_mediation", patcher=lin)
    adj = est.fit(nd, graph="topic_mediation", patcher=lin)
    w = eb_att(data.x[["topic"]], data.t).weights  # controls: EB weights summing to 1
    ctrl = data.t == 0
    for u in nd.units:
        site, j = parse_unit(u)
        h, g = lin.activations[site][treated, int(j)], lin.gradients[site][treated, int(j)]
        m = data.mediator(site)[:, int(j)].astype(float)
        d_mean, d_eb = m[ctrl].mean(), np.sum(w[ctrl] * m[ctrl]) / np.sum(w[ctrl])
        assert un.effect(u, "nie", "treated").estimate == pytest.approx(np.mean(g * (h - d_mean)), rel=1e-9, abs=1e-15)
        assert adj.effect(u, "nie", "treated").estimate == pytest.approx(np.mean(g * (h - d_eb)), rel=1e-9, abs=1e-15)
        assert len(adj.effect(u, "nie", "treated").draws) == 20
    assert adj.settings["resample_key"] == un.settings["resample_key"]


@pytest.mark.lm
def test_group_units_patch_exactly_their_coordinates(tiny):
    from deconfound.estimators.patching import PatchingMediation

    _, patcher, data = tiny
    g = group_name("mlp_neurons.L2", "top3")
    coords = [9, 2, 30]
    gd = neuron_units(data, ["mlp_neurons.L2"], coords={}, groups={g: ("mlp_neurons.L2", coords)})
    res = PatchingMediation(donors="mean", n_boot=5, donor_bootstrap="fixed").fit(
        gd, graph="unadjusted_mediation", patcher=patcher, units=patch_units(gd))
    treated = np.flatnonzero(data.t == 1)
    donor = data.mediator("mlp_neurons.L2")[data.t == 0][:, coords].astype(float).mean(0)
    patched = patcher.scores("mlp_neurons.L2[9,2,30]", treated, np.tile(donor, (len(treated), 1)))
    want = np.mean(patcher.base_scores()[treated] - patched)
    assert res.effect(g, "nie", "treated").estimate == pytest.approx(want, rel=1e-6, abs=1e-12)
    wrong = patcher.scores("mlp_neurons.L2[2,9,30]", treated, np.tile(donor, (len(treated), 1)))
    assert not np.allclose(wrong, patched)  # the order of the coordinates matters, and is kept


# ---- the demo's analysis end to end -----------------------------------------------------------------------------
@pytest.mark.lm
def test_analyse_neurons_end_to_end(tiny, tmp_path):
    from deconfound.demo_neurons import analyse_neurons, default_layers, with_normal_p
    from scipy import stats

    assert default_layers(30, 2) == [7, 22] and default_layers(4, 4) == [0, 1, 2, 3]
    _, patcher, data = tiny
    with pytest.raises(ValueError, match="exact: expected 'all' or an int >= 0, got 'some'"):
        analyse_neurons(data, patcher, SITES, out=tmp_path, exact="some")
    res = analyse_neurons(data, patcher, SITES, out=tmp_path, n_boot=30, exact=12, top_k=4, neurons=list(range(24)))
    frame = res["neurons"]
    assert len(frame) == 48 and sorted(frame.layer.unique()) == [1, 2]
    for col in ("adjusted", "unadjusted"):
        p = 2 * stats.norm.sf(np.abs(frame[f"t_{col}"]))
        np.testing.assert_allclose(frame[f"p_value_{col}"], p, rtol=1e-10)
        np.testing.assert_allclose(frame[f"q_value_{col}"], bh_qvalues(p), rtol=1e-10)
        assert res["counts"].as_dict()[col] == int((frame[f"q_value_{col}"] <= 0.05).sum())
    assert res["per_layer"].neurons.sum() == 48
    check = res["check"]
    assert check.unit.nunique() == 12 and set(check.selection) == {"top_t", "displacement", "random"}
    # the displacement picks: the largest mean squared move of the patch over the treated prompts
    treated, ctrl = data.t == 1, data.t == 0
    disp = {}
    for site in SITES:
        m = data.mediator(site)[:, :24].astype(float)
        for j in range(24):
            disp[f"{site}[{j}]"] = np.mean((m[treated, j] - m[ctrl, j].mean()) ** 2)
    ranked = sorted(disp, key=lambda u: -disp[u])
    picked = set(check[check.selection == "displacement"].unit)
    top_t = set(check[check.selection == "top_t"].unit)
    assert picked and picked <= set(ranked[:3]) and set(ranked[:3]) <= picked | top_t
    assert check.abs_diff.max() < 0.25 * check.exact.abs().max()  # first order is close to exact here
    assert np.corrcoef(check.exact, check.first_order)[0, 1] > 0.95
    first_adj = res["first_order"]["topic_mediation"]
    row = check[check.graph == "adjusted"].iloc[0]
    assert row.first_order == first_adj.effect(row.unit, "nie", "treated").estimate
    assert row.exact == res["exact"]["topic_mediation"].effect(row.unit, "nie", "treated").estimate
    # the table: exact estimates where checked, first order elsewhere; the first-order column everywhere
    table = frame.set_index("unit")
    assert set(table.index[table.source == "exact"]) == set(check.unit)
    for g, col in (("topic_mediation", "adjusted"), ("unadjusted_mediation", "unadjusted")):
        for u in table.index:
            src = res["exact"][g] if table.loc[u, "source"] == "exact" else res["first_order"][g]
            assert table.loc[u, f"nie_{col}"] == src.effect(u, "nie", "treated").estimate
            assert table.loc[u, f"first_order_nie_{col}"] == res["first_order"][g].effect(u, "nie", "treated").estimate
    assert res["exact"]["topic_mediation"].settings["donor_bootstrap"] == "linear"
    groups = res["groups"]
    assert set(groups.estimator) == {"patching", "weighting", "dml"} and len(groups) == 2 * 3 * 2
    for name in ("report.html", "report.md", "neurons.csv", "exact_check.csv", "groups.csv", "counts.json",
                 "summary.txt", "figures/t_hist.png", "figures/exact_vs_first_order.png"):
        assert (tmp_path / name).exists(), name
    info = json.loads((tmp_path / "counts.json").read_text())
    assert info["counts"]["n_units"] == 48 and info["exact_check"]["neurons"] == 12
    assert info["counts_first_order"]["n_units"] == 48
    # the normal p-values replace only the NIE's, and leave the estimates alone
    first = res["first_order"]["topic_mediation"]
    u = first.units[0]
    e, e2 = first.effect(u, "nie", "treated"), with_normal_p(first).effect(u, "nie", "treated")
    assert e2.estimate == e.estimate and e2.ci == e.ci and e2.p_value == pytest.approx(
        2 * stats.norm.sf(abs(e.estimate / e.se)))
    assert with_normal_p(first).effect(u, "te", "treated").p_value == first.effect(u, "te", "treated").p_value


@pytest.mark.lm
def test_analyse_neurons_exact_everywhere(tiny, tmp_path):
    from deconfound.demo_neurons import analyse_neurons

    _, patcher, data = tiny
    res = analyse_neurons(data, patcher, ["mlp_neurons.L2"], out=tmp_path, n_boot=20, exact="all", top_k=0,
                          bands=False, neurons=[1, 4, 9])
    frame = res["neurons"].set_index("unit")
    assert (frame.source == "exact").all() and len(frame) == 3 and res["groups"] is None
    for u in frame.index:
        assert frame.loc[u, "nie_adjusted"] == res["exact"]["topic_mediation"].effect(u, "nie", "treated").estimate
    info = json.loads((tmp_path / "counts.json").read_text())
    assert info["counts"] == info["counts_first_order"]  # one family: the exact one
