"""EconML variants: TE against DML and the truth, EconML's own SE, the difference method's interaction bias."""
import subprocess
import sys

import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import LinearSVC

from deconfound.estimators import get_estimator
from deconfound.estimators.dml import DMLMediation
from deconfound.estimators.econml import EconMLDifferenceMediation, EconMLTotalEffect
from deconfound.simulate import topic_mediation

CHEAP = dict(model_regression=Ridge(alpha=1.0), model_propensity=LogisticRegression(C=1.0))


@pytest.fixture(scope="module")
def linear():
    data, truth = topic_mediation(3000, n_units=2, n_topics=4, seed=21)
    return data, truth, DMLMediation().fit(data)


@pytest.fixture(scope="module")
def interaction():
    data, truth = topic_mediation(5000, n_topics=4, interaction=2.0, seed=22)
    return data, truth


def test_te_agrees_with_dml_and_truth(linear):
    data, truth, dml = linear
    for method in ("dr", "linear_dml"):
        res = EconMLTotalEffect(method=method).fit(data)
        te, ref = res.effect("u0", "te"), dml.effect("u0", "te")
        assert abs(te.estimate - ref.estimate) <= 2 * ref.se, (method, te, ref)
        assert abs(te.estimate - truth.value("u0", "te")) <= 3 * te.se
        assert res.effect("u1", "te") is res.effect("u0", "te")  # one TE for every unit
        assert list(res.effects["u0"]) == [("te", "average")] and res.population == "ate"


def test_dr_scores_reproduce_econml_inference(linear):
    data, _, _ = linear
    res = EconMLTotalEffect(**CHEAP).fit(data, units=["u0"])
    te, econ = res.effect("u0", "te"), res.diagnostics["u0"]["econml"]
    assert te.scores is not None and len(te.scores) == data.n
    assert te.estimate == pytest.approx(econ["ate"], rel=1e-12)
    assert te.se == pytest.approx(econ["stderr"], rel=1e-9)  # EconML's ate_inference().stderr_mean


def test_linear_dml_scores_reproduce_econml_inference_and_difference(linear):
    """LinearDML's Effect keeps the influence function of its final regression: its SE is EconML's HC1 SE
    without the n / (n - 1) factor, and econml_diff differences the TE and CDE scores (no SEs combined as if
    independent)."""
    import numpy as np
    from econml.dml import LinearDML

    data, truth, _ = linear
    res = EconMLTotalEffect(method="linear_dml", **CHEAP).fit(data, units=["u0"])
    te, econ = res.effect("u0", "te"), res.diagnostics["u0"]["econml"]
    assert te.scores is not None and te.estimate == pytest.approx(econ["ate"], rel=1e-12)
    assert te.se == pytest.approx(econ["stderr"] * np.sqrt((data.n - 1) / data.n), rel=1e-9)
    ref = LinearDML(model_y=Ridge(alpha=1.0), model_t=LogisticRegression(C=1.0), discrete_treatment=True, cv=5,
                    random_state=0).fit(data.y, data.t, W=data.x_design()[0])
    assert abs(te.estimate - ref.ate()) < 0.5 * te.se  # another split of the same estimator
    diff = EconMLDifferenceMediation(method="linear_dml", **CHEAP).fit(data)
    for unit in data.units:
        nie = diff.effect(unit, "nie", "average")
        assert nie.scores is not None and abs(nie.estimate - truth.value(unit, "nie", "average")) <= 3 * nie.se
        cde = diff.effect(unit, "nde", "average")
        assert nie.se == pytest.approx(np.sqrt(np.mean((te.scores - cde.scores) ** 2) / data.n), rel=1e-12)
    assert not any("as if independent" in w for w in diff.warnings)


