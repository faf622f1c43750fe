"""Scaling curves of the estimators: seconds vs rows (1k, 10k, 100k) and vs number of units.

Estimators and settings (cheap on purpose, so that 100k rows fit the benchmark budget on 2 cores):

- ``parametric``: ``ParametricMediation(n_sims=1000)`` (gaussian outcome, quasi-Bayes);
- ``weighting``: ``WeightingMediation()`` with its defaults (EB p(X), CV-penalized logistic p(M,X),
  influence-function SEs);
- ``dml``: ``DMLMediation`` with fixed-penalty learners (``Ridge(alpha=1)``, ``LogisticRegression(C=1)``) and
  3 folds. The default CV-tuned learners cost about 10x more and are not run at 100k rows.

Data: ``simulate.topic_mediation`` with 8 topics and units of 4 columns. Rows curve: one unit at n = 1k,
10k, 100k (all three estimators run at 100k). Units curve: n = 2000 and 1, 4, 16, 64 units. One BLAS thread,
best of ``--repeats`` runs (one run when a fit takes over 2 s).

Besides the curves, the JSON has one row per estimator in the common schema: the 64-unit fit against the
naive baseline "64 separate one-unit fits" (64 x the measured one-unit time, which includes the shared
nuisances each time), with the largest difference between unit u0's estimates fitted alone and within the
64 units (0 when the units are truly independent tasks).

Run: ``.venv/bin/python benchmarks/bench_scaling.py`` (about two minutes on 2 cores; ``--quick`` for a smoke
test). Writes ``benchmarks/results/bench_scaling.json`` and ``benchmarks/results/scaling.png``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = [("te", "average"), ("nie", "treated"), ("nie", "control"), ("nde", "treated"), ("nde", "control")]


def estimators():
    from sklearn.linear_model import LogisticRegression, Ridge

    from deconfound.estimators.dml import DMLMediation
    from deconfound.estimators.parametric import ParametricMediation
    from deconfound.estimators.weighting import WeightingMediation

    return {"parametric": lambda: ParametricMediation(n_sims=1000, random_state=0),
            "weighting": lambda: WeightingMediation(random_state=0),
            "dml": lambda: DMLMediation(outcome_learner=Ridge(alpha=1.0),
                                        propensity_learner=LogisticRegression(C=1.0, max_iter=1000), n_folds=3,
                                        random_state=0)}


def best_time(fn, repeats):
    best, value = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
        if best > 2.0:
            break
    return best, value


def run(rows_grid, units_grid, repeats, n_units_rows):
    from deconfound import simulate

    makers = estimators()
    warm, _ = simulate.topic_mediation(500, n_units=1, dim=4, seed=0)
    for make in makers.values():  # warm-up: imports and first-call costs out of the curves
        make().fit(warm)
    by_rows = {name: [] for name in makers}
    for n in rows_grid:
        data, _ = simulate.topic_mediation(n, n_units=1, dim=4, seed=1)
        for name, make in makers.items():
            seconds, _ = best_time(lambda: make().fit(data), repeats)
            by_rows[name].append({"n": n, "seconds": seconds})
            print(f"rows  {name:10s} n={n:>7d}: {seconds:.3f}s", flush=True)
    by_units = {name: [] for name in makers}
    summary = []
    for k in units_grid:
        data, _ = simulate.topic_mediation(n_units_rows, n_units=k, dim=4, seed=2)
        for name, make in makers.items():
            seconds, res = best_time(lambda: make().fit(data), repeats)
            by_units[name].append({"units": k, "seconds": seconds})
            print(f"units {name:10s} k={k:>3d}: {seconds:.3f}s", flush=True)
            if k == max(units_grid):
                alone_s, alone = best_time(lambda: make().fit(data, units=["u0"]), repeats)
                diff = max(abs(res.effect("u0", e, a).estimate - alone.effect("u0", e, a).estimate) for e, a in KEYS)
                summary.append({
                    "name": f"{name}: {k} units in one fit (n={n_units_rows})", "ours_s": seconds,
                    "baseline": f"{k} separate one-unit fits", "baseline_s": k * alone_s,
                    "ratio": k * alone_s / seconds, "max_abs_diff": diff,
                    "notes": (f"baseline = {k} x the measured one-unit fit ({alone_s:.3f}s); max_abs_diff: unit u0 "
                              "alone vs within all units (TE, NIE, NDE)")})
    return by_rows, by_units, summary


def plot(by_rows, by_units, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, pts in by_rows.items():
        axes[0].plot([p["n"] for p in pts], [p["seconds"] for p in pts], marker="o", label=name)
    for name, pts in by_units.items():
        axes[1].plot([p["units"] for p in pts], [p["seconds"] for p in pts], marker="o", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="rows (one unit of 4 columns)", ylabel="seconds per fit",
                title="time vs rows")
    axes[1].set(xscale="log", yscale="log", xlabel="units (4 columns each, n = 2000)", ylabel="seconds per fit",
                title="time vs units")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = [p["n"] for p in next(iter(by_rows.values()))]
    units = [p["units"] for p in next(iter(by_units.values()))]
    axes[0].set_xticks(rows, [f"{v // 1000}k" if v >= 1000 else str(v) for v in rows])
    axes[1].set_xticks(units, [str(v) for v in units])
    for ax in axes:
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small grids, one repeat (a smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_scaling.json")
    parser.add_argument("--png", type=Path, default=RESULTS / "scaling.png")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    from threadpoolctl import threadpool_limits

    rows_grid = [1000, 5000] if args.quick else [1000, 10_000, 100_000]
    units_grid = [1, 4] if args.quick else [1, 4, 16, 64]
    repeats = 1 if args.quick else args.repeats
    with threadpool_limits(limits=1):
        by_rows, by_units, summary = run(rows_grid, units_grid, repeats, 2000)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(by_rows, by_units, args.png)
    report = {"benchmark": "bench_scaling", "rows": summary, "seconds_vs_rows": by_rows,
              "seconds_vs_units": by_units, "units_rows": 2000, "unit_dim": 4, "repeats": repeats, "threads": 1,
              "plot": args.png.name,
              "settings": {"parametric": "n_sims=1000, quasi-Bayes", "weighting": "defaults (influence SEs)",
                           "dml": "Ridge(alpha=1), LogisticRegression(C=1), 3 folds"},
              "machine": {"python": platform.python_version(), "numpy": np.__version__}}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in summary:
        print(f"{row['name']}: {row['ratio']:.1f}x vs {row['baseline']}, max |diff| {row['max_abs_diff']:.2e}")
    return report


if __name__ == "__main__":
    main()
