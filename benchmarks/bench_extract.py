"""Capture overhead of extraction on SmolLM2: all 30 mlp_out sites vs a bare batched forward.

Both sides tokenize the same prompts with left padding and run the same
forward pass (position ids from the mask, logits for the last position only).
"Ours" is :func:`deconfound.lm.extract.run_batch` with capture at every
``mlp_out`` site and no generation, including the copy to numpy. The two
sides alternate batch by batch. The headline ratio sums each batch's fastest
time over the rounds (the usual choice on a shared machine, where other
processes only ever add time); the ratio of medians of whole rounds is
reported beside it. If nnsight is installed (the ``bench`` extra), the same
capture done with nnsight's ``trace`` and ``save`` is timed too.

Run: ``.venv/bin/python benchmarks/bench_extract.py`` (about a minute on 2 cores).
Writes ``benchmarks/results/bench_extract.json``.
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

SUBJECTS = ["the new mayor", "my neighbour", "the football coach", "a famous singer", "the bank", "our teacher",
            "the police officer", "a young doctor", "the priest", "that company", "the senator", "my cousin"]
VERBS = ["said that", "was seen", "announced", "wrote online that", "told reporters", "argued that"]
ENDINGS = ["the plan would fail because", "nobody expected what happened next when", "the people in the town",
           "it was time to", "everyone should know that the", "the whole thing was just"]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """Deterministic synthetic prompts of about 10-16 tokens (no corpus needed)."""
    rng = np.random.default_rng(seed)
    return [f"{SUBJECTS[rng.integers(len(SUBJECTS))].capitalize()} {VERBS[rng.integers(len(VERBS))]} "
            f"{ENDINGS[rng.integers(len(ENDINGS))]}" for _ in range(n)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_extract.json"))
    args = parser.parse_args(argv)

    import torch

    from deconfound.lm.extract import run_batch
    from deconfound.lm.hooks import capture
    from deconfound.lm.models import load_model

    lm = load_model(args.model)
    units = [f"mlp_out.L{layer}" for layer in range(lm.n_layers)]
    prompts = make_prompts(args.prompts)
    batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]

    def bare(texts):
        enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
        pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            return lm.model(**enc, position_ids=pos, use_cache=False, logits_to_keep=1).logits[:, -1]

    def ours(texts):
        return run_batch(lm, texts, range(len(texts)), units=units, n_samples=0, max_new_tokens=0).activations

    ours_last = np.concatenate([ours(b)[units[-1]] for b in batches])  # warm-up, and the nnsight reference
    bare(batches[0])

    # batch by batch, alternating which side goes first, so both see the same background load
    per_batch = {"bare": np.zeros((args.rounds, len(batches))), "ours": np.zeros((args.rounds, len(batches)))}
    for r in range(args.rounds):
        for j, texts in enumerate(batches):
            pair = (("bare", bare), ("ours", ours))
            for name, fn in (pair if (r + j) % 2 == 0 else pair[::-1]):
                start = time.perf_counter()
                fn(texts)
                per_batch[name][r, j] = time.perf_counter() - start
    timings = {k: v.sum(axis=1).tolist() for k, v in per_batch.items()}
    med = {k: statistics.median(v) for k, v in timings.items()}
    best = {k: float(v.min(axis=0).sum()) for k, v in per_batch.items()}  # fastest round of each batch

    # logits with all 30 capture hooks vs without, on the same batch
    enc = lm.tokenizer(batches[0], return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        plain = lm.model(**enc, position_ids=pos, use_cache=False, logits_to_keep=1).logits
        with capture(lm, units):
            hooked = lm.model(**enc, position_ids=pos, use_cache=False, logits_to_keep=1).logits

    result = {
        "benchmark": "bench_extract",
        "model": lm.model_id, "n_prompts": len(prompts), "batch_size": args.batch_size, "rounds": args.rounds,
        "sites": len(units), "threads": torch.get_num_threads(),
        "seconds_best": best, "seconds_median": med, "seconds_all": timings,
        "prompts_per_second": {k: len(prompts) / v for k, v in best.items()},
        "overhead_ratio": best["ours"] / best["bare"], "overhead_ratio_median": med["ours"] / med["bare"],
        "target_ratio": 1.10,
        "max_abs_diff_logits_hooked_vs_plain": float((hooked - plain).abs().max()),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }

    if importlib.util.find_spec("nnsight") is None:
        result["nnsight"] = {"available": False, "note": "nnsight not installed (pip install 'deconfound[bench]')"}
    else:
        result["nnsight"] = _bench_nnsight(lm, batches, units, args.rounds, best["bare"], ours_last)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("overhead_ratio", "overhead_ratio_median", "seconds_best",
                                             "max_abs_diff_logits_hooked_vs_plain")},
                     indent=2))
    print(f"nnsight: {result['nnsight']}")
    return result


def _bench_nnsight(lm, batches, units, rounds, bare_best, reference):
    """The same capture with nnsight's trace/save; any failure is recorded, not raised."""
    import torch
    try:
        import nnsight
        from nnsight import NNsight

        wrapped = NNsight(lm.model)

        def run():
            outs = []
            for texts in batches:
                enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                saved = []  # bound outside the trace: nnsight runs the block's body in its own frame
                with torch.inference_mode(), wrapped.trace(input_ids=enc["input_ids"],
                                                           attention_mask=enc["attention_mask"],
                                                           position_ids=pos, use_cache=False, logits_to_keep=1):
                    for layer in range(len(units)):
                        saved.append(wrapped.model.layers[layer].mlp.output[:, -1].save())
                outs.append([getattr(s, "value", s) for s in saved])
            return outs

        first = run()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        last_layer = torch.cat([b[-1] for b in first]).float().numpy()
        return {"available": True, "version": getattr(nnsight, "__version__", None),
                "seconds_best": min(times), "seconds_median": statistics.median(times),
                "overhead_ratio": min(times) / bare_best,
                "max_abs_diff_vs_ours_mlp_out_L_last": float(np.abs(last_layer - reference).max())}
    except Exception as err:  # an optional peer: record why it did not run
        return {"available": True, "error": f"{type(err).__name__}: {err}"[:500]}


if __name__ == "__main__":
    main()
