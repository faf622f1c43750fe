"""Entropy balancing weights (Hainmueller 2012) and their diagnostics.

The weights solve ``min sum_j w_j log(w_j / q_j)`` subject to ``sum_j w_j c(x_j) = m`` and ``sum_j w_j = 1``.
The dual is convex: ``lambda = argmin log sum_j q_j exp(lambda'(c_j - m))`` and ``w_j ~ q_j exp(lambda' c_j)``.
We solve it by Newton's method with a backtracking line search on standardized columns, vectorized over many
problems at once (bootstrap replicates). This module holds the estimand weights (ATT, ATC, ATE, one sample or
many count vectors); the balance functions and the generic problem (``balance_matrix``, ``entropy_balance``,
``entropy_balance_batch``) live in :mod:`deconfound.balance` and are re-exported here. Layer 2: numpy and pandas only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .balance import (BalanceMatrix, EBBatchResult, EBResult, _batch, _check_counts, _ess, _fmt_frame, _moments,
                       _ratio, _smd, balance_matrix, entropy_balance, entropy_balance_batch)
from ._validation import check_binary, check_finite, check_length
from .errors import ConvergenceError, DataError, PositivityError
from .positivity import as_count, level_counts, positivity_message, unsupported

__all__ = [
    "BalanceMatrix", "EBBatchResult", "EBResult", "EBWeights", "balance_matrix", "eb_att", "eb_atc", "eb_ate",
    "eb_weights_batch", "entropy_balance", "entropy_balance_batch",
]

_ESTIMANDS = ("ATT", "ATC", "ATE")


@dataclass(frozen=True, repr=False)
class EBWeights:
    """Entropy balancing weights for an estimand (ATT, ATC, ATE) on a full sample.

    Attributes
    ----------
    estimand : str
    weights : ndarray (n,)
        Per-row weights, summing to 1 within each arm; 0 for dropped rows and rows with base weight 0.
    treatment : ndarray (n,)
    fits : dict
        ``{"control": EBResult}`` (ATT), ``{"treated": ...}`` (ATC), both (ATE): the arms that were solved.
    kept : ndarray of bool (n,)
        Rows kept (False for rows of topics dropped by ``drop_unsupported``).
    dropped : DataFrame
        Dropped topics with their counts (variable, level, n1, n0); empty if none.
    diagnostics : DataFrame
        Per arm: n, ESS, ESS/n, largest weight share, converged, iterations, max imbalance.
    """

    estimand: str
    weights: np.ndarray
    treatment: np.ndarray
    fits: dict
    kept: np.ndarray
    dropped: pd.DataFrame
    diagnostics: pd.DataFrame
    table: pd.DataFrame
    topics: pd.DataFrame

    @property
    def converged(self) -> bool:
        return all(fit.converged for fit in self.fits.values())

    def __repr__(self) -> str:
        ess = ", ".join(f"ess_{arm}={v:.1f}" for arm, v in self.diagnostics["ess"].items())
        return (f"EBWeights({self.estimand}, n={len(self.weights)}, converged={self.converged}, {ess}, "
                f"dropped={len(self.dropped)})")

    def balance_table(self) -> pd.DataFrame:
        """Per covariate: treated and control means, raw and weighted; SMD = (treated - control) / pooled SD,
        the SD being the unweighted pooled SD sqrt((var_t + var_c) / 2) of the full sample (ddof 0), before
        and after weighting; variance ratios control / treated, before and after."""
        return self.table.copy()

    def topic_counts(self) -> pd.DataFrame:
        """Per topic level: n1 (treated) and n0 (control) counts (sums of probabilities for soft topics),
        and whether the level was dropped."""
        return self.topics.copy()

    def summary(self) -> str:
        lines = [f"Entropy balancing weights for the {self.estimand}: converged={self.converged}",
                 _fmt_frame(self.diagnostics), "", "Balance table:", _fmt_frame(self.table)]
        if len(self.topics):
            lines += ["", "Topic counts:", self.topics.to_string()]
        if len(self.dropped):
            lines += ["", f"Dropped topics without overlap ({int((~self.kept).sum())} rows removed):",
                      self.dropped.to_string(index=False)]
        return "\n".join(lines)


def _topic_table(bm: BalanceMatrix, t: np.ndarray, q: np.ndarray, estimand: str):
    """Per-level counts (n1, n0) and the unsupported levels for the estimand (soft topics: probability sums)."""
    table = level_counts(bm.topics, t, q, estimand)
    if bm.soft_values is not None:
        s1, s0 = (q * t) @ bm.soft_values, (q * (1 - t)) @ bm.soft_values
        soft = pd.DataFrame([(c, c, "soft", as_count(a), as_count(b), False, -1) for c, a, b in zip(bm.soft, s1, s0)],
                            columns=table.columns)
        table = pd.concat([table, soft], ignore_index=True) if len(table) else soft
    return table


def _estimand_weights(c, t, estimand, base_weights, moments, tol, max_iter, drop_unsupported) -> EBWeights:
    bm = balance_matrix(c)
    n = len(bm)
    t = check_binary(t, "treatment").astype(np.int64)
    check_length(t, n, "treatment")
    q = _check_counts(base_weights, (n,), "base_weights")
    for arm, label in ((1, "treated"), (0, "control")):
        if q[t == arm].sum() <= 0:
            raise DataError(f"treatment: expected {label} rows with positive weight, got none")
    topics = _topic_table(bm, t, q, estimand)
    bad = topics[topics["unsupported"]]
    kept = np.ones(n, bool)
    if len(bad):
        if not drop_unsupported:
            raise PositivityError(positivity_message(bad, estimand))
        for r in bad.itertuples():
            kept &= bm.topics[r.variable][0] != r.code
    topics = topics.assign(dropped=topics["unsupported"] & drop_unsupported).drop(columns=["code", "unsupported"])
    qk = np.where(kept, q, 0.0)
    f, names = bm.values, list(bm.names)
    arms = {"ATT": (0,), "ATC": (1,), "ATE": (1, 0)}[estimand]
    tgt = {"ATT": t == 1, "ATC": t == 0, "ATE": np.ones(n, bool)}[estimand]
    w = np.where(tgt, qk, 0.0)
    fits = {}
    for arm in arms:
        label = "treated" if arm == 1 else "control"
        src = t == arm
        try:
            fit = entropy_balance(pd.DataFrame(f[src], columns=names), f[tgt], base_weights=qk[src],
                                  target_weights=qk[tgt], moments=moments, tol=tol, max_iter=max_iter)
        except ConvergenceError as err:
            raise ConvergenceError(f"{estimand} weights for the {label} arm: {err}") from None
        fits[label] = fit
        w[src] = fit.weights
    for arm in (0, 1):
        sel = t == arm
        w[sel] = w[sel] / w[sel].sum()
    diag = {}
    for arm, label in ((1, "treated"), (0, "control")):
        sel = t == arm
        d = _ess(w[sel], qk[sel])
        fit = fits.get(label)
        d.update(weighting="entropy" if fit else "uniform", converged=True if fit is None else fit.converged,
                 iterations=0 if fit is None else fit.iterations,
                 max_imbalance=0.0 if fit is None else fit.max_imbalance)
        diag[label] = d
    return EBWeights(estimand, w, t, fits, kept, topics[topics["dropped"]][["variable", "level", "n1", "n0"]]
                     .reset_index(drop=True), pd.DataFrame.from_dict(diag, orient="index"),
                     _arm_table(f, names, t, q, w), topics)


def _arm_table(f, names, t, q, w) -> pd.DataFrame:
    t1, c0 = t == 1, t == 0
    m1, v1 = _moments(f[t1], q[t1])
    m0, v0 = _moments(f[c0], q[c0])
    mw1, vw1 = _moments(f[t1], w[t1])
    mw0, vw0 = _moments(f[c0], w[c0])
    sd = np.sqrt((v1 + v0) / 2.0)
    return pd.DataFrame({
        "treated_raw": m1, "treated_weighted": mw1, "control_raw": m0, "control_weighted": mw0,
        "smd_before": _smd(m1 - m0, sd), "smd_after": _smd(mw1 - mw0, sd),
        "var_ratio_before": _ratio(v0, v1), "var_ratio_after": _ratio(vw0, vw1),
    }, index=pd.Index(names, name="covariate"))


_HELP_PARAMS = """
    Parameters
    ----------
    c : Series, DataFrame, array or BalanceMatrix
        Covariates; categorical columns become one-hot (see :func:`balance_matrix`).
    t : array (n,)
        Treatment, 0/1.
    base_weights : array (n,), optional
        Frequency weights (bootstrap counts) for every row.
    moments, tol, max_iter
        As in :func:`entropy_balance`.
    drop_unsupported : bool
        Drop the rows of topics without overlap instead of raising PositivityError; recorded in ``dropped``
        and ``kept``.

    Returns
    -------
    EBWeights

    Raises
    ------
    PositivityError
        A topic without overlap (its name and counts n1, n0 are in the message).
    ConvergenceError
        The solver did not reach the tolerance (general covariates without overlap end here).
