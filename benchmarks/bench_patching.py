"""Patched evaluations per second on SmolLM2: the Patcher against the current engine, a batched full recompute,
naive batch-1 patching and nnsight (batched), for short and 32-token prompts.

Workload per setting: ``--prompts`` prompts; every ``mlp_out`` layer; ``--donors`` donor vectors per prompt and
layer (a donor is another prompt's activation), so a batch mixes rows of all layers. The score is the
next-token toxic mass. Settings: short prompts (5-8 tokens) and 32-token prompts; and ``reweight``, teacher-forced
continuations on short prompts (resumed against full-depth rows only; see :func:`run_reweight`).

- **resume**: :class:`deconfound.lm.patch.Patcher` (prefix KV cache, batched rows, each row entering the decoder
  stack at its patched layer), a fresh one per round, so the prompt caches are built inside the timed region.
- **current**: the same Patcher with ``resume=False`` (every row runs every layer), the engine before resuming.
- **resume_warm**, **current_warm**: the same two with the prompt caches already built (patched rows alone).
- **batched_recompute**: the fair baseline: the variants of ``--sub-units`` random layers, those of one layer
  batched together (left padding, ``--batch-size`` rows per pass), each recomputing the whole prompt.
- **naive**: one full forward per variant, batch 1, with :func:`deconfound.lm.hooks.patch`, on the variants of
  one layer.
- **nnsight**: if installed (the ``bench`` extra), the batched recompute written with nnsight's ``trace``: one
  trace per batch of one layer's variants, the patch a write to the layer's MLP output at the last position.

Rates for the recompute sides (whose cost does not depend on the patched layer) are variants / second on their
subset. Each side runs ``--rounds`` times; the fastest round counts (other processes on a shared machine only
ever add time); medians are reported too. Every side's scores are checked against the naive ones.

Run: ``.venv/bin/python benchmarks/bench_patching.py`` (a few minutes on one thread).
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
SETTINGS = {"short": (5, 8), "long": (32, 32)}


def make_prompts(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """Deterministic prompts of ``lo``..``hi`` tokens: word windows cut to a token budget drawn per prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start, budget = int(rng.integers(0, 10)), int(rng.integers(lo, hi + 1))
        words = WORDS[start:] + WORDS[:start]
        k = len(words)
        while k > 1 and len(tokenizer(" ".join(words[:k]))["input_ids"]) > budget:
            k -= 1
        out.append(" ".join(words[:k]))
    return out


