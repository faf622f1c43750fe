"""MediationResult: derived effects, summary() layout with R `mediation` names, to_frame(), HTML."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from deconfound import Effect, MediationResult
from deconfound.estimators.patching import PatchingMediation
from deconfound.results import add_derived

R_ROWS = ["ACME (control)", "ACME (treated)", "ADE (control)", "ADE (treated)", "Total Effect",
          "Prop. Mediated (control)", "Prop. Mediated (treated)", "ACME (average)", "ADE (average)",
          "Prop. Mediated (average)"]
COLUMNS = ["unit", "effect", "arm", "population", "estimate", "se", "ci_lower", "ci_upper", "p_value"]


def _base_effects(rng, n=300, shift=0.0):
    s = rng.normal(size=(n, 5))
    s -= s.mean(0)
    est = {("nie", "control"): 0.20 + shift, ("nie", "treated"): 0.30 + shift, ("nde", "control"): 0.50,
           ("nde", "treated"): 0.40, ("te", "average"): 0.70 + shift}
    return {k: Effect.from_scores(v, s[:, j]) for j, (k, v) in enumerate(est.items())}, s


def _result(rng, units=("u0", "u1")):
    effects = {u: add_derived(_base_effects(rng, shift=0.1 * i)[0]) for i, u in enumerate(units)}
    return MediationResult("parametric", effects, n=300, n_treated=120, population="ate",
                           graph="topic_mediation", adjustment={"first_stage": ["topic"], "second_stage": ["topic"]},
                           random_state=42)


def test_add_derived_averages_and_proportions(rng):
    base, s = _base_effects(rng)
    out = add_derived(base)
    avg = out[("nie", "average")]
    oracle = Effect.from_scores(0.25, (s[:, 0] + s[:, 1]) / 2)
    assert avg.estimate == pytest.approx(0.25) and avg.se == pytest.approx(oracle.se, rel=1e-12)
    assert out[("nde", "average")].estimate == pytest.approx(0.45)
    pm = out[("prop_mediated", "treated")]
    assert pm.estimate == pytest.approx(0.30 / 0.70)
    delta = (s[:, 1] - (0.3 / 0.7) * s[:, 4]) / 0.7  # delta-method scores of NIE/TE
    assert pm.se == pytest.approx(np.sqrt(np.mean(delta**2) / len(delta)), rel=1e-12)
    assert out[("prop_mediated", "average")].estimate == pytest.approx(0.25 / 0.70)
    assert set(out) == set(base) | {("nie", "average"), ("nde", "average"), ("prop_mediated", "control"),
                                    ("prop_mediated", "treated"), ("prop_mediated", "average")}
    given = {**base, ("nie", "average"): Effect.from_se(9.0, 1.0)}
    assert add_derived(given)[("nie", "average")].estimate == 9.0  # never overwrites


def test_summary_rows_and_numbers(rng):
    res = _result(rng)
    text = res.summary()
    for name in R_ROWS:
        assert sum(line.startswith(name + " ") for line in text.splitlines()) == 2, name  # once per unit
    line = next(ln for ln in text.splitlines() if ln.startswith("ACME (treated)"))
    e = res.effect("u0", "nie", "treated")
    numbers = [float(v) for v in line[len("ACME (treated)"):].split()]
    assert numbers == pytest.approx([e.estimate, e.se, e.ci[0], e.ci[1], e.p_value], abs=5e-5)
    # the proportion mediated: a CI and a p-value, no SE (as R prints it)
    line = next(ln for ln in text.splitlines() if ln.startswith("Prop. Mediated (average)"))
    pm = res.effect("u0", "prop_mediated", "average")
    cells = line[len("Prop. Mediated (average)"):].split()
    assert cells[1] == "-"
    assert [float(cells[i]) for i in (0, 2, 3, 4)] == pytest.approx([pm.estimate, *pm.ci, pm.p_value], abs=5e-5)
    assert "2.5%" in text and "97.5%" in text
    assert str(res) == text
    assert "Unit: u1" in res.summary() and "Unit: u1" not in res.summary("u0")


def test_summary_header_fields(rng):
    res = _result(rng)
    res.warnings.append("positivity is weak in topic t3")
    text = res.summary()
    for field in ["Estimator:", "parametric", "Estimand:", "NIE (ACME)", "NDE (ADE)", "Population:", "ATE",
                  "Graph:", "topic_mediation", "Adjust T->M:", "Adjust M->Y:", "topic", "n (n1, n0):",
                  "300 (120, 180)", "Seed:", "42", "CI level:", "95%", "Warning: positivity is weak in topic t3"]:
        assert field in text, field
    empty = MediationResult("x", {"u": add_derived(_base_effects(rng)[0])}, n=10, n_treated=4, graph="unadjusted")
    assert "Adjust T->M:  none" in empty.summary()


def test_summary_diagnostics_line(rng):
    res = _result(rng, units=("u0",))
    res.diagnostics = {"u0": {"ess": 123.456, "converged": True, "table": pd.DataFrame()}}
    line = next(ln for ln in res.summary().splitlines() if ln.startswith("Diagnostics:"))
    assert "ess=123.5" in line and "converged=True" in line and "table" not in line


def test_to_frame_tidy(rng):
    res = _result(rng)
    f = res.to_frame()
    assert list(f.columns) == COLUMNS + ["q_value"]
    assert len(f) == 2 * 10 and f.unit.tolist() == ["u0"] * 10 + ["u1"] * 10
    assert set(f.effect) == {"nie", "nde", "te", "prop_mediated"}
    assert set(f.arm) == {"control", "treated", "average"}
    row = f[(f.unit == "u1") & (f.effect == "nde") & (f.arm == "control")].iloc[0]
    e = res.effect("u1", "nde", "control")
    assert (row.estimate, row.se, row.ci_lower, row.ci_upper, row.p_value) == (e.estimate, e.se, *e.ci, e.p_value)
    assert (f.population == "ate").all()
    pm = f[f.effect == "prop_mediated"]
    assert pm.se.isna().all() and pm.ci_lower.notna().all() and pm.p_value.notna().all()
    # q-values: BH across units within each effect x arm (oracle: statsmodels)
    for _, grp in f.groupby(["effect", "arm"]):
        np.testing.assert_allclose(grp.q_value, multipletests(grp.p_value, method="fdr_bh")[1], rtol=1e-12)
    first = f[f.unit == "u0"]
    assert list(zip(first.effect, first.arm))[:3] == [("nie", "control"), ("nie", "treated"), ("nie", "average")]


def test_to_frame_empty():
    f = MediationResult("x", {}, n=10, n_treated=5).to_frame()
    assert list(f.columns) == COLUMNS and len(f) == 0


def test_effect_accessor(rng):
    res = _result(rng)
    assert res.effect("u0", "te", "average").estimate == pytest.approx(0.70)
    with pytest.raises(ValueError, match="expected one of"):
        res.effect()  # two units: must name one
    with pytest.raises(KeyError, match="'u9'"):
        res.effect("u9")
    with pytest.raises(KeyError, match="effect/arm"):
        res.effect("u0", "cde", "average")
    single = _result(rng, units=("only",))
    assert single.effect().estimate == pytest.approx(0.25)
    assert res.units == ["u0", "u1"] and res.n_control == 180


def test_repr_html(rng):
    res = _result(rng)
    html = res._repr_html_()
    assert html.count("<table") == 2
    assert "Adjust T-&gt;M" in html and "topic_mediation" in html
    assert "<th>ci_lower</th>" in html and "q_value" in html
    assert f"<td>{res.effect('u0', 'nie', 'control').estimate:.4g}</td>" in html  # significant digits


def test_warns_when_total_effect_may_be_zero(rng):
    base, _ = _base_effects(rng)
    base[("te", "average")] = Effect.from_se(0.05, 0.1)  # CI covers 0
    effects = {"u0": add_derived(base), "u1": add_derived(_base_effects(rng)[0])}
    res = MediationResult("x", effects, n=300, n_treated=100)
    assert res.warnings == ["the total effect's CI covers 0 for 1 unit(s) ('u0'): Prop. Mediated is unstable there"]
    assert "Warning: the total effect's CI covers 0" in res.summary()
    # an estimator that already warned about the unit is not repeated
    said = ["unit 'u0': the total effect's CI covers 0, so Prop. Mediated is unstable"]
    assert MediationResult("x", effects, n=300, n_treated=100, warnings=list(said)).warnings == said
    assert _result(rng).warnings == []
    import dataclasses

    again = dataclasses.replace(res)
    assert len(again.warnings) == 1


def test_summary_unknown_unit(rng):
    with pytest.raises(KeyError, match="'zz'"):
        _result(rng).summary("zz")


# ---- populations and the one total effect ----------------------------------------------------------------
def _duplicated_te(rng):
    """An estimator that still stores its ATE under the treated and control arms too."""
    effs = add_derived(_base_effects(rng)[0])
    te = effs[("te", "average")]
    return {**effs, ("te", "treated"): te, ("te", "control"): Effect.from_se(te.estimate, te.se)}


def test_one_total_effect_row_when_arms_repeat_it(rng):
    res = MediationResult("dml", {"u0": _duplicated_te(rng)}, n=300, n_treated=120)
    text = res.summary()
    assert sum("Total Effect" in ln for ln in text.splitlines()) == 1
    assert "Total Effect (treated)" not in text and "Total Effect (control)" not in text
    f = res.to_frame()
    assert f[f.effect == "te"].arm.tolist() == ["average"]
    assert set(add_derived(_duplicated_te(rng))) == set(add_derived(_base_effects(rng)[0]))
    # a TE by arm that is a different number is never hidden
    effs = {**add_derived(_base_effects(rng)[0]), ("te", "treated"): Effect.from_se(9.0, 1.0)}
    assert ("te", "treated") in MediationResult("x", {"u": effs}, n=300, n_treated=120).to_frame().pipe(
        lambda fr: set(zip(fr.effect, fr.arm)))


def test_te_by_arm_reads_the_population_te(rng):
    effs = add_derived(_base_effects(rng)[0])
    att = MediationResult("patching", {"u": effs}, n=300, n_treated=120, population="att")
    assert att.effect("u", "te", "treated") is effs[("te", "average")]  # TE_ATT is the treated arm's TE
    with pytest.raises(KeyError, match="one row, \\('te', 'average'\\), for population 'att'"):
        att.effect("u", "te", "control")
    ate = MediationResult("dml", {"u": effs}, n=300, n_treated=120)
    with pytest.raises(KeyError, match="population 'ate'"):
        ate.effect("u", "te", "treated")  # the ATE is not the treated arm's TE: never silently substituted
    with pytest.raises(ValueError, match="population: expected one of"):
        MediationResult("x", {"u": effs}, n=300, n_treated=120, population="ATT")


def test_patching_summary_names_the_att(rng):
    """A patching-style result: TE_ATT, stored once, printed once under population ATT."""
    base, _ = _base_effects(rng)
    legacy = {k: v for k, v in base.items() if k != ("te", "average")} | {("te", "treated"): base[("te", "average")]}
    for effs in (add_derived(base), legacy):
        res = MediationResult("patching", {"u": effs}, n=300, n_treated=120, population="att",
                              settings={"n_boot": 200, "method": "EB-mean donors"})
        assert res.effect("u", "te") is res.effect("u", "te", "treated") is base[("te", "average")]
        text = res.summary()
        assert "Population:   ATT" in text and "Method:       EB-mean donors, 200 bootstrap replicates" in text
        rows = [ln for ln in text.splitlines() if ln.startswith("Total Effect")]
        assert len(rows) == 1 and float(rows[0].split()[2]) == pytest.approx(base[("te", "average")].estimate,
                                                                            abs=5e-5)
        assert (res.to_frame().population == "att").all()
    note = MediationResult("weighting", {"u": add_derived(base)}, n=300, n_treated=120, population="overlap",
                           settings={"population_note": "rows with 0.05 <= p(X) <= 0.95"})
    assert "Population:   OVERLAP (rows with 0.05 <= p(X) <= 0.95)" in note.summary()


def test_header_names_method_draws_models_and_sets(rng):
    res = _result(rng, units=("u0",))
    res.settings = {"method": "quasi-Bayesian", "n_sims": 1000, "families": {"mediator": "gaussian",
                                                                               "outcome": "logit"}}
    res.adjustment = {"first_stage": ["topic"], "second_stage": ["topic", "age"], "total": ["topic"]}
    text = res.summary()
    for field in ["Method:       quasi-Bayesian, 1000 draws", "Models:       mediator gaussian, outcome logit",
                  "Adjust M->Y:  topic, age", "Adjust T->Y:  topic", "Inference:    influence function",
                  "n (n1, n0):   300 (120, 180)"]:
        assert field in text, field
    res.settings = {"n_folds": 5, "n_boot": 0, "outcome_family": "gaussian", "outcome_learner": None,
                    "propensity_learner": "LogisticRegression(C=1.0)"}
    text = res.summary()
    assert "Method:       5 folds" in text and "bootstrap" not in text
    assert "Models:       outcome gaussian, propensity LogisticRegression" in text
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    res.settings = {"propensity_learner": make_pipeline(StandardScaler(), LogisticRegression())}
    assert "Models:       propensity Pipeline(StandardScaler, LogisticRegression)" in res.summary()


def _printed_rows(text):
    """{row name: the five cells} from a summary's effect table."""
    out = {}
    for line in text.splitlines():
        for name in sorted(R_ROWS, key=len, reverse=True):
            if line.startswith(name + " "):
                out[name] = line[len(name):].split()
                break
    return out


