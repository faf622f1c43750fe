"""Bootstrap engine speed: 30 units x 1000 replicates, vectorized vs a naive refit loop, in one run.

Problem: ``simulate.topic_mediation(n=2000, n_units=30, dim=16, n_topics=8)``. The statistic, per unit u, is an
entropy-balanced mean-patching contrast (NIE_ATT under a fixed linear readout):

    theta_u = mean_{treated} (M_u b_u) - sum_{controls} w_j (M_u b_u)_j,

with w the ATT entropy balancing weights on the topic (controls reweighted to the treated topic mix) and b_u the
unit's outcome slopes from one OLS fit of Y on [1, T, M_u, topic] on the full sample (fixed across replicates).
Every replicate refits the weights.

- ``vectorized``: ``bootstrap(EBMeanDifference(values=V), data, n_boot=1000)``: the (1000 x n) count matrix is
  drawn at once, the counts are frequency weights (no copies), all 1000 entropy balancing problems are solved
  in one batched Newton run (``weights.eb_weights_batch``), and one matrix product gives all 30 units;
- ``naive``: per replicate, materialize the resample (``resample``: copies every row of the data), then per unit
  refit ``weights.eb_att`` on the copy and recompute theta_u -- what a loop over replicates and units calling a
  per-unit estimator does;
- ``naive_shared`` (for transparency): the same, but one entropy balancing fit per replicate shared by the units.

The naive loops are timed on the first ``--naive-reps`` replicates (same count rows as the vectorized run) and
extrapolated linearly to 1000 (their cost per replicate is constant); the JSON says so. ``max_abs_diff`` is
the largest |theta| difference between the vectorized draws and the naive ones on those replicates (entropy
balancing tolerance 1e-8). BLAS runs on one thread.

Run: ``.venv/bin/python benchmarks/bench_bootstrap.py`` (about a minute on a shared 2-core machine).
Writes ``benchmarks/results/bench_bootstrap.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

OUT = Path(__file__).resolve().parent / "results" / "bench_bootstrap.json"


def readout_values(data):
    """(n, units) matrix of M_u b_u, b_u the slopes of M_u in an OLS of Y on [1, T, M_u, topic dummies]."""
    x = data.x_design()[0]
    cols = []
    for unit in data.units:
        m = data.mediator(unit).astype(float)
        design = np.column_stack([np.ones(data.n), data.t, m, x])
        coef = np.linalg.lstsq(design, data.y, rcond=None)[0]
        cols.append(m @ coef[2:2 + m.shape[1]])
    return np.column_stack(cols)


def naive(data, values, counts, *, shared: bool):
    """Materialize each resample, refit EB (per unit unless ``shared``) and recompute every unit's theta."""
    from deconfound.bootstrap import resample
    from deconfound.weights import eb_att

    n_units = values.shape[1]
    out = np.empty((len(counts), n_units))
    for b, row in enumerate(counts):
        sub = resample(data, row)
        vals = np.repeat(values, row, axis=0)  # the resample's copy of the per-row readouts
        t = sub.t
        w = eb_att(sub.x[["topic"]], t).weights if shared else None
        for u in range(n_units):
            wu = w if shared else eb_att(sub.x[["topic"]], t).weights
            out[b, u] = np.where(t == 1, wu, -wu) @ vals[:, u]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--units", type=int, default=30)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--naive-reps", type=int, default=40)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    from deconfound.bootstrap import EBMeanDifference, bootstrap, draw_counts
    from deconfound.simulate import topic_mediation

    data, _ = topic_mediation(args.n, n_units=args.units, dim=16, n_topics=8, seed=0)
    values = readout_values(data)
    stat = EBMeanDifference(values=values, confounders=["topic"], estimand="ATT")
    with threadpool_limits(1):
        bootstrap(stat, data, n_boot=5, random_state=1)  # warm-up (imports, caches)
        t0 = time.perf_counter()
        res = bootstrap(stat, data, n_boot=args.n_boot, random_state=0)
        vec_s = time.perf_counter() - t0
        counts = draw_counts(data, args.n_boot, random_state=0)[:args.naive_reps]
        t0 = time.perf_counter()
        slow = naive(data, values, counts, shared=False)
        naive_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow_shared = naive(data, values, counts, shared=True)
        shared_s = time.perf_counter() - t0
    per_rep, per_rep_shared = naive_s / args.naive_reps, shared_s / args.naive_reps
    naive_total, shared_total = per_rep * args.n_boot, per_rep_shared * args.n_boot
    diff = float(max(np.abs(res.draws[:args.naive_reps] - slow).max(),
                     np.abs(res.draws[:args.naive_reps] - slow_shared).max()))
    result = {
        "benchmark": "bootstrap", "n": args.n, "units": args.units, "n_boot": args.n_boot, "dim": 16,
        "topics": 8, "statistic": "EB (ATT) mean-patching contrast per unit under a fixed OLS readout",
        "vectorized_seconds": round(vec_s, 3),
        "naive_seconds_per_replicate": round(per_rep, 5),
        "naive_seconds_extrapolated": round(naive_total, 2),
        "naive_shared_seconds_per_replicate": round(per_rep_shared, 5),
        "naive_shared_seconds_extrapolated": round(shared_total, 2),
        "naive_replicates_timed": args.naive_reps,
        "extrapolation": (f"naive loops timed on the first {args.naive_reps} of the {args.n_boot} replicates "
                          f"(same count rows) and scaled by {args.n_boot}/{args.naive_reps}"),
        "ratio": round(naive_total / vec_s, 1),
        "ratio_vs_naive_shared": round(shared_total / vec_s, 1),
        "target_ratio": 20, "max_abs_diff": diff, "failed_replicates": res.n_failed,
        "blas_threads": 1, "python": platform.python_version(), "machine": platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
