"""The checks of the study design (:func:`deconfound.study.run_study`): the null model, sensitivity with
benchmarks, and refuters on units selected on a separate split.

- :func:`null_model_check`: the patching analysis of the chosen layers rerun on a randomly initialised copy of
  the model (:func:`deconfound.refute.random_model`); a trained-model effect must beat it.
- :func:`sensitivity_check`: omitted-variable-bias bounds and robustness values of the DML fit, and bounds
  for a latent confounder 1-3 times as strong as topic (:func:`deconfound.sensitivity.sensitivity_benchmark`).
- :func:`split_refutation`: layers ranked by the DML fit on one random half of the prompts; the refuters run
  on the other half.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd

ADJUSTED = "topic_mediation"
SPLIT_REFUTERS = ("placebo_treatment", "random_common_cause", "dummy_outcome")


def split_halves(data, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two disjoint random halves, each arm split in two (the same ``seed``, the same halves):
    the first selects units, the second estimates and tests them."""
    rng = np.random.default_rng([int(seed), 7])
    first = []
    for arm in (0, 1):
        rows = rng.permutation(np.flatnonzero(np.asarray(data.t) == arm))
        first.append(rows[: len(rows) // 2])
    select = np.sort(np.concatenate(first))
    return select, np.setdiff1d(np.arange(data.n), select)


def null_model_check(patching, data, fit, patcher, units, *, seed: int = 0) -> pd.DataFrame:
    """The patching fit of ``units`` against the same analysis on ``patcher.random_copy(seed)``; the NIE on
    the treated rows only. ``passed``: the trained model's |NIE| beats the random model's at 5% (one-sided)."""
    from .refute import random_model

    res = random_model(patching, data.select_units(list(units)), graph=ADJUSTED, random_state=seed, original=fit,
                       patcher=patcher)
    frame = res.to_frame()
    return frame[(frame.effect == "nie") & (frame.arm == "treated")].reset_index(drop=True)


def sensitivity_check(estimator, fit, data, *, units=None, ks=(1, 2, 3), benchmark_on: str = "topic"):
    """Robustness values (cf_y = cf_d = 0.03, rho = 1) of the NIE and TE rows of a score-based ``fit``, and
    the bounds a latent confounder ``k`` times as strong as ``benchmark_on`` implies, for each k in ``ks``.

    Returns (SensitivityResult, BenchmarkResult).
    """
    from .sensitivity import sensitivity_analysis, sensitivity_benchmark

    units = list(units or fit.units)
    sens = sensitivity_analysis(fit, units=units, effects=("te", "nie"))
    bench = sensitivity_benchmark(fit, data, drop=[benchmark_on], estimator=estimator, graph=ADJUSTED, units=units,
                                  effects=("nie",), ks=ks)
    return sens, bench


def patching_checks(res, units) -> pd.DataFrame | None:
    """Per unit: the gap of the mean patch to the exact NIE and the donor's distance (patching only)."""
    rows = []
    for u in units:
        d = res.diagnostics.get(u, {}) if isinstance(res.diagnostics, dict) else {}
        if "donor_distance" not in d:
            return None
        rows.append({"unit": u, "estimate": res.effect(u, "nie", "treated").estimate,
                     "exact_gap": d.get("exact_gap", np.nan), "exact_gap_se": d.get("exact_gap_se", np.nan),
                     "donor_distance": d["donor_distance"], "donor_distance_pct": d["donor_distance_pct"],
                     "off_distribution": d["off_distribution"]})
    return pd.DataFrame(rows)


def split_refutation(estimator, data, *, n_units: int = 2, seed: int = 0, refuters=SPLIT_REFUTERS):
    """Rank layers by |NIE (treated)| of ``estimator`` fitted on one random half (:func:`split_halves`); fit
    the top ``n_units`` on the other half and refute them there. Topics left without both arms in a half are
    dropped there (``drop_unsupported=True`` on a copy of the estimator).

    Returns (refutation table, the selected units, the held-out fit).
    """
    from .refute import refute_all

    estimator = copy.deepcopy(estimator)
    if "drop_unsupported" in estimator.get_params():  # a half can lose a topic's last control or treated prompt
        estimator.set_params(drop_unsupported=True)
    first, second = split_halves(data, seed)
    ranked = estimator.fit(data.subset(first), graph=ADJUSTED, units=data.units)
    order = sorted(data.units, key=lambda u: -np.nan_to_num(abs(ranked.effect(u, "nie", "treated").estimate)))
    chosen = order[:n_units]
    held_data = data.subset(second).select_units(chosen)
    held = estimator.fit(held_data, graph=ADJUSTED, units=chosen)
    table = refute_all(estimator, held_data, graph=ADJUSTED, refuters=list(refuters), random_state=seed,
                       original=held)
    return table, chosen, held


def null_sentence(table: pd.DataFrame) -> str:
    """One line on the null-model table for the summary."""
    if table is None or not len(table):
        return "Null model: not run."
    parts = [f"{r.unit} {r.estimate:+.4f} vs {r.new_estimate:+.4f} (p = {r.p_value:.3g})" for r in table.itertuples()]
    return (f"Null model (randomly initialised copy of the model, NIE on the treated, trained vs random): "
            f"{'; '.join(parts)}; {int(table.passed.sum())} of {len(table)} layer(s) beat it at 5%.")


def run_checks(patching, p_adj, data, patcher, estimators: dict, results: dict, *, null_layers=(),
               refute_units: int = 0, seed: int = 0, failures: dict | None = None, say=print) -> dict:
    """The study's checks; a failed one is recorded in ``failures`` (name -> error) and reported, not hidden.

    Returns a dict with ``null`` (table), ``sensitivity``, ``benchmark``, ``refutation`` (table),
    ``refuted_units`` and ``null_units``; a check not run is absent.
    """
    failures = {} if failures is None else failures
    out = {}
    null_units = [u for u in (f"mlp_out.L{int(v)}" for v in null_layers) if u in p_adj.units]
    missing = [v for v in null_layers if f"mlp_out.L{int(v)}" not in p_adj.units]
    if missing:
        raise ValueError(f"null_layers: expected layers among the analysed ones {list(p_adj.units)}, got {missing}")

    def attempt(name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, not hidden
            failures[name] = f"{type(exc).__name__}: {exc}"
            say(f"{name} failed: {failures[name]}")
            return None

    if null_units:
        say(f"null model: patching {null_units} on a randomly initialised copy of the model")
        out["null"] = attempt("null model", null_model_check, patching, data, p_adj, patcher, null_units, seed=seed)
        out["null_units"] = null_units
    if "dml" in results:
        got = attempt("sensitivity", sensitivity_check, estimators["dml"], results["dml"], data)
        if got is not None:
            out["sensitivity"], out["benchmark"] = got
        if refute_units:
            got = attempt("split refutation", split_refutation, estimators["dml"], data, n_units=refute_units,
                          seed=seed)
            if got is not None:
                out["refutation"], out["refuted_units"], _ = got
    return {k: v for k, v in out.items() if v is not None}


def report_checks(rep, checks: dict, figs) -> None:
    """Add the checks' tables (and the benchmarked sensitivity contour) to a :class:`deconfound.report.Report`."""
    from . import refute
    from .sensitivity import sensitivity_plot

    if "null" in checks:
        rep.table("Null model: patching NIE on the treated, trained model (estimate) vs a randomly initialised copy "
                  "(new_estimate), layers fixed before the run", checks["null"])
        rep.text("Reading the null model", f"{refute.RULES['null_model']}. A layer that fails has an effect that the "
                 "model's training does not explain: the same patching analysis finds as much on random weights.")
    if "sensitivity" in checks:
        rep.table("Sensitivity of the DML NIE and TE to an unobserved confounder (cf_y = cf_d = 0.03, rho = 1; "
                  "RV, RVa: robustness values)", checks["sensitivity"].to_frame())
    if "benchmark" in checks:
        bench = checks["benchmark"]
        rep.table(f"Benchmarks: strength of {', '.join(bench.drop)} (dropping it from the DML fit)", bench.benchmarks)
        rep.table(f"Bounds on the DML NIE for a latent confounder k x as strong as {', '.join(bench.drop)}",
                  bench.to_frame())
        unit = bench.benchmarks.unit.iloc[0]
        try:
            path = sensitivity_plot(bench.long, figs / "sensitivity.png", unit=unit, effect="nie", arm="treated",
                                    benchmark=bench)
            rep.figure(f"Sensitivity contour with benchmarks, {unit}", path,
                       "Bound on the DML NIE (treated) over (cf_y, cf_d); marks at k x the strength of topic.")
        except (TypeError, ValueError, KeyError) as exc:
            rep.text("Sensitivity contour", f"not drawn: {exc}")
    if "refutation" in checks:
        rep.table(f"Refuters of the DML fit, layers {checks['refuted_units']} ranked on one random half of the "
                  "prompts and refuted on the other", checks["refutation"])


def check_lines(checks: dict) -> list[str]:
    """Summary lines of the checks."""
    lines = []
    if "null" in checks:
        lines.append(null_sentence(checks["null"]))
    if "sensitivity" in checks:
        f = checks["sensitivity"].to_frame()
        f = f[f.effect == "nie"]
        if len(f):
            r = f.loc[f.rv.idxmin()]
            lines.append(f"Sensitivity (DML NIE): the least robust layer is {r.unit} ({r.arm}), RV {100 * r.rv:.1f}%, "
                         f"RVa {100 * r.rva:.1f}%; {int((f.rva > 0).sum())} of {len(f)} NIE rows have a CI that "
                         "excludes 0 under no unobserved confounding (RVa > 0).")
    if "benchmark" in checks:
        b = checks["benchmark"].to_frame()
        for k in sorted(b.k.unique()):
            rows = b[(b.k == k) & (b.arm == "treated")]
            if len(rows):
                keeps = int(((rows.ci_lower > 0) | (rows.ci_upper < 0)).sum())
                lines.append(f"A latent confounder {k:g}x as strong as topic: {keeps} of {len(rows)} layers keep a "
                             "DML NIE (treated) CI that excludes 0.")
    if "refutation" in checks:
        t = checks["refutation"]
        lines.append(f"Refuters (DML, layers {checks['refuted_units']} chosen on a separate half): "
                     + "; ".join(f"{name} passed {int(g.passed.sum())}/{len(g)}" for name, g in t.groupby(
                         "refuter", sort=False)) + ".")
    return lines
