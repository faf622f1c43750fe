"""Entropy balancing speed: ours vs empirical_calibration at n = 100,000 rows and k = 20 balance columns.

The problem: 15 continuous covariates on different scales plus a 6-level topic (5 one-hot columns); 100,000
controls are reweighted to the means of 30,000 treated rows, whose continuous covariates are shifted by 0.3 SD
and whose topic mix differs. Ours is the public :func:`deconfound.weights.entropy_balance` call (balance table
and ESS included); the peer is ``empirical_calibration.calibrate(..., objective=Objective.ENTROPY)`` with its
default settings (its default objective is QUADRATIC, a different estimator). Rounds alternate between the
two; the medians and their ratio are reported, with the largest weight difference and each side's remaining
imbalance.

Run: ``.venv/bin/python benchmarks/bench_entropy_balance.py`` (under a minute on 2 cores).
Writes ``benchmarks/results/bench_entropy_balance.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def make_problem(n: int, k: int, seed: int = 0):
    """Controls (n, k) and treated rows (0.3 n, k): k - 5 continuous columns and 5 topic one-hots."""
    rng = np.random.default_rng(seed)
    kc, levels = k - 5, 6
    scales = rng.uniform(0.1, 50.0, kc)
    offsets = rng.uniform(-100.0, 100.0, kc)

    def rows(size, shift, mix):
        xc = (rng.normal(shift, 1.0, (size, kc)) * scales) + offsets
        topic = rng.choice(levels, size, p=mix)
        return np.hstack([xc, (topic[:, None] == np.arange(1, levels)).astype(float)])

    controls = rows(n, 0.0, np.array([0.3, 0.25, 0.15, 0.12, 0.1, 0.08]))
    treated = rows(int(0.3 * n), 0.3, np.array([0.15, 0.15, 0.2, 0.2, 0.15, 0.15]))
    return controls, treated


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_entropy_balance.json"))
    args = parser.parse_args(argv)

    import empirical_calibration as ec

    from deconfound.weights import entropy_balance

    controls, treated = make_problem(args.n, args.k)
    target = treated.mean(axis=0)

    def ours():
        return entropy_balance(controls, treated).weights

    def peer():
        weights, success = ec.calibrate(controls, treated, objective=ec.Objective.ENTROPY)
        if not success:
            raise RuntimeError("empirical_calibration did not report success")
        return weights

    w_ours, w_peer = ours(), peer()            # warm-up; also the weights compared below
    times = {"ours": [], "empirical_calibration": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours), ("empirical_calibration", peer)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "benchmark": "entropy balancing, ATT-style: controls reweighted to treated means",
        "n_rows": args.n, "n_target_rows": len(treated), "k_columns": args.k, "rounds": args.rounds,
        "median_seconds": med,
        "all_seconds": times,
        "ratio_peer_over_ours": med["empirical_calibration"] / med["ours"],
        "max_abs_weight_difference": float(np.max(np.abs(w_ours - w_peer))),
        "max_rel_weight_difference": float(np.max(np.abs(w_ours / w_peer - 1.0))),
        "max_abs_imbalance": {"ours": float(np.max(np.abs(w_ours @ controls - target))),
                              "empirical_calibration": float(np.max(np.abs(w_peer @ controls - target)))},
        "note": "ours includes diagnostics (balance table, ESS); the peer uses fsolve's default xtol=1.49e-8",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "processor": platform.machine()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratio_peer_over_ours", "max_abs_weight_difference",
                                             "max_rel_weight_difference", "max_abs_imbalance")}, indent=2))
    return result


if __name__ == "__main__":
    main()