def test_sensitivity_outputs_exposed(linear):
    data, _, _ = linear
    res = EconMLTotalEffect(**CHEAP).fit(data, units=["u0"])
    diag = res.diagnostics["u0"]
    econ = diag["econml"]
    lo, hi = econ["sensitivity_interval_theta"]
    clo, chi = econ["sensitivity_interval_ci"]
    est = res.effect("u0", "te").estimate
    assert clo < lo < est < hi < chi
    assert 0 < econ["robustness_value"] < econ["robustness_value_theta"] < 1
    assert diag["robustness_value"] == econ["robustness_value"]
    assert "Robustness Value" in econ["sensitivity_summary"]
    # a stronger latent confounder widens EconML's interval (metamorphic)
    wide = EconMLTotalEffect(**CHEAP, c_y=0.2, c_t=0.2).fit(data, units=["u0"]).diagnostics["u0"]["econml"]
    assert wide["sensitivity_interval_theta"][0] < lo and wide["sensitivity_interval_theta"][1] > hi


def test_propensity_clipping_is_explicit_and_reported():
    data, _ = topic_mediation(1500, n_topics=4, topic_strength=3.0, seed=3)
    res = EconMLTotalEffect(**CHEAP, min_propensity=0.1).fit(data)
    diag = res.diagnostics["u0"]
    lo, hi = diag["propensity_range"]
    expected = diag["n_outside_clip"]
    assert expected > 0 and (lo < 0.1 or hi > 0.9)
    assert any("clipped" in w for w in res.warnings)
    assert diag["min_propensity"] == 0.1


def test_difference_method_valid_without_interaction(linear):
    data, truth, _ = linear
    res = EconMLDifferenceMediation().fit(data)
    for unit in data.units:
        for kind in ("nie", "nde", "te"):
            eff = res.effect(unit, kind, "average")
            assert abs(eff.estimate - truth.value(unit, kind, "average")) <= 3 * eff.se, (unit, kind, eff)
        e = res.effects[unit]
        assert (e[("nie", "average")] + e[("nde", "average")]).estimate == pytest.approx(e[("te", "average")].estimate)
        assert e[("nie", "average")].scores is not None  # SE from the difference of the two DR score vectors
        assert set(res.diagnostics[unit]) >= {"te", "cde", "te_robustness_value", "cde_robustness_value"}
        assert [k for k in e if k[0] == "te"] == [("te", "average")]


def test_difference_method_biased_with_interaction(interaction):
    """With a T x M interaction NIE(treated) != NIE(control); TE - CDE is one number and misses both arms."""
    data, truth = interaction
    diff = EconMLDifferenceMediation().fit(data).effect("u0", "nie", "average")
    dml = DMLMediation().fit(data)
    for arm in ("treated", "control"):
        tv = truth.value("u0", "nie", arm)
        assert abs(diff.estimate - tv) > 5 * diff.se, (arm, diff, tv)
        eff = dml.effect("u0", "nie", arm)
        assert abs(eff.estimate - tv) <= 3 * eff.se


def test_bad_inputs():
    data, _ = topic_mediation(300, n_topics=3, seed=0)
    with pytest.raises(TypeError, match="LinearSVC"):
        EconMLTotalEffect(model_propensity=LinearSVC()).fit(data)
    for kwargs, pattern in [({"method": "forest"}, "method"), ({"min_propensity": 0.0}, "min_propensity"),
                            ({"min_propensity": 0.5}, "min_propensity"), ({"n_folds": 1}, "n_folds")]:
        with pytest.raises(ValueError, match=pattern):
            EconMLDifferenceMediation(**kwargs).fit(data)


def test_att_population_not_implemented():
    """EconML has no ATT for these models: a clear error naming the population, never the ATE relabelled."""
    data, _ = topic_mediation(300, n_topics=3, seed=0)
    for cls in (EconMLTotalEffect, EconMLDifferenceMediation):
        with pytest.raises(NotImplementedError, match="population='att'.*DMLMediation"):
            cls(population="att").fit(data)
    with pytest.raises(ValueError, match="population"):
        EconMLTotalEffect(population="atc").fit(data)


def test_registered_and_reconstructible():
    est = get_estimator("econml_te", min_propensity=0.02)
    assert isinstance(est, EconMLTotalEffect) and est.min_propensity == 0.02
    assert isinstance(get_estimator("econml_diff"), EconMLDifferenceMediation)


