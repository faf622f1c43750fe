"""Peers on the cases where both apply: DoWhy's two-stage regression and EconML's DRLearner.

1. ``ParametricMediation`` (gaussian outcome, no interaction) vs DoWhy 0.14
   ``mediation.two_stage_regression`` with linear first and second stages, on
   ``simulate.topic_mediation`` (8 topics, scalar mediators). In this linear case both point estimates are
   the product of coefficients (NIE) and the direct coefficient (NDE): they must agree to rounding. DoWhy
   takes one mediator per causal model, so K units mean K models; ours fits all units in one call. DoWhy
   gives point estimates only (no CIs); ours includes 1000 quasi-Bayes draws for the CIs.
2. ``DMLMediation`` TE vs EconML ``DRLearner`` ATE, the same learners (Ridge(alpha=1), LogisticRegression(C=1))
   and the same 5 folds (passed to EconML as ``cv``). Ours fits every nuisance of the mediation scores as well
   (p(M,X), mu(d,M,X), the nested regression) and gives NIE/NDE too; the DRLearner fits one outcome model
   with T as a feature where ours fits mu(d,X) per arm, and ours normalizes the weights, so the TEs differ
   by a fraction of the SE, which the notes report.

Each comparison alternates ours and the peer for ``--rounds`` rounds with one BLAS thread and reports the
medians. Schema: ``{"rows": [{"name", "ours_s", "baseline", "baseline_s", "ratio", "max_abs_diff",
"notes"}], ...}`` with ``ratio = baseline_s / ours_s`` (above 1: ours is faster).

Run: ``.venv/bin/python benchmarks/bench_peers.py`` (about a minute on 2 cores).
Writes ``benchmarks/results/bench_peers.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "bench_peers.json"


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _alternate(ours, peer, rounds):
    """Median seconds of ours and the peer, run alternately (first round is a warm-up), and the last values."""
    times = {"ours": [], "peer": []}
    vals = {}
    for r in range(rounds + 1):
        for key, fn in (("ours", ours), ("peer", peer)):
            dt, vals[key] = _timed(fn)
            if r:
                times[key].append(dt)
    return statistics.median(times["ours"]), statistics.median(times["peer"]), vals, times


# ---- DoWhy two-stage regression -----------------------------------------------------------------------------
def _dowhy_frame(data, unit):
    import pandas as pd

    x, _ = data.x_design(data.confounder_names)
    frame = pd.DataFrame(x, columns=[f"w{i}" for i in range(x.shape[1])])
    frame["T"] = data.t.astype(bool)
    frame["M"] = data.mediator(unit)[:, 0].astype(float)
    frame["Y"] = data.y.astype(float)
    ws = [c for c in frame if c.startswith("w")]
    edges = [(w, v) for w in ws for v in ("T", "M", "Y")] + [("T", "M"), ("M", "Y"), ("T", "Y")]
    gml = ("graph [directed 1 " + " ".join(f'node [id "{v}" label "{v}"]' for v in ws + ["T", "M", "Y"]) + " "
           + " ".join(f'edge [source "{a}" target "{b}"]' for a, b in edges) + "]")
    return frame, gml


def dowhy_two_stage(data, units):
    """{unit: {"nie": value, "nde": value}} from DoWhy's two-stage regression, one causal model per unit."""
    from dowhy import CausalModel
    from dowhy.causal_estimators.linear_regression_estimator import LinearRegressionEstimator

    out = {}
    for unit in units:
        frame, gml = _dowhy_frame(data, unit)
        model = CausalModel(data=frame, treatment="T", outcome="Y", graph=gml)
        out[unit] = {}
        for kind in ("nie", "nde"):
            ident = model.identify_effect(estimand_type=f"nonparametric-{kind}", proceed_when_unidentifiable=True)
            est = model.estimate_effect(ident, method_name="mediation.two_stage_regression",
                                        confidence_intervals=False, test_significance=False,
                                        method_params={"first_stage_model": LinearRegressionEstimator,
                                                       "second_stage_model": LinearRegressionEstimator})
            out[unit][kind] = float(est.value)
    return out


