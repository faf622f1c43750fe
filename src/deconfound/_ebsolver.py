"""Numerical core of entropy balancing (used by weights.py): a damped Newton method on the convex dual,
vectorized over many problems that share one covariate matrix (bootstrap replicates). numpy and scipy only.

Problem i: base weights q_i (n,), target m_i (p,). Dual: min_l log sum_j q_ij exp(l'c_j) - l'm_i, with
gradient E_w[c] - m_i and Hessian Cov_w[c]; weights w_ij ~ q_ij exp(l'c_j).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

RCOND = 1e-10       # Hessian eigenvalues below this fraction of the largest are treated as zero (pseudo-inverse)
ARMIJO = 1e-4       # sufficient-decrease constant of the backtracking line search
MIN_STEP = 1e-12    # the line search gives up (stalls) below this step length
BLOCK = 1 << 19     # problems x rows per block (bounds memory, keeps blocks in cache)


@dataclass
class Solution:
    weights: np.ndarray      # (a, n), rows sum to 1; NaN rows where infeasible
    lam: np.ndarray          # (a, p), original scale of the columns
    converged: np.ndarray    # (a,)
    iterations: np.ndarray   # (a,) Newton steps (a final polishing step is not counted)
    imbalance: np.ndarray    # (a, p) E_w[c] - m, original scale
    scale: np.ndarray        # (p,) column SDs: the scale of the tolerance
    forced_zero: np.ndarray  # (a,) rows with positive base weight that exact balance forces to weight 0
    infeasible: list         # per problem: None or (column index, message)


def _evaluate(fs, logq, ms, lam):
    """Weights, gradient, dual objective and weighted means at lam (rows of problems)."""
    w = lam @ fs.T
    w += logq
    mx = w.max(axis=1)
    w -= mx[:, None]
    np.exp(w, out=w)
    s = w.sum(axis=1)
    w /= s[:, None]
    mean = w @ fs
    loss = np.log(s) + mx - np.einsum("ij,ij->i", lam, ms)
    return w, mean - ms, loss, mean


def _hessians(fs, w, mean, pairs):
    p = fs.shape[1]
    if pairs is not None:                      # one GEMM for all problems: w @ (c_j c_k products)
        iu = np.triu_indices(p)
        h = np.zeros((w.shape[0], p, p))
        h[:, iu[0], iu[1]] = w @ pairs
        h += np.triu(h, 1).transpose(0, 2, 1)
    else:
        h = np.empty((w.shape[0], p, p))
        for i, wi in enumerate(w):
            xs = fs * np.sqrt(wi)[:, None]
            h[i] = xs.T @ xs
    return h - mean[:, :, None] * mean[:, None, :]


def _newton_steps(h, g):
    """-pinv(H) g per problem, by eigendecomposition (handles collinear and constant columns)."""
    vals, vecs = np.linalg.eigh(h)
    cut = RCOND * np.maximum(vals[:, -1:], np.finfo(float).tiny)
    inv = np.divide(1.0, vals, out=np.zeros_like(vals), where=vals > cut)
    coef = np.einsum("aji,aj->ai", vecs, g) * inv
    return -np.einsum("aij,aj->ai", vecs, coef)


def newton(fs, logq, ms, lam, tol, max_iter):
    """Damped Newton on a block of problems; returns (lam, weights, converged, iterations).

    A problem is converged when max |gradient| < tol (standardized columns). It then takes one more full
    Newton step, kept only if it lowers the gradient (this makes the weights accurate well below tol). A
    problem whose line search finds no decrease stops (stalls), e.g. when the target is outside the hull.
    """
    a, p = lam.shape
    n = fs.shape[0]
    pairs = None
    if a > 1 and n * p * (p + 1) // 2 <= 4 * BLOCK:
        iu = np.triu_indices(p)
        pairs = fs[:, iu[0]] * fs[:, iu[1]]
    w, g, loss, mean = _evaluate(fs, logq, ms, lam)
    gmax = np.abs(g).max(axis=1, initial=0.0)
    done = np.zeros(a, bool)
    conv = np.zeros(a, bool)
    iters = np.zeros(a, np.int64)
    if p == 0:
        return lam, w, np.ones(a, bool), iters
    for _ in range(max_iter + 1):
        act = np.flatnonzero(~done)
        polish = gmax[act] < tol
        spent = ~polish & (iters[act] >= max_iter)
        done[act[spent]] = True
        act, polish = act[~spent], polish[~spent]
        if act.size == 0:
            break
        delta = _newton_steps(_hessians(fs, w[act], mean[act], pairs), g[act])
        slope = np.einsum("ij,ij->i", g[act], delta)
        t = np.ones(act.size)
        accepted = np.zeros(act.size, bool)
        pending = np.arange(act.size)
        while pending.size:
            idx = act[pending]
            trial = lam[idx] + t[pending, None] * delta[pending]
            w2, g2, l2, m2 = _evaluate(fs, logq[idx], ms[idx], trial)
            g2max = np.abs(g2).max(axis=1, initial=0.0)
            slack = 1e-12 * (1.0 + np.abs(loss[idx]))      # rounding in the objective near the optimum
            armijo = np.isfinite(l2) & (l2 <= loss[idx] + ARMIJO * t[pending] * slope[pending] + slack)
            ok = np.where(polish[pending], g2max < gmax[idx], armijo) & (slope[pending] < 0)
            take = pending[ok]
            ti = act[take]
            lam[ti], w[ti], g[ti], loss[ti], mean[ti], gmax[ti] = trial[ok], w2[ok], g2[ok], l2[ok], m2[ok], g2max[ok]
            accepted[take] = True
            rest = pending[~ok & ~polish[pending] & (slope[pending] < 0)]
            t[rest] *= 0.5
            pending = rest[t[rest] >= MIN_STEP]
        iters[act[~polish & accepted]] += 1
        done[act[polish]] = True
        stalled = act[~polish & ~accepted]
        done[stalled] = True
    conv = gmax < tol
    return lam, w, conv, iters


def collapse(f: np.ndarray):
    """Distinct rows of a 0/1 matrix: (patterns, inverse), or None if f is not binary or has few repeats."""
    n, p = f.shape
    if n < 2 or p == 0 or not np.all((f == 0) | (f == 1)):
        return None
    packed = np.ascontiguousarray(np.packbits(f.astype(bool), axis=1))
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    if first.size > n // 2:
        return None
    return f[first], inv.ravel()


def _ranges(f, sup):
    """Per problem and column, min and max of f over the rows in the support: (a, p) each.

    For many problems, look at the EDGE rows with the smallest (largest) values first; only problems with
    none of them in the support (rare for bootstrap counts) scan all rows.
    """
    a, (n, p) = sup.shape[0], f.shape
    if a == 1:
        fi = f if sup[0].all() else f[sup[0]]
        return fi.min(axis=0, initial=np.inf)[None], fi.max(axis=0, initial=-np.inf)[None]
    order = np.argsort(f, axis=0, kind="stable")
    edge = min(n, 64)
    out = []
    for rows_first, fill, pick in ((order[:edge], np.inf, np.min), (order[::-1][:edge], -np.inf, np.max)):
        res = np.empty((a, p))
        for j in range(p):
            s = sup[:, rows_first[:, j]]
            res[:, j] = f[rows_first[s.argmax(axis=1), j], j]
            miss = np.flatnonzero(~s.any(axis=1))
            if miss.size:
                res[miss, j] = pick(np.where(sup[miss], f[:, j], fill), axis=1)
        out.append(res)
    return out[0], out[1]


def reduce_support(f, q, m, scale):
    """Give weight 0 to rows that exact balance forces to 0 (a target mean on the edge of a column's range,
    e.g. a topic with no target rows); flag a target outside a column's range as infeasible.

    Returns (q with those rows zeroed, per-problem None or (column, message)).
    """
    q = q.copy()
    msgs = [None] * q.shape[0]
    todo = np.arange(q.shape[0])
    while todo.size:
        lo, hi = _ranges(f, q[todo] > 0)
        mt = m[todo]
        eps = 1e-12 * np.maximum(scale, np.maximum(np.abs(lo), np.abs(hi)))
        out = (mt < lo - eps) | (mt > hi + eps)
        for r in np.flatnonzero(out.any(axis=1)):
            i, j = todo[r], int(np.flatnonzero(out[r])[0])
            gap = max(lo[r, j] - mt[r, j], mt[r, j] - hi[r, j])
            msgs[i] = (j, f"target mean {mt[r, j]:.6g} is outside the range [{lo[r, j]:.6g}, {hi[r, j]:.6g}] of "
                          f"the rows being weighted (remaining imbalance at least {gap:.3g})")
        at_lo = (hi > lo) & (np.abs(mt - lo) <= eps) & ~out.any(axis=1, keepdims=True)
        at_hi = (hi > lo) & (np.abs(mt - hi) <= eps) & ~out.any(axis=1, keepdims=True)
        again = []
        for r in np.flatnonzero(at_lo.any(axis=1) | at_hi.any(axis=1)):
            lo_j, hi_j = at_lo[r], at_hi[r]
            kill = (f[:, lo_j] > lo[r, lo_j]).any(axis=1) | (f[:, hi_j] < hi[r, hi_j]).any(axis=1)
            if (kill & (q[todo[r]] > 0)).any():
                q[todo[r], kill] = 0.0
                again.append(todo[r])
        todo = np.array(again, dtype=np.int64)
    return q, msgs


def solve(f, q, m, *, tol, max_iter, scale_weights, lam0=None) -> Solution:
    """Entropy balance the problems (q[i], m[i]) that share the matrix f (n, p)."""
    n, p = f.shape
    a = q.shape[0]
    sw = scale_weights / scale_weights.sum()
    mu = sw @ f
    dev = f - mu
    scale = np.sqrt(np.einsum("i,ij,ij->j", sw, dev, dev))
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mu)), scale, 1.0)
    center = m.mean(axis=0)
    packed = collapse(f)
    if packed is not None:                     # one-hot topics: solve on the distinct rows
        u, inv = packed
        if n * u.shape[0] <= 4 * BLOCK:
            group = np.zeros((n, u.shape[0]))
            group[np.arange(n), inv] = 1.0
        else:
            group = sparse.csr_matrix((np.ones(n), (np.arange(n), inv)), shape=(n, u.shape[0]))
        qu = np.asarray(q @ group)
    else:
        u, inv, qu = f, None, q
    qr, msgs = reduce_support(u, qu, m, scale)
    fs = (u - center) / scale
    ms = (m - center) / scale
    lam = np.zeros((a, p)) if lam0 is None else np.array(lam0, dtype=float) * scale
    wu = np.full((a, u.shape[0]), np.nan)
    conv = np.zeros(a, bool)
    iters = np.zeros(a, np.int64)
    ok = np.flatnonzero([msg is None for msg in msgs])
    step = max(1, BLOCK // max(u.shape[0], 1))
    with np.errstate(divide="ignore"):
        for start in range(0, ok.size, step):
            blk = ok[start:start + step]
            lb, wb, cb, ib = newton(fs, np.log(qr[blk]), ms[blk], lam[blk].copy(), tol, max_iter)
            lam[blk], wu[blk], conv[blk], iters[blk] = lb, wb, cb, ib
    imbalance = wu @ u - m
    forced_u = (qu > 0) & ~(qr > 0)
    if inv is None:
        w, forced = wu, forced_u.sum(axis=1)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(qu > 0, wu / np.where(qu > 0, qu, 1.0), 0.0)
        w = ratio[:, inv] * q
        forced = np.zeros(a, np.int64)
        if forced_u.any():
            forced = (np.asarray((q > 0).astype(float) @ group) * forced_u).sum(axis=1).astype(np.int64)
    return Solution(w, lam / scale, conv, iters, imbalance, scale, forced, msgs)


def failure_message(sol: Solution, i: int, names, tol, max_iter, what: str) -> str:
    if sol.infeasible[i] is not None:
        j, text = sol.infeasible[i]
        return f"{what}: infeasible balance for column '{names[j]}': {text}"
    rel = np.abs(sol.imbalance[i]) / sol.scale
    j = int(np.nanargmax(rel))
    why = (f"in {sol.iterations[i]} Newton steps (max_iter={max_iter})" if sol.iterations[i] >= max_iter else
           f"after {sol.iterations[i]} Newton steps (the line search found no further decrease)")
    return (f"{what}: entropy balancing did not converge {why}: remaining imbalance {sol.imbalance[i, j]:.3g} "
            f"in column '{names[j]}' ({rel[j]:.3g} column SDs), expected below tol={tol:g} SDs. The target may "
            f"lie outside the convex hull of the rows being weighted (no overlap), or the columns may be "
            f"inconsistent")