"""


def eb_att(c, t, *, base_weights=None, moments=1, tol=1e-8, max_iter=200, drop_unsupported=False) -> EBWeights:
    return _estimand_weights(c, t, "ATT", base_weights, moments, tol, max_iter, drop_unsupported)


def eb_atc(c, t, *, base_weights=None, moments=1, tol=1e-8, max_iter=200, drop_unsupported=False) -> EBWeights:
    return _estimand_weights(c, t, "ATC", base_weights, moments, tol, max_iter, drop_unsupported)


def eb_ate(c, t, *, base_weights=None, moments=1, tol=1e-8, max_iter=200, drop_unsupported=False) -> EBWeights:
    return _estimand_weights(c, t, "ATE", base_weights, moments, tol, max_iter, drop_unsupported)


eb_att.__doc__ = "Entropy balancing for the ATT: controls reweighted to the treated means; treated uniform.\n" + \
    _HELP_PARAMS
eb_atc.__doc__ = "Entropy balancing for the ATC: treated reweighted to the control means; controls uniform.\n" + \
    _HELP_PARAMS
eb_ate.__doc__ = "Entropy balancing for the ATE: each arm reweighted to the pooled means (solved per arm).\n" + \
    _HELP_PARAMS


def eb_weights_batch(c, t, counts, *, estimand="ATT", moments=1, tol=1e-8, max_iter=200,
                     on_failure="raise") -> EBBatchResult:
    """Estimand weights for many bootstrap count vectors at once.

    Parameters
    ----------
    c, t
        As in :func:`eb_att`.
    counts : array (B, n)
        Frequency weights per replicate (multinomial counts; 0 = row absent).
    estimand : {"ATT", "ATC", "ATE"}
    moments, tol, max_iter
        As in :func:`entropy_balance`.
    on_failure : {"raise", "nan"}
        A replicate with a topic without overlap raises PositivityError (naming replicate, topic and counts)
        and one that does not converge raises ConvergenceError; with ``"nan"`` their weights are NaN instead.

    Returns
    -------
    EBBatchResult
        ``weights`` (B, n) sum to 1 within each arm; row b equals ``eb_att(c, t, base_weights=counts[b])``
        up to the solver tolerance.
    """
    estimand = str(estimand).upper()
    if estimand not in _ESTIMANDS:
        raise ValueError(f"estimand: expected one of {_ESTIMANDS}, got {estimand!r}")
    if on_failure not in ("raise", "nan"):
        raise ValueError(f"on_failure: expected 'raise' or 'nan', got {on_failure!r}")
    bm = balance_matrix(c)
    n = len(bm)
    t = check_binary(t, "treatment").astype(np.int64)
    check_length(t, n, "treatment")
    qb = np.atleast_2d(check_finite(counts, "counts"))
    if qb.ndim != 2 or qb.shape[1] != n or (qb < 0).any():
        raise DataError(f"counts: expected non-negative frequency weights of shape (B, {n}), got shape "
                        f"{np.shape(counts)} with minimum {qb.min():.6g}")
    bsz = qb.shape[0]
    failed = np.zeros(bsz, bool)
    for col, (codes, levels) in bm.topics.items():
        onehot = np.zeros((n, len(levels)))
        onehot[np.arange(n), codes] = 1.0
        n1, n0 = qb @ (onehot * t[:, None]), qb @ (onehot * (1 - t)[:, None])
        bad = unsupported(n1, n0, estimand)
        hit = bad.any(axis=1)
        if hit.any() and on_failure == "raise":
            b = int(np.flatnonzero(hit)[0])
            rows = pd.DataFrame([(col, levels[j], as_count(n1[b, j]), as_count(n0[b, j])) for j in np.flatnonzero(bad[b])],
                                columns=["variable", "level", "n1", "n0"])
            raise PositivityError(f"replicate {b} ({int(hit.sum())} of {bsz} replicates affected): "
                                  + positivity_message(rows, estimand))
        failed |= hit
    order = np.argsort(t, kind="stable")       # controls first: each arm is a contiguous block of columns
    n0 = int(np.sum(t == 0))
    arm_cols = {0: slice(0, n0), 1: slice(n0, n)}
    fo = bm.values[order]
    qo = qb[:, order]
    qo[failed] = 1.0                           # placeholder problems for failed replicates (NaN below)
    for arm, label in ((1, "treated"), (0, "control")):
        if (qo[:, arm_cols[arm]].sum(axis=1) <= 0).any():
            raise DataError(f"counts: expected {label} rows with positive counts in every replicate, got none in "
                            f"replicate {int(np.argmax(qo[:, arm_cols[arm]].sum(axis=1) <= 0))}")
    tgt = {"ATT": arm_cols[1], "ATC": arm_cols[0], "ATE": slice(0, n)}[estimand]
    w = np.empty_like(qo)
    conv = ~failed
    iters = np.zeros(bsz, np.int64)
    imb = np.zeros(bsz)
    results = {}
    for arm in (0, 1):
        cols = arm_cols[arm]
        label = "treated" if arm == 1 else "control"
        if estimand != "ATE" and cols == tgt:
            w[:, cols] = qo[:, cols] / qo[:, cols].sum(axis=1, keepdims=True)
            continue
        res = _batch(fo[cols], list(bm.names), qo[:, cols], fo[tgt], None, qo[:, tgt], moments, tol, int(max_iter),
                     True, on_failure)
        results[label] = res
        w[:, cols] = res.weights
        conv &= res.converged
        iters = np.maximum(iters, res.iterations)
        imb = np.maximum(imb, res.max_imbalance)
    w[~conv] = np.nan
    out = np.empty_like(w)
    out[:, order] = w
    return EBBatchResult(out, None, conv, iters, imb, bm.names, results)