def _timed(sides, rounds):
    times = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides.items())
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def run_setting(lm, args, lo, hi, seed):
    import torch

    from deconfound.lm.hooks import patch
    from deconfound.lm.patch import NextTokenMass, Patcher

    tok = lm.tokenizer
    prompts = make_prompts(tok, args.prompts, lo, hi, seed)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    ids = outcome_ids(lm)
    ids_t = torch.as_tensor(ids)
    units = [f"mlp_out.L{layer}" for layer in range(lm.n_layers)]
    acts = Patcher(lm, prompts, outcome=NextTokenMass(ids)).activations(units)
    rng = np.random.default_rng(seed)
    reqs, variants = [], []
    for unit in units:
        pidx = np.repeat(np.arange(len(prompts)), args.donors)
        donor = rng.integers(0, len(prompts), size=len(pidx))
        reqs.append((unit, pidx, acts[unit][donor]))
        variants.append([(unit, int(i), acts[unit][j]) for i, j in zip(pidx, donor)])
    n_eval = sum(len(v) for v in variants)
    chosen = sorted(rng.choice(len(units), size=min(args.sub_units, len(units)), replace=False).tolist())
    subset = [v for c in chosen for v in variants[c]]
    naive_subset = variants[chosen[0]]

    def engine(resume):
        return Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=args.batch_size,
                       resume=resume).evaluate(reqs)

    def naive():
        out = []
        for unit, i, value in naive_subset:
            enc = tok([prompts[i]], return_tensors="pt")
            with torch.inference_mode(), patch(lm, unit, torch.as_tensor(value)[None]):
                logits = lm.model(**enc, use_cache=False).logits[0, -1]
            out.append(float(logits.float().softmax(-1)[ids_t].sum()))
        return out

    def batches():
        for c in chosen:
            rows = variants[c]
            for s in range(0, len(rows), args.batch_size):
                chunk = rows[s:s + args.batch_size]
                enc = tok([prompts[i] for _, i, _ in chunk], return_tensors="pt", padding=True)
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                yield units[c], enc, pos, torch.as_tensor(np.stack([v for _, _, v in chunk]))

    def batched():
        out = []
        for unit, enc, pos, vals in batches():
            with torch.inference_mode(), patch(lm, unit, vals):
                logits = lm.model(**enc, position_ids=pos, use_cache=False, logits_to_keep=1).logits[:, -1]
            out += logits.float().softmax(-1)[:, ids_t].sum(-1).tolist()
        return out

    warm = {r: Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=args.batch_size, resume=r)
            for r in (True, False)}
    for p in warm.values():
        p.evaluate(reqs)  # prompt caches built: the timed rounds measure patched rows alone
    sides = {"resume": lambda: engine(True), "current": lambda: engine(False),
             "resume_warm": lambda: warm[True].evaluate(reqs), "current_warm": lambda: warm[False].evaluate(reqs),
             "batched_recompute": batched, "naive": naive}
    nnsight = _nnsight_side(lm, batches, ids_t)
    if callable(nnsight):
        sides["nnsight_batched"] = nnsight
    # warm-up, and every side's scores against naive batch-1 patching
    ref_naive = np.array(naive())
    ref_sub = np.array(batched())
    got = {r: {u: x.scores for u, x in zip(units, engine(r))} for r in (True, False)}

    def engine_rows(resume, rows):
        return np.array([got[resume][u][k] for u, k in rows])

    rows_of = [(units[c], k) for c in chosen for k in range(len(variants[c]))]
    naive_rows = rows_of[:len(naive_subset)]
    diffs = {"resume_vs_naive": float(np.abs(engine_rows(True, naive_rows) - ref_naive).max()),
             "current_vs_naive": float(np.abs(engine_rows(False, naive_rows) - ref_naive).max()),
             "resume_vs_current_all": float(max(np.abs(got[True][u] - got[False][u]).max() for u in units)),
             "batched_recompute_vs_resume": float(np.abs(ref_sub - engine_rows(True, rows_of)).max())}
    if callable(nnsight):
        diffs["nnsight_batched_vs_resume"] = float(np.abs(np.array(nnsight()) - engine_rows(True, rows_of)).max())
    times = _timed(sides, args.rounds)
    count = {"resume": n_eval, "current": n_eval, "resume_warm": n_eval, "current_warm": n_eval,
             "batched_recompute": len(subset), "naive": len(naive_subset), "nnsight_batched": len(subset)}
    rate = {k: count[k] / min(v) for k, v in times.items()}
    rate_med = {k: count[k] / statistics.median(v) for k, v in times.items()}
    ratios = {f"resume_vs_{k}": rate["resume"] / rate[k] for k in rate if not k.startswith("resume")}
    ratios["resume_warm_vs_current_warm"] = rate["resume_warm"] / rate["current_warm"]
    ratios_med = {f"resume_vs_{k}": rate_med["resume"] / rate_med[k] for k in rate_med if not k.startswith("resume")}
    ratios_med["resume_warm_vs_current_warm"] = rate_med["resume_warm"] / rate_med["current_warm"]
    out = {"prompt_tokens": lengths, "n_prompts": len(prompts), "units": len(units),
           "donors_per_prompt_and_unit": args.donors, "patched_evaluations": n_eval,
           "recompute_subset": {"layers": [units[c] for c in chosen], "variants": len(subset),
                                "naive_variants": len(naive_subset)},
           "seconds_all": times, "evaluations_per_second": rate, "evaluations_per_second_median": rate_med,
           "ratios": ratios, "ratios_median": ratios_med, "max_abs_diff": diffs}
    if not callable(nnsight):
        out["nnsight"] = nnsight
    return out


class _Length:
    """A deterministic stand-in scorer for the reweight setting: the text's length in characters, mod 5, / 4."""

    name, columns, primary = "length", ["length"], "length"

    def score(self, texts):
        return np.array([[len(t) % 5 / 4] for t in texts])


def run_reweight(lm, args, seed):
    """Teacher-forced continuations (``reweight``, 4 of 8 tokens per prompt), one donor per prompt and layer:
    resumed rows enter at their layer from unpatched base rows run in the same pass, against every row running
    every layer; both with the prompt caches and continuations prepared."""
    from deconfound.lm.patch import NextTokenMass, Patcher, Reweight

    prompts = make_prompts(lm.tokenizer, args.prompts, 5, 8, seed)
    units = [f"mlp_out.L{layer}" for layer in range(lm.n_layers)]
    acts = Patcher(lm, prompts, outcome=NextTokenMass(outcome_ids(lm))).activations(units)
    rng = np.random.default_rng(seed)
    reqs = [(u, np.arange(len(prompts)), acts[u][rng.permutation(len(prompts))]) for u in units]
    side = {r: Patcher(lm, prompts, outcome=Reweight(_Length(), n_samples=4, max_new_tokens=8, seed=seed),
                       batch_size=args.batch_size, resume=r) for r in (True, False)}
    res = {r: p.evaluate(reqs) for r, p in side.items()}
    got = {r: np.concatenate([x.scores for x in v]) for r, v in res.items()}
    ess = {r: np.concatenate([x.extras["ess"] for x in v]) for r, v in res.items()}  # varies with every weight
    times = _timed({"resume_warm": lambda: side[True].evaluate(reqs),
                    "current_warm": lambda: side[False].evaluate(reqs)}, args.rounds)
    n_eval = len(units) * len(prompts)
    rate = {k: n_eval / min(v) for k, v in times.items()}
    return {"n_prompts": len(prompts), "units": len(units), "samples": 4, "new_tokens": 8,
            "patched_evaluations": n_eval, "seconds_all": times, "evaluations_per_second": rate,
            "ratios": {"resume_warm_vs_current_warm": rate["resume_warm"] / rate["current_warm"]},
            "max_abs_diff": {"resume_vs_current_all": float(np.abs(got[True] - got[False]).max()),
                             "ess_resume_vs_current": float(np.abs(ess[True] - ess[False]).max()),
                             "ess_spread": float(np.ptp(ess[True]))}}


