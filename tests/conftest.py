"""Shared fixtures: seeds, small simulated datasets, a small mixed-type DataFrame.

Kept light on purpose: it never imports torch. If a test module imported torch, every test runs with one
torch thread (the machines running the suite are shared).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

SEED = 20241203


def pytest_runtest_setup(item):
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def seed() -> int:
    """The suite's default seed."""
    return SEED


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator with the default seed (same numbers in every test)."""
    return np.random.default_rng(SEED)


@pytest.fixture
def sim_small():
    """(data, truth): 600 rows, 8 topics, 2 scalar units (u0 causal, u1 spurious)."""
    from deconfound import simulate

    return simulate.topic_mediation(600, n_units=2, seed=3)


@pytest.fixture
def sim_vector():
    """(data, truth): 800 rows, 5 topics, 3 units of dimension 4 (u0 causal; u1, u2 spurious)."""
    from deconfound import simulate

    return simulate.topic_mediation(800, n_topics=5, n_units=3, dim=4, n_spurious=2, seed=4)


@pytest.fixture
def mixed_frame() -> pd.DataFrame:
    """12 rows: binary T, numeric Y, a string topic, a numeric confounder and three numeric mediator columns."""
    r = np.random.default_rng(7)
    n = 12
    return pd.DataFrame({
        "toxic": np.tile([0, 1], n // 2),
        "score": r.normal(size=n),
        "topic": np.array(["sports", "politics", "religion"])[np.arange(n) % 3],
        "length": r.integers(5, 50, size=n).astype(float),
        "a0": r.normal(size=n),
        "a1": r.normal(size=n),
        "b0": r.normal(size=n),
    }, index=[f"p{i}" for i in range(n)])


@pytest.fixture
def leaky_estimator():
    """The class of a broken pipeline (for refuter tests): its ``fit`` ignores the T it is given and uses the
    true T captured at construction, ``leaky_estimator(inner, t_true)``."""
    from deconfound.estimators.base import MediationEstimator

    class LeakyEstimator(MediationEstimator):
        def __init__(self, inner, t_true):
            self.inner = inner
            self.t_true = np.asarray(t_true)

        def fit(self, data, *, graph=None, units=None):
            return self.inner.fit(data.replace(t=self.t_true), graph=graph, units=units)

    return LeakyEstimator

