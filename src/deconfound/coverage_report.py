"""What the calibration study (:mod:`deconfound.coverage`) measures and how docs/coverage.md shows it: the
data-generating processes, the estimators, the acceptance, and the page written from the rows (the overview per
estimator and process, the cells outside the acceptance with the reason each is there, and every cell)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .estimators.paths import MEASURED as NULL_PATHS_MEASURED

LOW, HIGH = 0.93, 0.97  # acceptance band for 95% CIs
MAX_SIZE = 0.07  # acceptance for tests at nominal 0.05
OBSERVATIONAL = ("parametric", "weighting", "dml", "econml_diff", "econml_te", "eb_total", "interventional")
# localization_difference with its default (debiased concentration) and with method="abs" (entropy of |a|)
LOCALIZATION_TESTS = ("localization", "localization_abs")
GRID_ORDER = OBSERVATIONAL + ("patching",) + LOCALIZATION_TESTS  # the order of the page's sections and rows
NOT_DEFAULT = {"localization_abs": "not the default"}  # rows of a setting users must ask for
LOC_UNIT_SD = 2.0  # per-unit SE of the unadjusted curve 2 / sqrt(n): 0.045 at n = 2,000, 0.115 at n = 300

DGPS = {
    "linear": (dict(n_topics=4, n_units=2), "topic-confounded linear SEM; u0 causal, u1 a pure topic tracker"),
    "interaction": (dict(n_topics=4, n_units=1, n_spurious=0, interaction=0.5, mediator_strength=3.0),
                    "T x M interaction (kappa 0.5) with a strong T -> M path (3x)"),
    "probit": (dict(n_topics=4, n_units=2, outcome="probit"), "nonlinear outcome: Phi(index) plus noise"),
    "binary": (dict(n_topics=4, n_units=2, outcome="binary"), "binary outcome, P(Y=1) = Phi(index)"),
    "dim50": (dict(n_topics=4, n_units=1, n_spurious=0, dim=50), "50-column mediator, one causal direction"),
    "dim576": (dict(n_topics=4, n_units=1, n_spurious=0, dim=576), "576-column mediator (SmolLM2's width)"),
}


def _process(cells: pd.Series) -> pd.Series:
    """The process of each cell name ("probit-n2000" -> "probit")."""
    return cells.str.rsplit("-n", n=1).str[0]


def overview(table: pd.DataFrame, fails: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per estimator and process, one column per n: the range of the 95% CIs' coverage over the
    cell's rows with a nonzero truth ("0.91-0.97"; "(truth 0)" after it when every truth is 0), ``*`` when a
    test of a zero effect rejects more than MAX_SIZE, ``w`` when most fits warned about a row in that range,
    and the share of data sets without an estimate when there are any: an index not estimable there, or a fit
    that raised (``fails``, :func:`failures`)."""
    if not len(table):
        return pd.DataFrame()
    t = table.assign(process=_process(table.cell))
    raised = {} if fails is None or not len(fails) else dict(zip(zip(fails.estimator, fails.cell), fails.failed))

    def cell(g):
        power = g.test == "power"
        cov = g.coverage[power] if power.any() else g.coverage
        lo, hi = f"{cov.min():.2f}", f"{cov.max():.2f}"
        text = lo if lo == hi else f"{lo}-{hi}"
        text += "*" if ((g.test == "size") & (g.reject > MAX_SIZE)).any() else ""
        text += "" if power.any() else " (truth 0)"
        text += " w" if (g.warned[power] if power.any() else g.warned).max() > 0.5 else ""  # of the rows shown
        k = raised.get((g.name[0], g.cell.iloc[0]), 0)
        none = float(((g.undefined * g.reps + k) / (g.reps + k)).max())
        return text + (f" ({none:.0%} none)" if none > 0 else "")

    texts = t.groupby(["estimator", "process", "n"], sort=False).apply(cell, include_groups=False)
    if fails is not None and len(fails) and "n" in fails:  # a pair whose every fit raised has no table row
        have = set(zip(table.estimator, table.cell))
        gone = fails[np.array([pair not in have for pair in zip(fails.estimator, fails.cell)]) & fails.n.notna()]
        where = pd.MultiIndex.from_arrays([gone.estimator, _process(gone.cell),
                                           gone.n.astype(int)], names=texts.index.names)
        texts = pd.concat([texts, pd.Series("(100% none)", index=where)])
    out = texts.unstack("n")
    out = out[sorted(out.columns)]  # n ascending, whatever order the rows came in
    out.columns = [f"n = {n:,}" for n in out.columns]
    out = out.fillna("").reset_index()
    order = {name: i for i, name in enumerate(GRID_ORDER)}
    places = {name: i for i, name in enumerate(DGPS)}
    key = out.estimator.map(lambda e: order.get(e, len(order))) * 100 + out.process.map(
        lambda p: places.get(p, len(places)))
    return out.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)  # the grid's order


