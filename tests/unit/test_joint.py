"""Joint mediators against closed forms.

- two independent causal units and a linear outcome (simulate.topic_mediation): NIE_joint = NIE_u0 + NIE_u1
  (the simulator's exact truths), so the interaction is 0;
- an M1 x M2 term g M1 M2 in the outcome, M_j = a_j T + m_j(X) + e_j: for a unit alone the other unit stays
  on the direct path, so NIE_1(t) = a1 (b1 + g E[M2(t)]), and the interaction is g a1 a2 (1 - 2t): g a1 a2 in
  the control arm, -g a1 a2 in the treated arm, 0 on average.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deconfound import DataError, MediationData, simulate
from deconfound.estimators.dml import DMLMediation
from deconfound.estimators.parametric import ParametricMediation
from deconfound.estimators.patching import PatchingMediation
from deconfound.joint import joint_mediation, stack_units

ARMS = ("control", "treated", "average")


@pytest.fixture(scope="module")
def two_causal():
    return simulate.topic_mediation(3000, n_units=2, n_spurious=0, dim=2, seed=4)


# DMLMediation's trim=0.05 (its current default) drops about 10% of the rows on this strongly predictive joint
# block, and its effects then refer to the kept rows, not to the simulator's ATE truths; trim=0 here.
@pytest.mark.parametrize("make", [lambda: ParametricMediation(n_sims=400, random_state=0),
                                  lambda: DMLMediation(trim=0.0, random_state=0)], ids=["parametric", "dml"])
def test_joint_equals_sum_for_a_linear_outcome(two_causal, make):
    data, truth = two_causal
    out = joint_mediation(make(), data, ["u0", "u1"])
    for arm in ARMS:
        joint = out.effect("joint", arm)
        closed = truth.value("u0", "nie", arm) + truth.value("u1", "nie", arm)
        assert abs(joint.estimate - closed) < 3 * joint.se, arm
        inter = out.effect("interaction", arm)
        assert abs(inter.estimate) < 3 * inter.se, arm
        # the paired SE of the interaction is far below the unpaired sqrt(se_joint^2 + se_sum^2)
        assert inter.se < 0.5 * np.hypot(joint.se, out.effect("sum", arm).se), arm
    assert out.result.units == ["u0+u1", "u0", "u1"]
    assert set(out.to_frame().part) == {"joint", "u0", "u1", "sum", "interaction"}
    assert "interaction" in out.summary()


def interaction_data(n, seed, *, a=(0.8, 0.8), b=(0.5, 0.4), g=0.5):
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 3, n)
    t = (rng.random(n) < 1 / (1 + np.exp(-(topic - 1.0) * 0.6))).astype(int)
    shift = np.array([[0.0, 0.3, -0.2], [0.1, -0.3, 0.2]])
    m1 = a[0] * t + shift[0, topic] + rng.normal(size=n)
    m2 = a[1] * t + shift[1, topic] + rng.normal(size=n)
    y = 0.3 * t + b[0] * m1 + b[1] * m2 + g * m1 * m2 + 0.2 * topic + rng.normal(size=n)
    df = pd.DataFrame({"T": t, "Y": y, "topic": pd.Categorical([f"k{k}" for k in topic]), "m1": m1, "m2": m2})
    data = MediationData.from_frame(df, treatment="T", outcome="Y", confounders=["topic"],
                                    mediators={"m1": ["m1"], "m2": ["m2"]})
    return data, g * a[0] * a[1]


def test_interaction_of_a_product_term_is_recovered():
    data, gaa = interaction_data(4000, 1)
    out = joint_mediation(DMLMediation(trim=0.0, random_state=0), data, ["m1", "m2"], name="both")
    for arm, truth in (("control", gaa), ("treated", -gaa), ("average", 0.0)):
        inter = out.effect("interaction", arm)
        assert abs(inter.estimate - truth) < 3 * inter.se, (arm, inter, truth)
    assert abs(out.effect("interaction", "control").estimate) > 3 * out.effect("interaction", "control").se


def test_stacking_and_errors(two_causal):
    data, _ = two_causal
    stacked = stack_units(data, ["u0", "u1"], "both")
    assert stacked.units == ["both", "u0", "u1"]
    np.testing.assert_array_equal(stacked.mediator("both"), np.hstack([data.mediator("u0"), data.mediator("u1")]))
    assert stacked.columns_of("both") == data.columns_of("u0") + data.columns_of("u1")
    with pytest.raises(DataError, match="two or more distinct units"):
        joint_mediation(DMLMediation(), data, ["u0"])
    with pytest.raises(DataError, match="units: expected names"):
        joint_mediation(DMLMediation(), data, ["u0", "nope"])
    with pytest.raises(TypeError, match="patcher"):  # patching needs its patcher (tests/unit/test_joint_patching.py)
        joint_mediation(PatchingMediation(), data, ["u0", "u1"])


def test_parametric_joint_shares_resamples(two_causal):
    data, _ = two_causal
    out = joint_mediation(ParametricMediation(n_sims=100, random_state=3), data, ["u0", "u1"])
    assert out.result.settings["method"] == "bootstrap"
    same = joint_mediation(ParametricMediation(n_sims=100, random_state=3), data, ["u0", "u1"])
    assert np.array_equal(out.effect("interaction").draws, same.effect("interaction").draws)
