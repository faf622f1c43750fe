"""InterventionalMediation: exact truths of simulate.intermediate_confounding (a linear SEM with a binary,
treatment-induced M-Y confounder), and where it differs from the natural-effect estimator."""
import numpy as np
import pytest

from deconfound import get_estimator, simulate
from deconfound.estimators.interventional import InterventionalMediation, z_levels

KEYS = {("nie", "treated"): "nie_treated", ("nie", "control"): "nie_control", ("nde", "control"): "nde_control",
        ("te", "average"): "te"}


@pytest.mark.parametrize("population", ["att", "ate"])
def test_recovers_the_interventional_truth(population):
    data, truth = simulate.intermediate_confounding(8000, seed=11)
    res = InterventionalMediation(population=population, random_state=0).fit(data, units="m")
    assert res.population == population and res.diagnostics["m"]["intermediate"] == ["z"]
    for key, name in KEYS.items():
        e = res.effect("m", *key)
        want = truth[name + ("" if population == "att" else "_ate")]
        assert abs(e.estimate - want) <= 3 * e.se, (key, e.estimate, want, e.se)
    # NIE + NDE = TE through the same potential outcomes (score arithmetic)
    total = res.effect("m", "nie", "treated") + res.effect("m", "nde", "control")
    assert total.estimate == pytest.approx(res.effect("m", "te", "average").estimate, abs=1e-12)


def test_natural_effect_estimator_misses_it_when_z_and_m_interact():
    """With a Z x M interaction the natural NIE adjusted for X alone (DML) is not the patching analogue: at
    n = 20,000 DML sat 2.9, 2.4 and 1.8 SE above it on seeds 0-2 (the interventional estimator within 1.7)."""
    data, truth = simulate.intermediate_confounding(20000, seed=0)
    inter = InterventionalMediation(population="ate", random_state=0).fit(data, units="m")
    natural = get_estimator("dml").fit(data, units="m")
    e = inter.effect("m", "nie", "treated")
    assert abs(e.estimate - truth["nie_treated_ate"]) <= 3 * e.se
    d = natural.effect("m", "nie", "treated")
    assert d.estimate - truth["nie_treated_ate"] > 2.5 * d.se


def test_first_unit_has_no_intermediate_and_levels_are_compact():
    data, _ = simulate.intermediate_confounding(600, seed=1)
    res = InterventionalMediation(random_state=0).fit(data, units=["z"])
    assert res.diagnostics["z"]["intermediate"] == [] and res.diagnostics["z"]["z_levels"] == 1
    lev = z_levels([np.repeat([0.0, 1.0], 50)[:, None]], 3, 0)
    assert sorted(np.unique(lev)) == [0, 1]  # a binary summary gives two levels, none empty
    assert np.bincount(z_levels([np.arange(90.0)[:, None]], 3, 0)).tolist() == [30, 30, 30]


def test_bad_settings():
    data, _ = simulate.intermediate_confounding(300, seed=1)
    with pytest.raises(ValueError, match="population: expected one of"):
        InterventionalMediation(population="atc").fit(data)
    with pytest.raises(ValueError, match=r"intermediate\['m'\]: expected other units"):
        InterventionalMediation(intermediate={"m": ["nope"]}).fit(data, units="m")
    with pytest.raises(ValueError, match="z_bins"):
        InterventionalMediation(z_bins=0).fit(data)


@pytest.mark.slow
def test_coverage_of_the_defaults():
    """150 data sets at n = 1500: 95% CIs of the patching analogue, the NDE and the TE cover in [0.90, 0.98]."""
    hits = {k: 0 for k in KEYS}
    reps = 150
    for r in range(reps):
        data, truth = simulate.intermediate_confounding(1500, seed=1000 + r)
        res = InterventionalMediation(random_state=r).fit(data, units="m")
        for key, name in KEYS.items():
            lo, hi = res.effect("m", *key).ci
            hits[key] += lo <= truth[name] <= hi
    cover = {k: v / reps for k, v in hits.items()}
    assert all(0.90 <= c <= 0.98 for c in cover.values()), cover