def _nnsight_side(lm, batches, ids_t):
    """nnsight's batched recompute as a callable, or a dict saying why it is absent."""
    if importlib.util.find_spec("nnsight") is None:
        return {"available": False, "note": "nnsight not installed (pip install 'deconfound[bench]')"}
    import torch
    from nnsight import NNsight

    wrapped = NNsight(lm.model)

    def run():
        out = []
        for unit, enc, pos, vals in batches():
            layer = int(unit.split(".L")[1])
            with torch.inference_mode(), wrapped.trace(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                                       position_ids=pos, use_cache=False):
                wrapped.model.layers[layer].mlp.output[:, -1] = vals
                logits = wrapped.lm_head.output.save()
            logits = getattr(logits, "value", logits)
            out += logits[:, -1].float().softmax(-1)[:, ids_t].sum(-1).tolist()
        return out

    return run


# Llama-2-7B per token: a layer 4096 x (2 x 4096 + 2 x 4096) + 3 x 4096 x 11008 = 202.4M multiply-adds, the head
# 32000 x 4096 = 131.1M, so the head costs 0.648 of a layer (SmolLM2: 8.0 layers)
HEAD_PER_LAYER_7B = 131.1 / 202.4


def shaped_model(seed: int = 0):
    """``--model llama-7b-shape``: a random Llama with SmolLM2's 30 layers and layer widths and a vocabulary
    sized so that the output head costs 0.648 layers, as in Llama-2-7B; the word-level test tokenizer feeds it."""
    import torch
    import transformers

    from deconfound.lm.models import as_loaded, tiny_tokenizer

    tok = tiny_tokenizer()
    d, kv, inter = 576, 192, 1536
    layer = d * (2 * d + 2 * kv) + 3 * d * inter
    vocab = max(len(tok), round(HEAD_PER_LAYER_7B * layer / d))
    ids = {k: tok.convert_tokens_to_ids(f"<{k}>") for k in ("pad", "bos", "eos")}
    config = transformers.LlamaConfig(hidden_size=d, intermediate_size=inter, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, vocab_size=vocab,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm = as_loaded((model, tok))
    lm.model_id = "llama-7b-shape"
    return lm


def outcome_ids(lm):
    """The lexicon's toxic tokens; a random-vocabulary model without them scores its first 12 word ids."""
    from deconfound.lm.lexicon import toxic_token_ids

    ids = toxic_token_ids(lm.tokenizer)
    return ids if len(ids) else np.arange(8, 20)


def flop_ceiling(model):
    """The largest speed-up resuming can give on a batch mixing all layers evenly, from multiply-adds per row:
    (L layer + head) / (mean layers run + head); the output head (vocabulary x d_model) runs for every row."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    d, kv = c.hidden_size, c.num_key_value_heads * head_dim
    layer = d * (2 * d + 2 * kv) + 3 * d * c.intermediate_size
    head = c.vocab_size * d
    n = c.num_hidden_layers
    return {"layer_macs": layer, "head_macs": head, "layers": n,
            "ceiling": (n * layer + head) / ((n + 1) / 2 * layer + head),
            "ceiling_layers_only": n / ((n + 1) / 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m",
                        help="a model name or folder, or llama-7b-shape (the head's share of a 7B model's cost)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--donors", type=int, default=2)
    parser.add_argument("--sub-units", type=int, default=3,
                        help="layers whose variants are timed with the recompute sides")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", default="short,long,reweight")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_patching.json"))
    args = parser.parse_args(argv)

    import torch

    from deconfound.lm.models import load_model

    lm = shaped_model() if args.model == "llama-7b-shape" else load_model(args.model)
    result = {"benchmark": "bench_patching", "model": lm.model_id, "batch_size": args.batch_size,
              "rounds": args.rounds, "threads": torch.get_num_threads(), "outcome": "next_token_mass",
              "target_ratio_resume_vs_current": 1.8, "flop_ceiling": flop_ceiling(lm.model), "settings": {}}
    for k, name in enumerate(args.settings.split(",")):
        if name == "reweight":
            result["settings"][name] = run_reweight(lm, args, seed=k)
        else:
            lo, hi = SETTINGS[name]
            result["settings"][name] = {"tokens": [lo, hi], **run_setting(lm, args, lo, hi, seed=k)}
        print(name, json.dumps({key: result["settings"][name][key] for key in
                                ("evaluations_per_second", "ratios", "max_abs_diff")}, indent=1))
    if importlib.util.find_spec("nnsight") is not None:
        import nnsight

        result["nnsight_version"] = getattr(nnsight, "__version__", None)
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
