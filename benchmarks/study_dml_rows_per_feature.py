"""dml's defaults on the 576-column process between the dml-thin and dml-conservative rules.

The grid measured dml at 576 columns with 8.5 rows of the smaller arm per feature of [M, X] (n = 10,000: the
NIE 1.1-1.6 SE too large, the ``dml-thin`` warning) and at 50 columns with 17 and 85 (the NIE over-covered, the
``dml-conservative`` warning). This script fills in the gap: ``simulate.topic_mediation(n, n_topics=4,
n_units=1, n_spurious=0, dim=576)`` at the given n, data seeds ``--seed`` .. ``--seed + --reps - 1``, with
``get_estimator("dml")`` as shipped. It writes the per-data-set rows (estimate, SE, CI, truth, the first
warning) to ``benchmarks/results/study_dml_rows_per_feature-n<n>-s<seed>.csv.gz`` and prints, per effect,
coverage, SE/SD and bias in SE units (``deconfound.coverage.summarize``).

Measured at 86c5613, 40 data sets a size: at n = 15,000 (12.9 rows per feature) NIE(treated) +0.97 SE (coverage
0.925), NDE(control) -1.0 SE (0.875); at n = 20,000 (17.2) +0.82 SE (0.95, SE/SD 1.10) and -0.70 SE (0.90).
At 414f3f4, ``--dim 200 --n 9000`` (features / sqrt(rows of the smaller arm) 3.0): +0.27 SE, every effect
0.95-1.00; at d161913, ``--dim 300 --n 9000`` (ratio 4.5): +0.59 SE (coverage 0.90), the others 0.95-0.975;
at cbfb3f0, ``--dim 250 --n 9000`` with ``--seed 0`` and ``--seed 20`` (20 data sets each; ratio 3.8): +0.38 SE
(coverage 1.00, SE/SD 1.25), NDE(control) -0.53 SE (0.90), TE 0.90. dml's THIN_SCALE (3.5) sits between 3.0
and 3.8. At 8cfa736, ``--dim 50 --n 5000`` with ``--seed 0`` and ``--seed 100`` (100 data sets each; 47 rows
per feature): NIE 0.935-0.945 (SE/SD 0.95-1.07), NDE 0.945-0.955, TE 0.965; with 50 columns at n = 2,000 (19)
the grid's NIE covered 0.985-0.99 and at 10,000 (93) 0.95, so dml-conservative stops at 30 rows per feature.
At 97a1005, ``--dim 50 --n 3500 --reps 200`` (33 rows per feature, no warning): NIE 0.935-0.945 (SE/SD
0.96-0.98), NDE 0.945-0.955, TE 0.905 (SE/SD 0.88; OLS of Y on T and the topic dummies covered 0.905 on the
same data sets).

Run: ``.venv/bin/python benchmarks/study_dml_rows_per_feature.py --n 15000 --reps 40`` (about a minute a
data set on one core).
"""
from __future__ import annotations

import argparse
from pathlib import Path

OUT = Path(__file__).parent / "results"


def main(argv=None) -> int:
    from deconfound import coverage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=15000)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=576, help="mediator columns (default 576, the grid's dim576)")
    args = ap.parse_args(argv)
    sim = {**coverage.DGPS["dim576"][0], "dim": args.dim}
    cell = coverage.Cell(f"dim{args.dim}-n{args.n}", args.n, sim, estimators=("dml",))
    rows = coverage.run(["dml"], [cell], reps=args.reps, seed=args.seed, progress=False)
    stem = f"n{args.n}" if args.dim == 576 else f"d{args.dim}-n{args.n}"
    path = OUT / f"study_dml_rows_per_feature-{stem}-s{args.seed}.csv.gz"
    rows.to_csv(path, index=False)
    cols = ["effect", "arm", "reps", "coverage", "se_sd", "bias_se", "warned"]
    table = coverage.summarize(rows)
    print(table[[c for c in cols if c in table.columns]].to_string(index=False))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