def test_progress_bar_over_units_only_when_asked_or_on_a_terminal(capsys):
    data, _ = simulate.intermediate_confounding(300, seed=0)
    InterventionalMediation(n_folds=2).fit(data)                       # default: stderr is not a terminal
    assert "interventional: units" not in capsys.readouterr().err
    InterventionalMediation(n_folds=2).fit(data, progress=True)
    assert "interventional: units" in capsys.readouterr().err


def _near_separation(n, seed, dim=20, shift=1.5):
    """Both units shift by ``shift`` / sqrt(dim) per coordinate under T; Y = 0.3 T + 0.3 m_0 + topic + noise, so
    the interventional NIE on the treated is 0.3 * shift / sqrt(dim) and a 20-dimensional M nearly separates T."""
    import pandas as pd

    from deconfound.data import MediationData

    rng = np.random.default_rng(seed)
    k = rng.integers(3, size=n)
    t = (rng.random(n) < 0.5).astype(np.int8)
    z = rng.normal(size=(n, dim)) + shift * t[:, None] / np.sqrt(dim)
    m = rng.normal(size=(n, dim)) + shift * t[:, None] / np.sqrt(dim)
    y = 0.3 * t + 0.3 * m[:, 0] + 0.2 * k + rng.normal(size=n)
    x = pd.DataFrame({"topic": pd.Categorical([f"t{j}" for j in k])})
    return MediationData.from_arrays(t=t, y=y, mediators={"z": z, "m": m}, x=x), 0.3 * shift / np.sqrt(dim)


def test_extreme_weights_warn_and_the_estimate_is_far_off():
    from deconfound._calibration import MIN_WEIGHT_ESS
    from deconfound.errors import CalibrationWarning

    data, truth = _near_separation(100, seed=100)
    with pytest.warns(CalibrationWarning, match=r"interventional \(units \['m'\]; at m the treated arm's weights "
                      r"have a Kish ESS of \d\.\d rows, for its NIE \(treated\)"):
        res = InterventionalMediation(random_state=0).fit(data, units="m")
    assert any("Kish ESS" in w for w in res.warnings)  # kept with the result, for the report
    d = res.diagnostics["m"]
    assert d["weight_ess_treated"] < 2 and d["weight_ess"] == min(d["weight_ess_treated"], d["weight_ess_control"])
    assert d["weight_ess"] < MIN_WEIGHT_ESS
    e = res.effect("m", "nie", "treated")
    assert abs(e.estimate - truth) > 100 * np.std(data.y)  # an outcome of SD 1.1, an NIE off by over 100 SD


def test_well_overlapped_default_data_do_not_warn():
    import warnings

    from deconfound.errors import CalibrationWarning

    data, truth = simulate.intermediate_confounding(1500, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        res = InterventionalMediation(random_state=0).fit(data, units="m")
    d = res.diagnostics["m"]
    assert not res.warnings and d["weight_ess"] > 50 and 0 < d["weight_ess_share"] <= 1
    e = res.effect("m", "nie", "treated")
    assert abs(e.estimate - truth["nie_treated"]) <= 3 * e.se


def test_auto_components_leave_the_smaller_arm_five_rows_per_feature():
    from deconfound import simulate
    from deconfound.estimators.interventional import auto_components

    assert auto_components(50, 900, 4) == 50  # roomy: every column
    assert auto_components(576, 140, 6) == 22  # 140 // 5 - 6
    assert auto_components(576, 40, 6) == 5  # never below five
    assert auto_components(3, 40, 6) == 3  # never above the width
    data, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    small = min(int(data.t.sum()), data.n - int(data.t.sum()))
    res = get_estimator("interventional").fit(data)
    assert res.diagnostics["u0"]["n_components"] == small // 5 - 3  # 3 topic columns, one Z level
    assert get_estimator("interventional", n_components=4).fit(data).diagnostics["u0"]["n_components"] == 4
    for bad in (0, 2.5, "many", True):
        with pytest.raises(ValueError, match="n_components: expected 'auto' or an integer"):
            get_estimator("interventional", n_components=bad).fit(data)


def test_a_block_reduced_below_its_width_warns_that_the_nie_may_shrink():
    from deconfound.errors import CalibrationWarning

    data, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=2, n_spurious=1, dim=80)
    kept = min(int(data.t.sum()), data.n - int(data.t.sum())) // 5 - 3  # u0: 3 topic columns, no earlier unit
    with pytest.warns(CalibrationWarning, match=r"interventional \(units \['u0', 'u1'\]: u0 has 80 columns, "
                      rf"reduced to {kept} principal components\).*counted in the NDE"):
        res = get_estimator("interventional").fit(data)
    assert sum("counted in the NDE" in w for w in res.warnings) == 1  # one warning for all units
    assert res.diagnostics["u0"]["n_components"] == kept < 80
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        narrow, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=20)
        get_estimator("interventional").fit(narrow)  # 20 columns kept whole: no warning