def to_markdown(table: pd.DataFrame, fails: pd.DataFrame, *, commit: str, reps: int, seconds: float,
                grid_name: str, command: str | None = None, sources: pd.DataFrame | None = None,
                notes: str = "", refuters: pd.DataFrame | None = None) -> str:
    """docs/coverage.md: how the study was run, the acceptance, every cell, and the cells that fail.

    ``sources`` (per estimator: cells, reps, commit; :func:`sources`) says where each estimator's rows come from
    when some were kept from an earlier run; ``notes`` (markdown) is placed after the header; ``refuters`` is
    :func:`summarize_refuters`."""
    command = command or f"python -m deconfound.coverage --grid {grid_name} --reps {reps}"
    made = (f"Generated by `{command}` at commit `{commit}`, in {seconds / 60:.1f} minutes." if reps else
            f"Assembled by `{command}` at commit `{commit}` from the rows of earlier runs (no new fits).")
    lines = ["# Calibration of the defaults", "", made + " Every estimator runs with its default settings.", ""]
    if sources is not None and len(sources):
        lines += ["Rows per estimator (cells, data sets per cell, the commit they were computed at):", "",
                  _md(sources), ""]
    lines += [notes.strip(), ""] if notes.strip() else []
    lines += [             "Acceptance: 95% CIs cover within "
             f"[{LOW}, {HIGH}] and tests of no effect reject at most {MAX_SIZE} of the time at nominal 0.05 where the "
             "true effect is 0 (rows marked `size`). " + _mc_note(table), "",
             "Columns: `bias_se` is the mean error divided by the mean SE; `se_sd` the mean SE over the Monte Carlo "
             "SD of the estimates (1 when the SEs are right); `reject` the share of p-values below 0.05; `warned` the "
             "share of fits that warned; `undefined` the share of data sets without a finite CI (an index that "
             "is not estimable there: coverage, bias and CI length are over the others, and such a data set counts "
             "as no rejection).", "",
             "## Data-generating processes", ""]
    for name, (sim, note) in DGPS.items():
        lines.append(f"- `{name}`: {note} (`simulate.topic_mediation({', '.join(f'{k}={v!r}' for k, v in sim.items())})`)")
    lines += ["- `patching`: `simulate.toy_patching`, a toy patcher with a quadratic outcome g; the truth is the "
              "estimand the estimator reports (mean-patch contrast or exact NIE, on the treated)",
              "- `localization`: not an estimator but the test of `compare.localization_difference` (adjusted minus "
              "unadjusted localization of a 10-unit effect curve) on `simulate.localization_curves(se)` with "
              f"se = {LOC_UNIT_SD:g} / sqrt(n) for the unadjusted curve and 1.5 se for the adjusted one (correlated "
              "0.9, 200 joint draws, like two bootstrapped fits on the same rows). `same`: identical true curves "
              "(size); `flat`: the adjusted curve flat with the same total effect (power). `localization` is the "
              "default (debiased concentration, row `concentration`), `localization_abs` is `method='abs'` (entropy "
              "of |estimate|, row `entropy`)", ""]
    if len(table):
        bad = table[~table.passes]
        lines += ["## Overview", "",
                  "Coverage of the 95% CIs per estimator and process (the range over the units, effects and "
                  "arms of each cell whose truth is not 0; rows with a zero truth are in the sections below, "
                  "where the NIEs of a unit T does not move over-cover; `*`: a test of a zero effect rejected "
                  "more than "
                  f"{MAX_SIZE}; `w`: most fits warned; `none`: data sets without an estimate, including fits that "
                  "raised; `(truth 0)`: a cell whose truths are all 0). The sections below give every row.", "",
                  _md(overview(table, fails)), "",
                  "## Cells outside the acceptance", ""]
        if len(bad):
            lines += ["`why`: `warns` when most fits warned (the estimator's `CalibrationWarning` for such data); "
                      "`zero NIE, paths 0` for the over-covered zero NIE of a unit neither of whose paths "
                      "is there, which the `NullPathsWarning` flags; `Monte Carlo` when the coverage is within "
                      "two Monte Carlo SEs of 0.95 and the test keeps its size; `not the default` for "
                      "`localization_abs`, a setting users must ask for; empty when none of these applies. "
                      f"`band_p`: the exact binomial p-value of the band, P(coverage count <= observed) at {LOW} "
                      f"below it and P(>= observed) at {HIGH} above it (1 for a row outside only by its test); "
                      "small values say the true coverage lies outside the band.", "", _md(reasons(bad))]
        else:
            lines.append("None.")
        lines += ["", "## Every cell", ""]
        for est, g in sorted(table.groupby("estimator", sort=False),
                             key=lambda kv: GRID_ORDER.index(kv[0]) if kv[0] in GRID_ORDER else len(GRID_ORDER)):
            lines += [f"### {est}", "", _md(g.drop(columns=["estimator"])), ""]
    if refuters is not None and len(refuters):
        lines += ["## Refuters on correctly specified data", "",
                  "Each refuter at its defaults after the estimator's default fit on the `linear` process (unit u0, "
                  "whose effects are identified and correctly modelled), so every failure is a false alarm: `fail` "
                  f"is the refuter's size at alpha 0.05 (acceptance: at most {MAX_SIZE}). For "
                  "`unobserved_confounder` it is the share of data sets whose conclusion (sign and significance) "
                  "changed under the simulated confounder of its default strength.", "", _md(refuters), ""]
    if len(fails):
        lines += ["## Fits that raised", "", _md(fails), ""]
    return "\n".join(lines) + "\n"


