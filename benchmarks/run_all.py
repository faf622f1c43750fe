"""Run every benchmark and write the summary table: ``make bench``.

Each ``benchmarks/bench_*.py`` runs in its own process with a time limit; a failure or a timeout is recorded
and the next script runs. Then every ``benchmarks/results/*.json`` is read and
``benchmarks/results/SUMMARY.md`` is written: one table of speed ratios against peers and naive baselines,
each with the largest absolute difference of the estimates beside it, the scaling curves, throughputs, and
the status of every script (``benchmarks/results/run_all.json`` keeps the raw run log).

The common schema of a result file (docs/scaling.md)::

    {"rows": [{"name": str, "ours_s": float, "baseline": str, "baseline_s": float,
               "ratio": float,          # baseline_s / ours_s: above 1, ours is faster
               "max_abs_diff": float,   # largest |ours - baseline| over the estimates compared
               "notes": str}, ...], ...anything else}

A file without ``rows`` (or a single top-level row) is read heuristically: every numeric field whose name
says ratio/speedup/``_vs_`` becomes a row, with the nearest ``max_abs*`` field beside it, and the row notes
name the fields used.

Usage: ``.venv/bin/python benchmarks/run_all.py [--only NAME ...] [--skip NAME ...] [--timeout S]
[--budget S] [--summarize-only]``. The default budget (840 s for all scripts) keeps ``make bench`` under 15
minutes on 2 cores; a script never gets more than the budget left.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FIELDS = ("name", "ours_s", "baseline", "baseline_s", "ratio", "max_abs_diff", "notes")
# per-script limits in seconds (the whole suite should stay under 15 minutes on 2 cores)
TIMEOUTS = {"bench_extract.py": 240, "bench_patching.py": 240, "bench_dml.py": 240, "bench_scaling.py": 240}
DEFAULT_TIMEOUT = 180
BUDGET = 840  # seconds for all scripts together; a script gets at most what is left
# the comparisons the project promises (issue 9), matched against each row's text
REQUIRED = [
    ("parametric vs statsmodels Mediation", ("statsmodels",)),
    ("DoWhy two-stage regression (linear case)", ("dowhy",)),
    ("DML vs EconML DRLearner (TE)", ("drlearner",)),
    ("entropy balancing vs empirical_calibration", ("empirical_calibration", "bench_entropy_balance")),
    ("extraction vs a bare forward", ("bench_extract",)),
    ("extraction vs nnsight", ("bench_extract nnsight",)),
    ("patching vs naive", ("bench_patching",)),
    ("patching vs nnsight", ("bench_patching nnsight",)),
    ("vectorized bootstrap vs refit loops", ("bench_bootstrap",)),
    ("neurons/second for neuron-level patching", ("neuron",)),
    ("scaling curves (rows, units)", ("bench_scaling",)),
]
RATIO_KEY = re.compile(r"(^|_)ratio(_|$)|speedup|_vs_")
SKIP_KEY = re.compile(r"^(target|min|max)_|_target$")
SECONDS_KEYS = ("median_seconds", "seconds_median", "seconds_best", "seconds")


# ---- running ------------------------------------------------------------------------------------------------
def run_script(path: Path, timeout: float) -> dict:
    """Run one script in its own process group; kill the group on timeout. Returns the run record."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its workers (joblib, dask) only
        out, _ = proc.communicate()
        status = "timeout"
    return {"script": path.name, "status": status, "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - start, 2), "timeout_s": timeout, "output_tail": (out or "")[-3000:]}


# ---- reading results ----------------------------------------------------------------------------------------
def _num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _walk(obj, path=()):
    """Every dict inside ``obj`` with its path."""
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            label = v.get("problem") or v.get("name") if isinstance(v, dict) else None
            yield from _walk(v, path + (str(label or i),))


def _seconds(d: dict, key: str):
    """(ours_s, baseline, baseline_s) for ratio field ``key`` of dict ``d``, from its seconds dict, if clear."""
    pref = [k for k in SECONDS_KEYS if isinstance(d.get(k), dict)]
    pref.sort(key=lambda k: ("median" in k) != ("median" in key))  # a median ratio from median seconds
    if not pref:
        return None, None, None, None
    secs = {k: _num(v) for k, v in d[pref[0]].items() if _num(v) is not None}
    m = re.match(r"ratio_(?P<base>.+?)_over_(?P<ours>.+)$", key) or re.match(r"(?P<ours>.+?)_vs_(?P<base>.+)$", key)
    base, ours = (m.group("base"), m.group("ours")) if m else (None, None)
    m2 = re.match(r"ratio_vs_(?P<base>.+?)(_median)?$", key)
    if m2:
        base, ours = m2.group("base"), "ours"
    ours_key = ours if ours in secs else ("ours" if "ours" in secs else None)
    if base not in secs:
        others = [k for k in secs if k != ours_key]
        base = others[0] if len(others) == 1 else base
    return secs.get(ours_key), base, secs.get(base), pref[0]


def _max_abs(d: dict, key: str, top: dict):
    cands = [(k, _num(v)) for k, v in d.items() if k.startswith("max_abs") and _num(v) is not None]
    if not cands:
        cands = [(k, _num(v)) for k, v in top.items() if k.startswith("max_abs") and _num(v) is not None]
    if not cands:
        return None, None
    tokens = set(key.split("_")) - {"ratio", "vs", "over", "median", "ours"}
    cands.sort(key=lambda kv: -len(tokens & set(kv[0].split("_"))))
    return cands[0]


def rows_of(stem: str, obj) -> list[dict]:
    """The rows of one result file in the common schema (read heuristically when it has no ``rows``)."""
    if isinstance(obj, dict) and isinstance(obj.get("rows"), list):
        return [{**{f: r.get(f) for f in FIELDS}, "source": stem} for r in obj["rows"] if isinstance(r, dict)]
    if isinstance(obj, dict) and all(k in obj for k in ("ratio", "ours_s", "baseline_s")):
        return [{**{f: obj.get(f) for f in FIELDS}, "name": obj.get("name", stem), "source": stem}]
    out = []
    for path, d in _walk(obj):
        for key, value in d.items():
            if _num(value) is None or not RATIO_KEY.search(key) or SKIP_KEY.search(key):
                continue
            ours_s, base, base_s, secs_key = _seconds(d, key)
            diff_key, diff = _max_abs(d, key, obj if isinstance(obj, dict) else {})
            where = ".".join(path + (key,))
            if ours_s and base_s:  # one orientation for every row: baseline / ours
                ratio, how = base_s / ours_s, f"ratio = {secs_key}[{base}] / ours from {where} ({value:.3g} there)"
            else:
                ratio, how = value, f"ratio as reported in {where}"
            out.append({"name": f"{' / '.join(path) + ': ' if path else ''}{key}", "ours_s": ours_s,
                        "baseline": base, "baseline_s": base_s, "ratio": ratio, "max_abs_diff": diff,
                        "notes": how + (f"; diff from {diff_key}" if diff_key else "; no max_abs field"),
                        "source": stem})
    return out


def throughputs(stem: str, obj) -> list[tuple[str, str, float]]:
    """(source, field path, value) of every numeric ``*per_second*`` field."""
    out = []
    for path, d in _walk(obj):
        for key, value in d.items():
            if "per_second" in key:
                if _num(value) is not None:
                    out.append((stem, ".".join(path + (key,)), value))
                elif isinstance(value, dict):
                    out += [(stem, ".".join(path + (key, k)), v) for k, v in value.items() if _num(v) is not None]
    return out


# ---- the summary --------------------------------------------------------------------------------------------
def _fmt(v, kind="g"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v.replace("|", "/").replace("\n", " ")
    if kind == "s":
        return f"{v:.3g}"
    if kind == "ratio":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}"
    return f"{v:.2e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.3g}"


def write_summary(runs: list[dict], started: float, path: Path) -> str:
    results = sorted(p for p in RESULTS.glob("*.json") if p.name != "run_all.json")
    ran = {r["script"].removesuffix(".py"): r for r in runs}
    rows, rates, unreadable = [], [], []
    for p in results:
        try:
            obj = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            unreadable.append(f"{p.name}: {exc}")
            continue
        fresh = p.stat().st_mtime >= started
        for r in rows_of(p.stem, obj):
            r["fresh"] = fresh
            rows.append(r)
        rates += throughputs(p.stem, obj)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark summary", "",
        f"Written by `benchmarks/run_all.py` ({stamp}; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}). Ratio = baseline seconds / ours seconds (above 1: ours is faster); where a "
        "script did not report both times, the notes say the ratio is its own field, as reported. Rows marked * come from a result file that this run did "
        "not rewrite (an earlier run).", "",
        "| benchmark | comparison | ours (s) | baseline | baseline (s) | ratio | max abs diff | notes |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "" if r["fresh"] else " *"
        lines.append(f"| {r['source']}{mark} | {_fmt(r['name'])} | {_fmt(r['ours_s'], 's')} | {_fmt(r['baseline'])} "
                     f"| {_fmt(r['baseline_s'], 's')} | {_fmt(r['ratio'], 'ratio') if _num(r['ratio']) else '-'} "
                     f"| {_fmt(r['max_abs_diff'])} | {_fmt(r['notes'] or '')} |")
    lines += ["", "## Coverage of the promised comparisons", "", "| comparison | status | rows |", "|---|---|---|"]
    for label, keys in REQUIRED:
        hits = [r for r in rows if any(all(tok in _text(r) for tok in k.lower().split()) for k in keys)]
        if label.startswith("neurons") and not hits:
            hits = [x for x in rates if "neuron" in x[1].lower()]
        status = "present" if hits else "missing"
        lines.append(f"| {label} | {status} | {len(hits)} |")
    lines += _scaling_section()
    if rates:
        lines += ["", "## Throughput", "", "| benchmark | field | per second |", "|---|---|---|"]
        lines += [f"| {s} | {f} | {_fmt(v)} |" for s, f, v in rates]
    lines += ["", "## Runs", "", "| script | status | seconds | limit (s) |", "|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['script']} | {r['status']} | {r['seconds']} | {r['timeout_s']} |")
    if not runs:
        lines.append("| (no scripts run: --summarize-only) | | | |")
    for r in runs:
        if r["status"] != "ok":
            tail = "\n".join(r["output_tail"].strip().splitlines()[-15:])
            lines += ["", f"### {r['script']}: {r['status']}", "", "```", tail, "```"]
    missing = [name for name in ran if not (RESULTS / f"{name}.json").exists()]
    if missing or unreadable:
        lines += ["", "## Problems", ""] + [f"- {m}: wrote no results/{m}.json" for m in missing] + \
                 [f"- unreadable: {u}" for u in unreadable]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _text(row) -> str:
    return " ".join(str(row.get(k) or "") for k in ("source", "name", "baseline", "notes")).lower()


def _scaling_section() -> list[str]:
    p = RESULTS / "bench_scaling.json"
    if not p.exists():
        return []
    try:
        s = json.loads(p.read_text())
        by_rows, by_units = s["seconds_vs_rows"], s["seconds_vs_units"]
    except (OSError, ValueError, KeyError):
        return ["", "## Scaling curves", "", "bench_scaling.json is unreadable."]
    names = list(by_rows)
    ns = [pt["n"] for pt in by_rows[names[0]]]
    ks = [pt["units"] for pt in by_units[names[0]]]
    out = ["", "## Scaling curves", "", f"![scaling curves]({s.get('plot', 'scaling.png')})", "",
           f"Seconds per fit, one unit of {s.get('unit_dim', '?')} columns (settings: "
           + "; ".join(f"{k}: {v}" for k, v in s.get("settings", {}).items()) + ").", "",
           "| estimator | " + " | ".join(f"n={n:,}" for n in ns) + " |", "|---" * (len(ns) + 1) + "|"]
    for name in names:
        out.append(f"| {name} | " + " | ".join(_fmt(pt["seconds"], "s") for pt in by_rows[name]) + " |")
    out += ["", f"Seconds per fit vs units (n = {s.get('units_rows', '?')}):", "",
            "| estimator | " + " | ".join(f"{k} units" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name in names:
        out.append(f"| {name} | " + " | ".join(_fmt(pt["seconds"], "s") for pt in by_units[name]) + " |")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="script names (bench_x or bench_x.py) to run")
    parser.add_argument("--skip", nargs="*", default=(), help="script names not to run")
    parser.add_argument("--timeout", type=float, default=None, help="one limit in seconds for every script")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for all scripts together")
    parser.add_argument("--summarize-only", action="store_true", help="run nothing; summarize the JSON there")
    parser.add_argument("--summary", type=Path, default=RESULTS / "SUMMARY.md")
    args = parser.parse_args(argv)

    def norm(names):
        return {n if n.endswith(".py") else f"{n}.py" for n in names}

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only is not None:
        scripts = [p for p in scripts if p.name in norm(args.only)]
    scripts = [p for p in scripts if p.name not in norm(args.skip)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = []
    if not args.summarize_only:
        for path in scripts:
            left = args.budget - (time.time() - started)
            limit = min(args.timeout or TIMEOUTS.get(path.name, DEFAULT_TIMEOUT), left)
            if limit < 30:
                runs.append({"script": path.name, "status": "skipped (budget)", "returncode": None, "seconds": 0,
                             "timeout_s": 0, "output_tail": f"{left:.0f}s of the {args.budget:.0f}s budget left"})
                print(f"[run_all] {path.name}: skipped, budget spent", flush=True)
                continue
            print(f"[run_all] {path.name} (limit {limit:.0f}s) ...", flush=True)
            rec = run_script(path, limit)
            print(f"[run_all] {path.name}: {rec['status']} in {rec['seconds']}s", flush=True)
            runs.append(rec)
        log = {"started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
               "total_seconds": round(time.time() - started, 1), "runs": runs}
        (RESULTS / "run_all.json").write_text(json.dumps(log, indent=2) + "\n")
    else:
        started = float("inf")  # nothing is fresh
    write_summary(runs, started if not args.summarize_only else float("inf"), args.summary)
    print(f"[run_all] wrote {args.summary.relative_to(ROOT) if args.summary.is_relative_to(ROOT) else args.summary}")
    failed = [r["script"] for r in runs if r["status"] != "ok"]
    if failed:
        print(f"[run_all] not ok: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
