"""Command line: ``deconfound demo|extract|patch|estimate|compare|sensitivity|medsens|refute|report``.

``extract`` and ``patch`` (the language-model commands) live in :mod:`deconfound.cli_lm`. ``--data`` is a saved
MediationData folder or a CSV/parquet table with role flags (``--treatment``, ``--outcome``, ``--mediators``,
``--confounders``, ``--categorical``, ``--cluster``, ``--weights``; see ``deconfound._cli_io``). Long commands
show a progress bar on a terminal and stay quiet when piped.

Every subcommand has ``--help``. Bad arguments end with exit code 2 and one line on stderr,
``deconfound: error: <what>: expected ..., got ...``; set ``DECONFOUND_DEBUG=1`` to get the traceback instead.
Library warnings are printed as one line each, ``deconfound: warning: ...``, each distinct one once.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings
from pathlib import Path

from ._cli_io import CliError, _names, add_data_args, load_data
from .errors import DeconfoundError

# Names shown in --help; tests check them against the registries (importing those here would slow --help).
ESTIMATORS = ("parametric", "weighting", "dml", "eb_total", "econml_te", "econml_diff", "interventional")
MODEL_ESTIMATORS = ("patching",)  # need a language model: `deconfound patch` and `demo` run them
REFUTERS = ("placebo_treatment", "random_common_cause", "data_subset", "dummy_outcome", "unobserved_confounder",
            "topic_granularity")
PER_ARM_NIE = ("weighting", "dml", "parametric")  # report the NIE (treated) curve: one of these leads the report
MIN_PROMPTS = 10
USER_ERRORS = (DeconfoundError, ValueError, KeyError, LookupError, OSError, TypeError, NotImplementedError,
               ImportError)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, no traceback
        self.exit(2, f"deconfound: error: {_one_line(message)}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; appends a default to the help when there is a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def _one_line(message) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------------------------------------------------
# Argument types (their errors become "argument --flag: expected ..., got ...")


def _int_at_least(low: int):
    def conv(value: str) -> int:
        try:
            out = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value!r}") from None
        if out < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {out}")
        return out
    return conv


def _float_in(low: float, high: float, *, closed_high: bool):
    bracket = "]" if closed_high else ")"

    def conv(value: str) -> float:
        try:
            out = float(value)
        except ValueError:
            out = float("nan")
        ok = low <= out <= high if closed_high else low <= out < high
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a number in [{low:g}, {high:g}{bracket}, got {value!r}")
        return out
    return conv


def _estimator_name(value: str) -> str:
    from .estimators import available_estimators

    known = [e for e in available_estimators() if e not in MODEL_ESTIMATORS]
    if value in MODEL_ESTIMATORS:
        raise argparse.ArgumentTypeError(f"expected one of {known}, got {value!r} (it needs a language model: "
                                         "run `deconfound patch --extraction DIR`)")
    if value not in known:
        raise argparse.ArgumentTypeError(f"expected one of {known}, got {value!r}")
    return value


def _estimator_list(value: str) -> list[str]:
    return [_estimator_name(v) for v in _names(value)]


def _graph(value: str) -> str:
    from .graph import load_graph

    try:
        load_graph(value)
    except DeconfoundError as exc:
        raise argparse.ArgumentTypeError(_one_line(exc)) from None
    return value


def _graph_list(value: str) -> list[str]:
    return [_graph(v) for v in _names(value)]


def _refuter_list(value: str) -> list[str]:
    from .refute import REFUTERS as known

    names = _names(value)
    bad = [n for n in names if n not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"expected names from {list(known)}, got {bad}")
    return names


def _setting(value: str) -> tuple[str | None, str, object]:
    """``[estimator.]key=value``; the value is a Python literal (2, 0.1, None, True, 'eb') or a bare string."""
    key, sep, raw = value.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE or ESTIMATOR.KEY=VALUE, got {value!r}")
    scope, _, key = key.rpartition(".")
    raw = raw.strip()
    lowered = {"true": True, "false": False, "none": None}
    if raw.lower() in lowered:
        return scope or None, key, lowered[raw.lower()]
    try:
        return scope or None, key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return scope or None, key, raw


def _site(value: str) -> str:
    from .lm.sites import parse_spec

    try:
        parse_spec(value)
    except DeconfoundError as exc:
        raise argparse.ArgumentTypeError(_one_line(exc)) from None
    return value


# ---------------------------------------------------------------------------------------------------------
# Shared steps


def _units(data, units, flag="--units"):
    if units is None:
        return None
    bad = [u for u in units if u not in data.mediators]
    if bad:
        shown = data.units[:10] + (["..."] if len(data.units) > 10 else [])
        raise CliError(f"{flag}: expected names from {shown}, got {bad}")
    return units


def _estimators(names, settings, seed) -> dict:
    """label -> estimator instance, each with the --set values it has (a scoped key must exist on its estimator;
    a plain key on at least one of them)."""
    from .estimators import get_estimator

    ests = {n: get_estimator(n) for n in names}
    for est in ests.values():  # --seed first, so that an explicit --set random_state=... wins
        if seed is not None and "random_state" in est.get_params():
            est.set_params(random_state=seed)
    used = set()
    for scope, key, value in settings or ():
        if scope is not None and scope not in ests:
            raise CliError(f"--set {scope}.{key}: expected an estimator prefix from {list(ests)}, got {scope!r}")
        targets = [scope] if scope is not None else list(ests)
        for name in targets:
            params = ests[name].get_params()
            if key in params:
                ests[name].set_params(**{key: value})
                used.add((scope, key))
            elif scope is not None:
                raise CliError(f"--set {scope}.{key}: expected a setting of {scope} from {sorted(params)}, got {key!r}")
        if (scope, key) not in used:
            known = sorted({k for e in ests.values() for k in e.get_params()})
            raise CliError(f"--set {key}: expected a setting of {' or '.join(ests)} from {known}, got {key!r}")
    return ests


def _writable(value: str) -> str:
    """An output path whose nearest existing ancestor is a writable folder (checked before any work is done)."""
    parent = Path(value).expanduser().absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"expected a path in a writable folder, got {value!r} ({parent} is not one)")
    return value


def _write_csv(frame, path, flag="--out") -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
    except OSError as exc:
        raise CliError(f"{flag}: expected a writable path, got {str(path)!r} ({exc.strerror or exc})") from None
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------------
# Subcommands


def cmd_demo(args) -> int:
    from . import demo
    from .cli_lm import model_kwargs

    if args.simulated:
        for flag, value in (("--n-prompts", args.n_prompts), ("--neurons", args.neurons or None)):
            if value is not None:
                raise CliError(f"{flag}: expected no {flag} with --simulated (it sets the LLM run), got {value}")
        return demo.run_simulated(out=args.out, quick=args.quick, seed=args.seed)
    neuron_flags = {"--layers": args.layers, "--exact": args.exact, "--n-boot": args.n_boot}
    if args.neurons:
        return demo.run_llm(out=args.out, quick=args.quick, n_prompts=args.n_prompts, seed=args.seed, neurons=True,
                            layers=args.layers, exact=args.exact, n_boot=args.n_boot, **model_kwargs(args))
    for flag, value in neuron_flags.items():
        if value is not None:
            raise CliError(f"{flag}: expected only with --neurons, got {value}")
    if args.quick and args.full:
        raise CliError("--quick, --full: expected the smoke run (--quick) or the powered design (--full), got both")
    return demo.run_llm(out=args.out, quick=args.quick, n_prompts=args.n_prompts, seed=args.seed, full=args.full,
                        **model_kwargs(args))


def cmd_estimate(args) -> int:
    data = load_data(args)
    units = _units(data, args.units)
    est = _estimators([args.estimator], args.set, args.seed)[args.estimator]
    res = est.fit(data, graph=args.graph, units=units)
    print(res.summary())
    if args.out:
        frame = res.to_frame().drop(columns="population")  # re-inserted first, beside graph and estimator
        for col, value in (("population", res.population), ("graph", str(args.graph)), ("estimator", args.estimator)):
            frame.insert(0, col, value)
        _write_csv(frame, args.out)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_estimators

    data = load_data(args)
    units = _units(data, args.units)
    ests = _estimators(args.estimators, args.set, args.seed)
    comp = compare_estimators(data, estimators=ests, graphs=args.graphs, units=units, folds=args.folds,
                              random_state=args.seed, sensitivity={} if args.sensitivity else None,
                              refuters=args.refuters, progress=None)
    _with_pd_options(lambda: print(comp.frame.to_string(index=False, max_rows=60)))
    if args.out:
        _write_csv(comp.frame, args.out)
    return 0


def cmd_sensitivity(args) -> int:
    from .sensitivity import sensitivity_analysis

    if args.estimator == "parametric":
        raise CliError("--estimator parametric: expected a score-based estimator (dml, or weighting) for the OVB "
                       "bounds, got parametric; for the parametric estimator run `deconfound medsens` (Imai's rho)")
    data = load_data(args)
    units = _units(data, args.units)
    est = _estimators([args.estimator], args.set, args.seed)[args.estimator]
    res = est.fit(data, graph=args.graph, units=units)
    sens = sensitivity_analysis(res, cf_y=args.cf_y, cf_d=args.cf_d, rho=args.rho, level=args.level)
    print(sens.summary())
    if args.out:
        _write_csv(sens.to_frame(), args.out)
    return 0


def _rho_grid(by):
    import numpy as np

    if by is None:
        return None
    k = int(np.floor((2 - 2 * by) / by + 1e-9)) + 1
    return np.round(-1 + by + by * np.arange(k), 12)


def cmd_medsens(args) -> int:
    from .medsens import rho_sensitivity

    data = load_data(args)
    unit = args.unit
    if unit is None:
        if len(data.units) != 1:
            raise CliError(f"--unit: expected one of {data.units[:10]} (the data has {len(data.units)} units), got "
                           "none")
        unit = data.units[0]
    _units(data, [unit], "--unit")
    est = _estimators(["parametric"], args.set, args.seed)["parametric"]
    res = est.fit(data, graph=args.graph, units=[unit])
    sens = rho_sensitivity(res, unit, rho_grid=_rho_grid(args.rho_by))
    print(sens.summary())
    if args.out:
        _write_csv(sens.frame.assign(unit=unit), args.out)
    if args.plot:
        try:
            print(f"wrote {sens.plot(args.plot)}")
        except OSError as exc:
            raise CliError(f"--plot: expected a writable path, got {args.plot!r} ({exc.strerror or exc})") from None
    return 0


def cmd_refute(args) -> int:
    from .refute import refute_all

    data = load_data(args)
    units = _units(data, args.units)
    est = _estimators([args.estimator], args.set, args.seed)[args.estimator]
    table = refute_all(est, data, graph=args.graph, units=units, random_state=args.seed, refuters=args.refuters,
                       progress=None)
    _with_pd_options(lambda: print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}")))
    n_pass = int(table.passed.sum())
    print(f"passed {n_pass} of {len(table)} rows (each row tested at alpha=0.05)")
    if args.out:
        _write_csv(table, args.out)
    return 0


def cmd_report(args) -> int:
    from . import demo

    lead = [e for e in args.estimators if e in PER_ARM_NIE]
    if not lead:
        raise CliError(f"--estimators: expected at least one of {list(PER_ARM_NIE)} (the report's per-unit NIE "
                       f"(treated) curves), got {args.estimators}")
    data = load_data(args)
    if args.units:
        data = data.select_units(_units(data, args.units))
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out: expected a folder that can be created, got {args.out!r} ({exc.strerror or exc})") from None
    ests = _estimators(args.estimators, args.set, args.seed)
    paths = demo.analyse_and_report(data, out=args.out, estimators=ests, seed=args.seed, quick=args.quick,
                                    main=lead[0], refute_units=min(args.refute_units, len(data.units)))
    print("\n".join(paths.get("summary", [])))
    print(f"report: {paths['html']}")
    print(f"markdown: {paths['md']}")
    return 0


def _with_pd_options(fn):
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        return fn()


# ---------------------------------------------------------------------------------------------------------
# The parser

SET_HELP = ("an estimator setting, repeatable: KEY=VALUE (applied to every chosen estimator that has KEY) or "
            "ESTIMATOR.KEY=VALUE; VALUE is a Python literal or a bare string, e.g. --set n_folds=2 "
            "--set parametric.n_sims=200 --set propensity=logit")
EST_HELP = f"a registered estimator: {', '.join(ESTIMATORS)}"
ESTS_HELP = f"comma-separated registered estimators: {', '.join(ESTIMATORS)}"


def _sub(sub, name, help_text, description, fn):
    p = sub.add_parser(name, help=help_text, description=description, formatter_class=_Formatter)
    p.set_defaults(fn=fn)
    return p


def _layer_list(value: str) -> list[int]:
    try:
        layers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {value!r}") from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative layer numbers, got {value!r}")
    return layers


def _exact(value: str):
    if value == "all":
        return "all"
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of neurons or 'all', got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {value!r}")
    return n


def _data_args(sp, *, estimator=True, graph=True, units=True):
    add_data_args(sp)
    if estimator:
        sp.add_argument("--estimator", default="dml", type=_estimator_name, help=EST_HELP)
    if graph:
        sp.add_argument("--graph", default="topic_mediation", type=_graph,
                        help="graph name (topic_mediation, unadjusted_mediation, latent_topic) or a .gml/.dot path")
    if units:
        sp.add_argument("--units", default=None, type=_names, help="comma-separated unit names (default: all)")
    sp.add_argument("--seed", type=_int_at_least(0), default=0, help="random_state of every estimator")
    sp.add_argument("--set", action="append", type=_setting, default=[], metavar="[EST.]KEY=VALUE", help=SET_HELP)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("deconfound")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        __version__ = "unknown"

    p = _Parser(prog="deconfound", formatter_class=_Formatter,
                description="Causal mediation analysis of neural-network internals, with topic adjustment.",
                epilog="Set DECONFOUND_DEBUG=1 to see tracebacks instead of one-line errors.")
    p.add_argument("--version", action="version", version=f"deconfound {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    d = _sub(sub, "demo", "the study design on the embedded default (SmolLM2, RealToxicityPrompts, Jigsaw BiLSTM)",
             "Treatment within the RealToxicityPrompts pool by one instrument, continuation toxicity for every "
             "estimator, patching adjusted and unadjusted for topic against the observational estimators, the null "
             "model, sensitivity with benchmarks and refuters; writes the report to OUT/report.", cmd_demo)
    d.add_argument("--quick", action="store_true", help="a smoke run (48 prompts, 3 layers)")
    d.add_argument("--n-prompts", type=_int_at_least(MIN_PROMPTS), default=None, metavar="N",
                   help="prompts drawn from the pool (default 200; --quick 48; --full 1500; --neurons 300)")
    d.add_argument("--out", default="demo_out", metavar="DIR", help="output folder")
    d.add_argument("--seed", type=_int_at_least(0), default=0)
    d.add_argument("--simulated", action="store_true", help="run on the topic-confounded simulator instead")
    d.add_argument("--neurons", action="store_true", help="neuron-level units (mlp_neurons)")
    d.add_argument("--layers", type=_layer_list, default=None, metavar="L1,L2",
                   help="--neurons: the layers whose MLP neurons are analysed (default: spread over the depth)")
    d.add_argument("--exact", type=_exact, default=None, metavar="N|all",
                   help="--neurons: neurons checked by exact patching (default 192; with --quick 96; 'all' is for a GPU)")
    d.add_argument("--n-boot", type=_int_at_least(2), default=None, metavar="B",
                   help="--neurons: bootstrap replicates (default 200)")
    d.add_argument("--full", action="store_true",
                   help="the powered design: 1,500 prompts, every layer, 16 continuations (hours on a CPU)")

    s = _sub(sub, "estimate", "fit one estimator and print its summary",
             "Examples: deconfound estimate --data DIR --estimator dml --graph topic_mediation --set n_folds=2\n"
             "  deconfound estimate --data data.csv --treatment treat --outcome y --mediators emo --confounders "
             "age,educ --estimator parametric",
             cmd_estimate)
    _data_args(s)
    s.add_argument("--out", default=None, type=_writable, metavar="CSV", help="write the tidy table (one row per unit x effect x arm)")

    c = _sub(sub, "compare", "several estimators x graphs side by side (paired folds and resamples)",
             "Example: deconfound compare --data DIR --estimators weighting,dml --out estimates.csv", cmd_compare)
    _data_args(c, estimator=False, graph=False)
    c.add_argument("--estimators", default="parametric,weighting,dml", type=_estimator_list, help=ESTS_HELP)
    c.add_argument("--graphs", default="topic_mediation,unadjusted_mediation", type=_graph_list,
                   help="comma-separated graph names or paths")
    c.add_argument("--folds", type=_int_at_least(2), default=None, help="n_folds shared by cross-fitted estimators")
    c.add_argument("--sensitivity", action="store_true", help="add robustness values RV/RVa where available")
    c.add_argument("--refuters", type=_refuter_list, default=None,
                   help=f"add a pass/fail column from these refuters: {', '.join(REFUTERS)}")
    c.add_argument("--out", default=None, type=_writable, metavar="CSV", help="write the tidy table")

    v = _sub(sub, "sensitivity", "omitted-variable-bias bounds and robustness values",
             "Bounds (DoubleML layout) for a score-based estimator (dml). Strengths as in DoubleML: cf_y and cf_d "
             "are partial R^2 of a latent confounder, rho their correlation.", cmd_sensitivity)
    _data_args(v)
    v.add_argument("--cf-y", type=_float_in(0, 1, closed_high=False), default=0.03, help="in [0, 1)")
    v.add_argument("--cf-d", type=_float_in(0, 1, closed_high=False), default=0.03, help="in [0, 1)")
    v.add_argument("--rho", type=_float_in(-1, 1, closed_high=True), default=1.0, help="in [-1, 1]")
    v.add_argument("--level", type=_float_in(0, 1, closed_high=False), default=0.95, help="CI level")
    v.add_argument("--out", default=None, type=_writable, metavar="CSV", help="write the bounds table")

    ms = _sub(sub, "medsens", "Imai's rho sensitivity of the parametric estimator's ACME (R mediation::medsens)",
              "Refits the parametric estimator (--set passes its settings) and reports ACME(rho), rho = corr(e_M, "
              "e_Y), with the rho and R^2 products at which the ACME is zero.\nExample: deconfound medsens --data "
              "data.csv --treatment treat --outcome y --mediators emo --confounders age,educ --out medsens.csv",
              cmd_medsens)
    _data_args(ms, estimator=False, units=False)
    ms.add_argument("--unit", default=None, help="the mediator unit (default: the only one)")
    ms.add_argument("--rho-by", type=_float_in(0.001, 0.5, closed_high=True), default=None, metavar="STEP",
                    help="grid of rho from -1+STEP to 1-STEP (R's rho.by; default: -0.9 to 0.9 by 0.05)")
    ms.add_argument("--out", default=None, type=_writable, metavar="CSV", help="write ACME(rho) (one row per rho x arm)")
    ms.add_argument("--plot", default=None, type=_writable, metavar="PNG", help="draw ACME(rho) with its CI band")

    r = _sub(sub, "refute", "refutation tests that re-run the whole estimator",
             "Each refuter perturbs the data and re-fits; a row passes when its rule holds at alpha=0.05.",
             cmd_refute)
    _data_args(r)
    r.add_argument("--refuters", type=_refuter_list, default=None,
                   help=f"comma-separated, from {', '.join(REFUTERS)} (default: all)")
    r.add_argument("--out", default=None, type=_writable, metavar="CSV", help="write the refutation table")

    rp = _sub(sub, "report", "estimate, compare and write the HTML and markdown report for a saved dataset",
              "Writes OUT/report.html (images inlined), OUT/report.md, OUT/figures/*.png and OUT/estimates.csv.",
              cmd_report)
    _data_args(rp, estimator=False, graph=False)
    rp.add_argument("--out", required=True, type=_writable, metavar="DIR")
    rp.add_argument("--estimators", default="weighting,dml", type=_estimator_list,
                    help=ESTS_HELP + "; the first of weighting, dml, parametric leads the summary; with dml: "
                    "sensitivity and refutation sections")
    rp.add_argument("--quick", action="store_true", help="fewer bootstrap draws for the localization CIs")
    rp.add_argument("--refute-units", type=_int_at_least(1), default=3, metavar="K",
                    help="refute the dml fit on the K units with the largest effects")
    from .cli_lm import register

    register(sub, sys.modules[__name__])  # extract, patch, and the demo's --model/--dtype/--device
    return p


def _warning_printer():
    """``warnings.showwarning`` for one command: each distinct message once (a demo refits the same estimator
    many times, and every fit would repeat the same calibration warning)."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = _one_line(message)
        if text not in seen:
            seen.add(text)
            print(f"deconfound: warning: {text}", file=sys.stderr)

    return show


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 unexpected failure)."""
    debug = bool(os.environ.get("DECONFOUND_DEBUG"))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and argument errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer()
            return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("deconfound: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"deconfound: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line for the user; DECONFOUND_DEBUG=1 shows the traceback
        if debug:
            raise
        print(f"deconfound: error: {type(exc).__name__}: {_one_line(exc)} (set DECONFOUND_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
