"""Patched evaluations per second on SmolLM2: the Patcher (prefix KV cache, batched rows) vs naive patching.

Workload: prompts of about 32 tokens; every ``mlp_out`` layer; ``--donors`` donor vectors per prompt and
layer (a donor is another prompt's activation). The score is the next-token toxic mass.

- **ours**: :class:`deconfound.lm.patch.Patcher`, a fresh one per round, so the prefix caches are built
  inside the timed region.
- **naive**: one full forward of the whole prompt per patched variant, batch 1, with the one hook of
  :func:`deconfound.lm.hooks.patch`, timed on every variant of ``--naive-units`` random layers
  (rate = variants / second).
- **batched recompute**: the same variants with those of one layer batched together (left padding, one
  row per variant), still recomputing the whole prompt. It separates the gain of the KV-cache trick from
  the gain of batching.

Each side runs ``--rounds`` times; the fastest round counts (other processes on a shared machine only ever
add time); medians are reported too. Also reported: the largest |ours - naive| over the subset. If nnsight is
installed (the ``bench`` extra), the naive patch is also timed through nnsight's ``trace``.

Run: ``.venv/bin/python benchmarks/bench_patching.py`` (about 1-2 minutes on 2 cores).
Writes ``benchmarks/results/bench_patching.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("the council said on monday that the new plan for the city centre would cost more than people had "
         "expected and that the work on the roads and the bridge could take two more years because the company "
         "that won the contract had lost staff during the winter and the rain had slowed everything down").split()


def make_prompts(tokenizer, n: int, tokens: int, seed: int = 0) -> list[str]:
    """Deterministic prompts of about ``tokens`` tokens: word windows cut to the token budget."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = int(rng.integers(0, 10))
        words = WORDS[start:] + WORDS[:start]
        k = len(words)
        while k > 1 and len(tokenizer(" ".join(words[:k]))["input_ids"]) > tokens:
            k -= 1
        out.append(" ".join(words[:k]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--donors", type=int, default=2)
    parser.add_argument("--naive-units", type=int, default=2,
                        help="layers whose variants (all of them) are timed with the naive and batched sides")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_patching.json"))
    args = parser.parse_args(argv)

    import torch

    from deconfound.lm.hooks import patch
    from deconfound.lm.lexicon import toxic_token_ids
    from deconfound.lm.models import load_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = load_model(args.model)
    tok = lm.tokenizer
    prompts = make_prompts(tok, args.prompts, args.tokens)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    ids = toxic_token_ids(tok)
    ids_t = torch.as_tensor(ids)
    units = [f"mlp_out.L{layer}" for layer in range(lm.n_layers)]
    acts = Patcher(lm, prompts, outcome=NextTokenMass(ids)).activations(units)
    rng = np.random.default_rng(0)
    reqs, variants = [], []
    for unit in units:
        pidx = np.repeat(np.arange(len(prompts)), args.donors)
        donor = rng.integers(0, len(prompts), size=len(pidx))
        reqs.append((unit, pidx, acts[unit][donor]))
        variants += [(unit, int(i), acts[unit][j]) for i, j in zip(pidx, donor)]
    n_eval = len(variants)
    chosen = set(rng.choice(units, size=min(args.naive_units, len(units)), replace=False).tolist())
    subset = [v for v in variants if v[0] in chosen]

    def ours():
        p = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=args.batch_size)
        return p.evaluate(reqs)

    def naive_one(unit, i, value):
        enc = tok([prompts[i]], return_tensors="pt")
        with torch.inference_mode(), patch(lm, unit, torch.as_tensor(value)[None]):
            logits = lm.model(**enc, use_cache=False).logits[0, -1]
        return float(logits.float().softmax(-1)[ids_t].sum())

    def naive():
        return [naive_one(*v) for v in subset]

    def batched():
        out = {}
        by_unit = {}
        for k, (unit, i, value) in enumerate(subset):
            by_unit.setdefault(unit, []).append((k, i, value))
        for unit, rows in by_unit.items():
            for s in range(0, len(rows), args.batch_size):
                chunk = rows[s:s + args.batch_size]
                enc = tok([prompts[i] for _, i, _ in chunk], return_tensors="pt", padding=True)
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                vals = torch.as_tensor(np.stack([v for _, _, v in chunk]))
                with torch.inference_mode(), patch(lm, unit, vals):
                    logits = lm.model(**enc, position_ids=pos, use_cache=False, logits_to_keep=1).logits[:, -1]
                mass = logits.float().softmax(-1)[:, ids_t].sum(-1)
                for (k, _, _), m in zip(chunk, mass.tolist()):
                    out[k] = m
        return [out[k] for k in range(len(subset))]

    first = ours()  # warm-up
    scores = {u: r.scores for u, r in zip(units, first)}
    naive_ref = naive()
    batched_ref = batched()
    pos_of = {}
    for unit, pidx, _ in reqs:
        pos_of[unit] = pidx
    ours_sub = []
    for unit, i, value in subset:  # find the matching row of ours (same unit, prompt and donor)
        rows = np.flatnonzero(pos_of[unit] == i)
        k = next(r for r in rows if np.array_equal(reqs[units.index(unit)][2][r], value))
        ours_sub.append(scores[unit][k])

    times = {"ours": [], "naive": [], "batched_recompute": []}
    for r in range(args.rounds):
        order = [("ours", ours), ("naive", naive), ("batched_recompute", batched)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    count = {"ours": n_eval, "naive": len(subset), "batched_recompute": len(subset)}
    rate = {k: count[k] / min(v) for k, v in times.items()}
    rate_med = {k: count[k] / statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "bench_patching",
        "model": lm.model_id, "n_prompts": len(prompts), "prompt_tokens": lengths, "units": len(units),
        "donors_per_prompt_and_unit": args.donors, "patched_evaluations": n_eval, "naive_subset": len(subset),
        "batch_size": args.batch_size, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "outcome": "next_token_mass", "n_toxic_tokens": int(len(ids)),
        "seconds_all": times, "evaluations_per_second": rate, "evaluations_per_second_median": rate_med,
        "ratio_vs_naive": rate["ours"] / rate["naive"], "ratio_vs_naive_median": rate_med["ours"] / rate_med["naive"],
        "ratio_vs_batched_recompute": rate["ours"] / rate["batched_recompute"],
        "target_ratio_vs_naive": 10.0,
        "max_abs_diff_vs_naive": float(np.max(np.abs(np.array(ours_sub) - np.array(naive_ref)))),
        "max_abs_diff_batched_vs_naive": float(np.max(np.abs(np.array(batched_ref) - np.array(naive_ref)))),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }
    if importlib.util.find_spec("nnsight") is None:
        result["nnsight"] = {"available": False, "note": "nnsight not installed (pip install 'deconfound[bench]')"}
    else:
        result["nnsight"] = _bench_nnsight(lm, prompts, subset, ids_t, naive_ref, args.rounds, rate["ours"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("evaluations_per_second", "ratio_vs_naive", "ratio_vs_batched_recompute",
                                             "max_abs_diff_vs_naive")}, indent=2))
    print(f"nnsight: {result['nnsight']}")
    return result


def _bench_nnsight(lm, prompts, subset, ids_t, reference, rounds, ours_rate):
    """The naive patch (batch 1, whole prompt) through nnsight's trace; failures are recorded, not raised."""
    import torch
    try:
        import nnsight
        from nnsight import NNsight

        wrapped = NNsight(lm.model)

        def run():
            out = []
            for unit, i, value in subset:
                layer = int(unit.split(".L")[1])
                enc = lm.tokenizer([prompts[i]], return_tensors="pt")
                with torch.inference_mode(), wrapped.trace(input_ids=enc["input_ids"], use_cache=False):
                    wrapped.model.layers[layer].mlp.output[0, -1] = torch.as_tensor(value)
                    logits = wrapped.lm_head.output.save()
                logits = getattr(logits, "value", logits)
                out.append(float(logits[0, -1].float().softmax(-1)[ids_t].sum()))
            return out

        got = run()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        rate = len(subset) / min(times)
        return {"available": True, "version": getattr(nnsight, "__version__", None), "evaluations_per_second": rate,
                "ratio_ours_vs_nnsight": ours_rate / rate,
                "max_abs_diff_vs_naive": float(np.max(np.abs(np.array(got) - np.array(reference))))}
    except Exception as err:  # an optional peer: record why it did not run
        return {"available": True, "error": f"{type(err).__name__}: {err}"[:500]}


if __name__ == "__main__":
    main()
