"""MediationResult: derived effects, summary() layout with R `mediation` names, to_frame(), HTML."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from deconfound import Effect, MediationResult
from deconfound.results import add_derived

R_ROWS = ["ACME (control)", "ACME (treated)", "ADE (control)", "ADE (treated)", "Total Effect",
          "Prop. Mediated (control)", "Prop. Mediated (treated)", "ACME (average)", "ADE (average)",
          "Prop. Mediated (average)"]
COLUMNS = ["unit", "effect", "arm", "estimate", "se", "ci_lower", "ci_upper", "p_value"]


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
    assert f"{res.effect('u0', 'nie', 'control').estimate:.4f}" in html


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
