"""Calibration study: every estimator's defaults, run over a grid of simulations whose truth is known.

A *cell* is one data-generating process at one sample size. For each estimator and cell the study fits the
estimator with its default settings on ``reps`` independent data sets and records, per unit, effect and arm,
the estimate, SE, CI and p-value beside the exact truth of the population the result reports. The summary gives
the bias in SE units, the coverage of the CIs, their mean length, the ratio of the mean SE to the Monte Carlo
SD, and the size (true effect 0) or power (true effect not 0) of the test of no effect.

The ``localization`` cells study a test instead of an estimator: :func:`deconfound.compare.localization_difference`
(adjusted minus unadjusted concentration of a per-unit curve) on curves of :func:`simulate.localization_curves`,
with the adjusted curve 1.5x noisier; identical true curves give its size, a flat adjusted curve its power.
The ``refute`` cell runs every refuter of ``REFUTER_SIZE`` after each estimator's default fit on correctly
specified data: :func:`summarize_refuters` gives their false-alarm rates.

``make coverage`` runs the full grid and writes ``docs/coverage.md``; a reduced grid runs in the test suite.

Examples
--------
>>> cells = [c for c in grid("ci") if c.name == "linear-n300"]
>>> rows = run(["parametric"], cells, reps=2, progress=False)
>>> sorted(rows.effect.unique())
['nde', 'nie', 'te']
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import simulate
from .compare import localization_difference, localization_indices
from .coverage_report import (DGPS, HIGH, LOC_UNIT_SD, LOCALIZATION_TESTS, LOW, MAX_SIZE,  # noqa: F401 - the grid
                              OBSERVATIONAL, _kept_notes, sources, to_markdown)
from .estimators import get_estimator
from .inference import Effect
from .parallel import run_tasks
from .refute import REFUTERS
from .results import MediationResult

KEYS = (("nie", "control"), ("nie", "treated"), ("nde", "control"), ("nde", "treated"), ("te", "average"))
# refuters whose size the grid measures (on correctly specified data), and the rows it reads from each
REFUTER_SIZE = ("placebo_treatment", "data_subset", "random_common_cause", "dummy_outcome", "unobserved_confounder")
REFUTER_KEYS = (("te", "average"), ("nie", "average"), ("nie", "treated"), ("nde", "control"))
# the refuters draw from a stream other than the data's: with random_state = the data seed, data_subset's subsets
# reused the uniforms that drew the rows' topics and arms (parametric's NDE: size 0.10 over 200 data sets, and
# 0.046 over 1,000 with separate streams)
REFUTER_SEED = 1_000_000


@dataclass(frozen=True)
class Cell:
    """One data-generating process at one n. ``kind`` is "mediation" (simulate.topic_mediation), "patching"
    (simulate.toy_patching), "localization" (simulate.localization_curves, per-unit SE ``unit_sd / sqrt(n)``) or
    "refute" (every refuter of REFUTER_SIZE with its defaults after the estimator's default fit on
    simulate.topic_mediation)."""

    name: str
    n: int
    sim: dict = field(default_factory=dict)
    kind: str = "mediation"
    estimators: tuple = OBSERVATIONAL
    note: str = ""




def grid(kind: str = "full") -> list[Cell]:
    """The cells of the ``"full"`` grid (every DGP at n = 300, 2,000, 10,000, plus patching) or the reduced
    ``"ci"`` grid that the test suite runs."""
    if kind not in ("full", "ci"):
        raise ValueError(f"grid: expected 'full' or 'ci', got {kind!r}")
    sizes = {"full": (300, 2000, 10000), "ci": (300, 2000)}[kind]
    dgps = DGPS if kind == "full" else {k: DGPS[k] for k in ("linear", "interaction", "binary")}
    cells = []
    for name, (sim, note) in dgps.items():
        for n in sizes:
            if name == "dim576" and n < 2000:
                continue  # d > n: no default is meant to work there; listed in the docs instead
            cells.append(Cell(f"{name}-n{n}", n, sim, note=note))
    for n in sizes[:2]:
        cells.append(Cell(f"patching-n{n}", n, dict(c=0.25), kind="patching", estimators=("patching",),
                          note="toy patcher, quadratic g (mean patch differs from the exact NIE)"))
    cells.append(Cell("refute-linear-n300", 300, DGPS["linear"][0], kind="refute",
                      note="refuters on the linear process (correctly specified): their size"))
    for n in sizes[:2]:
        for adjusted, what in (("same", "identical true curves (size)"), ("flat", "flat adjusted curve (power)")):
            cells.append(Cell(f"localization-{adjusted}-n{n}", n, dict(adjusted=adjusted, unit_sd=LOC_UNIT_SD),
                              kind="localization", estimators=LOCALIZATION_TESTS, note=what))
    return cells


def _truth_value(truth, unit, effect, arm, population):
    if population not in ("ate", "att", "atc"):
        return np.nan  # an overlap population has no simulator truth
    return truth.value(unit, effect, arm, population)


def _rows_mediation(name, cell, seed, settings):
    data, truth = simulate.topic_mediation(cell.n, seed=seed, **cell.sim)
    res = get_estimator(name, **settings).fit(data)
    rows = []
    for unit in res.units:
        have = res.effects[unit]
        # an estimator with one NIE and one NDE per unit (econml_diff) reports them on the "average" arm
        keys = KEYS if ("nie", "treated") in have else KEYS + (("nie", "average"), ("nde", "average"))
        for key, eff in have.items():
            if key not in keys:
                continue
            rows.append(_row(name, cell, seed, unit, key, eff, res.population,
                             _truth_value(truth, unit, *key, res.population)))
    return rows


def _rows_patching(name, cell, seed, settings):
    data, patcher, truth = simulate.toy_patching(cell.n, seed=seed, **cell.sim)
    res = get_estimator(name, **settings).fit(data, patcher=patcher)
    estimand = res.settings.get("estimand", "")
    mean_patch = res.settings.get("donors", "eb_mean") in ("eb_mean", "mean", "conditional_mean") \
        or "mean-patch" in str(estimand)
    rows = []
    for key, eff in res.effects["u"].items():
        kind = key[0]
        if kind == "nie":
            value = truth["mean_patch"] if mean_patch else truth["nie_exact"]
        elif kind == "te":
            value = truth["te"]
        else:
            continue  # a mean-patch NDE (TE minus the mean patch) has no separate truth here
        rows.append(_row(name, cell, seed, "u", key, eff, res.population, value))
    return rows


def _curve_result(curve) -> MediationResult:
    effects = {f"u{i}": {("nie", "treated"): Effect.from_draws(e, curve["draws"][:, i])}
               for i, e in enumerate(curve["estimate"])}
    return MediationResult("curve", effects, n=0, n_treated=0)


def _rows_localization(name, cell, seed, settings):
    """One row: the adjusted-minus-unadjusted index of localization_difference beside its true value. With
    ``signal_cv`` above the threshold the debiased index is not estimable: the row's estimate, CI and p-value are
    NaN (no rejection)."""
    curves = simulate.localization_curves(cell.sim["unit_sd"] / np.sqrt(cell.n), adjusted=cell.sim["adjusted"],
                                          seed=seed)
    method = "abs" if name == "localization_abs" else "debiased"
    index = "entropy" if method == "abs" else "concentration"
    diff = localization_difference(_curve_result(curves["adjusted"]), _curve_result(curves["unadjusted"]),
                                   method=method, **settings).set_index("index").loc[index]
    if method == "abs":
        truth = np.subtract(*[localization_indices(curves[k]["truth"])["entropy"] for k in ("adjusted", "unadjusted")])
    else:
        truth = curves["adjusted"]["concentration"] - curves["unadjusted"]["concentration"]
    eff = Effect(float(diff.difference), float(diff.se), (float(diff.ci_lower), float(diff.ci_upper)),
                 float(diff.p_value), 0.95)
    return [_row(name, cell, seed, "curve", (index, "adj-unadj"), eff, "-", float(truth))]


def _rows_refute(name, cell, seed, settings):
    """Per refuter of REFUTER_SIZE, unit u0 and effect of REFUTER_KEYS: its p-value and whether it passed."""
    data, _ = simulate.topic_mediation(cell.n, seed=seed, **cell.sim)
    est = get_estimator(name, **settings)
    orig = est.fit(data)
    rows = []
    for ref in REFUTER_SIZE:
        frame = REFUTERS[ref](est, data, random_state=REFUTER_SEED + seed, original=orig).to_frame()
        for r in frame[frame.unit == "u0"].itertuples():
            if (r.effect, r.arm) in REFUTER_KEYS:
                rows.append({"estimator": name, "cell": cell.name, "n": cell.n, "seed": seed, "refuter": ref,
                             "unit": r.unit, "effect": r.effect, "arm": r.arm, "p_value": r.p_value,
                             "passed": bool(r.passed), "truth": np.nan})
    return rows


def _row(name, cell, seed, unit, key, eff, population, truth):
    return {"estimator": name, "cell": cell.name, "n": cell.n, "seed": seed, "unit": unit, "effect": key[0],
            "arm": key[1], "population": population, "estimate": eff.estimate, "se": eff.se,
            "ci_lower": eff.ci[0], "ci_upper": eff.ci[1], "p_value": eff.p_value, "truth": truth}


def _one(task):
    name, cell, seed, settings = task
    fn = {"patching": _rows_patching, "localization": _rows_localization, "refute": _rows_refute}.get(
        cell.kind, _rows_mediation)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = fn(name, cell, seed, settings)
    except Exception as exc:  # a failed fit is a result of the study, not a crash of it
        return [{"estimator": name, "cell": cell.name, "n": cell.n, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}]
    out = []
    for r in rows:  # a NullPathsWarning is about the NIE of the units it names only
        mine = [w for w in caught if not hasattr(w.message, "units")
                or (r.get("unit") in w.message.units and r.get("effect") == "nie")]
        out.append({**r, "warned": bool(mine), "warning": str(mine[0].message) if mine else ""})
    return out


def groups(estimators=None, cells=None) -> list[tuple[Cell, str]]:
    """The (cell, estimator) pairs a run fits: each cell's estimators, or those of ``estimators`` it runs."""
    cells = grid("full") if cells is None else list(cells)
    runnable = {e for cell in cells for e in cell.estimators}
    missing = [e for e in (estimators or ()) if e not in runnable]
    if missing:
        raise ValueError(f"estimators: expected names the chosen cells run ({sorted(runnable)}), got {missing}")
    return [(cell, name) for cell in cells
            for name in (cell.estimators if estimators is None else [e for e in estimators if e in cell.estimators])]