def _mc_note(table: pd.DataFrame) -> str:
    """The Monte Carlo SE of a coverage of 0.95 at each number of data sets the table holds."""
    reps = sorted({int(r) for r in table.reps}) if len(table) and "reps" in table else []
    ses = ", ".join(f"{np.sqrt(0.95 * 0.05 / r):.3f} with {r}" for r in reps)
    return f"The Monte Carlo SE of a coverage of 0.95 is {ses} data sets." if reps else ""


def _md(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        out.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(out)


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "**no**"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3g}"
    return str(v)


def sources(rows: pd.DataFrame) -> pd.DataFrame:
    """Per estimator and commit: the cells and the data sets per cell behind the rows ("100-200" when the
    cells differ)."""
    rows = rows if "commit" in rows else rows.assign(commit="unknown")
    per_cell = rows.groupby(["estimator", "commit", "cell"], sort=False).seed.nunique().reset_index()

    def span(k):
        return str(k.max()) if k.min() == k.max() else f"{k.min()}-{k.max()}"

    return (per_cell.groupby(["estimator", "commit"], sort=False)
            .agg(cells=("cell", "nunique"), reps=("seed", span)).reset_index()[["estimator", "cells", "reps", "commit"]])


def _kept_notes(path) -> str:
    """The hand-written "## What the table shows" section of an existing docs/coverage.md (kept on a rewrite)."""
    text = Path(path).read_text() if Path(path).exists() else ""
    start = text.find("## What the table shows")
    ends = [i for i in (text.find("\nAcceptance: ", start), text.find("## Data-generating processes", start)) if i > start]
    return text[start:min(ends)] if start >= 0 and ends else ""  # up to the generated text that follows it


def band_p(coverage, reps, undefined=0.0) -> np.ndarray:
    """Exact binomial p-value of the acceptance band for an observed coverage over ``reps * (1 - undefined)``
    CIs: P(X <= k | LOW) below the band, P(X >= k | HIGH) above it, 1 inside (how surprising the count would be
    if the true coverage were at the band's nearer edge); nan without CIs."""
    cov = np.asarray(coverage, dtype=float)
    m = np.round(np.asarray(reps, dtype=float) * (1 - np.asarray(undefined, dtype=float)))
    k = np.round(np.nan_to_num(cov) * m)
    p = np.where(cov < LOW, stats.binom.cdf(k, m, LOW), np.where(cov > HIGH, stats.binom.sf(k - 1, m, HIGH), 1.0))
    return np.where((m > 0) & np.isfinite(cov), p, np.nan)


def reasons(bad: pd.DataFrame) -> pd.DataFrame:
    """``bad`` (rows of :func:`~deconfound.coverage.summarize` outside the acceptance) with a ``why`` column:
    "warns" (most fits warned), "zero NIE, paths 0" (a zero NIE over-covered by an estimator that raises the
    NullPathsWarning there, its test within its size), "Monte Carlo" (coverage within two Monte Carlo SEs of
    0.95 and the test within its size), "not the default" (a setting users must ask for, NOT_DEFAULT), or "";
    and ``band_p``, :func:`band_p` of its coverage."""
    mc = 2 * np.sqrt(0.95 * 0.05 / bad.reps)
    size_ok = (bad.test != "size") | (bad.reject <= MAX_SIZE)
    null = ((bad.test == "size") & (bad.effect == "nie") & (bad.coverage > HIGH) & size_ok
            & bad.estimator.isin(list(NULL_PATHS_MEASURED)))
    noise = ((bad.coverage - 0.95).abs() <= mc) & size_ok
    why = np.where(bad.warned > 0.5, "warns", np.where(null, "zero NIE, paths 0", np.where(noise, "Monte Carlo", "")))
    undefined = bad.undefined if "undefined" in bad else 0.0
    return bad.assign(band_p=band_p(bad.coverage, bad.reps, undefined),
                      why=np.where(bad.estimator.isin(list(NOT_DEFAULT)), bad.estimator.map(NOT_DEFAULT), why))
