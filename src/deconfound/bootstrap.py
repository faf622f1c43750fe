"""The bootstrap engine: stratified resampling of prompts, weights refitted in every replicate.

All resamples are drawn at once as an ``(n_boot, n)`` matrix of multinomial counts, stratified by the
treatment (and optionally by topic). A *statistic* takes the counts as frequency weights instead of copying
the data:

    ``statistic(data, counts) -> float | 1-D array``      (``counts``: ``(n,)`` ints; all ones = the sample)

and may also offer a vectorized ``statistic.batch(data, counts_matrix) -> (b, k) array`` and a ``names`` list.
A statistic that only understands a data set runs with ``materialize=True``: it is then called as
``statistic(resampled_data)`` on a copy built from each row of counts (slow, but works for anything).

Replicates are cut into chunks, and each chunk is one task; a backend runs a list of tasks. ``"local"`` uses
joblib and ``"dask"`` (or a ``distributed.Client``) a Dask cluster, both through
:func:`deconfound.parallel.run_tasks`; another engine plugs in with :func:`register_backend`. Layer 2-3:
imports data helpers, ``inference``, ``parallel`` and ``weights`` only.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import pandas as pd

from ._validation import check_probability, check_random_state
from .errors import DataError, DeconfoundError
from .inference import Effect, cluster_counts, stratified_counts
from .parallel import is_client, n_workers, run_tasks

__all__ = ["BootstrapResult", "EBMeanDifference", "PairedBootstrap", "bootstrap", "draw_counts", "paired_bootstrap",
           "register_backend", "resample"]

# failures that mean "this resample cannot be estimated" (a topic lost in one arm, a solver that stalls);
# anything else is a bug and propagates
RECOVERABLE = (DeconfoundError, np.linalg.LinAlgError)


# ---- resampling ---------------------------------------------------------------------------------------------
def _strata(data, stratify) -> np.ndarray:
    """Integer stratum labels from the names in ``stratify`` ("treatment" or categorical confounders)."""
    if stratify is None or stratify is False:
        return np.zeros(data.n, dtype=np.int64)
    if isinstance(stratify, str):
        stratify = (stratify,)
    cols = []
    for name in stratify:
        if name in ("treatment", data.treatment_name):
            cols.append(data.t.astype(np.int64))
        elif name in data.confounder_names and name in data.categorical_confounders():
            cols.append(data.x[name].cat.codes.to_numpy().astype(np.int64))
        else:
            raise DataError(f"stratify: expected 'treatment' or a categorical confounder in "
                            f"{data.categorical_confounders()}, got {name!r}")
    if not cols:
        return np.zeros(data.n, dtype=np.int64)
    _, labels = np.unique(np.column_stack(cols), axis=0, return_inverse=True)
    return labels.reshape(-1)


def draw_counts(data, n_boot: int, *, stratify=("treatment",), random_state=0, cluster=None) -> np.ndarray:
    """The ``(n_boot, n)`` int32 matrix of resample counts, drawn at once within each stratum.

    Each row sums to ``n`` and, within every stratum, to the stratum's size. Same seed, same matrix.
    With ``cluster`` (one label per row) whole clusters are resampled within the strata (each cluster must
    lie in one stratum; pass ``stratify=None`` otherwise), and row sums vary with the cluster sizes.
    """
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    strata, rng = _strata(data, stratify), check_random_state(random_state)
    if cluster is None:
        return stratified_counts(strata, n_boot, rng)
    cluster = np.asarray(cluster)
    if cluster.shape != (data.n,):
        raise DataError(f"cluster: expected one label per row ({data.n}), got shape {cluster.shape}")
    try:
        return cluster_counts(cluster, n_boot, rng, strata=strata)
    except ValueError as exc:
        raise DataError(f"stratify={stratify!r}: {exc}") from None


def resample(data, counts):
    """A materialized resample: row ``i`` repeated ``counts[i]`` times (the slow fallback path)."""
    counts = np.asarray(counts)
    if counts.shape != (data.n,):
        raise DataError(f"counts: expected shape ({data.n},), got {counts.shape}")
    return data.subset(np.repeat(np.arange(data.n), counts.astype(np.int64)))


# ---- backends -----------------------------------------------------------------------------------------------
_BACKENDS: dict[str, Callable] = {}


def register_backend(name: str, runner: Callable) -> None:
    """Make ``runner(tasks, n_jobs) -> list`` available as ``backend=name``.

    ``tasks`` is a list of picklable zero-argument callables; the runner returns their results in order.
    """
    _BACKENDS[str(name)] = runner


def _call(task):
    return task()


def _run_local(tasks, n_jobs):
    return run_tasks(_call, tasks, backend="local", n_jobs=n_jobs)


def _run_dask(tasks, n_jobs, client=None):
    return run_tasks(_call, tasks, backend="dask" if client is None else client)


register_backend("local", _run_local)
register_backend("dask", _run_dask)


@dataclass
class _Chunk:
    """One task: evaluate the statistic on a block of count rows. Returns (values (b, k), [(row, error)])."""

    statistic: object
    data: object
    counts: np.ndarray
    k: int
    materialize: bool

    def __call__(self):
        b = self.counts.shape[0]
        out = np.full((b, self.k), np.nan)
        if not self.materialize and hasattr(self.statistic, "batch"):
            try:
                vals = np.asarray(self.statistic.batch(self.data, self.counts), dtype=float)
                out[:] = vals.reshape(b, self.k)
                return out, []
            except RECOVERABLE:
                pass  # redo row by row to isolate the failing replicates
        errors = []
        for i, row in enumerate(self.counts):
            try:
                val = self.statistic(resample(self.data, row)) if self.materialize else self.statistic(self.data, row)
                out[i] = _as_vector(val, self.k)
            except RECOVERABLE as err:
                errors.append((i, f"{type(err).__name__}: {err}"))
        return out, errors


def _as_vector(value, k: int | None = None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float)).reshape(-1)
    if k is not None and arr.size != k:
        raise ValueError(f"statistic: expected {k} values per replicate (as on the full sample), got {arr.size}")
    return arr


# ---- results ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class BootstrapResult:
    """Bootstrap draws of a (vector) statistic.

    ``estimate`` is the statistic on the original sample; ``draws[b, j]`` the value of statistic ``j`` on
    replicate ``b`` (NaN where the replicate failed: see ``failures``). Intervals use the finite draws.
    """

    estimate: np.ndarray
    draws: np.ndarray
    names: list
    level: float = 0.95
    stratify: tuple = ()
    random_state: object = None
    backend: str = "local"
    failures: list = field(default_factory=list)

    @property
    def n_boot(self) -> int:
        return self.draws.shape[0]

    @property
    def ok(self) -> np.ndarray:
        """Replicates where every statistic is finite."""
        return np.isfinite(self.draws).all(axis=1)

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())

    def _index(self, key) -> int:
        if isinstance(key, (int, np.integer)):
            if not -len(self.names) <= key < len(self.names):
                raise IndexError(f"statistic: expected an index below {len(self.names)}, got {key}")
            return int(key)
        try:
            return self.names.index(key)
        except ValueError:
            raise KeyError(f"statistic: expected one of {self.names[:10]}, got {key!r}") from None

    def effect(self, key=0, *, ci: str = "percentile") -> Effect:
        """One statistic as an :class:`~deconfound.inference.Effect` (SE = sd of the finite draws)."""
        j = self._index(key)
        d = self.draws[:, j]
        return Effect.from_draws(float(self.estimate[j]), d[np.isfinite(d)], level=self.level, ci=ci)

    def effects(self, keys=None, *, ci: str = "percentile") -> dict:
        """Several statistics on the SAME replicates (those finite for all of them), so that their
        Effects can be added and subtracted (paired)."""
        idx = [self._index(k) for k in (self.names if keys is None else keys)]
        rows = np.isfinite(self.draws[:, idx]).all(axis=1)
        return {self.names[j]: Effect.from_draws(float(self.estimate[j]), self.draws[rows, j], level=self.level,
                                                  ci=ci) for j in idx}

    @property
    def se(self) -> np.ndarray:
        return np.array([self.effect(j).se for j in range(len(self.names))])

    def ci(self, kind: str = "percentile") -> np.ndarray:
        """``(k, 2)`` intervals at ``level``: ``"percentile"`` or ``"normal"`` (estimate +- z * SE)."""
        return np.array([self.effect(j, ci=kind).ci for j in range(len(self.names))])

    def to_frame(self) -> pd.DataFrame:
        """One row per statistic: estimate, SE, percentile and normal CIs, p-value, replicates used."""
        rows = []
        for j, name in enumerate(self.names):
            pct, nrm = self.effect(j), self.effect(j, ci="normal")
            rows.append({"statistic": name, "estimate": pct.estimate, "se": pct.se, "ci_lower": pct.ci[0],
                         "ci_upper": pct.ci[1], "normal_lower": nrm.ci[0], "normal_upper": nrm.ci[1],
                         "p_value": pct.p_value, "n_ok": int(np.isfinite(self.draws[:, j]).sum())})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        head = (f"Bootstrap: {self.n_boot} replicates ({self.n_failed} failed), stratified by "
                f"{', '.join(self.stratify) or 'nothing'}, seed {self.random_state}, CI level {self.level:.0%}")
        return head + "\n" + self.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def __repr__(self) -> str:
        return f"BootstrapResult(k={len(self.names)}, n_boot={self.n_boot}, n_failed={self.n_failed})"


@dataclass(eq=False)
class PairedBootstrap:
    """Two statistics bootstrapped on the same resamples, and their difference ``a - b`` per replicate."""

    a: BootstrapResult
    b: BootstrapResult
    diff: BootstrapResult

    def to_frame(self) -> pd.DataFrame:
        frames = [r.to_frame().assign(part=part) for part, r in (("a", self.a), ("b", self.b), ("a - b", self.diff))]
        return pd.concat(frames, ignore_index=True)


# ---- the engine ---------------------------------------------------------------------------------------------
def _names(statistic, k: int, names) -> list:
    names = names if names is not None else getattr(statistic, "names", None)
    if names is None:
        return ["stat"] if k == 1 else [f"stat{j}" for j in range(k)]
    names = [str(v) for v in names]
    if len(names) != k:
        raise ValueError(f"names: expected {k} names (one per value of the statistic), got {len(names)}")
    return names


def bootstrap(statistic, data, *, n_boot: int = 1000, stratify=("treatment",), random_state=0,
              backend: str = "local", level: float = 0.95, n_jobs: int | None = 1, chunk_size: int | None = None,
              materialize: bool = False, names=None, counts=None, cluster=None) -> BootstrapResult:
    """Nonparametric bootstrap over prompts (rows), stratified, with the statistic refitted per replicate.

    Parameters
    ----------
    statistic : callable
        ``statistic(data, counts)`` with ``counts`` the frequency weight of every row (refit anything
        estimated, e.g. entropy balancing weights with ``base_weights=counts``); optionally with a vectorized
        ``batch(data, counts_matrix)``. With ``materialize=True``: ``statistic(resampled_data)``.
    data : MediationData
    n_boot : number of replicates.
    stratify : names of the strata to resample within: ``"treatment"`` (default, keeps n1 and n0 fixed)
        and/or categorical confounders (e.g. ``("treatment", "topic")``); ``None`` for none.
    random_state : seed of the count matrix; same seed, same draws, whatever the backend or ``n_jobs``.
    backend : ``"local"`` (joblib), ``"dask"`` (the active Dask client), a ``distributed.Client``, or a name
        registered with :func:`register_backend`. The draws do not depend on it.
    level : CI level.
    n_jobs : workers for the local backend (1 = in process); Dask uses its cluster.
    chunk_size : replicates per task (default: all in one task with one worker, else about four tasks per
        worker: ``n_jobs`` workers, or the Dask cluster's threads).
    materialize : call ``statistic(resampled_data)`` on copied resamples (the slow fallback).
    names : names of the statistic's values (default ``statistic.names`` or ``stat0..``).
    counts : a precomputed ``(n_boot, n)`` count matrix (e.g. to pair with an earlier run); overrides
        ``n_boot``, ``stratify`` and ``random_state``.
    cluster : optional cluster labels (one per row): resample whole clusters (see :func:`draw_counts`).

    Returns
    -------
    BootstrapResult
        Replicates whose statistic raised a deconfound error (e.g. PositivityError: a topic lost in one arm)
        are NaN rows, counted in ``n_failed`` and warned about.

    Examples
    --------
    >>> import numpy as np
    >>> from deconfound.simulate import topic_mediation
    >>> data, _ = topic_mediation(200, seed=0)
    >>> mean_y = lambda d, c: np.average(d.y, weights=c)
    >>> res = bootstrap(mean_y, data, n_boot=200, random_state=1)
    >>> bool(abs(res.estimate[0] - data.y.mean()) < 1e-12), res.draws.shape
    (True, (200, 1))
    """
    level = check_probability(level, "level", low=1e-9, high=1 - 1e-9)
    if is_client(backend):
        runner, workers, backend = partial(_run_dask, client=backend), n_workers(backend), "dask"
    elif isinstance(backend, str) and backend in _BACKENDS:
        runner = _BACKENDS[backend]
        workers = n_workers(backend if backend == "dask" else "local", n_jobs)
    else:
        raise ValueError(f"backend: expected one of {sorted(_BACKENDS)} or a distributed.Client, got {backend!r}")
    if counts is None:
        counts = draw_counts(data, n_boot, stratify=stratify, random_state=random_state, cluster=cluster)
    else:
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != data.n or (counts < 0).any():
            raise DataError(f"counts: expected a non-negative (n_boot, {data.n}) matrix, got shape {counts.shape}")
    full = np.ones(data.n, dtype=counts.dtype)
    estimate = _as_vector(statistic(data) if materialize else statistic(data, full))
    k = estimate.size
    names = _names(statistic, k, names)
    b = counts.shape[0]
    if chunk_size is None:
        chunk_size = b if workers == 1 else max(1, math.ceil(b / (4 * workers)))
    tasks = [_Chunk(statistic, data, counts[s:s + chunk_size], k, materialize) for s in range(0, b, chunk_size)]
    results = runner(tasks, n_jobs)
    draws = np.vstack([vals for vals, _ in results]) if results else np.zeros((0, k))
    failures = [(s * chunk_size + i, msg) for s, (_, errs) in enumerate(results) for i, msg in errs]
    strat = () if stratify in (None, False) else ((stratify,) if isinstance(stratify, str) else tuple(stratify))
    res = BootstrapResult(estimate, draws, names, level, strat, random_state, backend, failures)
    if res.n_failed:
        first = failures[0][1] if failures else "the statistic returned NaN"
        warnings.warn(f"bootstrap: {res.n_failed} of {b} replicates failed and are left out of the intervals; "
                      f"first failure: {first}", RuntimeWarning, stacklevel=2)
    return res


class _Stacked:
    """Several statistics evaluated on the same counts, values concatenated."""

    def __init__(self, statistics, sizes):
        self.statistics, self.sizes = list(statistics), list(sizes)

    def __call__(self, data, counts=None):
        if counts is None:  # materialized
            return np.concatenate([_as_vector(s(data)) for s in self.statistics])
        return np.concatenate([_as_vector(s(data, counts)) for s in self.statistics])

    def __getattr__(self, name):
        if name == "batch" and all(hasattr(s, "batch") for s in self.__dict__.get("statistics", [])):
            return self._batch
        raise AttributeError(name)

    def _batch(self, data, counts):
        return np.hstack([np.asarray(s.batch(data, counts), dtype=float).reshape(len(counts), -1)
                          for s in self.statistics])


def paired_bootstrap(stat_a, stat_b, data, **kwargs) -> PairedBootstrap:
    """Bootstrap two statistics on the SAME resamples and their difference ``a - b`` replicate by replicate.

    Typical use: the adjusted minus the unadjusted estimate of the same unit. Both must return the same
    number of values. Keyword arguments are those of :func:`bootstrap` (except ``names``).

    Examples
    --------
    >>> import numpy as np
    >>> from deconfound.simulate import topic_mediation
    >>> data, _ = topic_mediation(300, seed=0)
    >>> a = lambda d, c: np.average(d.y, weights=c * d.t)
    >>> b = lambda d, c: np.average(d.y, weights=c * (1 - d.t))
    >>> pb = paired_bootstrap(a, b, data, n_boot=100, random_state=0)
    >>> bool(np.allclose(pb.diff.draws, pb.a.draws - pb.b.draws))
    True
    """
    if "names" in kwargs:
        raise TypeError("paired_bootstrap: names is taken from the statistics, got names=")
    materialize = kwargs.get("materialize", False)
    full = np.ones(data.n)
    ka = _as_vector(stat_a(data) if materialize else stat_a(data, full)).size
    kb = _as_vector(stat_b(data) if materialize else stat_b(data, full)).size
    if ka != kb:
        raise ValueError(f"paired_bootstrap: expected statistics of equal length, got {ka} and {kb}")
    names = _names(stat_a, ka, None)
    res = bootstrap(_Stacked([stat_a, stat_b], [ka, kb]), data, names=[f"a:{n}" for n in names] +
                    [f"b:{n}" for n in names], **kwargs)
    common = dict(level=res.level, stratify=res.stratify, random_state=res.random_state, backend=res.backend,
                  failures=res.failures)
    a = BootstrapResult(res.estimate[:ka], res.draws[:, :ka], names, **common)
    b = BootstrapResult(res.estimate[ka:], res.draws[:, ka:], _names(stat_b, kb, None), **common)
    diff = BootstrapResult(a.estimate - b.estimate, a.draws - b.draws, names, **common)
    return PairedBootstrap(a, b, diff)


# ---- a ready-made counts statistic --------------------------------------------------------------------------
class EBMeanDifference:
    """Entropy-balanced mean difference, treated minus control, of per-row values (one column per unit).

    With ``estimand="ATT"`` the controls are reweighted to the treated topic distribution; ``"ATE"`` reweights
    both arms to the pooled one. The weights are refitted for every count vector (``base_weights=counts``);
    :meth:`batch` solves all replicates at once with :func:`deconfound.weights.eb_weights_batch` and
    needs one matrix product for all units.

    Parameters
    ----------
    values : (n, k) array, callable ``data -> (n, k)``, or None (default: each unit's mean activation,
        i.e. the first stage T -> M of a mean-patching contrast).
    confounders : confounder columns to balance (default: all of the data's).
    estimand : ``"ATT"`` or ``"ATE"``.
    """

    def __init__(self, values=None, *, confounders=None, estimand: str = "ATT"):
        self.values = values
        self.confounders = confounders
        self.estimand = str(estimand).upper()
        if self.estimand not in ("ATT", "ATE"):
            raise ValueError(f"estimand: expected 'ATT' or 'ATE', got {estimand!r}")
        self.names = None

    def _values(self, data) -> np.ndarray:
        if self.values is None:
            v = np.column_stack([data.mediator(u).mean(axis=1, dtype=np.float64) for u in data.units])
            self.names = list(data.units)
        else:
            v = self.values(data) if callable(self.values) else self.values
            v = np.asarray(v, dtype=float)
            v = v[:, None] if v.ndim == 1 else v
        if v.shape[0] != data.n:
            raise DataError(f"values: expected {data.n} rows, got {v.shape[0]}")
        return v

    def _weights(self, data, counts) -> np.ndarray:
        from .weights import eb_weights_batch  # noqa: PLC0415 - weights is a sibling layer-2 module

        cols = list(self.confounders) if self.confounders is not None else data.confounder_names
        if not cols:
            w = counts.astype(float)
            for arm in (0, 1):
                sel = data.t == arm
                w[:, sel] /= w[:, sel].sum(axis=1, keepdims=True)
            return w
        return eb_weights_batch(data.x[cols], data.t, counts, estimand=self.estimand, on_failure="nan").weights

    def batch(self, data, counts) -> np.ndarray:
        counts = np.atleast_2d(counts)
        v = self._values(data)
        w = self._weights(data, counts)
        signed = np.where(data.t == 1, w, -w)
        return signed @ v

    def __call__(self, data, counts) -> np.ndarray:
        return self.batch(data, np.asarray(counts)[None, :])[0]
