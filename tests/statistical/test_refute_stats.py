"""Refuters over many simulated datasets: the placebo's size, a leaking pipeline, dummy outcome, latent U.

Slow (marked); each test re-runs a cheap estimator (the parametric one with 200 quasi-Bayesian draws, or DML
with plain linear/logistic learners and 2 folds) on fresh draws of ``simulate.topic_mediation``.
"""
import numpy as np
import pytest

from deconfound import refute, simulate
from deconfound.estimators import get_estimator

pytestmark = pytest.mark.slow
pytest.importorskip("deconfound.estimators.parametric", reason="deconfound.estimators.parametric has not landed")

KEYS = (("te", "average"), ("nie", "average"), ("nie", "treated"), ("nde", "control"))


def parametric():
    return get_estimator("parametric", n_sims=200, random_state=0)


def _rates(frames):
    out = {}
    for key in KEYS:
        rows = [f.set_index(["effect", "arm"]).loc[key] for f in frames]
        out[key] = float(np.mean([r.p_value < 0.05 for r in rows]))
    return out


def test_placebo_rejects_less_than_10_percent_over_100_seeds():
    frames = []
    for seed in range(100):
        data, _ = simulate.topic_mediation(500, n_topics=8, seed=1000 + seed)
        frames.append(refute.placebo_treatment(parametric(), data, random_state=seed).to_frame())
    rates = _rates(frames)
    assert all(rate < 0.10 for rate in rates.values()), rates


def test_placebo_dml_rejects_rarely():
    pytest.importorskip("deconfound.estimators.dml", reason="deconfound.estimators.dml has not landed")
    from sklearn.linear_model import LinearRegression, LogisticRegression

    est = get_estimator("dml", n_folds=2, outcome_learner=LinearRegression(),
                        propensity_learner=LogisticRegression(C=10.0, max_iter=1000))
    frames = []
    for seed in range(30):
        data, _ = simulate.topic_mediation(600, n_topics=8, seed=2000 + seed)
        frames.append(refute.placebo_treatment(est, data, random_state=seed).to_frame())
    rejections = {k: round(r * 30) for k, r in _rates(frames).items()}
    # at a true 5% rate, P(>= 6 of 30) = 0.003
    assert all(count <= 5 for count in rejections.values()), rejections


def test_placebo_never_passes_a_leaking_pipeline(leaky_estimator):
    # n = 1500 makes the true NIE and TE significant in every draw; a leak then always shows
    for seed in range(20):
        data, _ = simulate.topic_mediation(1500, n_topics=8, seed=3000 + seed)
        frame = refute.placebo_treatment(leaky_estimator(parametric(), data.t), data,
                                         random_state=seed).to_frame().set_index(["effect", "arm"])
        for key in (("te", "average"), ("nie", "average")):
            assert not frame.loc[key, "passed"]
            assert frame.loc[key, "new_estimate"] == frame.loc[key, "estimate"]


def test_dummy_outcome_rejects_rarely_and_centres_on_zero():
    frames = []
    for seed in range(60):
        data, _ = simulate.topic_mediation(500, n_topics=8, seed=4000 + seed)
        frames.append(refute.dummy_outcome(parametric(), data, random_state=seed).to_frame())
    rates = _rates(frames)
    assert all(rate < 0.12 for rate in rates.values()), rates
    for key in KEYS:
        new = np.array([f.set_index(["effect", "arm"]).loc[key, "new_estimate"] for f in frames])
        assert abs(new.mean()) < 3 * new.std(ddof=1) / np.sqrt(len(new))


def test_unobserved_confounder_shift_matches_the_simulated_strength_on_average():
    shifts = {k: [] for k in KEYS}
    wants = []
    for seed in range(25):
        data, _ = simulate.topic_mediation(800, n_topics=8, seed=5000 + seed)
        res = refute.unobserved_confounder(parametric(), data, random_state=seed, effect_on_t=0.5, effect_on_y=0.25)
        d = res.details.set_index(["effect", "arm"])
        wants.append(0.5 * 0.25 * data.y.std())
        for key in KEYS:
            shifts[key].append(d.loc[key, "observed_shift"])
    want = np.mean(wants)
    for key in (("te", "average"), ("nde", "control")):
        s = np.array(shifts[key])
        assert abs(s.mean() - want) < 3 * s.std(ddof=1) / np.sqrt(len(s)) + 0.02 * want
        assert np.all(np.sign(s) == 1)
    for key in (("nie", "average"), ("nie", "treated")):
        s = np.array(shifts[key])
        assert abs(s.mean()) < 3 * s.std(ddof=1) / np.sqrt(len(s)) + 0.02 * want


# dml failed 4 of 20 here under an earlier rule and was marked xfail; it has passed since (fixed seeds)
@pytest.mark.parametrize("name", ["parametric", "dml"])
def test_data_subset_size_with_the_estimators_defaults(name):
    """A correctly specified fit must pass the data-subset refuter at its nominal rate (the former analytic
    spread SE sqrt((1/f - 1)/B) failed DML in 18% of rows at n=400). Defaults throughout: estimator and refuter.
    20 replications (4 fits each) fit the slow budget; at a true 5% rate, P(>= 4 of 20) = 0.016."""
    if name == "dml":
        pytest.importorskip("deconfound.estimators.dml", reason="deconfound.estimators.dml has not landed")
    frames = []
    for seed in range(20):
        data, _ = simulate.topic_mediation(400, n_topics=8, seed=6000 + seed)
        frames.append(refute.data_subset(get_estimator(name), data, random_state=seed).to_frame())
    rejections = {k: round(r * 20) for k, r in _rates(frames).items()}
    assert all(count <= 3 for count in rejections.values()), rejections
