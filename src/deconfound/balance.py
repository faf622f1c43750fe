"""Balance functions c(x) and the entropy balancing problem (Hainmueller 2012), one or many at once.

The weights solve ``min sum_j w_j log(w_j / q_j)`` subject to ``sum_j w_j c(x_j) = m`` and ``sum_j w_j = 1``.
The dual is convex: ``lambda = argmin log sum_j q_j exp(lambda'(c_j - m))`` and ``w_j ~ q_j exp(lambda' c_j)``.
We solve it by Newton's method with a backtracking line search on standardized columns, vectorized over many
problems at once (bootstrap replicates; the Newton core is ``_ebsolver.py``). The public names are re-exported
by :mod:`deconfound.weights`, where the estimand weights (ATT, ATC, ATE) are built on them. Layer 2: numpy and
pandas only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import _ebsolver as solver
from ._validation import check_finite
from .errors import ConvergenceError, DataError

__all__ = ["BalanceMatrix", "EBBatchResult", "EBResult", "balance_matrix", "entropy_balance", "entropy_balance_batch"]

@dataclass(frozen=True, repr=False)
class BalanceMatrix:
    """Balance functions c(x) built by :func:`balance_matrix`.

    Attributes
    ----------
    values : ndarray of shape (n, p)
        The balance functions, float64.
    names : tuple of str
        Column names: ``"topic[b]"`` for one-hot columns, the column name otherwise.
    kinds : tuple of str
        ``"onehot"``, ``"soft"`` or ``"numeric"`` per column.
    topics : dict
        Categorical column name -> (integer codes of shape (n,), tuple of levels). Used for positivity checks
        and topic counts.
    soft : tuple of str
        All soft (probability) columns, including a dropped reference column.
    soft_values : ndarray of shape (n, s)
        Their values, for topic counts.
    """

    values: np.ndarray
    names: tuple
    kinds: tuple
    topics: dict = field(default_factory=dict)
    soft: tuple = ()
    soft_values: np.ndarray | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values, columns=list(self.names))


def _levels(values: np.ndarray) -> list:
    uniq = list(pd.unique(values))
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def balance_matrix(x, *, categorical=None, soft=None) -> BalanceMatrix:
    """Build balance functions c(x) from topic columns.

    Parameters
    ----------
    x : Series, DataFrame, array or BalanceMatrix
        Categorical columns become one-hot indicators with the reference level dropped: the first category
        of a pandas Categorical (as in ``MediationData.x_design``), else the first sorted level. As in
        :mod:`deconfound.data`, a column is categorical when its dtype is non-numeric or Categorical; a
        single 1-D input (Series or array) of integer dtype is read as topic ids and is categorical too.
        Numeric columns pass through; if they are probabilities whose rows sum to 1 (soft topics), the first
        column in sorted name order is dropped, since the columns would otherwise be collinear with the
        weights' normalization.
    categorical : list of str, optional
        Columns to treat as categorical; the others are numeric. Default: decided by dtype as above.
    soft : list of str or False, optional
        Columns forming one probability block. Default: all numeric columns, if there are at least two and
        they are probabilities summing to 1 in every row. ``False`` turns the detection off.

    Returns
    -------
    BalanceMatrix
    """
    if isinstance(x, BalanceMatrix):
        return x
    if isinstance(x, pd.Series):
        frame = x.to_frame(name=x.name if x.name is not None else "topic")
    elif isinstance(x, pd.DataFrame):
        frame = x
    else:
        arr = np.asarray(x)
        if arr.ndim == 1:
            frame = pd.DataFrame({"topic": arr})
        elif arr.ndim == 2:
            frame = pd.DataFrame(arr, columns=[f"x{j}" for j in range(arr.shape[1])])
        else:
            raise DataError(f"x: expected a 1-D or 2-D array, got {arr.ndim} dimensions")
    one_column = not isinstance(x, pd.DataFrame)
    frame = frame.reset_index(drop=True)
    cols = [str(c) for c in frame.columns]
    frame.columns = cols
    if categorical is None:
        is_cat = {c: (not pd.api.types.is_numeric_dtype(frame[c]) or isinstance(frame[c].dtype, pd.CategoricalDtype)
                      or (one_column and pd.api.types.is_integer_dtype(frame[c]))) for c in cols}
    else:
        unknown = sorted(set(map(str, categorical)) - set(cols))
        if unknown:
            raise DataError(f"categorical: expected columns of x {cols}, got unknown {unknown}")
        is_cat = {c: c in set(map(str, categorical)) for c in cols}
    numeric = [c for c in cols if not is_cat[c]]
    num = {c: check_finite(frame[c].to_numpy(), c) for c in numeric}
    if soft is None:
        block = numeric if len(numeric) >= 2 and _is_simplex(np.column_stack([num[c] for c in numeric])) else []
    elif soft is False:
        block = []
    else:
        block = [str(c) for c in soft]
        bad = [c for c in block if c not in num]
        if bad:
            raise DataError(f"soft: expected numeric columns of x {numeric}, got {bad}")
    block_sums_to_one = bool(block) and _is_simplex(np.column_stack([num[c] for c in block]))
    dropped_soft = sorted(block)[0] if block_sums_to_one else None
    values, names, kinds, topics = [], [], [], {}
    for c in cols:
        if is_cat[c]:
            raw = np.asarray(frame[c].to_numpy(), dtype=object)
            missing = pd.isna(raw)
            if missing.any():
                raise DataError(f"{c}: expected a topic label in every row, got {int(missing.sum())} missing "
                                f"(first rows: {np.flatnonzero(missing)[:5].tolist()})")
            dtype = frame[c].dtype
            levels = list(dtype.categories) if isinstance(dtype, pd.CategoricalDtype) else _levels(raw)
            codes = pd.Categorical(raw, categories=levels).codes.astype(np.int64)
            topics[c] = (codes, tuple(levels))
            for k, level in enumerate(levels[1:], start=1):
                values.append((codes == k).astype(float))
                names.append(f"{c}[{level}]")
                kinds.append("onehot")
        elif c != dropped_soft:
            values.append(num[c])
            names.append(c)
            kinds.append("soft" if c in block else "numeric")
    n = len(frame)
    mat = np.column_stack(values) if values else np.zeros((n, 0))
    soft_vals = np.column_stack([num[c] for c in block]) if block else None
    return BalanceMatrix(mat, tuple(names), tuple(kinds), topics, tuple(block), soft_vals)


def _is_simplex(p: np.ndarray) -> bool:
    return bool(p.size) and bool(np.all(p >= -1e-12) and np.all(p <= 1 + 1e-12)
                                 and np.all(np.abs(p.sum(axis=1) - 1.0) <= 1e-6))


def _as_matrix(covariates, name: str):
    """Return (float array (n, k), names) from an array, numeric DataFrame or BalanceMatrix."""
    if isinstance(covariates, BalanceMatrix):
        return covariates.values, list(covariates.names)
    if isinstance(covariates, pd.DataFrame):
        bad = [str(c) for c in covariates.columns if not pd.api.types.is_numeric_dtype(covariates[c])]
        if bad:
            raise DataError(f"{name}: expected numeric columns, got non-numeric {bad}; "
                            "build one-hot columns with balance_matrix()")
        names = [str(c) for c in covariates.columns]
        arr = covariates.to_numpy(dtype=float)
    else:
        arr = np.asarray(covariates, dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None]
        names = [f"x{j}" for j in range(arr.shape[1])] if arr.ndim == 2 else []
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D (rows x columns) array, got {arr.ndim} dimensions")
    return check_finite(arr, name), names


def _nonbinary(f: np.ndarray) -> np.ndarray:
    """Columns taking more than two distinct values (these get squared terms when moments=2)."""
    lo, hi = f.min(axis=0), f.max(axis=0)
    return ((f != lo) & (f != hi)).any(axis=0)


def _squares(f: np.ndarray, which: np.ndarray, center: np.ndarray) -> np.ndarray:
    return np.hstack([f, (f[:, which] - center[which]) ** 2])


def _check_counts(w, shape, name: str) -> np.ndarray:
    if w is None:
        return np.ones(shape)
    arr = check_finite(w, name)
    if arr.shape != tuple(shape):
        raise DataError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    if (arr < 0).any():
        raise DataError(f"{name}: expected non-negative frequency weights, got minimum {arr.min():.6g}")
    empty = np.flatnonzero(arr.reshape(-1, shape[-1]).sum(axis=1) <= 0)
    if empty.size:
        raise DataError(f"{name}: expected a positive total weight, got 0 (rows of the batch: {empty[:5].tolist()})")
    return arr


def _target_means(target, k: int, target_weights, name: str = "target"):
    """Return (target rows or None, their weights or None, target means (k,))."""
    if isinstance(target, (pd.DataFrame, BalanceMatrix)) or np.ndim(target) == 2:
        rows, _ = _as_matrix(target, name)
        if rows.shape[1] != k:
            raise DataError(f"{name}: expected {k} columns like the covariates, got {rows.shape[1]}")
        tw = _check_counts(target_weights, (rows.shape[0],), "target_weights")
        return rows, tw, tw @ rows / tw.sum()
    means = check_finite(np.atleast_1d(np.asarray(target, dtype=float)), name)
    if means.shape != (k,):
        raise DataError(f"{name}: expected {k} target means (or 2-D target rows), got shape {means.shape}")
    if target_weights is not None:
        raise ValueError("target_weights: expected None when target is a vector of means, got weights")
    return None, None, means


def _ess(w: np.ndarray, q: np.ndarray) -> dict:
    """Kish ESS and largest share for weights w of rows with frequency weights q (a row counts q times)."""
    pos = q > 0
    per_copy = w[pos] / q[pos]
    total = w.sum()
    ess = total**2 / np.sum(w[pos] * per_copy) if total > 0 else 0.0
    n = q.sum()
    return {"n": float(n), "ess": float(ess), "ess_ratio": float(ess / n), "max_share": float(per_copy.max() / total)}


def _moments(f: np.ndarray, w: np.ndarray):
    w = w / w.sum()
    dev = f - w @ f
    return w @ f, np.einsum("i,ij,ij->j", w, dev, dev)


def _smd(diff: np.ndarray, sd: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.where(diff == 0, 0.0, np.inf))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _fmt_frame(df: pd.DataFrame) -> str:
    return df.to_string(float_format=lambda v: f"{v:.4g}")


@dataclass(frozen=True, repr=False)
class EBResult:
    """Entropy balancing weights for one set of rows.

    Attributes
    ----------
    weights : ndarray of shape (n,)
        Sum to 1; 0 for rows with base weight 0 and for rows exact balance forces to 0.
    lambda_ : ndarray of shape (p,)
        Dual solution on the original scale of the balance functions: ``w ~ q exp(lambda_' (c - m))``.
    converged, iterations : bool, int
        Newton steps taken (a final polishing step is not counted).
    max_imbalance : float
        ``max |E_w[c] - m|`` over the balance functions, on their original scale.
    max_rel_imbalance : float
        The same divided by each column's SD (the scale of ``tol``).
    names : tuple of str
        Balance function names (squared terms end in ``^2``).
    target : ndarray of shape (p,)
        The target means m.
    diagnostics : dict
        ``n`` (sum of base weights), ``ess``, ``ess_ratio``, ``max_share``, ``n_forced_zero``.
    """

    weights: np.ndarray
    lambda_: np.ndarray
    converged: bool
    iterations: int
    max_imbalance: float
    max_rel_imbalance: float
    names: tuple
    target: np.ndarray
    diagnostics: dict
    table: pd.DataFrame

    def __repr__(self) -> str:
        return (f"EBResult(n={len(self.weights)}, converged={self.converged}, iterations={self.iterations}, "
                f"max_imbalance={self.max_imbalance:.3g}, ess={self.diagnostics['ess']:.1f})")

    def balance_table(self) -> pd.DataFrame:
        """Per covariate: target mean, raw and weighted means of the weighted rows, SMD before and after
        (pooled unweighted SD of target and rows; ddof 0) and variance ratios (rows / target)."""
        return self.table.copy()

    def summary(self) -> str:
        d = self.diagnostics
        head = (f"Entropy balancing: converged={self.converged} in {self.iterations} Newton steps, "
                f"max imbalance {self.max_imbalance:.3g} ({self.max_rel_imbalance:.3g} SDs)\n"
                f"n={d['n']:g}  ESS={d['ess']:.1f}  ESS/n={d['ess_ratio']:.3f}  max weight share="
                f"{d['max_share']:.4g}  rows forced to weight 0: {d['n_forced_zero']}")
        return head + "\n" + _fmt_frame(self.table)


def _balance_frame(f, q, w, rows, tw, means, names) -> pd.DataFrame:
    raw_mean, raw_var = _moments(f, q)
    w_mean, w_var = _moments(f, w)
    if rows is not None:
        t_mean, t_var = _moments(rows, tw)
        sd = np.sqrt((t_var + raw_var) / 2.0)
    else:
        t_mean, t_var, sd = means, np.full(len(means), np.nan), np.sqrt(raw_var)
    return pd.DataFrame({
        "target_mean": t_mean, "raw_mean": raw_mean, "weighted_mean": w_mean,
        "smd_before": _smd(raw_mean - t_mean, sd), "smd_after": _smd(w_mean - t_mean, sd),
        "var_ratio_before": _ratio(raw_var, t_var), "var_ratio_after": _ratio(w_var, t_var),
    }, index=pd.Index(names, name="covariate"))


def _design(f, names, rows, tw, means, moments, center=None):
    """Append squared centred terms for non-binary columns (moments=2). Returns f, rows, means, names."""
    if moments not in (1, 2):
        raise ValueError(f"moments: expected 1 or 2, got {moments!r}")
    if moments == 1:
        return f, rows, means, list(names)
    if rows is None:
        raise ValueError("moments=2: expected target rows (a 2-D array), got a vector of means; the target "
                         "second moments cannot be computed from means")
    which = _nonbinary(np.vstack([f, rows]))
    c = means if center is None else center
    rows2 = _squares(rows, which, c)
    sq_names = [f"{nm}^2" for nm, keep in zip(names, which) if keep]
    return _squares(f, which, c), rows2, tw @ rows2 / tw.sum(), list(names) + sq_names


def entropy_balance(covariates, target, *, base_weights=None, target_weights=None, moments=1, tol=1e-8,
                    max_iter=200) -> EBResult:
    """Entropy balancing weights that make the weighted means of ``covariates`` equal ``target``.

    Parameters
    ----------
    covariates : array (n, k), numeric DataFrame or BalanceMatrix
        Rows to weight (e.g. the controls).
    target : array (k,) of means, or array / DataFrame (n_t, k) of target rows
        With rows, the target means are their (``target_weights``-weighted) means.
    base_weights : array (n,), optional
        Frequency weights (e.g. bootstrap counts): a row with weight 3 counts as three identical rows, 0 means
        absent. The result equals that of duplicating rows, diagnostics included. Default: all 1.
    target_weights : array (n_t,), optional
        Frequency weights of the target rows.
    moments : {1, 2}
        2 adds squared centred terms for columns with more than two distinct values (not one-hot columns);
        this needs target rows.
    tol : float
        Converged when every ``|E_w[c_j] - m_j|`` is below ``tol`` times the SD of column j.
    max_iter : int
        Maximum Newton steps.

    Returns
    -------
    EBResult

    Raises
    ------
    ConvergenceError
        Not converged, or infeasible (a target mean outside the range of the rows); the message gives the
        remaining imbalance.

    Notes
    -----
    Columns are centred at the target and scaled by their SD before solving. Exactly collinear or constant
    columns are allowed: the Newton step uses the pseudo-inverse of the Hessian (eigenvalues below 1e-10 of
    the largest are dropped), so lambda is the minimum-norm solution and the weights are unique. When a target
    mean sits exactly on the edge of a column's range (e.g. a topic with no target rows), rows off that edge
    get weight exactly 0, which is the limit of the entropy solution.

    Examples
    --------
    >>> import numpy as np
    >>> res = entropy_balance(np.array([[0.0], [1.0], [1.0], [0.0]]), [0.75])
    >>> np.round(res.weights, 4).tolist()
    [0.125, 0.375, 0.375, 0.125]
    """
    f, names = _as_matrix(covariates, "covariates")
    n, k = f.shape
    q = _check_counts(base_weights, (n,), "base_weights")
    rows, tw, means = _target_means(target, k, target_weights)
    f2, rows2, m2, names2 = _design(f, names, rows, tw, means, moments)
    sol = solver.solve(f2, q[None], m2[None], tol=tol, max_iter=int(max_iter), scale_weights=q)
    if not sol.converged[0]:
        raise ConvergenceError(solver.failure_message(sol, 0, names2, tol, max_iter, "entropy_balance"))
    w = sol.weights[0]
    diag = _ess(w, q)
    diag["n_forced_zero"] = int(sol.forced_zero[0])
    rel = np.abs(sol.imbalance[0]) / sol.scale
    return EBResult(
        weights=w, lambda_=sol.lam[0], converged=True, iterations=int(sol.iterations[0]),
        max_imbalance=float(np.abs(sol.imbalance[0]).max(initial=0.0)), max_rel_imbalance=float(rel.max(initial=0.0)),
        names=tuple(names2), target=m2, diagnostics=diag, table=_balance_frame(f, q, w, rows, tw, means, names))


@dataclass(frozen=True, repr=False)
class EBBatchResult:
    """Weights for many problems at once (one per bootstrap replicate).

    Attributes
    ----------
    weights : ndarray (B, n)
        Each row sums to 1 (per arm for :func:`eb_weights_batch`); NaN rows for failures when
        ``on_failure="nan"``.
    lambda_ : ndarray (B, p) or None
        Dual solutions (None for :func:`eb_weights_batch`; see ``arms``).
    converged, iterations, max_imbalance : ndarray (B,)
    names : tuple of str
    arms : dict
        Per-arm EBBatchResult (estimand helpers only).
    """

    weights: np.ndarray
    lambda_: np.ndarray | None
    converged: np.ndarray
    iterations: np.ndarray
    max_imbalance: np.ndarray
    names: tuple
    arms: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"EBBatchResult(problems={self.weights.shape[0]}, n={self.weights.shape[1]}, "
                f"converged={int(self.converged.sum())}/{self.converged.size})")


def entropy_balance_batch(covariates, target, base_weights, *, target_weights=None, moments=1, tol=1e-8,
                          max_iter=200, warm_start=True, on_failure="raise") -> EBBatchResult:
    """Entropy balancing for many frequency-weight vectors at once (e.g. bootstrap counts).

    Parameters
    ----------
    covariates : array (n, k), numeric DataFrame or BalanceMatrix
    target : array (k,) of means or (n_t, k) of target rows
    base_weights : array (B, n)
        One row of frequency weights per problem (zeros allowed).
    target_weights : array (B, n_t), optional
        Frequency weights of the target rows per problem (needs target rows).
    moments, tol, max_iter
        As in :func:`entropy_balance`. Squared terms are centred at the unweighted target mean; this changes
        nothing in the weights, only the conditioning.
    warm_start : bool
        Start every problem from the solution of the average problem.
    on_failure : {"raise", "nan"}
        ``"nan"`` returns NaN weights and ``converged=False`` for problems that fail.

    Returns
    -------
    EBBatchResult

    Notes
    -----
    The Newton iterations run on all problems together in numpy (no per-row Python); problems whose columns
    are all 0/1 (one-hot topics) are collapsed to their distinct rows first, which makes them tiny.
    """
    if on_failure not in ("raise", "nan"):
        raise ValueError(f"on_failure: expected 'raise' or 'nan', got {on_failure!r}")
    f, names = _as_matrix(covariates, "covariates")
    n, k = f.shape
    qb = np.atleast_2d(_check_counts(base_weights, np.shape(base_weights), "base_weights"))
    if qb.ndim != 2 or qb.shape[1] != n:
        raise DataError(f"base_weights: expected shape (B, {n}), got {np.shape(base_weights)}")
    rows, _, means = _target_means(target, k, None)
    twb = None
    if target_weights is not None:
        if rows is None:
            raise ValueError("target_weights: expected target rows (2-D), got a vector of means")
        twb = np.atleast_2d(_check_counts(target_weights, np.shape(target_weights), "target_weights"))
        if twb.shape != (qb.shape[0], rows.shape[0]):
            raise DataError(f"target_weights: expected shape ({qb.shape[0]}, {rows.shape[0]}), got {twb.shape}")
    return _batch(f, names, qb, rows, means, twb, moments, tol, int(max_iter), warm_start, on_failure)


def _batch(f, names, qb, rows, means, twb, moments, tol, max_iter, warm_start, on_failure) -> EBBatchResult:
    f2, rows2, m2, names2 = _design(f, names, rows, None if rows is None else np.ones(len(rows)), means, moments)
    mb = np.broadcast_to(m2, (qb.shape[0], m2.size)) if twb is None else (twb @ rows2) / twb.sum(1, keepdims=True)
    lam0 = None
    scale_w = np.ones(f.shape[0])
    if warm_start and qb.shape[0] > 1:
        start = solver.solve(f2, qb.mean(axis=0)[None], mb.mean(axis=0)[None], tol=tol, max_iter=max_iter,
                             scale_weights=scale_w)
        if start.converged[0]:
            lam0 = np.broadcast_to(start.lam[0], mb.shape)
    sol = solver.solve(f2, qb, mb, tol=tol, max_iter=max_iter, scale_weights=scale_w, lam0=lam0)
    bad = np.flatnonzero(~sol.converged)
    if bad.size and on_failure == "raise":
        msg = solver.failure_message(sol, int(bad[0]), names2, tol, max_iter, f"replicate {int(bad[0])}")
        raise ConvergenceError(f"{bad.size} of {qb.shape[0]} problems failed; first: {msg}")
    w = sol.weights
    w[bad] = np.nan
    return EBBatchResult(w, sol.lam, sol.converged, sol.iterations,
                         np.abs(sol.imbalance).max(axis=1, initial=0.0), tuple(names2))