def run(estimators=None, cells=None, *, reps: int = 200, seed: int = 0, settings=None, backend: str = "local",
        n_jobs: int = 1, progress: bool = True) -> pd.DataFrame:
    """Fit each estimator with its defaults (plus ``settings[name]``, for studies of other settings) on ``reps``
    data sets per cell; one row per replicate, unit, effect and arm. Replicate r uses data seed ``seed + r``,
    the same for every estimator."""
    settings = settings or {}
    tasks = [(name, cell, seed + r, dict(settings.get(name, {})))
             for cell, name in groups(estimators, cells) for r in range(reps)]
    if backend == "local" and n_jobs in (None, 1):
        from tqdm.auto import tqdm

        out = [_one(t) for t in tqdm(tasks, desc="coverage", disable=None if progress else True)]
    else:
        out = run_tasks(_one, tasks, backend=backend, n_jobs=n_jobs)
    return pd.DataFrame([row for rows in out for row in rows])


def summarize(rows: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Per estimator, cell, effect and arm: reps, bias/SE, coverage, CI length, SE/SD, rejection rate.

    ``undefined`` is the share of data sets without a finite CI (an index that is not estimable there); coverage,
    bias and CI length are over the others, and the rejection rate over all of them (undefined: no rejection)."""
    ok = rows[rows.get("error").isna()] if "error" in rows else rows
    ok = ok[np.isfinite(ok.truth.astype(float))] if "truth" in ok else ok.iloc[:0]
    if not len(ok):  # e.g. refuter rows only (summarize_refuters reads those)
        return pd.DataFrame()
    out = []
    for key, g in ok.groupby(["estimator", "cell", "n", "unit", "effect", "arm", "population"], sort=False):
        err = g.estimate - g.truth
        defined = np.isfinite(g.ci_lower) & np.isfinite(g.ci_upper)
        covered = ((g.ci_lower <= g.truth) & (g.truth <= g.ci_upper))[defined]
        sd = float(g.estimate.std(ddof=1)) if len(g) > 1 else np.nan
        null = bool(np.allclose(g.truth, 0.0, atol=1e-12))
        out.append(dict(zip(("estimator", "cell", "n", "unit", "effect", "arm", "population"), key),
                        reps=len(g), truth=float(g.truth.mean()), bias=float(err.mean()),
                        bias_se=float(err.mean() / g.se.mean()) if g.se.mean() > 0 else np.nan,
                        coverage=float(covered.mean()) if len(covered) else np.nan,
                        ci_length=float((g.ci_upper - g.ci_lower)[defined].mean()),
                        se_sd=float(g.se.mean() / sd) if sd and sd > 0 else np.nan,
                        test="size" if null else "power", reject=float((g.p_value < 1 - level).mean()),
                        undefined=float(1 - defined.mean()),
                        warned=float(g.warned.mean()) if "warned" in g else 0.0))
    table = pd.DataFrame(out)
    if len(table):
        table["n"] = table.n.astype(int)  # rows read back from a file with other kinds' rows may hold it as float
        cov_ok = table.coverage.between(LOW, HIGH)
        size_ok = (table.test != "size") | (table.reject <= MAX_SIZE)
        table["passes"] = cov_ok & size_ok
    return table


def summarize_refuters(rows: pd.DataFrame) -> pd.DataFrame:
    """Per estimator, cell, refuter, unit, effect and arm: the share of correctly specified data sets on which the
    refuter failed (its size at alpha 0.05; for unobserved_confounder the share whose conclusion changed)."""
    if "refuter" not in rows:
        return pd.DataFrame()
    ref = rows[rows.refuter.notna()]
    if "error" in ref:
        ref = ref[ref.error.isna()]
    keys = ["estimator", "cell", "refuter", "unit", "effect", "arm"]
    table = (ref.groupby(keys, sort=False)
             .agg(reps=("seed", "nunique"), fail=("passed", lambda v: 1 - v.astype(bool).mean()),
                  warned=("warned", "mean")).reset_index())
    table["passes"] = table.fail <= MAX_SIZE
    return table


def failures(rows: pd.DataFrame) -> pd.DataFrame:
    """Fits that raised, per estimator and cell, with the first message."""
    if "error" not in rows:
        return pd.DataFrame(columns=["estimator", "cell", "n", "failed", "message"])
    bad = rows[rows.error.notna()]
    keys = ["estimator", "cell", "n"] if "n" in bad else ["estimator", "cell"]
    return (bad.groupby(keys, dropna=False).agg(failed=("seed", "nunique"), message=("error", "first"))
            .reset_index())


def _read_rows(path) -> pd.DataFrame:
    if str(path).endswith(".parquet"):
        return pd.read_parquet(path)
    return pd.read_csv(path, index_col=0, dtype={"commit": str})  # a hash of digits ("0123456") stays a hash


def _write_rows(rows: pd.DataFrame, path) -> None:
    """Write the rows through a temporary file, so an interrupted write leaves the previous file whole. The
    temporary name ends like ``path``, so a ``.csv.gz`` is gzipped like the file it replaces."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    (rows.to_parquet if path.name.endswith(".parquet") else rows.to_csv)(tmp)
    os.replace(tmp, path)


def _resume_problem(held: pd.DataFrame, todo, reps: int, kept, seed: int = 0) -> str | None:
    """Why the rows of an interrupted run cannot be continued by this one, or None: a pair this run neither
    fits nor keeps (--keep), or a fitted pair with other data sets than seeds seed..seed+reps-1."""
    fit = {(e, c.name) for c, e in todo}
    other = sorted(set(zip(held.estimator, held.cell)) - fit - set().union(*[set(zip(k.estimator, k.cell))
                                                                            for k in kept]))
    if other:
        return f"expected the rows of this run's estimator x cell pairs (or of --keep), got {other[:5]}"
    seeds = held.groupby(["estimator", "cell"]).seed.agg(lambda s: sorted({int(v) for v in s}))
    bad = {pair: len(s) for pair, s in seeds.items() if pair in fit and s != list(range(seed, seed + reps))}
    if bad:
        return (f"expected {reps} data sets (seeds {seed} to {seed + reps - 1}) per pair, as --reps and --seed say, "
                f"got {bad}")
    return None


def _shared_data_sets(kept) -> list:
    """(estimator, cell, seed) triples found in more than one of the ``kept`` row sets (first five): which of
    the two would be meant? Disjoint seeds of one pair are pooled instead."""
    seen, twice = set(), set()
    for k in kept:
        here = set(zip(k.estimator, k.cell, k.seed.astype(int)))
        twice |= seen & here
        seen |= here
    return sorted(twice)[:5]


def _commit() -> str:
    """HEAD's short hash, with "+changes" when the sources differ from it (the rows then come from neither)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deconfound.coverage", description=__doc__.split("\n")[0])
    ap.add_argument("--grid", choices=("full", "ci"), default="full")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="data seed of the first data set (default 0): a run with "
                    "--seed 200 --reps 100 adds data sets 200-299 to a cell, to be pooled with --keep")
    ap.add_argument("--estimators", default=None, help="comma list (default: every estimator of each cell)")
    ap.add_argument("--cells", default=None, help="comma list of cell names (default: the whole grid)")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--out", default="docs/coverage.md")
    ap.add_argument("--rows", default=None, help="also write the per-replicate rows (parquet or csv)")
    ap.add_argument("--keep", default=None, help="comma list of per-replicate rows of earlier runs (--rows): the "
                    "estimator x cell pairs this run does not compute are kept from them, with their commit "
                    "(--reps 0: only assemble them); files holding one pair on disjoint data seeds are pooled")
    ap.add_argument("--resume", action="store_true", help="continue the run whose --rows file is given: the "
                    "estimator x cell pairs it holds are kept, the others are fitted and added to it")
    ap.add_argument("--keep-commit", default="unknown", help="the commit of --keep rows that have no commit column")
    args = ap.parse_args(argv)
    cells = grid(args.grid)
    if args.cells:
        wanted = args.cells.split(",")
        unknown = sorted(set(wanted) - {c.name for c in cells})
        if unknown:
            ap.error(f"--cells: expected names from {[c.name for c in cells]}, got {unknown}")
        cells = [c for c in cells if c.name in wanted]
    ests = args.estimators.split(",") if args.estimators else None
    commit = _commit()  # before the run: the code that computes the rows
    try:
        todo = groups(ests, cells) if args.reps > 0 else []
    except ValueError as exc:
        ap.error(str(exc))
    rows = pd.DataFrame(columns=["estimator", "cell", "seed", "commit"])
    kept = [_read_rows(f) for f in args.keep.split(",")] if args.keep else []
    if args.resume:
        if not (args.rows and Path(args.rows).exists()):
            ap.error(f"--resume: expected the --rows file of the interrupted run, got {args.rows!r}")
        rows = _read_rows(args.rows)
        problem = _resume_problem(rows, todo, args.reps, kept, args.seed) if args.reps > 0 else None
        if problem:
            ap.error(f"--resume {args.rows}: {problem}")
        have = set(zip(rows.estimator, rows.cell))
        todo = [(c, e) for c, e in todo if (e, c.name) not in have]
    start = time.time()
    for cell, name in todo:  # one (cell, estimator) at a time; --rows holds every finished one
        new = run([name], [cell], reps=args.reps, seed=args.seed, n_jobs=args.n_jobs).assign(commit=commit)
        rows = pd.concat([rows, new], ignore_index=True) if len(rows) else new
        if args.rows:
            _write_rows(rows, args.rows)
    seconds = time.time() - start
    if kept:
        twice = _shared_data_sets(kept)
        if twice:
            ap.error(f"--keep: expected each estimator x cell data set (seed) in one file only, got {twice} in "
                     "more than one")
        old = pd.concat(kept, ignore_index=True)
        old = old if "commit" in old else old.assign(commit=args.keep_commit)
        done = set(zip(rows.estimator, rows.cell))
        rows = pd.concat([old[[pair not in done for pair in zip(old.estimator, old.cell)]], rows], ignore_index=True)
    if args.rows:
        _write_rows(rows, args.rows)
    table = summarize(rows)
    command = "python -m deconfound.coverage " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).write_text(to_markdown(table, failures(rows), commit=commit, reps=args.reps, seconds=seconds,
                                          grid_name=args.grid, command=command, sources=sources(rows),
                                          notes=_kept_notes(args.out), refuters=summarize_refuters(rows)))
    print(f"wrote {args.out}: {len(table)} rows, {int((~table.passes).sum()) if len(table) else 0} outside the "
          f"acceptance, {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