def test_reset_matches_statsmodels_hc3_wald_tests_of_both_arms():
    import statsmodels.api as sm
    from scipy import stats

    from deconfound.estimators._glm import arm_reset

    rng = np.random.default_rng(3)
    n = 600
    t = rng.integers(0, 2, n)
    m = rng.normal(size=n) + t
    design = np.column_stack([np.ones(n), m, rng.normal(size=n)])
    y = np.tanh(m) + design[:, 2] + rng.normal(size=n) * (1 + t)
    p, share = arm_reset(t, y, design)  # interventional's in-sample RESET of b_a
    stat, rss0, rss1 = 0.0, 0.0, 0.0
    for a in (0, 1):
        d, r = design[t == a], y[t == a]
        fit = sm.OLS(r, d).fit()
        z = (fit.fittedvalues - fit.fittedvalues.mean()) / fit.fittedvalues.std()
        full = sm.OLS(r, np.column_stack([d, z**2, z**3])).fit(cov_type="HC3")
        stat += float(full.wald_test(np.eye(5)[3:], use_f=False, scalar=True).statistic)
        rss0, rss1 = rss0 + fit.ssr, rss1 + full.ssr
    assert p == pytest.approx(stats.chi2.sf(stat, 4), rel=1e-8)
    assert share == pytest.approx((rss0 - rss1) / rss0, rel=1e-8)


def test_an_outcome_curved_in_the_mediator_warns_that_the_ses_are_too_small():
    """On the grid's probit process NIE(treated) covered 0.915 at n = 300 and 2,000 (SE/SD 0.86-0.89); the RESET
    of b_a fired (p < 0.001, share >= 5%) for the causal unit in 20 of 20 data sets at both n, and in none of 20
    on the linear and interaction processes."""
    import warnings

    from deconfound import coverage as cv
    from deconfound.errors import CalibrationWarning, NullPathsWarning

    curved, _ = simulate.topic_mediation(300, seed=0, **cv.DGPS["probit"][0])
    with pytest.warns(CalibrationWarning, match=r"interventional \(units \['u0'\]: RESET p = .*the SEs are too small"):
        res = InterventionalMediation(random_state=0).fit(curved)
    d = res.diagnostics["u0"]
    assert d["curvature_p"] < 1e-3 and d["curvature_share"] >= 0.05
    linear, _ = simulate.topic_mediation(300, seed=0, **cv.DGPS["linear"][0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = InterventionalMediation(random_state=0).fit(linear)
    assert not [w for w in caught if issubclass(w.category, CalibrationWarning)
                and not issubclass(w.category, NullPathsWarning)]  # u1 is a topic tracker: both paths 0
    assert res.diagnostics["u0"]["curvature_p"] > 0.01


def test_a_binary_outcome_below_n_2000_warns_that_the_nie_cis_are_too_narrow():
    """On the grid's binary process NIE CIs covered 0.92-0.9225 at n = 300 (400 data sets) and 0.94-0.96 at
    n = 2,000."""
    import warnings

    from deconfound import coverage as cv
    from deconfound.errors import CalibrationWarning

    small, _ = simulate.topic_mediation(300, seed=1, **cv.DGPS["binary"][0])
    with pytest.warns(CalibrationWarning, match=r"interventional: data like the calibration cell 'a 0/1 outcome "
                                                r"and n < 2000', where the NIE CIs are too narrow"):
        res = InterventionalMediation(random_state=0).fit(small, units="u0")
    assert any("0/1 outcome" in w for w in res.warnings)
    large, _ = simulate.topic_mediation(2000, seed=1, **cv.DGPS["binary"][0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = InterventionalMediation(random_state=0).fit(large, units="u0")
    assert not [w for w in caught if "0/1 outcome" in str(w.message)]
    assert None not in res.warnings