@pytest.mark.parametrize("scale", [1e-4, 1e6])
def test_summary_prints_by_magnitude(sim_small, scale):
    """An outcome in units of 1e-4 or 1e6: every printed number reads back within 3 significant digits (of the
    table's largest effect; of 1 for the proportions), and every row keeps its five cells apart."""
    from deconfound import get_estimator

    data, _ = sim_small
    res = get_estimator("parametric", n_sims=200, random_state=0).fit(data.replace(y=data.y * scale))
    base = get_estimator("parametric", n_sims=200, random_state=0).fit(data)
    rows = _printed_rows(res.summary(res.units[0]))
    assert set(rows) == set(R_ROWS)
    effs = res.effects[res.units[0]]
    top = max(abs(v) for k, e in effs.items() if k[0] != "prop_mediated" for v in (e.estimate, *e.ci))
    keys = [("nie", "control"), ("nie", "treated"), ("nde", "control"), ("nde", "treated"), ("te", "average"),
            ("prop_mediated", "control"), ("prop_mediated", "treated"), ("nie", "average"), ("nde", "average"),
            ("prop_mediated", "average")]
    for key, name in zip(keys, R_ROWS):
        cells, e = rows[name], effs[key]
        assert len(cells) == 5, (name, cells)  # the columns stay separated
        want = [e.estimate, e.se, *e.ci]
        unit = 1.0 if key[0] == "prop_mediated" else top
        for shown, value in zip(cells[:4], want):
            if shown == "-":
                assert key[0] == "prop_mediated"
                continue
            assert abs(float(shown) - value) <= 5e-4 * unit, (name, shown, value)
        # the same fit on the unscaled outcome: the scaled estimate is the scaled number
        assert e.estimate == pytest.approx(
            base.effects[base.units[0]][key].estimate * (1.0 if key[0] == "prop_mediated" else scale), rel=1e-9)
    assert float(rows["Total Effect"][0]) == pytest.approx(effs[("te", "average")].estimate, rel=5e-4)


