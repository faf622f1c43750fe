"""The task runner: order, seeds fixed before dispatch, shared arguments, backend resolution (no Dask cluster here;
tests/integration/test_dask_backend.py starts one)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from deconfound.errors import MissingDependencyError
from deconfound.parallel import is_client, n_workers, progress_iter, resolve_backend, run_tasks, task_seeds


def _draw(size, *, random_state, scale=1.0):
    return scale * np.random.default_rng(random_state).standard_normal(size)


def _inverse(v):
    return 1 / v


def test_results_in_task_order_in_process_and_on_joblib_workers():
    tasks = list(range(12))
    expected = [math.factorial(t) for t in tasks]
    assert run_tasks(math.factorial, tasks) == expected
    assert run_tasks(math.factorial, reversed(tasks), n_jobs=2)[::-1] == expected
    assert run_tasks(math.factorial, []) == []


def test_shared_keywords_reach_every_call():
    assert run_tasks(pow, [2, 3, 4], shared={"exp": 3}) == [8, 27, 64]
    assert run_tasks(pow, [2, 3, 4], shared={"exp": 3}, n_jobs=2) == [8, 27, 64]


def test_seeds_are_fixed_before_dispatch():
    seeds = task_seeds(11, 5)
    assert len(set(seeds)) == 5 and all(isinstance(s, int) for s in seeds)
    # seed i depends on the seed and i only: a prefix of a longer list, and independent of the runner
    assert task_seeds(11, 3) == seeds[:3]
    assert task_seeds(12, 5) != seeds
    assert task_seeds(np.random.SeedSequence(11), 5) == seeds
    a = run_tasks(_draw, [3] * 5, random_state=11)
    b = run_tasks(_draw, [3] * 5, random_state=11, n_jobs=2, shared={"scale": 1.0})
    for x, y, s in zip(a, b, seeds):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, np.random.default_rng(s).standard_normal(3))
    assert task_seeds(None, 2) == [None, None]


def test_bad_arguments():
    with pytest.raises(TypeError, match="Generator"):
        task_seeds(np.random.default_rng(0), 2)
    with pytest.raises(TypeError, match="either in shared or as the argument"):
        run_tasks(_draw, [1], shared={"random_state": 1}, random_state=2)
    with pytest.raises(ValueError, match="backend: expected one of"):
        run_tasks(abs, [1], backend="spark")
    with pytest.raises(ValueError, match="backend: expected one of"):
        resolve_backend(3)
    with pytest.raises(ZeroDivisionError):  # a task's error propagates
        run_tasks(_inverse, [1.0, 0.0])


def test_local_resolution_and_worker_counts():
    assert resolve_backend("local") == ("local", None)
    assert n_workers("local", 1) == 1 and n_workers("local", None) == 1
    assert n_workers("local", 2) == 2
    assert not is_client("dask") and not is_client(object())


def test_auto_without_dask_stays_local_and_never_imports_dask():
    code = ("import sys\nfrom deconfound.parallel import resolve_backend, run_tasks\n"
            "print(resolve_backend('auto'), run_tasks(abs, [-1, 2], backend='auto'), "
            "'distributed' in sys.modules, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "('local', None) [1, 2] False False"


def test_dask_without_a_client_says_how_to_start_one(monkeypatch):
    pytest.importorskip("distributed")
    with pytest.raises(ValueError, match="expected an active dask.distributed Client"):
        resolve_backend("dask")


def test_dask_missing_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'deconfound\[dask\]'"):
        resolve_backend("dask")


class _FakeClient:
    """Just enough of distributed.Client to check dispatch: map/scatter/gather run in process."""

    def __init__(self):
        self.scattered, self.cancelled = [], 0

    def nthreads(self):
        return {"w1": 2, "w2": 1}

    def scatter(self, data, broadcast=False, hash=True):
        self.scattered.append((len(data), broadcast))
        return list(data)

    def map(self, fn, *iterables, pure=True, **kwargs):
        assert pure is False
        return [fn(*args, **kwargs) for args in zip(*iterables)]

    def submit(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def gather(self, futures):
        return list(futures)

    def cancel(self, futures):
        self.cancelled += len(futures)


def test_a_client_object_is_used_with_shared_values_broadcast_once():
    client = _FakeClient()
    assert is_client(client) and resolve_backend(client) == ("dask", client)
    assert n_workers(client) == 3
    out = run_tasks(_draw, [2, 2, 2], backend=client, random_state=4, shared={"scale": 2.0})
    for x, s in zip(out, task_seeds(4, 3)):
        np.testing.assert_array_equal(x, 2.0 * np.random.default_rng(s).standard_normal(2))
    # one broadcast per shared value (wrapped in a one-item list), one scatter of all tasks
    assert client.scattered == [(1, True), (3, False)]


class _Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_progress_iter_shows_a_bar_on_a_terminal_only(monkeypatch):
    items = ["u0", "u1", "u2"]
    assert progress_iter(items, "units", progress=False) is items            # never: the iterable itself
    piped = __import__("io").StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    assert list(progress_iter(items, "units")) == items and piped.getvalue() == ""   # default, piped: quiet
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress_iter(items, "units")) == items                      # default, terminal: a bar
    assert "units" in term.getvalue() and "3/3" in term.getvalue()
    single = _Terminal()
    monkeypatch.setattr(sys, "stderr", single)
    assert list(progress_iter(["u0"], "units")) == ["u0"] and single.getvalue() == ""   # one unit: no bar
    forced = __import__("io").StringIO()
    monkeypatch.setattr(sys, "stderr", forced)
    assert list(progress_iter(iter(items), "units", progress=True)) == items and "units" in forced.getvalue()
    with pytest.raises(TypeError, match="progress: expected True, False or None"):
        progress_iter(items, "units", progress="yes")


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_run_tasks_progress_counts_finished_tasks(monkeypatch, n_jobs):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert run_tasks(pow, [1, 2, 3], shared={"exp": 2}, n_jobs=n_jobs) == [1, 4, 9]
    assert term.getvalue() == ""                                          # off by default
    assert run_tasks(pow, [1, 2, 3], shared={"exp": 2}, n_jobs=n_jobs, progress=None, desc="units") == [1, 4, 9]
    assert "units" in term.getvalue() and "3/3" in term.getvalue()


@pytest.mark.parametrize("name", ["parametric", "dml"])
def test_multi_unit_fits_show_a_bar_only_when_asked(name, capsys):
    from deconfound import get_estimator, simulate

    data, _ = simulate.topic_mediation(300, n_units=2, n_topics=3, seed=0)
    est = get_estimator(name, **({"n_sims": 50} if name == "parametric" else {"n_rep": 1, "n_folds": 2}))
    est.fit(data, progress=True)
    assert f"{name}: units" in capsys.readouterr().err
    est.fit(data, progress=False)
    assert f"{name}: units" not in capsys.readouterr().err
