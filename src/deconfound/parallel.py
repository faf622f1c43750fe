"""Where independent tasks run: in process, on local joblib workers, or on a Dask cluster.

Per-unit estimation, bootstrap chunks and extraction shards are lists of independent tasks. They all go
through :func:`run_tasks`, which applies one function to every task and returns the results in task order:

* ``backend="local"`` (default): joblib with ``n_jobs`` workers (``n_jobs=1``: a plain loop in this process);
* ``backend="dask"``: the active ``dask.distributed`` client (``distributed.get_client()``);
* ``backend=<a distributed.Client>``: that client;
* ``backend="auto"``: the active Dask client if there is one, else local.

Every random choice is fixed before dispatch: with ``random_state`` each task gets its own int seed from
:func:`task_seeds`, a function of the seed and the task's position only, so the numbers are the same on every
backend and for any number of workers. Dask is imported only when it is asked for. Layer 1: imports layer 0.
"""
from __future__ import annotations

import sys
from functools import partial

import numpy as np

from .errors import MissingDependencyError

__all__ = ["get_client", "is_client", "n_workers", "progress_iter", "resolve_backend", "run_tasks", "task_seeds"]

BACKENDS = ("local", "dask", "auto")


def is_client(obj) -> bool:
    """True for a ``dask.distributed.Client`` (checked by its methods, so dask need not be imported)."""
    return all(hasattr(obj, name) for name in ("submit", "map", "gather", "scatter", "nthreads"))


def _distributed():
    try:
        import distributed  # noqa: PLC0415 - dask only when asked for
    except ImportError as exc:
        raise MissingDependencyError("backend='dask': expected the dask.distributed package, got an ImportError "
                                     f"({exc}); install it with `pip install 'deconfound[dask]'`") from exc
    return distributed


def get_client(required: bool = True):
    """The active Dask client, or None when there is none and ``required`` is False.

    A client exists only if ``distributed`` was imported, so ``required=False`` never imports dask.
    """
    if not required and "distributed" not in sys.modules:
        return None
    distributed = _distributed()
    try:
        return distributed.get_client()
    except ValueError:
        if not required:
            return None
        raise ValueError("backend='dask': expected an active dask.distributed Client (start one with "
                         "`Client(LocalCluster())` or pass `backend=client`), got none") from None


def resolve_backend(backend="local"):
    """``("local", None)`` or ``("dask", client)`` for a backend name or a Client."""
    if is_client(backend):
        return "dask", backend
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)} or a dask.distributed Client, got {backend!r}")
    if backend == "dask":
        return "dask", get_client()
    if backend == "auto":
        client = get_client(required=False)
        return ("dask", client) if client is not None else ("local", None)
    return "local", None


def n_workers(backend="local", n_jobs=1) -> int:
    """How many tasks can run at once: joblib's effective ``n_jobs``, or the Dask cluster's thread count."""
    kind, client = resolve_backend(backend)
    if kind == "dask":
        return max(1, int(sum(client.nthreads().values())))
    if n_jobs in (None, 1):
        return 1
    from joblib import effective_n_jobs  # noqa: PLC0415

    return int(effective_n_jobs(n_jobs))


def task_seeds(random_state, n_tasks: int) -> list:
    """One int seed per task from ``random_state`` (an int or a SeedSequence); None gives Nones.

    Seed ``i`` depends on ``random_state`` and ``i`` only (``SeedSequence.spawn``), never on the backend.

    Examples
    --------
    >>> task_seeds(0, 3) == task_seeds(0, 3), task_seeds(None, 2)
    (True, [None, None])
    """
    if random_state is None:
        return [None] * int(n_tasks)
    if isinstance(random_state, np.random.Generator):
        raise TypeError("random_state: expected an int or a SeedSequence (a Generator's state would depend on "
                        "the order tasks run in), got a Generator")
    seq = random_state if isinstance(random_state, np.random.SeedSequence) else np.random.SeedSequence(
        int(random_state))
    return [int(child.generate_state(1)[0]) for child in seq.spawn(int(n_tasks))]


