"""Does the null-paths warning fire where the NIE CIs over-cover, and only there?

The grid's topic tracker u1 has a zero NIE with both paths 0 (T does not move it, it does not move Y). There the
NIE CIs of ``parametric``, ``weighting`` and ``dml`` covered 0.98-1.00, and ``interventional``'s up to 1.00. This script recomputes, on the grid's own
data sets (``simulate.topic_mediation`` of the linear, probit and binary processes at the grid's n and seeds), the
two path tests of ``deconfound.estimators.paths`` for u0 (causal) and u1, and writes per cell and unit how often each path
rejected at 0.05 (for u1 the size of each test) and how often the warning fires (both p >= 0.05). The tests
depend on the data only, so they mark the grid's committed rows without refitting: with ``--rows`` it also
prints, per estimator, the u1 NIE coverage on the data sets where the warning fires and where it does not.

Output: ``benchmarks/results/study_null_paths.json``.

Run: ``.venv/bin/python benchmarks/study_null_paths.py --rows`` (about 2 minutes on one core).
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import pandas as pd

OUT = Path(__file__).parent / "results" / "study_null_paths.json"
CELLS = {"linear": {}, "probit": {"outcome": "probit"}, "binary": {"outcome": "binary"}}
REPS = {300: 200, 2000: 200, 10000: 100}


def path_rows() -> pd.DataFrame:
    from deconfound import simulate
    from deconfound.estimators.paths import both_null, unit_paths

    rows = []
    for proc, extra in CELLS.items():
        for n, reps in REPS.items():
            for seed in range(reps):
                data, _ = simulate.topic_mediation(n, n_topics=4, n_units=2, seed=seed, **extra)
                for unit, p in unit_paths(data, ["u0", "u1"], ["topic"]).items():
                    rows.append({"cell": f"{proc}-n{n}", "n": n, "seed": seed, "unit": unit, **p,
                                 "fires": both_null(p)})
    return pd.DataFrame(rows)


def grid_rows() -> pd.DataFrame:
    """The committed coverage rows (each data set of a pair is in one file; replaced rows are in superseded/)."""
    from deconfound.coverage import _read_rows

    root = Path(__file__).parent / "results" / "coverage"
    rows = pd.concat([_read_rows(f) for f in sorted(glob.glob(str(root / "run*.csv.gz")))], ignore_index=True)
    return rows[rows.refuter.isna()] if "refuter" in rows else rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", action="store_true", help="join with the committed grid rows")
    args = ap.parse_args(argv)
    paths = path_rows()
    out = {}
    for (cell, unit), g in paths.groupby(["cell", "unit"], sort=False):
        out.setdefault(cell, {})[unit] = {
            "reps": len(g), "t_to_m_reject": float((g.t_to_m < 0.05).mean()),
            "m_to_y_reject": float((g.m_to_y < 0.05).mean()), "fires": float(g.fires.mean())}
    print(pd.DataFrame([{"cell": c, "unit": u, **v} for c, d in out.items() for u, v in d.items()]).to_string())
    if args.rows:
        rows = grid_rows()
        nie = rows[(rows.unit == "u1") & (rows.effect == "nie") & rows.estimator.isin(
            ["parametric", "weighting", "dml", "interventional"])]
        nie = nie.merge(paths[paths.unit == "u1"][["cell", "seed", "fires"]], on=["cell", "seed"])
        nie["covered"] = (nie.ci_lower <= nie.truth) & (nie.truth <= nie.ci_upper)
        table = (nie.groupby(["estimator", "fires"])
                 .agg(fits=("covered", "size"), coverage=("covered", "mean"),
                      reject=("p_value", lambda p: float((p < 0.05).mean()))).reset_index())
        print(table.to_string(index=False))
        out["u1_nie_by_warning"] = table.to_dict(orient="records")
    OUT.write_text(json.dumps(out, indent=1, default=float))
    print("wrote", OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
