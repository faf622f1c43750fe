"""Peak memory of the simultaneous max-|t| band against the number of units: blocked vs the full draw matrix.

``multiplicity.simultaneous_bands`` computes max_u |draw_u - estimate_u| / se_u a block of units at a time, so
its extra memory is draws x block; the full joint-draw matrix (``multiplicity.joint_draws``, what the band
used before) is draws x units (1.8 GB at 5,000 draws x 46,000 neurons). Both are measured with tracemalloc in
the same run on score-based effects (n = 200 rows, 2,000 multiplier draws), for a growing number of units; the
two bands' critical values are compared (they must be equal).

Run: ``.venv/bin/python benchmarks/bench_memory.py``. Writes ``benchmarks/results/bench_memory.json``.
"""
from __future__ import annotations

import json
import platform
import tracemalloc
from pathlib import Path

import numpy as np

from deconfound.inference import Effect
from deconfound.multiplicity import joint_draws, simultaneous_bands
from deconfound.results import MediationResult

OUT = Path(__file__).resolve().parent / "results" / "bench_memory.json"
N, DRAWS = 200, 2000


def _result(n_units: int) -> MediationResult:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((N, n_units))
    s -= s.mean(0)
    effs = {f"u{j}": {("nie", "treated"): Effect.from_scores(0.01 * (j % 7), s[:, j])} for j in range(n_units)}
    return MediationResult("bench", effs, n=N, n_treated=N // 2)


def _peak(fn) -> tuple[float, object]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20, out


def _full_band(res, level=0.95):
    units = res.units
    est = np.array([res.effect(u, "nie", "treated").estimate for u in units])
    se = np.array([res.effect(u, "nie", "treated").se for u in units])
    draws, _ = joint_draws(res, units, n_draws=DRAWS, random_state=0)
    return float(np.quantile(np.max(np.abs(draws - est) / se, axis=1), level))


def main() -> None:
    rows = []
    for n_units in (1000, 4000, 16000):
        res = _result(n_units)
        mb_blocked, bands = _peak(lambda: simultaneous_bands(res, n_draws=DRAWS, random_state=0))
        mb_full, crit = _peak(lambda: _full_band(res))
        rows.append({"units": n_units, "peak_mb_blocked": round(mb_blocked, 1), "peak_mb_full": round(mb_full, 1),
                     "ratio_full_over_blocked": round(mb_full / mb_blocked, 2),
                     "critical_value_diff": abs(bands.critical_value - crit)})
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "max-|t| band peak memory (tracemalloc)", "n_rows": N,
                               "n_draws": DRAWS, "rows": rows, "python": platform.python_version()}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
