"""Command line: ``deconfound demo|extract|estimate|compare|sensitivity|refute|report``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import DeconfoundError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no traceback
        self.exit(2, f"deconfound: error: {message}\n")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _load(path):
    from .data import MediationData

    return MediationData.load(path)


def cmd_demo(args) -> int:
    from . import demo

    if args.simulated:
        return demo.run_simulated(out=args.out, quick=args.quick, seed=args.seed)
    return demo.run_llm(out=args.out, quick=args.quick, n_prompts=args.n_prompts, seed=args.seed,
                        neurons=args.neurons)


def cmd_extract(args) -> int:
    from . import demo

    data = demo.extract_default(out=args.out, n_prompts=args.n_prompts, seed=args.seed, model=args.model,
                                site=args.site, n_samples=args.n_samples, max_new_tokens=args.max_new_tokens)
    print(data)
    print(f"saved to {Path(args.out) / 'data'}")
    return 0


def cmd_estimate(args) -> int:
    from .estimators import get_estimator

    data = _load(args.data)
    est = get_estimator(args.estimator, **({"random_state": args.seed} if args.seed is not None else {}))
    res = est.fit(data, graph=args.graph, units=_csv(args.units))
    print(res.summary())
    if args.out:
        res.to_frame().to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_estimators

    data = _load(args.data)
    comp = compare_estimators(data, estimators=_csv(args.estimators), graphs=_csv(args.graphs),
                              units=_csv(args.units), random_state=args.seed)
    print(comp.frame.to_string(index=False, max_rows=60))
    if args.out:
        comp.frame.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def cmd_sensitivity(args) -> int:
    from .estimators import get_estimator
    from .sensitivity import sensitivity_analysis

    data = _load(args.data)
    res = get_estimator(args.estimator, random_state=args.seed).fit(data, graph=args.graph, units=_csv(args.units))
    sens = sensitivity_analysis(res, cf_y=args.cf_y, cf_d=args.cf_d, rho=args.rho)
    print(sens.summary())
    return 0


def cmd_refute(args) -> int:
    from . import refute
    from .estimators import get_estimator

    data = _load(args.data)
    est = get_estimator(args.estimator, random_state=args.seed)
    if args.units:
        data = data.select_units(_csv(args.units))
    names = _csv(args.refuters)
    if names:
        for n in names:
            if not hasattr(refute, n):
                raise ValueError(f"--refuters: expected names from deconfound.refute, got {n!r}")
        import pandas as pd

        table = pd.concat([getattr(refute, n)(est, data, graph=args.graph, random_state=args.seed).to_frame()
                           for n in names], ignore_index=True)
    else:
        table = refute.refute_all(est, data, graph=args.graph)
        table = table.to_frame() if hasattr(table, "to_frame") else table
    print(table.to_string(index=False))
    return 0


def cmd_report(args) -> int:
    from . import demo

    data = _load(args.data)
    paths = demo.analyse_and_report(data, out=args.out, estimators=_csv(args.estimators), seed=args.seed,
                                    quick=args.quick)
    print(f"report: {paths['html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="deconfound", description="Causal mediation analysis of neural-network internals.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="the whole pipeline on the embedded default (SmolLM2, RTP, BBC, CrowS-Pairs)")
    d.add_argument("--quick", action="store_true", help="a small run (about 3 minutes)")
    d.add_argument("--n-prompts", type=int, default=None, help="prompts in all (default 600; quick 120)")
    d.add_argument("--out", default="demo_out", help="output folder (resumable)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--simulated", action="store_true", help="run on the topic-confounded simulator instead")
    d.add_argument("--neurons", action="store_true", help="neuron-level units (mlp_neurons)")
    d.set_defaults(fn=cmd_demo)

    e = sub.add_parser("extract", help="extract a MediationData from the default model and corpora")
    e.add_argument("--out", required=True)
    e.add_argument("--n-prompts", type=int, default=200)
    e.add_argument("--model", default="smollm2-135m")
    e.add_argument("--site", default="mlp_out")
    e.add_argument("--n-samples", type=int, default=2)
    e.add_argument("--max-new-tokens", type=int, default=12)
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(fn=cmd_extract)

    def common(sp, estimator=True):
        sp.add_argument("--data", required=True, help="a saved MediationData folder")
        if estimator:
            sp.add_argument("--estimator", default="dml")
        sp.add_argument("--graph", default="topic_mediation", help="graph name or graphs/X.gml")
        sp.add_argument("--units", default=None, help="comma-separated unit names (default all)")
        sp.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("estimate", help="fit one estimator")
    common(s)
    s.add_argument("--out", default=None, help="write the tidy table as CSV")
    s.set_defaults(fn=cmd_estimate)

    c = sub.add_parser("compare", help="several estimators x graphs side by side")
    c.add_argument("--data", required=True)
    c.add_argument("--estimators", default="parametric,weighting,dml")
    c.add_argument("--graphs", default="topic_mediation,unadjusted_mediation")
    c.add_argument("--units", default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None)
    c.set_defaults(fn=cmd_compare)

    v = sub.add_parser("sensitivity", help="omitted-variable-bias bounds and robustness values")
    common(v)
    v.add_argument("--cf-y", type=float, default=0.03)
    v.add_argument("--cf-d", type=float, default=0.03)
    v.add_argument("--rho", type=float, default=1.0)
    v.set_defaults(fn=cmd_sensitivity)

    r = sub.add_parser("refute", help="refutation tests that re-run the whole estimator")
    common(r)
    r.add_argument("--refuters", default=None, help="comma-separated (default all)")
    r.set_defaults(fn=cmd_refute)

    rp = sub.add_parser("report", help="estimate, compare and write the HTML report for a saved dataset")
    rp.add_argument("--data", required=True)
    rp.add_argument("--out", required=True)
    rp.add_argument("--estimators", default=None)
    rp.add_argument("--quick", action="store_true")
    rp.add_argument("--seed", type=int, default=0)
    rp.set_defaults(fn=cmd_report)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (DeconfoundError, ValueError, KeyError, FileNotFoundError, TypeError, NotImplementedError) as exc:
        if os.environ.get("DECONFOUND_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"deconfound: error: {msg}", file=sys.stderr)
        return 2
