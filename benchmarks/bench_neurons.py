"""Neurons per second for neuron-level patching on SmolLM2: batched rows vs one neuron per forward.

Workload: ``--prompts`` prompts of the demo's mix (RealToxicityPrompts, BBC, CrowS-Pairs; about 18 tokens),
``--neurons`` MLP neurons of layer ``--layer`` (``mlp_neurons``, 1536 per layer), each patched in every
prompt to its mean activation over the prompts; the score is the next-token toxic mass. A neuron is done when
it has been patched in all prompts, so neurons/second = patched rows per second / prompts.

- **ours (exact)**: :class:`deconfound.lm.patch.Patcher` with coordinate-subset units ``mlp_neurons.L12[j]``,
  one row per neuron and prompt, rows of different neurons sharing forwards (Vig et al. 2020 patch one
  neuron per forward); a fresh Patcher per round, so prefix caches are built inside the timed region.
- **naive**: one full forward of the whole prompt per (neuron, prompt), batch 1, with one pre-hook that
  overwrites the neuron at the last token; timed on the first ``--naive-neurons`` neurons.
- **first order**: :class:`deconfound.lm.attribution.LinearizedPatcher`: one forward and backward per prompt
  gives every neuron of the layer (all 1536), then a dot product per neuron; its error against the exact
  scores is reported beside its speed.

Each side runs ``--rounds`` times, alternating; the fastest round counts. Writes
``benchmarks/results/bench_neurons.json`` (common ``rows`` schema, see docs/scaling.md).
Run: ``.venv/bin/python benchmarks/bench_neurons.py`` (about 70 s on one core).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--neurons", type=int, default=128)
    parser.add_argument("--naive-neurons", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_neurons.json"))
    args = parser.parse_args(argv)

    import torch

    from deconfound.demo_neurons import default_prompts
    from deconfound.lm.attribution import LinearizedPatcher
    from deconfound.lm.lexicon import toxic_token_ids
    from deconfound.lm.models import load_model
    from deconfound.lm.patch import NextTokenMass, Patcher
    from deconfound.lm.sites import bind

    torch.set_num_threads(int(os.environ.get("DECONFOUND_TORCH_THREADS", "1")))
    lm = load_model(args.model)
    tok = lm.tokenizer
    prompts = default_prompts(args.prompts, seed=0).text.tolist()
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    ids = toxic_token_ids(tok)
    ids_t = torch.as_tensor(ids)
    site = f"mlp_neurons.L{args.layer}"
    acts = Patcher(lm, prompts, outcome=NextTokenMass(ids)).activations([site])[site]
    width = acts.shape[1]
    neurons = np.random.default_rng(0).choice(width, size=min(args.neurons, width), replace=False)
    donor = acts.mean(axis=0)
    pidx = np.arange(len(prompts))
    reqs = [(f"{site}[{j}]", pidx, np.full((len(prompts), 1), donor[j], np.float32)) for j in neurons]
    naive_neurons = neurons[: args.naive_neurons]
    module = bind(lm.model, site).module

    def ours():
        p = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=args.batch_size)
        return np.stack([r.scores for r in p.evaluate(reqs)])  # (neurons, prompts)

    def naive():
        out = np.empty((len(naive_neurons), len(prompts)))
        for a, j in enumerate(naive_neurons):
            for i, text in enumerate(prompts):
                def hook(mod, inputs, j=int(j)):
                    x = inputs[0].clone()
                    x[0, -1, j] = float(donor[j])
                    return (x, *inputs[1:])

                handle = module.register_forward_pre_hook(hook)
                try:
                    enc = tok([text], return_tensors="pt")
                    with torch.inference_mode():
                        logits = lm.model(**enc, use_cache=False).logits[0, -1]
                finally:
                    handle.remove()
                out[a, i] = float(logits.float().softmax(-1)[ids_t].sum())
        return out

    def first_order():
        p = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=args.batch_size)
        lin = LinearizedPatcher(p, [site])
        all_reqs = [(f"{site}[{j}]", pidx, np.full((len(prompts), 1), donor[j])) for j in range(width)]
        return np.stack([r.scores for r in lin.evaluate(all_reqs)])  # every neuron of the layer

    warm = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=args.batch_size)
    warm.evaluate(reqs[:2])  # warm-up: the token set, first allocations
    times = {"ours": [], "naive": [], "first_order": []}
    got = {}
    fns = [("ours", ours), ("naive", naive), ("first_order", first_order)]
    for r in range(args.rounds):
        for name, fn in (fns if r % 2 == 0 else fns[::-1]):
            start = time.perf_counter()
            got[name] = fn()
            times[name].append(time.perf_counter() - start)
    exact, ref_naive, lin_all = got["ours"], got["naive"], got["first_order"]
    count = {"ours": len(neurons), "naive": len(naive_neurons), "first_order": width}
    rate = {k: count[k] / min(v) for k, v in times.items()}
    rate_med = {k: count[k] / statistics.median(v) for k, v in times.items()}
    pos = {int(j): a for a, j in enumerate(neurons)}
    diff_naive = float(np.max(np.abs(exact[[pos[int(j)] for j in naive_neurons]] - ref_naive)))
    diff_lin = float(np.max(np.abs(lin_all[neurons] - exact)))
    base = warm.base_scores()
    effect = np.abs(exact - base[None, :])
    n_p = len(prompts)
    rows = [
        {"name": f"neuron patching, exact: batched rows vs one neuron per forward (SmolLM2 {site}, {n_p} prompts)",
         "ours_s": 1 / rate["ours"], "baseline": "naive: one full forward per neuron and prompt, batch 1",
         "baseline_s": 1 / rate["naive"], "ratio": rate["ours"] / rate["naive"], "max_abs_diff": diff_naive,
         "notes": f"seconds per neuron (patched in all {n_p} prompts), fastest of {args.rounds} rounds; ours on "
                  f"{len(neurons)} neurons (prefix caches built inside the timing), naive on {len(naive_neurons)}; "
                  "max_abs_diff over the patched scores of the naive subset"},
        {"name": f"neuron patching, first order (LinearizedPatcher) vs exact batched (SmolLM2 {site}, {n_p} prompts)",
         "ours_s": 1 / rate["first_order"], "baseline": "exact batched patching (Patcher)",
         "baseline_s": 1 / rate["ours"], "ratio": rate["first_order"] / rate["ours"], "max_abs_diff": diff_lin,
         "notes": f"seconds per neuron; first order: one forward+backward per prompt for all {width} neurons of the "
                  f"layer, then a dot product each; max_abs_diff: |first order - exact| patched score over "
                  f"{len(neurons)} x {n_p} rows, where the largest |exact patch effect| is {effect.max():.2e}"},
    ]
    result = {
        "name": "neuron_patching", "benchmark": "bench_neurons",
        "neurons_per_second": rate["ours"], "neurons_per_second_naive": rate["naive"],
        "neurons_per_second_first_order": rate["first_order"],
        "neurons_per_second_median": rate_med, "patched_rows_per_second": rate["ours"] * n_p,
        "ratio_vs_naive": rate["ours"] / rate["naive"], "max_abs_diff_vs_naive": diff_naive,
        "max_abs_diff_first_order_vs_exact": diff_lin, "max_abs_exact_effect": float(effect.max()),
        "rows": rows, "model": lm.model_id, "site": site, "n_prompts": n_p, "prompt_tokens": lengths,
        "neurons_exact": len(neurons), "neurons_naive": len(naive_neurons), "neurons_first_order": width,
        "batch_size": args.batch_size, "rounds": args.rounds, "seconds_all": times, "threads": torch.get_num_threads(),
        "outcome": "next_token_mass", "load_average": os.getloadavg(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("neurons_per_second", "neurons_per_second_naive",
                                             "neurons_per_second_first_order", "ratio_vs_naive",
                                             "max_abs_diff_vs_naive", "max_abs_diff_first_order_vs_exact")},
                     indent=2))
    return result


if __name__ == "__main__":
    main()
