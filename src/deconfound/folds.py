"""Shared fold assignment for cross-fitting.

Every estimator that cross-fits calls :func:`data_folds` (or :func:`make_folds` with the same strata and seed),
so all units and all estimators see the same folds and their comparisons are paired.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_random_state


def make_folds(n: int, k: int, *, strata=None, random_state, groups=None) -> np.ndarray:
    """Assign ``n`` rows to ``k`` folds, balanced within each stratum.

    With ``groups`` (e.g. clusters) every group lands whole in one fold: groups are shuffled and dealt,
    largest first, to the fold with the fewest rows (scikit-learn's GroupKFold rule, with a seeded order);
    ``strata`` are then ignored.

    Rows are shuffled within each stratum; strata are laid end to end and dealt round-robin, so fold sizes
    differ by at most one overall and each stratum is spread as evenly as its size allows.

    Parameters
    ----------
    n : number of rows.
    k : number of folds, ``2 <= k <= n``.
    strata : optional length-``n`` labels (e.g. the treatment, or treatment x topic).
    random_state : int, None or numpy Generator (keyword-only and required: pass it explicitly).

    Returns
    -------
    An int array of length ``n`` with fold ids ``0..k-1``.

    Examples
    --------
    >>> f = make_folds(10, 3, strata=[0, 1] * 5, random_state=0)
    >>> np.bincount(f).tolist()
    [4, 3, 3]
    >>> bool((make_folds(10, 3, strata=[0, 1] * 5, random_state=0) == f).all())
    True
    """
    n, k = int(n), int(k)
    if k < 2 or k > n:
        raise ValueError(f"k: expected 2 <= k <= n = {n} folds, got {k}")
    rng = check_random_state(random_state)
    if groups is not None:
        return _group_folds(np.asarray(groups), n, k, rng)
    if strata is None:
        order = rng.permutation(n)
    else:
        strata = np.asarray(strata)
        if strata.ndim != 1 or len(strata) != n:
            raise ValueError(f"strata: expected a 1-D array of {n} labels, got shape {strata.shape}")
        _, codes = np.unique(strata.astype(str), return_inverse=True)
        order = np.concatenate([rng.permutation(np.flatnonzero(codes == c)) for c in range(codes.max() + 1)])
    folds = np.empty(n, dtype=np.int64)
    folds[order] = np.arange(n) % k
    return folds


def _group_folds(groups: np.ndarray, n: int, k: int, rng) -> np.ndarray:
    if groups.shape != (n,):
        raise ValueError(f"groups: expected one label per row ({n}), got shape {groups.shape}")
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    sizes = np.bincount(codes)
    if len(sizes) < k:
        raise ValueError(f"groups: expected at least k = {k} clusters for {k} folds, got {len(sizes)}")
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load, of_group = np.zeros(k, dtype=np.int64), np.empty(len(sizes), dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        of_group[g] = f
        load[f] += sizes[g]
    return of_group[codes]


def fold_strata(data) -> np.ndarray:
    """The canonical strata of ``data``: treatment x every categorical confounder (graph-independent)."""
    labels = data.t.astype(str).astype(object)
    for name in data.categorical_confounders():
        labels = labels + "|" + data.x[name].astype(str).to_numpy().astype(object)
    return labels.astype(str)


def data_folds(data, k: int = 5, *, random_state=0, cluster=None) -> np.ndarray:
    """The folds every estimator uses on ``data``: :func:`make_folds` stratified by :func:`fold_strata`, or,
    with ``cluster`` labels (one per row), whole clusters per fold."""
    if cluster is not None:
        return make_folds(data.n, k, groups=cluster, random_state=random_state)
    return make_folds(data.n, k, strata=fold_strata(data), random_state=random_state)
