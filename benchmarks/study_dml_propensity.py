"""dml's default propensity learner (EPVLogistic) against the former one (L2 LogisticRegressionCV on every fit).

Per data set r (seed r of ``simulate.topic_mediation``, 4 topics, one causal unit), both learners are fitted
with every other default the same. The script prints, per effect and learner, the coverage of the 95% CIs, the
ratio of the mean SE to the SD of the estimates, and the mean bias in units of the mean SE. It writes the rows
to ``benchmarks/results/study_dml_propensity-n<n>-d<dim>.csv``.

Figures in docs/coverage.md come from this design:
- 20 columns at n = 300 (80 data sets): default 0.91-0.925 (NIE bias -0.12 to 0 SE), former 0.89-0.94 (NIE
  bias -0.39 to -0.33 SE);
- 50 columns at n = 2,000 (40 data sets, ``--dim 50 --n 2000``): former NIE 0.95-0.975, NDE 0.875-0.90.

Run: ``.venv/bin/python benchmarks/study_dml_propensity.py --n 300 --dim 20 --reps 80``.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = (("nie", "treated"), ("nie", "control"), ("nde", "treated"), ("nde", "control"), ("te", "average"))


def one(seed, n, dim, interaction, former):
    from deconfound import simulate
    from deconfound.estimators.dml import DMLMediation, default_propensity_learner

    data, truth = simulate.topic_mediation(n, seed=seed, n_topics=4, n_units=1, n_spurious=0, dim=dim,
                                           interaction=interaction)
    kwargs = {"propensity_learner": default_propensity_learner(legacy_attributes=True)} if former else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = DMLMediation(**kwargs).fit(data)
    return [{"learner": "former" if former else "default", "seed": seed, "effect": e, "arm": a,
             "estimate": res.effect("u0", e, a).estimate, "se": res.effect("u0", e, a).se,
             "truth": truth.value("u0", e, a, "ate")} for e, a in KEYS]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--dim", type=int, default=20)
    ap.add_argument("--interaction", type=float, default=0.0)
    ap.add_argument("--reps", type=int, default=80)
    args = ap.parse_args(argv)
    rows = [r for seed in range(args.reps) for former in (False, True)
            for r in one(seed, args.n, args.dim, args.interaction, former)]
    df = pd.DataFrame(rows)
    out = Path(__file__).parent / "results" / f"study_dml_propensity-n{args.n}-d{args.dim}.csv"
    df.to_csv(out, index=False)
    z = (df.estimate - df.truth) / df.se
    df = df.assign(covered=np.abs(z) < 1.96)
    summary = df.groupby(["effect", "arm", "learner"]).apply(
        lambda d: pd.Series({"coverage": d.covered.mean(), "se_sd": d.se.mean() / d.estimate.std(),
                             "bias_se": (d.estimate - d.truth).mean() / d.se.mean()}), include_groups=False)
    print(summary.round(3).to_string())
    print(f"rows: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
