"""The Dask backend on a real LocalCluster (2 worker processes, loopback only): the same numbers as local runs.

Per-unit DML estimation and bootstrap replicates are run locally and on the cluster with the same seeds; the
estimates, scores and draws must be identical, not merely close.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge

distributed = pytest.importorskip("distributed")

from deconfound import simulate  # noqa: E402
from deconfound.bootstrap import EBMeanDifference, bootstrap  # noqa: E402
from deconfound.estimators.dml import DMLMediation  # noqa: E402
from deconfound.parallel import n_workers, run_tasks, task_seeds  # noqa: E402


@pytest.fixture(scope="module")
def client(request):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       host="127.0.0.1", silence_logs=40)
    client = distributed.Client(cluster)

    def close():
        client.close()
        cluster.close()

    request.addfinalizer(close)
    return client


@pytest.fixture(scope="module")
def data():
    return simulate.topic_mediation(500, n_topics=4, n_units=4, dim=3, seed=11)[0]


def _draw(size, *, random_state):
    return np.random.default_rng(random_state).standard_normal(size)


def test_run_tasks_on_the_cluster_equals_local(client):
    assert n_workers(client) == 2 and n_workers("dask") == 2
    local = run_tasks(np.random.default_rng, [1, 2, 3])
    remote = run_tasks(np.random.default_rng, [1, 2, 3], backend=client)
    assert [g.random() for g in local] == [g.random() for g in remote]
    seeds = task_seeds(5, 6)
    out = run_tasks(np.random.Generator.standard_normal, [np.random.default_rng(s) for s in seeds],
                    backend="dask", shared={"size": 4})
    for x, s in zip(out, seeds):
        np.testing.assert_array_equal(x, np.random.default_rng(s).standard_normal(4))
    with pytest.raises(ValueError, match="math domain error"):  # a task's error comes back from the worker
        run_tasks(math.log, [1.0, -1.0], backend=client)


def test_dml_units_on_the_cluster_are_identical(client, data):
    est = DMLMediation(outcome_learner=Ridge(alpha=1.0), propensity_learner=LogisticRegression(C=1.0),
                       n_folds=3, random_state=4)
    local = est.fit(data)
    on_client = est.fit(data, backend=client)
    on_default = est.fit(data, backend="dask")  # the active client
    for other in (on_client, on_default):
        assert other.units == local.units
        for u in local.units:
            for key, eff in local.effects[u].items():
                got = other.effects[u][key]
                assert got.estimate == eff.estimate and got.se == eff.se, (u, key)
                if eff.scores is not None:
                    np.testing.assert_array_equal(got.scores, eff.scores)
            assert other.diagnostics[u]["n_kept"] == local.diagnostics[u]["n_kept"]


def test_bootstrap_replicates_on_the_cluster_are_identical(client, data):
    stat = EBMeanDifference(estimand="ATT")
    local = bootstrap(stat, data, n_boot=64, random_state=3, stratify=("treatment", "topic"), chunk_size=16)
    remote = bootstrap(stat, data, n_boot=64, random_state=3, stratify=("treatment", "topic"), chunk_size=16,
                       backend=client)
    np.testing.assert_array_equal(remote.draws, local.draws)
    np.testing.assert_array_equal(remote.estimate, local.estimate)
    assert remote.backend == "dask" and remote.names == local.names
    # default chunking: one task locally, about four per cluster thread on Dask; same replicates
    whole = bootstrap(stat, data, n_boot=64, random_state=3, stratify=("treatment", "topic"))
    spread = bootstrap(stat, data, n_boot=64, random_state=3, stratify=("treatment", "topic"), backend="dask")
    np.testing.assert_allclose(spread.draws, whole.draws, rtol=1e-12, atol=1e-14)