def progress_iter(iterable, desc: str, progress=None, total: int | None = None):
    """``iterable`` with a tqdm progress bar: ``progress=True`` always, ``False`` never, ``None`` (the default
    of every long loop) only when stderr is a terminal, so piped and logged runs stay quiet (tqdm's
    ``disable=None``). With ``None`` a loop of one item gets no bar. Items are passed through unchanged.

    Examples
    --------
    >>> list(progress_iter(range(3), "units", progress=False))
    [0, 1, 2]
    """
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected True, False or None (only on a terminal), got {progress!r}")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if progress is False or (progress is None and total is not None and total <= 1):
        return iterable
    from tqdm.auto import tqdm  # noqa: PLC0415 - tqdm only for a bar

    return tqdm(iterable, desc=desc, total=total, disable=None if progress is None else False)


def _apply(task, seed, *, fn, with_seed, **shared):
    return fn(task, random_state=seed, **shared) if with_seed else fn(task, **shared)


def run_tasks(fn, tasks, *, backend="local", n_jobs=1, shared=None, random_state=None, progress=False,
              desc: str = "tasks") -> list:
    """``[fn(task, **shared) for task in tasks]`` on a backend, results in task order.

    Parameters
    ----------
    fn : a picklable function (module level, or a ``functools.partial`` of one) of one task.
    tasks : iterable of task arguments (e.g. unit names, mediator blocks, blocks of bootstrap counts).
    backend : ``"local"`` (joblib), ``"dask"`` (the active client), ``"auto"`` or a ``distributed.Client``.
    n_jobs : joblib workers for ``"local"`` (1 = in this process, -1 = all cores); ignored by Dask, whose
        cluster decides.
    shared : keyword arguments passed unchanged to every call. On Dask they are scattered to the workers
        once (broadcast) instead of travelling with each task.
    random_state : if not None, each call also gets ``random_state=task_seeds(random_state, n)[i]``.
    progress, desc : a bar named ``desc`` over the finished tasks (:func:`progress_iter`: True, False (the
        default here), or None for one only on a terminal); local backends only.

    Returns
    -------
    list
        One result per task, in the order of ``tasks``. The first exception raised by a task propagates
        (on Dask, the remaining tasks are cancelled).

    Examples
    --------
    >>> run_tasks(pow, [1, 2, 3], shared={"exp": 2})
    [1, 4, 9]
    """
    tasks = list(tasks)
    shared = dict(shared or {})
    if "random_state" in shared and random_state is not None:
        raise TypeError("run_tasks: expected random_state either in shared or as the argument, got both")
    seeds = task_seeds(random_state, len(tasks))
    call = partial(_apply, fn=fn, with_seed=random_state is not None)
    kind, client = resolve_backend(backend)
    if not tasks:
        return []
    if kind == "dask":
        return _run_dask(client, call, tasks, seeds, shared)
    if len(tasks) == 1 or n_jobs in (None, 1):
        pairs = progress_iter(list(zip(tasks, seeds)), desc, progress)
        return [call(task, seed, **shared) for task, seed in pairs]
    from joblib import Parallel, delayed  # noqa: PLC0415 - joblib only when parallel

    done = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(call)(task, seed, **shared)
                                                          for task, seed in zip(tasks, seeds))
    return list(progress_iter(done, desc, progress, total=len(tasks)))


def _run_dask(client, call, tasks, seeds, shared) -> list:
    # scatter a one-item list: scatter() would split a list or dict value into many futures
    remote = {k: client.scatter([v], broadcast=True, hash=False)[0] for k, v in shared.items()}
    data = client.scatter(tasks, hash=False)  # one future per task: no large arrays inside the task graph
    futures = client.map(call, data, seeds, pure=False, **remote)
    try:
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        client.cancel([*data, *remote.values()])
