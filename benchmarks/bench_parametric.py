"""Parametric mediation speed: ours vs statsmodels `Mediation` (matrix API) at equal n_sims.

Two problems:
- ``framing``: the framing study in the statsmodels wheel (n = 265), OLS mediator ``emo``, probit outcome
  ``cong_mesg``, covariates age, educ, gender, income;
- ``topic``: ``simulate.topic_mediation(n=5000, n_topics=8)``, OLS mediator and OLS outcome, topic dummies.

Ours is the public ``ParametricMediation(...).fit(data)`` call (model fits, draws, effects, CIs, result
object; the graph's adjustment sets are cached after a warm-up). The peer is
``statsmodels.stats.mediation.Mediation(outcome_model, mediator_model, exposure, mediator).fit(n_rep=S)`` built
from model objects, not formulas (the formula API is much slower). Both run quasi-Bayes with S = 1000 draws.
Ours is timed twice: with ``mediator_noise="simulate"`` (statsmodels' algorithm: one simulated mediator per
row and draw) and with the default exact integration. Rounds alternate; medians and their ratios are
reported. "Same numbers": the largest difference between the two sides' draw means over ACME/ADE (control,
treated), total effect, with the Monte Carlo SE of that difference; and the largest difference between our
plug-in estimates and statsmodels' draw means.

Both sides run with one BLAS thread (threadpoolctl): on a shared 2-core machine OpenBLAS threads on these
small matrices oversubscribe the cores and slow both sides by 10x or more, which times the machine, not
the code.

Run: ``.venv/bin/python benchmarks/bench_parametric.py`` (about a minute on 2 cores).
Writes ``benchmarks/results/bench_parametric.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = [("nie", "control"), ("nie", "treated"), ("nde", "control"), ("nde", "treated"), ("te", "average")]


def framing_problem():
    import statsmodels

    from deconfound import MediationData

    df = pd.read_csv(Path(statsmodels.__file__).parent / "stats" / "tests" / "results" / "framing.csv")
    conf = ["age", "educ", "gender", "income"]
    data = MediationData.from_frame(df, treatment="treat", outcome="cong_mesg", confounders=conf, mediators="emo")
    x = pd.get_dummies(df[conf], drop_first=True, dtype=float)
    return data, df["cong_mesg"].to_numpy(float), df["emo"].to_numpy(float), df["treat"].to_numpy(float), x, "probit"


def topic_problem(n: int):
    from deconfound import simulate

    data, _ = simulate.topic_mediation(n, n_topics=8, seed=0)
    frame = data.to_frame("u0")
    x = pd.get_dummies(frame[["topic"]], drop_first=True, dtype=float)
    return data, frame["Y"].to_numpy(float), frame["u0__0"].to_numpy(float), frame["T"].to_numpy(float), x, "gaussian"


def statsmodels_mediation(y, m, t, x, family):
    import statsmodels.api as sm
    from statsmodels.stats.mediation import Mediation

    xv = x.to_numpy(float)
    one = np.ones(len(y))
    mexog = np.column_stack([one, t, xv])
    oexog = np.column_stack([one, m, t, xv])
    if family == "gaussian":
        out = sm.OLS(y, oexog)
    else:
        out = sm.GLM(y, oexog, family=sm.families.Binomial(link=sm.families.links.Probit()))
    return Mediation(out, sm.OLS(m, mexog), (2, 1), 1)


def sm_draws(res):
    return {("nie", "control"): res.ACME_ctrl, ("nie", "treated"): res.ACME_tx, ("nde", "control"): res.ADE_ctrl,
            ("nde", "treated"): res.ADE_tx, ("te", "average"): res.total_effect}


def run_problem(name, problem, n_sims, rounds, seed=0):
    from deconfound.estimators.parametric import ParametricMediation

    data, y, m, t, x, family = problem
    unit = data.units[0]
    ours_sim = ParametricMediation(outcome_family=family, n_sims=n_sims, mediator_noise="simulate", random_state=seed)
    ours_int = ParametricMediation(outcome_family=family, n_sims=n_sims, random_state=seed)
    med = statsmodels_mediation(y, m, t, x, family)
    fns = {"ours_simulate": lambda: ours_sim.fit(data), "ours_integrate": lambda: ours_int.fit(data),
           "statsmodels": lambda: med.fit(method="parametric", n_rep=n_sims, rng=seed)}
    last = {k: fn() for k, fn in fns.items()}  # warm-up (caches the graph's adjustment sets)
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            last[k] = fn()
            times[k].append(time.perf_counter() - start)
    med_t = {k: statistics.median(v) for k, v in times.items()}
    theirs = sm_draws(last["statsmodels"])
    diffs, plug = {}, {}
    for key in KEYS:
        mine = last["ours_simulate"].effects[unit][key]
        other = np.asarray(theirs[key])
        se = float(np.sqrt((mine.draws.var(ddof=1) + other.var(ddof=1)) / n_sims))
        diffs["/".join(key)] = {"ours_mean": float(mine.draws.mean()), "statsmodels_mean": float(other.mean()),
                                "abs_diff": float(abs(mine.draws.mean() - other.mean())), "mc_se_of_diff": se}
        plug["/".join(key)] = float(abs(last["ours_integrate"].effects[unit][key].estimate - other.mean()))
    worst = max(diffs.values(), key=lambda d: d["abs_diff"] / d["mc_se_of_diff"])
    return {
        "problem": name, "n_rows": data.n, "outcome_family": family, "n_sims": n_sims, "rounds": rounds,
        "median_seconds": med_t, "all_seconds": times,
        "ratio_statsmodels_over_ours_simulate": med_t["statsmodels"] / med_t["ours_simulate"],
        "ratio_statsmodels_over_ours_integrate": med_t["statsmodels"] / med_t["ours_integrate"],
        "max_abs_difference_of_draw_means": max(d["abs_diff"] for d in diffs.values()),
        "max_difference_in_mc_se_units": worst["abs_diff"] / worst["mc_se_of_diff"],
        "max_abs_difference_plugin_vs_statsmodels_mean": max(plug.values()),
        "draw_means": diffs,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sims", type=int, default=1000)
    parser.add_argument("--n", type=int, default=5000, help="rows of the simulated problem")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_parametric.json"))
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.blas_threads):
        problems = [run_problem("framing", framing_problem(), args.n_sims, args.rounds),
                    run_problem("topic", topic_problem(args.n), args.n_sims, args.rounds)]
    result = {
        "benchmark": "parametric mediation (quasi-Bayes), ours vs statsmodels Mediation matrix API, equal n_sims",
        "problems": problems,
        "min_ratio_statsmodels_over_ours": min(p["ratio_statsmodels_over_ours_simulate"] for p in problems),
        "max_abs_difference_of_estimates": max(p["max_abs_difference_of_draw_means"] for p in problems),
        "note": ("estimates compared as draw means (statsmodels' point estimate); ours reports the plug-in "
                 "estimate, which differs from a draw mean by Monte Carlo error plus an O(1/n) Jensen term"),
        "blas_threads": args.blas_threads,
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "processor": platform.machine()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    short = [{k: p[k] for k in ("problem", "median_seconds", "ratio_statsmodels_over_ours_simulate",
                                "ratio_statsmodels_over_ours_integrate", "max_abs_difference_of_draw_means",
                                "max_difference_in_mc_se_units")} for p in problems]
    print(json.dumps(short, indent=2))
    return result


if __name__ == "__main__":
    main()
