"""Size of every refuter with the parametric and DML defaults on correctly specified simulated data.

For each replication: ``simulate.topic_mediation(n, n_topics=8, dim=--dim)`` (a true NIE and TE, no
misspecification), the estimator with its defaults, and each refuter at its defaults; a row "rejects" when its
p-value is below 0.05 (for the conclusion rule of the unobserved confounder: when the refuter fails). The data
subset refuter's rows are scored under the current rule and under the former analytic spread
SE sqrt((1/f - 1)/B), from the same replicates. Rows: TE, NIE(average), NIE(treated), NDE(control).

Run: ``.venv/bin/python benchmarks/study_refute_size.py --reps 100``; writes
``benchmarks/results/study_refute_size.json`` after every replication (so a cut run still reports).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import stats

KEYS = (("te", "average"), ("nie", "average"), ("nie", "treated"), ("nde", "control"))
REFUTERS = ("placebo_treatment", "data_subset", "random_common_cause", "dummy_outcome", "unobserved_confounder")


def one(name, seed, n, dim):
    from deconfound import refute, simulate
    from deconfound.estimators import get_estimator

    data, _ = simulate.topic_mediation(n, n_topics=8, dim=dim, seed=10_000 + seed)
    est = get_estimator(name)
    orig = est.fit(data)
    out = {}
    for ref in REFUTERS:
        res = refute.REFUTERS[ref](est, data, random_state=seed, original=orig)
        f = res.to_frame().set_index(["effect", "arm"])
        out[ref] = {f"{k[0]}.{k[1]}": bool(f.loc[k, "p_value"] < 0.05) if ref != "unobserved_confounder"
                    else bool(not f.loc[k, "passed"]) for k in KEYS}
        if ref == "data_subset":  # the former analytic spread, on the same replicates
            d = res.details.set_index(["effect", "arm"])
            old = {}
            for k in KEYS:
                e0, est_b = orig.effects["u0"][k], d.loc[k, "estimate"]
                sd = e0.se * np.sqrt((1 / res.options["fraction_used"] - 1) / len(est_b))
                old[f"{k[0]}.{k[1]}"] = bool(2 * stats.norm.sf(abs(est_b.mean() - e0.estimate) / sd) < 0.05)
            out["data_subset_former_rule"] = old
    return out


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--dim", type=int, default=1)
    parser.add_argument("--estimators", default="parametric,dml")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "study_refute_size.json"))
    args = parser.parse_args(argv)
    names = args.estimators.split(",")
    rows = {name: [] for name in names}
    start = time.time()
    for seed in range(args.reps):
        for name in names:
            rows[name].append(one(name, seed, args.n, args.dim))
        summary = {}
        for name in names:
            summary[name] = {ref: {key: float(np.mean([r[ref][key] for r in rows[name]])) for key in rows[name][0][ref]}
                             for ref in rows[name][0]}
        Path(args.out).write_text(json.dumps({"study": "refute_size", "n": args.n, "dim": args.dim, "alpha": 0.05,
                                              "reps_done": seed + 1, "seconds": time.time() - start,
                                              "rejection_rate": summary}, indent=1))
        print(seed + 1, "reps", round(time.time() - start), "s", flush=True)


if __name__ == "__main__":
    main()
