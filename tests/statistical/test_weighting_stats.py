"""Weighting mediation and the EB total effect, with their DEFAULTS, against known truths.

Truths: ``simulate.topic_mediation`` (closed-form topic-weighted means, ``param_seed`` fixed, so every replication
shares one truth, for the ATE and the ATT), and a linear SEM with a strong T -> M path and a T x M interaction
written out below with its closed-form truth. Tolerances: estimates within 3 SE of the truth; 95% CI coverage
in [0.90, 0.98] at n = 800 and [0.92, 0.98] at n = 2500, over 200 replications (the Monte Carlo SD of a
coverage of 0.95 is 0.015, so 0.86, the old default's NIE(control) coverage at n = 800, fails).
"""
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels
from scipy.special import expit

from deconfound.data import MediationData
from deconfound.estimators import get_estimator
from deconfound.estimators.weighting import EntropyBalancedTotalEffect, WeightingMediation
from deconfound.simulate import topic_mediation

pytestmark = pytest.mark.slow

MEDIATION = [("nie", "treated"), ("nie", "control"), ("nde", "control"), ("nde", "treated"), ("te", "average")]


def fit(est, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(data, **kw)


# ---- a strong T -> M path with a T x M interaction --------------------------------------------------------
A = np.array([-1.0, -0.3, 0.3, 1.0])   # topic effects on the log-odds of T, and on Y
BETA, KAPPA, B, THETA = 1.25, 0.5, 0.8, 0.5


def strong_mediation(n, seed):
    """topic k (uniform on 4), T ~ Bernoulli(expit(A_k)), M = A_k / 2 + BETA T + e,
    Y = 0.2 + THETA T + A_k + (1 + KAPPA T) B M + e', e and e' standard normal."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 4, n)
    t = (rng.random(n) < expit(A[k])).astype(int)
    m = 0.5 * A[k] + BETA * t + rng.normal(size=n)
    y = 0.2 + THETA * t + A[k] + (1 + KAPPA * t) * B * m + rng.normal(size=n)
    x = pd.DataFrame({"topic": pd.Categorical([f"t{j}" for j in k], categories=[f"t{j}" for j in range(4)])})
    return MediationData.from_arrays(t=t, y=y, mediators={"m": m[:, None]}, x=x)


def strong_truth(population):
    """E[Y(t, M(t'))] = 0.2 + THETA t + E[A_k] + (1 + KAPPA t) B (E[A_k] / 2 + BETA t'), with k averaged over
    all rows (ATE) or over the treated rows (ATT: topic weights proportional to expit(A_k))."""
    w = np.full(4, 0.25) if population == "ate" else expit(A) / expit(A).sum()

    def mu(t, tp):
        return 0.2 + THETA * t + w @ A + (1 + KAPPA * t) * B * (w @ A / 2 + BETA * tp)

    return {("nie", "treated"): mu(1, 1) - mu(1, 0), ("nie", "control"): mu(0, 1) - mu(0, 0),
            ("nde", "control"): mu(1, 0) - mu(0, 0), ("nde", "treated"): mu(1, 1) - mu(0, 1),
            ("te", "average"): mu(1, 1) - mu(0, 0)}


@pytest.fixture(scope="module")
def strong():
    return strong_mediation(20_000, seed=11)


@pytest.mark.parametrize("population", ["ate", "att"])
def test_defaults_recover_every_effect_with_a_strong_t_to_m_path(strong, population):
    res = fit(WeightingMediation(population=population), strong)
    assert res.population == population and res.diagnostics["m"]["n_trimmed"] == 0
    for key, value in strong_truth(population).items():
        e = res.effect("m", *key)
        assert abs(e.estimate - value) < 3 * e.se, (key, e, value)


def test_trimming_on_p_m_x_moves_the_nie_by_many_se(strong):
    """The old default (drop rows with p(M,X) outside [0.05, 0.95]) trims about 8% of the rows here and moves
    the NIE by more than 4 SE: the reason the default no longer trims."""
    res = fit(WeightingMediation(trim=0.05), strong)
    assert 0.05 < res.diagnostics["m"]["share_trimmed"] < 0.12 and res.population == "overlap"
    e = res.effect("m", "nie", "treated")
    assert abs(e.estimate - strong_truth("ate")[("nie", "treated")]) > 4 * e.se


# ---- the topic-confounded simulator -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def big():
    return topic_mediation(5000, n_units=4, seed=2024)


@pytest.mark.parametrize("population", ["ate", "att"])
def test_estimates_are_within_3_se_of_the_truth_at_n5000(big, population):
    data, truth = big
    res = fit(WeightingMediation(population=population), data)
    assert res.population == population
    for unit in data.units:
        assert res.diagnostics[unit]["n_trimmed"] == 0 and res.diagnostics[unit]["C"] == np.inf
        for effect, arm in MEDIATION:
            e = res.effect(unit, effect, arm)
            value = truth.value(unit, effect, arm, population)
            assert abs(e.estimate - value) < 3 * e.se, (unit, effect, arm, e, value)
    te = fit(EntropyBalancedTotalEffect(population=population), data).effect("u0", "te", "average")
    value = truth.value("u0", "te", "average", population)
    assert abs(te.estimate - value) < 3 * te.se, (population, te, value)


def test_att_differs_from_ate_where_the_truth_does():
    """With a T x M interaction and strong topics the NDE and TE of the treated differ from the ATE versions
    (true gap 0.39, about 7 SE); each population's estimate is within 3 SE of its own truth."""
    data, truth = topic_mediation(5000, n_units=1, interaction=1.0, topic_strength=2.0, seed=7)
    res = {p: fit(WeightingMediation(population=p), data) for p in ("ate", "att")}
    for pop, r in res.items():
        for key in MEDIATION:
            e, value = r.effect("u0", *key), truth.value("u0", *key, pop)
            assert abs(e.estimate - value) < 3 * e.se, (pop, key, e, value)
    gap = truth.value("u0", "nde", "control", "att") - truth.value("u0", "nde", "control", "ate")
    e = res["att"].effect("u0", "nde", "control")
    assert abs(gap) > 5 * e.se
    diff = e.estimate - res["ate"].effect("u0", "nde", "control").estimate
    assert abs(diff - gap) < 0.5 * abs(gap)


def test_confounding_is_visible_without_topic_adjustment(big):
    data, truth = big
    res = fit(WeightingMediation(), data, graph="unadjusted_mediation")
    assert res.adjustment["first_stage"] == [] and truth.spurious == ["u2", "u3"]
    for unit in truth.spurious:
        for arm in ("treated", "control"):
            e = res.effect(unit, "nie", arm)
            assert truth.value(unit, "nie", arm, "ate") == 0.0
            assert abs(e.estimate) > 5 * e.se, (unit, arm, e)
    te = fit(EntropyBalancedTotalEffect(), data, graph="unadjusted_mediation").effect("u0", "te", "average")
    assert abs(te.estimate - truth.value("u0", "te", "average", "att")) > 5 * te.se
    adjusted = fit(WeightingMediation(), data, units=truth.spurious)
    for unit in truth.spurious:
        e = adjusted.effect(unit, "nie", "treated")
        assert abs(e.estimate) < 3 * e.se and abs(e.estimate) < 0.01


REPS = 200


def test_default_ci_coverage_at_n800_with_4_topics():
    """The defaults (influence-function SEs, no trimming, p(M,X) unpenalized since n allows) over 200
    replications at n = 800, 4 topics: NIE(treated), NIE(control) and TE of WeightingMediation(), and the TE
    of EntropyBalancedTotalEffect() for the ATT and the ATE, must cover in [0.90, 0.98]."""
    keys = [("weighting", "nie", "treated", "ate"), ("weighting", "nie", "control", "ate"),
            ("weighting", "te", "average", "ate"), ("eb_total", "te", "average", "att"),
            ("eb_total_ate", "te", "average", "ate")]
    hits = {k: [] for k in keys}
    for rep in range(REPS):
        data, truth = topic_mediation(800, n_topics=4, n_units=1, seed=10_000 + rep)
        results = {"weighting": fit(WeightingMediation(), data), "eb_total": fit(EntropyBalancedTotalEffect(), data),
                   "eb_total_ate": fit(EntropyBalancedTotalEffect(population="ate"), data)}
        for name, effect, arm, pop in keys:
            lo, hi = results[name].effect("u0", effect, arm).ci
            hits[(name, effect, arm, pop)].append(lo <= truth.value("u0", effect, arm, pop) <= hi)
    coverage = {k: float(np.mean(v)) for k, v in hits.items()}
    print("coverage over", REPS, "replications:", coverage)   # the numbers quoted in docs/weighting.md
    for key, cov in coverage.items():
        assert 0.90 <= cov <= 0.98, (key, cov, coverage)


def test_nie_ci_coverage_at_n2500():
    """At n = 2500 (200 replications) the default NIE intervals reach the nominal level: both NIEs must cover
    in [0.92, 0.98] (measured 0.945 and 0.955)."""
    hits = {arm: [] for arm in ("treated", "control")}
    for rep in range(REPS):
        data, truth = topic_mediation(2500, n_topics=4, n_units=1, seed=20_000 + rep)
        res = fit(WeightingMediation(), data)
        for arm, h in hits.items():
            lo, hi = res.effect("u0", "nie", arm).ci
            h.append(lo <= truth.value("u0", "nie", arm, "ate") <= hi)
    coverage = {arm: float(np.mean(h)) for arm, h in hits.items()}
    assert all(0.92 <= c <= 0.98 for c in coverage.values()), coverage


# ---- real data: the framing study ---------------------------------------------------------------------------
def test_framing_nie_lies_within_the_range_of_dml_and_parametric():
    """On the framing data shipped with statsmodels (n = 265, 68 treated; mediator emo, outcome cong_mesg), the
    default weighting NIE of each arm lies within one of its SEs of the range of the dml and parametric estimates
    (the old cross-validated default shrank it to 0.0076, about two SEs below that range). With dml's three
    repeated splits the average arm sits 0.005 above the range (0.0908 vs 0.0837-0.0856), so "strictly between"
    was a property of one split, not of the estimators."""
    df = pd.read_csv(Path(statsmodels.__file__).parent / "stats" / "tests" / "results" / "framing.csv")
    data = MediationData.from_frame(df, treatment="treat", outcome="cong_mesg",
                                    confounders=["age", "educ", "gender", "income"], mediators="emo")
    res = {name: fit(get_estimator(name), data) for name in ("weighting", "dml", "parametric")}
    assert res["weighting"].diagnostics["emo"]["C"] == np.inf
    for arm in ("treated", "control", "average"):
        others = [res[name].effect("emo", "nie", arm).estimate for name in ("dml", "parametric")]
        ours = res["weighting"].effect("emo", "nie", arm)
        assert min(others) - ours.se <= ours.estimate <= max(others) + ours.se, (arm, ours.estimate, others)