def test_number_format_edges():
    from deconfound.results import number_format, p_format

    f = number_format([1234567.0, -2.5])
    assert f(1234567.0) == "1.2346e+06" and f(-2.5) == "-2.5000e+00"
    f = number_format([0.7, 0.0])
    assert f(0.7) == "0.70000" and f(0.0) == "0.00000"
    assert number_format([0.0])(0.0) == "0.0000" and number_format([np.nan])(np.nan) == "NaN"
    assert number_format([99999.0])(99999.0) == "99999" and number_format([0.001])(-0.001) == "-0.0010000"
    assert number_format([1.0], digits=3)(1.0) == "1.00"
    assert p_format(0.5) == "0.5000" and p_format(3.2e-12) == "3.2e-12" and p_format(np.nan) == "NaN"


def test_patching_fit_prints_one_att_total_effect():
    """The real patching estimator on a toy patcher: TE_ATT once, labelled by population ATT, in both outputs."""
    from test_patching_estimator import ToyPatcher, toy_data

    data, m, _, _ = toy_data(seed=1)
    patcher = ToyPatcher(m, a=np.zeros(data.n), b=np.array([1.0, -0.5, 0.25]))
    res = PatchingMediation(n_boot=50, random_state=0).fit(data, patcher=patcher)
    te = res.effect("u", "te", "treated")
    assert res.population == "att" and res.effect("u", "te") is te
    text = res.summary()
    assert "Population:   ATT" in text and "Method:       50 bootstrap replicates" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("Total Effect")]
    assert len(rows) == 1 and rows[0].split()[:2] == ["Total", "Effect"]
    assert float(rows[0].split()[2]) == pytest.approx(te.estimate, abs=1e-4)  # 5 digits of the largest (1.33)
    f = res.to_frame()
    assert len(f[f.effect == "te"]) == 1 and (f.population == "att").all()


def test_long_header_values_wrap_within_the_width(rng):
    """A long model description (weighting's default learner) stays inside the 78-character table."""
    res = _result(rng, units=("u0",))
    words = [f"word{i}" for i in range(40)]
    res.settings = {"families": {"mediator": " ".join(words)}}
    text = res.summary()
    assert max(len(line) for line in text.splitlines()) <= 78
    models = text[text.index("Models:"):text.index("Estimand:")].split()
    assert models == ["Models:", "mediator", *words]                     # every word, in order
    from deconfound.estimators.weighting import WeightingMediation
    from deconfound.simulate import topic_mediation
    data, _ = topic_mediation(400, n_topics=3, seed=0)
    assert max(len(line) for line in WeightingMediation().fit(data).summary().splitlines()
               if not line.startswith(("Diagnostics:", "Warning:"))) <= 78
