"""DML mediation against simulation truths: bias on every case, and CI coverage over replications (slow)."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

from deconfound.estimators.dml import DMLMediation
from deconfound.simulate import topic_mediation

pytestmark = pytest.mark.slow

PRIMARY = [("te", "average"), ("nie", "treated"), ("nie", "control"), ("nde", "treated"), ("nde", "control")]
CASES = {
    "linear": dict(n_topics=4),
    "interaction": dict(n_topics=4, interaction=1.0),
    "nonlinear": dict(n_topics=4, nonlinear=True),
    "vector_d20": dict(n_topics=4, dim=20),
    "topics_k8": dict(n_topics=8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bias_within_3se_every_case(case):
    """|estimate - truth| <= 3 SE at n = 5000, default (CV-tuned) learners, causal and topic-tracking units."""
    data, truth = topic_mediation(5000, n_units=2, seed=100 + list(CASES).index(case), **CASES[case])
    res = DMLMediation().fit(data)
    for unit in data.units:
        for key in PRIMARY:
            eff, tv = res.effect(unit, *key), truth.value(unit, *key)
            assert abs(eff.estimate - tv) <= 3 * eff.se, (case, unit, key, eff, tv)


def test_coverage_95():
    """95% CIs cover the truth in 0.92-0.98 of 200 replications.

    To fit CI's time on one core this uses n = 800 and cheap fixed-penalty learners (Ridge(alpha=1),
    LogisticRegression(C=1)) on the linear case with 4 topics, whose nuisances they specify correctly. The
    band is about +-2 Monte Carlo SE around 0.95 (sd of a coverage over 200 draws is 0.015).
    """
    reps, keys = 200, PRIMARY + [("nie", "average"), ("nde", "average")]
    est = DMLMediation(outcome_learner=Ridge(alpha=1.0), propensity_learner=LogisticRegression(C=1.0))
    hits = {k: 0 for k in keys}
    for r in range(reps):
        data, truth = topic_mediation(800, n_topics=4, seed=5000 + r)
        res = est.fit(data)
        for k in keys:
            lo, hi = res.effect("u0", *k).ci
            hits[k] += lo <= truth.value("u0", *k) <= hi
    coverage = {k: v / reps for k, v in hits.items()}
    for k, c in coverage.items():
        assert 0.92 <= c <= 0.98, (k, c, coverage)
    assert np.mean(list(coverage.values())) >= 0.93