def bench_dowhy(n, n_units, rounds):
    from deconfound import simulate
    from deconfound.estimators.parametric import ParametricMediation

    data, _ = simulate.topic_mediation(n, n_units=n_units, n_topics=8, seed=0)
    units = data.units
    ours = lambda: ParametricMediation(n_sims=1000, random_state=0).fit(data)  # noqa: E731
    peer = lambda: dowhy_two_stage(data, units)  # noqa: E731
    t_ours, t_peer, vals, times = _alternate(ours, peer, rounds)
    res, dw = vals["ours"], vals["peer"]
    diff = max(abs(res.effect(u, k, "average").estimate - dw[u][k]) for u in units for k in ("nie", "nde"))
    return {"name": f"parametric vs DoWhy two-stage regression (n={n}, {n_units} unit{'s' * (n_units > 1)})",
            "ours_s": t_ours, "baseline": "dowhy mediation.two_stage_regression", "baseline_s": t_peer,
            "ratio": t_peer / t_ours, "max_abs_diff": diff,
            "notes": (f"NIE and NDE point estimates; DoWhy point estimates only, ours with 1000 quasi-Bayes draws "
                      f"for CIs; DoWhy needs one causal model per mediator ({n_units} here)"),
            "all_seconds": times}


# ---- EconML DRLearner ---------------------------------------------------------------------------------------
def bench_drlearner(n, rounds, n_folds=5):
    from econml.dr import DRLearner
    from sklearn.linear_model import LogisticRegression, Ridge

    from deconfound import simulate
    from deconfound.estimators.dml import DMLMediation, cross_fit_splits

    data, truth = simulate.topic_mediation(n, n_units=1, dim=4, n_topics=8, seed=1)
    reg, prop = Ridge(alpha=1.0), LogisticRegression(C=1.0, max_iter=1000)
    folds, _ = cross_fit_splits(data, n_folds, 0)
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(n_folds)]
    w = data.x_design()[0]
    t, y = data.t.astype(int), data.y.astype(float)

    def ours():
        return DMLMediation(outcome_learner=reg, propensity_learner=prop, n_folds=n_folds, random_state=0).fit(data)

    def peer():
        est = DRLearner(model_propensity=prop, model_regression=reg, min_propensity=0.05, cv=splits,
                        random_state=0)
        est.fit(y, t, X=None, W=w)
        inf = est.ate_inference()
        return float(np.ravel(inf.mean_point)[0]), float(np.ravel(inf.stderr_mean)[0])

    t_ours, t_peer, vals, times = _alternate(ours, peer, rounds)
    te = vals["ours"].effect("u0", "te", "average")
    ate, ate_se = vals["peer"]
    diff = abs(te.estimate - ate)
    return {"name": f"DML (TE, NIE, NDE) vs EconML DRLearner TE (n={n}, same learners and folds)",
            "ours_s": t_ours, "baseline": "econml DRLearner", "baseline_s": t_peer, "ratio": t_peer / t_ours,
            "max_abs_diff": diff,
            "notes": (f"TE ours {te.estimate:.4f} (SE {te.se:.4f}), DRLearner {ate:.4f} (SE {ate_se:.4f}), "
                      f"difference {diff / te.se:.2f} SE, truth {truth.value('u0', 'te', 'average'):.4f}; ours "
                      "also fits the mediation nuisances and returns NIE/NDE"),
            "all_seconds": times}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small problems, one round (a smoke test)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from threadpoolctl import threadpool_limits

    rounds = 1 if args.quick else args.rounds
    scale = 10 if args.quick else 1
    rows = []
    with threadpool_limits(limits=1):
        rows.append(bench_dowhy(5000 // scale, 1, rounds))
        rows.append(bench_dowhy(5000 // scale, 8, rounds))
        rows.append(bench_drlearner(20000 // scale, rounds))
    import dowhy
    import econml
    import sklearn

    report = {"benchmark": "bench_peers", "rows": rows, "rounds": rounds, "threads": 1,
              "machine": {"python": platform.python_version(), "numpy": np.__version__, "dowhy": dowhy.__version__,
                          "econml": econml.__version__, "sklearn": sklearn.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['name']}: ours {row['ours_s']:.3f}s, {row['baseline']} {row['baseline_s']:.3f}s, "
              f"ratio {row['ratio']:.1f}, max |diff| {row['max_abs_diff']:.2e}")
    return report


if __name__ == "__main__":
    main()
