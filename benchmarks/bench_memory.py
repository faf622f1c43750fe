"""Peak memory against size: the simultaneous max-|t| band, and the soft-topic donor weights of patching.

Max-|t| band, against the number of units: blocked vs the full draw matrix.

``multiplicity.simultaneous_bands`` computes max_u |draw_u - estimate_u| / se_u a block of units at a time, so
its extra memory is draws x block; the full joint-draw matrix (``multiplicity.joint_draws``, what the band
used before) is draws x units (1.8 GB at 5,000 draws x 46,000 neurons). Both are measured with tracemalloc in
the same run on score-based effects (n = 200 rows, 2,000 multiplier draws), for a growing number of units; the
two bands' critical values are compared (they must be equal).

Soft-topic donor weights, against n: with ``conditional="soft"`` every treated prompt gets its own EB donor
weights over the controls, an (n1, n0) matrix per bootstrap replicate. ``PatchingMediation.fit`` computes a
replicate's weights, uses them for every unit and drops them; the layout it replaced held all B + 1 of them
(B x n1 x n0 floats, about 40 GB at 5,000 x 5,000 x 200). Measured in the same run: the peak of the whole
streamed fit (toy patcher, so the model costs nothing) and the peak of building the held list alone (a lower
bound for the old fit), with B = 30 and topic_mean donors.

Run: ``.venv/bin/python benchmarks/bench_memory.py``. Writes ``benchmarks/results/bench_memory.json``.
"""
from __future__ import annotations

import json
import platform
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from deconfound import MediationData
from deconfound.estimators._patching_design import _Design
from deconfound.estimators.patching import PatchingMediation
from deconfound.graph import resolve
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


def _soft_case(n: int):
    """Toy patching data with soft topics (p_a, p_b); treated prompts lie inside the controls' simplex."""
    from deconfound.simulate import toy_patching

    data, patcher, _ = toy_patching(n, seed=1)
    rng = np.random.default_rng(0)
    t = data.t.astype(int)
    onehot = np.eye(3)[rng.integers(0, 3, n)]
    p = np.where(t[:, None] == 1, 0.4 * onehot + 0.6 * rng.dirichlet([2, 2, 2], n), rng.dirichlet([0.4] * 3, n))
    soft = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u": data.mediator("u")},
                                     x=pd.DataFrame({"p_a": p[:, 0], "p_b": p[:, 1]}))
    return soft, patcher


def _held_donor_weights(est, data, patcher):
    """The replaced layout: every replicate's donor weights built and held at once."""
    from deconfound.bootstrap import draw_counts

    _, adj = resolve(None, data)
    design = _Design(est, data, adj, np.asarray(patcher.base_scores(), float))
    counts = draw_counts(data, est.n_boot, random_state=est.random_state)
    allc = np.vstack([np.ones((1, data.n)), counts])[:, design.rows].astype(float)
    w = design.att_weights(allc, design.donor_cols)
    return [design.donor_weights(allc[b], w[b]) for b in range(len(allc))]


def soft_donor_rows(sizes=(150, 300, 600), n_boot=30) -> list[dict]:
    rows = []
    warm, warm_patcher = _soft_case(sizes[0])  # imports done outside the measurement
    PatchingMediation(donors="topic_mean", n_boot=2, conditional="soft", exact_check=0).fit(warm, patcher=warm_patcher)
    for n in sizes:
        data, patcher = _soft_case(n)
        est = PatchingMediation(donors="topic_mean", donor_bootstrap="linear", n_boot=n_boot, conditional="soft",
                                exact_check=0, random_state=0)
        mb_stream, res = _peak(lambda: est.fit(data, patcher=patcher))
        mb_held, held = _peak(lambda: _held_donor_weights(est, data, patcher))
        n1 = int(data.t.sum())
        rows.append({"n": n, "n1": n1, "n0": n - n1, "n_boot": n_boot, "peak_mb_fit_streamed": round(mb_stream, 1),
                     "peak_mb_weights_held": round(mb_held, 1), "ratio_held_over_streamed":
                     round(mb_held / mb_stream, 2), "b_n1_n0_floats_mb": round((n_boot + 1) * n1 * (n - n1) * 8 / 2**20, 1),
                     "replicates_valid": int(np.sum(res.settings["boot_valid"]))})
        print(rows[-1], flush=True)
        del held
    return rows


def main() -> None:
    soft_rows = soft_donor_rows()
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
                               "n_draws": DRAWS, "rows": rows, "soft_donor_weights": {
                                   "benchmark": "patching soft-topic donor weights peak memory (tracemalloc)",
                                   "rows": soft_rows}, "python": platform.python_version()}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