def test_import_is_lazy():
    code = ("import sys, deconfound, deconfound.estimators.econml, deconfound.estimators.dml; "
            "print('econml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_difference_method_shares_the_te_folds():
    """TE and CDE are fitted on the same folds, so nuisance noise cancels in TE - CDE: a mediator that carries
    nothing (a constant) gives CDE = TE and an NIE of 0 with SE 0. On separate folds the NIE was the folds'
    noise, which the scores miss (a zero NIE's SE/SD was 0.74 on the linear process at n = 2,000)."""
    import numpy as np

    from deconfound.data import MediationData
    data, _ = topic_mediation(600, n_topics=3, seed=4)
    flat = MediationData.from_arrays(t=data.t, y=data.y, x=data.x, mediators={"flat": np.ones((data.n, 1))})
    res = EconMLDifferenceMediation(n_folds=3).fit(flat)
    nie, te = res.effect("flat", "nie", "average"), res.effect("flat", "te", "average")
    assert abs(nie.estimate) < 1e-9 * abs(te.estimate) and nie.se < 1e-9 * te.se
    assert res.effect("flat", "nde", "average").estimate == pytest.approx(te.estimate, rel=1e-9)


def test_failed_sensitivity_analysis_keeps_the_effects_and_says_so():
    """EconML's sensitivity step can raise (negative OVB pieces when a mediator nearly separates the arms and
    the propensities are barely clipped); the effects are kept, the robustness values are NaN and a warning
    names the unit."""
    import numpy as np

    from deconfound.data import MediationData
    rng = np.random.default_rng(1)
    n = 2000
    x = rng.normal(size=n)
    g = (x > 0).astype(float)
    t = (rng.random(n) < 0.5).astype(int)
    m = t * (0.5 + 2.5 * g) + rng.normal(size=n)
    y = t * (1 + 2 * g) + m + rng.normal(size=n)
    data = MediationData.from_arrays(t=t, y=y, mediators={"M": np.column_stack([m, m * g])},
                                     x=np.column_stack([x, g]))
    res = EconMLDifferenceMediation(min_propensity=0.001).fit(data)
    cde = res.diagnostics["M"]["cde"]
    assert "sensitivity_error" in cde["econml"] and np.isnan(cde["robustness_value"])
    assert any("sensitivity analysis failed" in w and "'M'" in w for w in res.warnings)
    assert np.isfinite(res.effect("M", "nie", "average").estimate)


def test_trimming_reports_an_overlap_population_and_econml_diff_refuses_it(linear):
    """EconML's trimming drops rows on p(X): econml_te then estimates the TE of the kept rows and says so;
    econml_diff would trim the CDE on p(M,X), a post-treatment selection, so it refuses."""
    data, truth, _ = linear
    res = EconMLTotalEffect(trimming_threshold=0.25, **CHEAP).fit(data)  # p(X) 0.20-0.79: topics t1, t3 go
    diag = res.diagnostics["u0"]
    lo, hi = diag["propensity_range"]
    assert 0 < diag["n_trimmed"] < data.n and (lo < 0.25 or hi > 0.75)
    assert res.population == "overlap" and f"{diag['n_trimmed']} of {data.n} rows" in res.settings["population_note"]
    assert any("trimmed" in w and "overlap population" in w for w in res.warnings)
    te = res.effect("u0", "te", "average")  # constant effect on this process: any population's TE is the truth
    assert abs(te.estimate - truth.value("u0", "te")) < 3 * te.se
    assert set(res.to_frame().population) == {"overlap"}
    untrimmed = EconMLTotalEffect(**CHEAP).fit(data)
    assert untrimmed.population == "ate" and "population_note" not in untrimmed.settings
    with pytest.raises(ValueError, match=r"trimming_threshold: expected None for econml_diff, got 0.1"):
        EconMLDifferenceMediation(trimming_threshold=0.1).fit(data)
