"""Time deconfound.study.run_study on SmolLM2-135M for a small design (docs/results.md, "The powered design").

Usage: python benchmarks/bench_study.py N LAYERS SAMPLES [OUT]
e.g.   python benchmarks/bench_study.py 150 0,10,20 8
Prints the summary lines, a JSON line with wall and CPU seconds per stage, the design table, the robustness
summary and the localization table.
"""
import json
import sys
import time

from deconfound.study import run_study


def main(argv):
    n, layers, s = int(argv[0]), [int(v) for v in argv[1].split(",")], int(argv[2])
    out = argv[3] if len(argv) > 3 else f"bench_study_{n}_{len(layers)}_{s}"
    t0 = time.perf_counter()
    res = run_study(out, n_prompts=n, layers=layers, quick=True, n_samples=s, max_new_tokens=16, seed=0,
                    batch_size=64)
    total = time.perf_counter() - t0
    print("\n".join(res["lines"]))
    print(json.dumps({"n": n, "layers": layers, "n_samples": s, "timings": res["timings"], "total": total,
                      "mc": res["mc"], "secondary": res["secondary"], "failures": res["failures"]}, default=str))
    print(res["design"].to_string())
    print(res["summary"].to_string())
    print(res["localization"].to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
