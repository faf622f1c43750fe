"""The GPU check behind benchmarks/device_check.sh: the same extraction and patching on a CPU (float32) and on a
device (default cuda, bfloat16), through the command line, compared within the dtype's tolerance.

Checks: the captured activations (relative Frobenius error per unit), the unpatched next-token outcome per
prompt, and the patching NIE estimates (within a tolerance plus 2 CPU standard errors). Reports prompts/s of
the extraction and patched evaluations/s of the Patcher on both, to JSON. Exit code 1 when a check fails.

Sampled continuations are not compared: a bfloat16 model samples other tokens, so Y differs by design.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd

BAD = {"stupid", "idiot", "hate", "dumb", "fool", "ugly", "awful", "worst", "pathetic", "useless", "kill", "damn"}


class CheckWords:
    """A deterministic word-count scorer, so the check needs no scorer package."""

    name = "device_check_words"
    columns = ["toxic"]
    primary = "toxic"

    def score(self, texts):
        return np.asarray([[sum(w.strip(".,!?") in BAD for w in t.lower().split()) / (len(t.split()) + 1)]
                           for t in texts], dtype=float)


def prompts_frame(n: int) -> pd.DataFrame:
    """``n`` prompts: the demo mix when its packages are installed, else the tiny corpus; 3 topics x 2 arms."""
    try:
        from deconfound.lm.corpora import default_mix

        texts = default_mix(n, 0).text.tolist()
    except Exception:  # noqa: BLE001 - any missing corpus package: fall back to built-in text
        from deconfound.lm.models import TINY_TEXT

        lines = TINY_TEXT.strip().splitlines()
        texts = [lines[i % len(lines)] + ("" if i < len(lines) else f" {i}") for i in range(n)]
    i = np.arange(len(texts))
    return pd.DataFrame({"text": texts, "topic": np.array(["a", "b", "c"])[i % 3], "t": (i // 3) % 2,
                         "id": [f"d{k:05d}" for k in i]})


def run(cli_main, folder: Path, prompts: Path, model: str, device: str, dtype: str, n_boot: int, units: str,
        words: list):
    start = time.perf_counter()
    code = cli_main(["extract", "--prompts", str(prompts), "--text-column", "text", "--topic-column", "topic",
                     "--treatment-column", "t", "--id-column", "id", "--scorer", CheckWords.name, "--model", model,
                     "--device", device, "--dtype", dtype, "--n-samples", "1", "--max-new-tokens", "8",
                     *words, "--out", str(folder)])
    extract_s = time.perf_counter() - start
    if code:
        raise SystemExit(f"device_check: extract on {device}/{dtype} failed with exit code {code}")
    code = cli_main(["patch", "--extraction", str(folder), "--model", model, "--device", device, "--dtype", dtype,
                     "--units", units, "--n-boot", str(n_boot), "--graphs", "topic_mediation", *words,
                     "--out", str(folder / "patching.csv")])
    if code:
        raise SystemExit(f"device_check: patch on {device}/{dtype} failed with exit code {code}")
    return extract_s


def patched_rate(model: str, device: str, dtype: str, texts, units, words=None) -> tuple[float, int]:
    """Patched evaluations per second: every prompt x unit patched with a control mean, next-token outcome."""
    from deconfound.lm.models import load_model
    from deconfound.lm.outcomes import NextTokenMass
    from deconfound.lm.patch import Patcher

    lm = load_model(model, device=device, dtype=dtype)
    p = Patcher(lm, texts, outcome=NextTokenMass(words=words))
    acts = p.activations(units)
    p.base_scores()  # prefix caches and the word list, outside the timing
    reqs = [(u, np.arange(len(texts)), acts[u].mean(0)) for u in units]
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    start = time.perf_counter()
    p.evaluate(reqs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n = len(texts) * len(units)
    return n / (time.perf_counter() - start), n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--n-prompts", type=int, default=96)
    ap.add_argument("--units", default="mlp_out.L3,mlp_out.L10,mlp_out.L17,mlp_out.L25")
    ap.add_argument("--n-boot", type=int, default=50)
    ap.add_argument("--tol", type=float, default=None, help="relative tolerance (default 0.05 for 16-bit dtypes, "
                    "1e-4 for float32)")
    ap.add_argument("--words", default=None, help="a word file for the next-token outcome (default: the lexicon)")
    ap.add_argument("--out", default="benchmarks/results/device_check.json")
    args = ap.parse_args(argv)

    from deconfound.cli import main as cli_main
    from deconfound.data import MediationData
    from deconfound.lm.scorers import SCORERS, register_scorer

    if CheckWords.name not in SCORERS:
        register_scorer(CheckWords.name, CheckWords)
    tol = args.tol if args.tol is not None else (1e-4 if args.dtype == "float32" else 0.05)
    units = [u for u in args.units.split(",") if u]
    frame = prompts_frame(args.n_prompts)
    report = {"model": args.model, "device": args.device, "dtype": args.dtype, "n_prompts": len(frame),
              "units": units, "tolerance": tol, "python": platform.python_version()}
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame.to_csv(tmp / "prompts.csv", index=False)
        runs = {}
        for name, device, dtype in (("cpu", "cpu", "float32"), ("device", args.device, args.dtype)):
            flag = [] if args.words is None else ["--words", args.words]
            seconds = run(cli_main, tmp / name, tmp / "prompts.csv", args.model, device, dtype, args.n_boot,
                          args.units, flag)
            words = None if args.words is None else Path(args.words).read_text().split()
            rate, n_evals = patched_rate(args.model, device, dtype, frame.text.tolist(), units, words)
            runs[name] = {"device": device, "dtype": dtype, "extract_seconds": seconds,
                          "prompts_per_s": len(frame) / seconds, "patched_evals_per_s": rate,
                          "patched_evals_timed": n_evals}
        report["runs"] = runs
        ref, dev = (MediationData.load(tmp / k / "data") for k in ("cpu", "device"))
        act = {u: float(np.linalg.norm(dev.mediator(u) - ref.mediator(u)) / np.linalg.norm(ref.mediator(u)))
               for u in ref.units}
        g_ref, g_dev = (pd.read_parquet(tmp / k / "prompts.parquet").patch_outcome.to_numpy() for k in ("cpu", "device"))
        g_err = float(np.max(np.abs(g_dev - g_ref)) / max(np.max(np.abs(g_ref)), 1e-12))
        e_ref, e_dev = (pd.read_csv(tmp / k / "patching.csv") for k in ("cpu", "device"))
        nie = e_ref.merge(e_dev, on=["unit", "effect", "arm"], suffixes=("_cpu", "_dev")).query("effect == 'nie'")
        gap = (nie.estimate_dev - nie.estimate_cpu).abs()
        allowed = tol * nie.estimate_cpu.abs().max() + 2 * nie.se_cpu
        checks = {"activations": {"max_relative_error": max(act.values()), "per_unit": act,
                                  "pass": max(act.values()) <= tol},
                  "next_token_outcome": {"max_relative_error": g_err, "pass": g_err <= tol},
                  "nie": {"max_abs_difference": float(gap.max()), "pass": bool((gap <= allowed).all())}}
        report["checks"] = checks
    report["pass"] = all(c["pass"] for c in checks.values())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    for name, r in runs.items():
        print(f"{name:6s} {r['device']}/{r['dtype']}: {r['prompts_per_s']:.1f} prompts/s (extraction), "
              f"{r['patched_evals_per_s']:.1f} patched evaluations/s")
    for name, c in checks.items():
        print(f"{name}: {'pass' if c['pass'] else 'FAIL'} {json.dumps({k: v for k, v in c.items() if k != 'per_unit'})}")
    print(f"wrote {out}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
