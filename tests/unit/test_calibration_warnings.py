"""Fits on data like a failing cell of the calibration study warn, naming the cell; others stay quiet."""
import warnings

import numpy as np
import pytest

from deconfound import get_estimator, simulate
from deconfound._calibration import RULES, warn_uncalibrated
from deconfound.errors import CalibrationWarning


def test_weighting_warns_below_the_calibrated_size_with_or_without_the_bootstrap():
    """Below n = 2,000 NIE(treated) under-covered with the influence-function CIs (0.855 at n = 300, 0.915 at
    800) and with n_boot=999 (0.905 and 0.90; benchmarks/study_weighting_bootstrap.py), so both fits warn."""
    small, _ = simulate.topic_mediation(800, n_topics=4, seed=0)
    for n_boot in (0, 20):
        with pytest.warns(CalibrationWarning, match=r"weighting: data like the calibration cell 'n < 2000.*"
                                                    r"too narrow, with or without the bootstrap"):
            get_estimator("weighting", n_boot=n_boot).fit(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        big, _ = simulate.topic_mediation(2500, n_topics=4, seed=0)
        get_estimator("weighting").fit(big)


def test_weighting_warns_on_near_separated_propensities_and_names_the_unit():
    # the interaction cell (strong T -> M path, T x M interaction), where the default CIs covered 0.71-0.82 at
    # n = 2,000: 8-12% of rows have p(M,X) outside [0.01, 0.99]; the linear cell of the same size has none
    data, _ = simulate.topic_mediation(2000, n_topics=4, n_units=1, n_spurious=0, interaction=0.5,
                                       mediator_strength=3.0, seed=3)
    with pytest.warns(CalibrationWarning, match=r"weighting \(units \['u0'\]\): data like the calibration cell "
                                                r"'p\(M,X\) near 0 or 1") as rec:
        res = get_estimator("weighting").fit(data)
    assert res.diagnostics["u0"]["share_extreme"] > 0.02
    assert sum(issubclass(w.category, CalibrationWarning) for w in rec) == 1  # one warning per fit, not per unit


def test_every_rule_names_a_registered_estimator_and_returns_its_message():
    from deconfound import available_estimators

    for rule in RULES:
        assert rule.estimator.split("-")[0] in available_estimators()
    with pytest.warns(CalibrationWarning):
        msg = warn_uncalibrated("weighting", n=100, n_treated=50)
    assert "docs/coverage.md" in msg and warn_uncalibrated("parametric", n=100, n_treated=50) is None


def test_parametric_warns_when_the_data_show_an_interaction_it_leaves_out():
    data, _ = simulate.topic_mediation(2000, n_topics=4, n_units=1, n_spurious=0, interaction=0.5,
                                       mediator_strength=3.0, seed=0)
    with pytest.warns(CalibrationWarning, match=r"T x M interaction that the model with interaction=False leaves out"):
        res = get_estimator("parametric", n_sims=100, interaction=False).fit(data)
    assert any("interaction=True" in w for w in res.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        get_estimator("parametric", n_sims=100, interaction=True).fit(data)
        plain, _ = simulate.topic_mediation(2000, n_topics=4, n_units=1, n_spurious=0, seed=0)
        get_estimator("parametric", n_sims=100, interaction=False).fit(plain)  # no interaction in the data: quiet


def test_parametric_gaussian_model_of_a_binary_outcome_warns():
    data, _ = simulate.topic_mediation(500, n_topics=4, outcome="binary", seed=0)
    with pytest.warns(CalibrationWarning, match="binary outcome, gaussian outcome model"):
        get_estimator("parametric", n_sims=100).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        get_estimator("parametric", n_sims=100, outcome_family="probit").fit(data)


def test_parametric_warns_when_the_outcome_is_not_linear_in_its_terms():
    """The probit cell (Y = Phi(index) + small noise): the linear outcome model is biased there. RESET on the
    default model (with its T x M column; squared and cubed fitted values, HC3 Wald test, the warning at 0.001)
    rejects in every one of 20 such data sets at n = 2,000; on the linear process its p-values are uniform."""
    from deconfound.estimators import parametric as par

    def reset_p(outcome, seed):
        data, _ = simulate.topic_mediation(2000, n_topics=4, n_units=1, n_spurious=0, outcome=outcome, seed=seed)
        x1, names = par._confounder_design(data, ["topic"])
        model = par._Model(data, "u0", x1, names, x1, names, "gaussian", True)
        model.fit()
        fitted = model.w @ model.gamma.reshape(-1)
        z = (fitted - fitted.mean()) / fitted.std()
        return par._omitted_wald(model, np.column_stack([z**2, z**3]))[1], data

    for seed in range(20):
        p, data = reset_p("probit", seed)
        assert p < 0.001, (seed, p)
    with pytest.warns(CalibrationWarning, match=r"outcome is not linear in the default model's terms \(RESET"):
        res = get_estimator("parametric", n_sims=100).fit(data)
    assert any("use dml" in w for w in res.warnings)
    linear = np.array([reset_p("linear", seed)[0] for seed in range(100)])
    assert np.mean(linear < 0.01) <= 0.04 and np.mean(linear < 0.001) <= 0.02  # binomial tails 0.02 and 0.005
    assert 0.3 < np.mean(linear < 0.5) < 0.7  # p-values uniform under the null, not stuck at 1


def test_dml_does_not_warn_at_small_n_any_more():
    """The linear cell at n = 300 covered 0.89-0.92 with the old CV-penalized propensity learner, and such fits
    warned; with the EPV rule it covers 0.935-0.975 (200 data sets, docs/coverage.md) and 0.95-0.97 at n = 150
    (150 data sets), so a small n alone is no reason to warn."""
    small, _ = simulate.topic_mediation(300, n_topics=4, n_units=1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        get_estimator("dml", n_rep=1, n_folds=2).fit(small)
    assert not [r for r in RULES if r.estimator == "dml"]


def test_dml_warns_when_its_default_learners_meet_a_wide_mediator():
    """The dim50 cell at n = 300: the NIE was 1.2-1.5 SE too small; at n = 600 the arms have 5 rows per feature."""
    from sklearn.linear_model import LogisticRegression, Ridge

    cheap = dict(n_rep=1, n_folds=2)
    wide, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    with pytest.warns(CalibrationWarning, match=r"dml \(units \['u0'\]: 53 features of \[M, X\] for 1\d\d rows in "
                                                r"the smaller arm\).*shrink the mediator's coefficients"):
        get_estimator("dml", **cheap).fit(wide)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_estimator("dml", pca=5, **cheap).fit(wide)  # 8 features
        get_estimator("dml", outcome_learner=Ridge(), propensity_learner=LogisticRegression(), **cheap).fit(wide)
        roomy, _ = simulate.topic_mediation(600, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
        get_estimator("dml", **cheap).fit(roomy)
    assert not any("shrink the mediator" in str(w.message) for w in caught)


def test_econml_diff_always_warns_that_its_nie_needs_a_linear_outcome():
    """TE - CDE missed the NIE by 0.75 SE on the probit process (coverage 0.81): every fit says so."""
    pytest.importorskip("econml")
    data, _ = simulate.topic_mediation(400, seed=0, n_topics=4, n_units=1)
    with pytest.warns(CalibrationWarning, match=r"econml_diff: data like the calibration cell 'any data.*biased unless "
                      r"the outcome is linear in T and M"):
        get_estimator("econml_diff", n_folds=2).fit(data)


def test_dml_warns_that_a_roomy_wide_mediator_gets_conservative_nie_cis():
    """The dim50 cell at n = 2,000 (19 rows of the smaller arm per feature): the NIE covered 0.985-0.99 with
    SE/SD 1.10-1.15. A fit on such data says its NIE CIs are too wide; a reduced block, a narrow one, or one with
    30 or more rows per feature (0.935-0.95 at 47 and 93, SE/SD 0.95-1.07) does not."""
    from deconfound.estimators.dml import CONSERVATIVE_EPV
    cheap = dict(n_rep=1, n_folds=2)
    roomy, _ = simulate.topic_mediation(2000, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    with pytest.warns(CalibrationWarning, match=r"dml \(units \['u0'\]: 50 mediator features\).*NIE CIs are too "
                                                r"wide.*SE/SD 1.10-1.15"):
        get_estimator("dml", **cheap).fit(roomy)
    narrow, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=20)
    crowded, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    ample, _ = simulate.topic_mediation(4000, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    small = min(ample.n_treated, ample.n - ample.n_treated)
    assert small >= CONSERVATIVE_EPV * 53 > min(roomy.n_treated, roomy.n - roomy.n_treated)  # 50 columns + 3 topics
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_estimator("dml", pca=10, **cheap).fit(roomy)
        get_estimator("dml", **cheap).fit(narrow)
        get_estimator("dml", **cheap).fit(ample)
        get_estimator("dml", **cheap).fit(crowded)  # too wide for its rows: the other warning, not this one
    assert not any("NIE CIs are too wide" in str(w.message) for w in caught)
    assert any("shrink the mediator" in str(w.message) for w in caught)


def test_dml_warns_that_a_wide_block_with_few_rows_per_feature_biases_the_nie():
    """576 columns at n = 10,000 (8.5 rows of the smaller arm per feature, unpenalized propensity models): the
    NIE was 1.1-1.6 SE off. Between 5 and 10 rows per feature a block of 50 or more columns gets that warning,
    not the conservative one."""
    data, _ = simulate.topic_mediation(800, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    small = min(data.n_treated, data.n - data.n_treated)
    assert 5 * 53 <= small < 10 * 53
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_estimator("dml", n_rep=1, n_folds=2).fit(data)
    texts = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert any(f"dml (units ['u0']: 53 features of [M, X] for {small} rows in the smaller arm)" in t
               and "the NIE is biased" in t for t in texts), texts
    assert not any("too wide" in t or "shrink the mediator" in t for t in texts)


def test_dml_calls_a_block_thin_from_3_5_sqrt_rows_features_even_with_10_rows_per_feature():
    """With 576 columns the NIE stayed 0.8-1.0 SE too large at 12.9 and 17.2 rows per feature (features /
    sqrt(rows of the smaller arm) 6.7 and 5.8), 0.59 SE at 4.5 (300 columns) and 0.38 SE at 3.8 (250 columns,
    NDE(control) covering 0.90), while 200 columns at ratio 3.0 covered 0.95-1.00
    (benchmarks/study_dml_rows_per_feature.py). A block of 210 features with 2,163 rows in the
    smaller arm (10.3 rows per feature, ratio 4.52) is thin; the same block at ratio 3 is not."""
    cheap = dict(n_rep=1, n_folds=2)
    data, _ = simulate.topic_mediation(4350, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=207)
    small = min(data.n_treated, data.n - data.n_treated)
    assert 10 * 210 <= small <= (210 / 3.5) ** 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_estimator("dml", **cheap).fit(data)
    texts = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert len(texts) == 1 and "the NIE is biased up and the NDE down" in texts[0], texts
    assert "8.2, 6.7 and 5.8" in texts[0]
    roomier, _ = simulate.topic_mediation(9800, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=207)
    assert 210 / np.sqrt(min(roomier.n_treated, roomier.n - roomier.n_treated)) < 3.05
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_estimator("dml", **cheap).fit(roomier)
    texts = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert len(texts) == 1 and "NIE CIs are too wide" in texts[0], texts


def test_parametric_warns_that_a_wide_block_gets_conservative_cis():
    """From 20 columns with fewer than 100 rows per column the quasi-Bayesian CIs over-covered (0.975-1.00;
    benchmarks/study_parametric_width.py); 5 columns, or 20 at n = 2,000, covered 0.94-0.965."""
    wide, _ = simulate.topic_mediation(300, n_topics=4, n_units=1, n_spurious=0, dim=20, seed=0)
    with pytest.warns(CalibrationWarning, match=r"parametric \(units \['u0'\]: 20 columns for 300 rows\).*"
                                                r"the NIE CIs are too wide"):
        res = get_estimator("parametric", n_sims=50).fit(wide)
    assert any("too wide" in w for w in res.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        for n, dim in ((300, 5), (2000, 20)):
            data, _ = simulate.topic_mediation(n, n_topics=4, n_units=1, n_spurious=0, dim=dim, seed=0)
            get_estimator("parametric", n_sims=50).fit(data)
