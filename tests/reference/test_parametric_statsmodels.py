"""ParametricMediation against statsmodels `Mediation` (statsmodels 0.14/0.15, matrix API).

Data: the framing study shipped in the statsmodels wheel (statsmodels/stats/tests/results/framing.csv, from R
`mediation`): mediator model ``emo ~ treat + age + educ + gender + income`` (OLS), outcome model
``cong_mesg ~ emo + treat + age + educ + gender + income`` (probit GLM). Designs for statsmodels are built here
with pandas dummies (first level dropped), independently of MediationData.x_design.

Apples to apples: statsmodels simulates one mediator per row and draw, so ours runs with
``mediator_noise="simulate"``, and both report the mean of S = 1000 draws. Tolerances in Monte Carlo terms,
each a 4-SE band (about 1 in 16,000 chance of a false alarm per check for independent streams):
- draw means: |mean_ours - mean_sm| <= 4 sqrt(sd_ours^2 / S + sd_sm^2 / S);
- draw SDs: |log(sd_ours / sd_sm)| <= 4 / sqrt(S - 1)  (SE of a log-SD is about 1 / sqrt(2 (S - 1)) each);
- 2.5% / 97.5% percentiles: within 4 * 0.12 sd (SE of a normal 2.5% quantile from S = 1000 draws is about
  0.085 sd each).
Our default (mediator noise integrated exactly) has the same expectation per draw, so its draw means meet the
same band.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels
import statsmodels.api as sm
from statsmodels.stats.mediation import Mediation

from deconfound import MediationData, simulate
from deconfound.estimators.parametric import ParametricMediation

S = 1000
FRAMING = Path(statsmodels.__file__).parent / "stats" / "tests" / "results" / "framing.csv"
CONFOUNDERS = ["age", "educ", "gender", "income"]


@pytest.fixture(scope="module")
def framing() -> pd.DataFrame:
    return pd.read_csv(FRAMING)


def _sm_mediation(y, m, t, x: pd.DataFrame, family, seed, method="parametric"):
    """statsmodels Mediation via the matrix API; returns {key: draws} in our effect keys."""
    mexog = pd.concat([pd.Series(1.0, index=x.index, name="const"), t.rename("treat"), x], axis=1)
    oexog = pd.concat([pd.Series(1.0, index=x.index, name="const"), m.rename("med"), t.rename("treat"), x], axis=1)
    if family == "gaussian":
        out = sm.OLS(np.asarray(y, float), oexog.to_numpy(float))
    else:
        out = sm.GLM(np.asarray(y, float), oexog.to_numpy(float),
                     family=sm.families.Binomial(link=sm.families.links.Probit()))
    med = sm.OLS(np.asarray(m, float), mexog.to_numpy(float))
    res = Mediation(out, med, (2, 1), 1).fit(method=method, n_rep=S, rng=seed)
    return {("nie", "control"): res.ACME_ctrl, ("nie", "treated"): res.ACME_tx, ("nde", "control"): res.ADE_ctrl,
            ("nde", "treated"): res.ADE_tx, ("te", "average"): res.total_effect,
            ("nie", "average"): res.ACME_avg, ("nde", "average"): res.ADE_avg}


def _framing_data(df):
    return MediationData.from_frame(df, treatment="treat", outcome="cong_mesg", confounders=CONFOUNDERS,
                                    mediators="emo")


def _dummies(df):
    return pd.get_dummies(df[CONFOUNDERS], drop_first=True, dtype=float)


def _assert_same_distribution(ours: dict, theirs: dict, s: int = S):
    for key, sm_draws in theirs.items():
        mine = ours[key].draws
        so, ss = mine.std(ddof=1), np.std(sm_draws, ddof=1)
        assert abs(mine.mean() - np.mean(sm_draws)) <= 4 * np.sqrt((so**2 + ss**2) / s), key
        assert abs(np.log(so / ss)) <= 4 / np.sqrt(s - 1), key
        for q in (0.025, 0.975):  # 0.12 sd: the SE of a difference of two 2.5% quantiles of 1000 normal draws
            assert abs(np.quantile(mine, q) - np.quantile(sm_draws, q)) <= 4 * 0.12 * np.sqrt(1000 / s) * ss, \
                (key, q)


def test_framing_probit_matches_statsmodels(framing):
    ours = ParametricMediation(outcome_family="probit", interaction=False, n_sims=S, mediator_noise="simulate",
                              random_state=4231)
    res = ours.fit(_framing_data(framing))
    theirs = _sm_mediation(framing.cong_mesg, framing.emo, framing.treat, _dummies(framing), "probit", seed=4231)
    _assert_same_distribution(res.effects["emo"], theirs)


def test_framing_integrated_noise_has_the_same_draw_means(framing):
    res = ParametricMediation(outcome_family="probit", interaction=False, n_sims=S,
                              random_state=7).fit(_framing_data(framing))
    theirs = _sm_mediation(framing.cong_mesg, framing.emo, framing.treat, _dummies(framing), "probit", seed=7)
    for key, sm_draws in theirs.items():
        mine = res.effects["emo"][key].draws
        band = 4 * np.sqrt((mine.var() + np.var(sm_draws)) / S)
        assert abs(mine.mean() - np.mean(sm_draws)) <= band, key
        # exact integration removes the mediator-simulation noise: never a wider spread than statsmodels'
        assert mine.std() <= np.std(sm_draws) * (1 + 4 / np.sqrt(S - 1)), key


def test_framing_fitted_models_match_statsmodels_formulas(framing):
    import statsmodels.formula.api as smf

    res = ParametricMediation(outcome_family="probit", interaction=False, n_sims=10).fit(_framing_data(framing))
    info = res.diagnostics["emo"]["parametric"]
    med = smf.ols("emo ~ treat + age + educ + gender + income", framing).fit()
    out = smf.glm("cong_mesg ~ emo + treat + age + educ + gender + income", framing,
                  family=sm.families.Binomial(link=sm.families.links.Probit())).fit()
    names = info["outcome_names"]
    assert info["mediator_coef"][1, 0] == pytest.approx(med.params["treat"], rel=1e-10)
    assert info["mediator_sigma"][0, 0] == pytest.approx(med.scale, rel=1e-10)
    assert info["outcome_coef"][names.index("emo")] == pytest.approx(out.params["emo"], rel=1e-6)
    assert info["outcome_coef"][names.index("treat")] == pytest.approx(out.params["treat"], rel=1e-6)
    cov = info["outcome_cov"]
    i = names.index("emo")
    assert cov[i, i] == pytest.approx(out.cov_params().loc["emo", "emo"], rel=1e-6)


def test_linear_outcome_matches_statsmodels():
    data, _ = simulate.topic_mediation(1500, seed=12)
    res = ParametricMediation(interaction=False, n_sims=S, mediator_noise="simulate", random_state=3).fit(data)
    frame = data.to_frame("u0")
    x = pd.get_dummies(frame[["topic"]], drop_first=True, dtype=float)
    theirs = _sm_mediation(frame["Y"], frame["u0__0"], frame["T"].astype(float), x, "gaussian", seed=3)
    _assert_same_distribution(res.effects["u0"], theirs)


def test_default_interaction_model_matches_statsmodels_formulas():
    """The default outcome model has the T x M column. statsmodels re-evaluates a formula's T:M term when it
    sets T and M, so ``Y ~ T * M + C(topic)`` is the oracle for the arm-specific ACMEs and ADEs."""
    data, _ = simulate.topic_mediation(1500, n_topics=4, n_units=1, n_spurious=0, interaction=0.5,
                                       mediator_strength=3.0, seed=12)
    draws = 200  # statsmodels re-evaluates the formulas for every draw
    res = ParametricMediation(n_sims=draws, mediator_noise="simulate", random_state=3).fit(data)
    assert res.settings["interaction"] is True
    frame = data.to_frame("u0").rename(columns={"u0__0": "M"})
    frame["T"] = frame["T"].astype(float)
    out = sm.OLS.from_formula("Y ~ T * M + C(topic)", frame)
    med = sm.OLS.from_formula("M ~ T + C(topic)", frame)
    fit = Mediation(out, med, "T", "M").fit(method="parametric", n_rep=draws, rng=3)
    theirs = {("nie", "control"): fit.ACME_ctrl, ("nie", "treated"): fit.ACME_tx, ("nde", "control"): fit.ADE_ctrl,
              ("nde", "treated"): fit.ADE_tx, ("te", "average"): fit.total_effect}
    assert abs(np.mean(fit.ACME_tx) - np.mean(fit.ACME_ctrl)) > 4 * np.std(fit.ACME_tx)  # the arms differ
    _assert_same_distribution(res.effects["u0"], theirs, draws)
