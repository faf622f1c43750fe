"""The main job: estimate adjusted and unadjusted, compare, stress-test, report.

``deconfound demo`` runs :func:`run_llm`: the study design of :mod:`deconfound.study` on SmolLM2-135M (the
RealToxicityPrompts pool, the Jigsaw BiLSTM as the one instrument, MiniLM zero-shot topics).
``--simulated`` runs :func:`run_simulated`. :func:`analyse_and_report` is the report of any MediationData
(``deconfound report``); :func:`extract_default` extracts the mixed-source prompt set of
:func:`deconfound.lm.corpora.default_mix` (``deconfound extract`` without a prompt file).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import report as rp
from .compare import MAX_SIGNAL_CV, compare_estimators, localization, localization_difference
from .data import overlap_rows
from .estimators import get_estimator
from .study import ADJUSTED, UNADJUSTED, prompts_for_signal, signal_scale
from .study_checks import patching_checks as _patching_checks
from .study_checks import split_halves  # demo.split_halves, as before


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


def level_balance(data, columns, bal) -> pd.DataFrame:
    """|SMD| of every level of the categorical ``columns`` (the reference level included, which the balancing
    design leaves out), controls vs treated, before and after the ATT weights of ``bal``; the SD is the pooled
    unweighted one, as in the balance table."""
    t = np.asarray(data.t) == 1
    w = np.asarray(bal.weights, dtype=float)
    rows = []
    for col in columns:
        if col not in data.categorical_confounders():
            continue
        values = data.x[col].astype(str).to_numpy()
        for level in data.x[col].cat.categories.astype(str):
            ind = (values == level).astype(float)
            sd = np.sqrt((ind[t].var() + ind[~t].var()) / 2) or 1.0
            after = np.average(ind[~t], weights=w[~t]) if w[~t].sum() > 0 else np.nan
            rows.append({"covariate": f"{col}[{level}]", "smd_before": (ind[t].mean() - ind[~t].mean()) / sd,
                         "smd_after": (ind[t].mean() - after) / sd})
    return pd.DataFrame(rows, columns=["covariate", "smd_before", "smd_after"])


class ReportStepError(RuntimeError):
    """A step of :func:`analyse_and_report` failed; what was computed before it has been written."""


class _Steps:
    """Runs the report's steps; on a failure writes the report and tables so far, then names the step."""

    def __init__(self, rep, out):
        self.rep, self.out, self.tables = rep, out, {}

    def run(self, name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.rep.sections = [sec for sec in self.rep.sections if sec[0] != "figure" or sec[2][0].exists()]
            self.rep.text("Report incomplete", f"Step '{name}' failed: {type(exc).__name__}: {exc}")
            self.rep.write(self.out)
            self.save()
            raise ReportStepError(f"analyse_and_report: step {name!r} failed ({type(exc).__name__}: {exc}); the "
                                  f"report and the tables computed before it are in {self.out}") from exc

    def save(self):
        for fname, frame in self.tables.items():
            frame.to_csv(self.out / fname, index=False)


def _selector(estimators, main, comp, unit, effect, arm):
    """The estimator that ranks units on the selection half: DML, else the main one, else any other; it must be
    observational (refitted on a subset of rows without a model) and estimate ``(effect, arm)``."""
    for name in dict.fromkeys(["dml", main, *estimators]):
        res = comp.results.get((name, ADJUSTED))
        if name in estimators and res is not None and not _takes_patcher(estimators[name]) \
                and (effect, arm) in res.effects.get(unit, {}):
            return name
    return None


def _takes_patcher(est) -> bool:
    import inspect

    try:
        return "patcher" in inspect.signature(est.fit).parameters
    except (TypeError, ValueError):
        return False


def analyse_and_report(data, *, out, estimators=None, seed: int = 0, quick: bool = False, patcher=None,
                       main: str | None = None, provenance: dict | None = None, effect_arm=("nie", "treated"),
                       refute_units: int = 3, refuters=None, units=None, title: str | None = None,
                       comparison=None) -> dict:
    """Estimate with every estimator under the adjusted and unadjusted graph, then write the report.

    Units singled out for the forest plot, the sensitivity contour and the refuters are ranked on one random
    half of the rows (:func:`split_halves`, by ``seed``) and estimated and tested on the other, so their
    p-values are not those of the units that happened to look largest. Every step is named: if one fails, the
    report and tables computed before it are written and a :class:`ReportStepError` names the step.
    ``title`` defaults to a question worded from the data's roles (:func:`report_title`). ``comparison``: a
    :class:`~deconfound.compare.Comparison` already computed on ``data`` (both graphs, the estimators named in
    ``estimators``) is reported as it is instead of refitting every estimator.

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
    rep = rp.Report(title or "")
    steps = _Steps(rep, out)
    if comparison is not None:
        missing = [k for k in ((main, ADJUSTED), (main, UNADJUSTED)) if k not in comparison.results]
        if missing:
            raise ValueError(f"comparison: expected fits {missing} for main={main!r}, got {sorted(comparison.results)}")
        comp = comparison
    else:
        _say(f"estimating {len(estimators)} estimators x 2 graphs on {len(units)} units, n={data.n}")
        comp = steps.run("estimation", compare_estimators, data, estimators=estimators,
                         graphs=[ADJUSTED, UNADJUSTED], patcher=patcher, units=units, random_state=seed,
                         sensitivity={}, progress=None)  # a bar on a terminal only
    steps.tables["estimates.csv"] = comp.frame
    adj, unadj = comp.results[(main, ADJUSTED)], comp.results[(main, UNADJUSTED)]
    adjusted_for = adjusted_names(data, adj.adjustment)
    rep.title = title or report_title(data, adj.adjustment)
    estimand = adj.settings.get("estimand", "NIE") if effect == "nie" else effect.upper()

    def curves():
        for (name, graph), res in comp.results.items():
            if graph != ADJUSTED:
                continue
            other = comp.results.get((name, UNADJUSTED))
            try:
                frames = {f"{adjusted_for}-adjusted": _curve(res, units, effect, arm)}
                if other is not None:
                    frames["unadjusted"] = _curve(other, units, effect, arm)
            except KeyError:
                continue
            what = res.settings.get("estimand", "NIE") if effect == "nie" else effect.upper()
            what = effect.upper() if what == "NIE" else what
            path = rp.plot_effect_curves(frames, figs / f"curve_{name}.png",
                                         title=f"{name}: {what} ({arm}) per unit", ylabel=what)
            rep.figure(f"Per-unit {what} curve: {name}", path,
                       f"Adjusted for {adjusted_for} vs unadjusted, with pointwise CIs.")

    steps.run("effect curves", curves)

    n_draws = 500 if quick else 2000

    def localize():
        loc = pd.concat([localization(res, effect=effect, arm=arm, n_draws=n_draws, random_state=seed)
                         .assign(curve=f"{main} {name}") for name, res in (("adjusted", adj), ("unadjusted", unadj))],
                        ignore_index=True)
        diff = localization_difference(adj, unadj, effect=effect, arm=arm, n_draws=n_draws, random_state=seed)
        steps.tables["localization_difference.csv"] = diff
        rep.table("Localization: adjusted minus unadjusted (paired; concentration is the test)", diff)
        rep.figure("Localization indices", rp.plot_localization(loc, figs / "localization.png"),
                   "Indices of the noise-corrected squared effects (est^2 - se^2): concentration is the Herfindahl "
                   "index of the units' shares (lower = more spread); effective units = 1 / concentration.")
        return diff

    diff = steps.run("localization", localize)

    def balance():
        bal = _balance(data, adj.adjustment.get("first_stage", ()))
        if bal is None:
            return
        table = level_balance(data, list(adj.adjustment.get("first_stage", ())), bal)
        # the weighted arm is the controls (ATT weights): their ESS, not the treated rows'
        ess = float(bal.diagnostics.loc["control", "ess"]) if "ess" in bal.diagnostics else None
        rep.figure(f"Balance of {adjusted_for} before/after entropy balancing",
                   rp.plot_balance(table, figs / "balance.png", ess=ess, title="Covariate balance (control ESS)"),
                   f"Absolute standardized mean differences of every level of {adjusted_for} (controls vs treated).")
        rep.table("Weight diagnostics", bal.diagnostics.reset_index())
        if len(bal.dropped):
            rep.table("Topics dropped for lack of overlap", bal.dropped)

    steps.run("balance", balance)

    checks = _patching_checks(adj, units) if adj.estimator == "patching" else None
    if checks is not None:
        steps.tables["patching_checks.csv"] = checks
        rep.table(f"Patching checks ({main}, topic-adjusted): gap of the {estimand} to the exact NIE "
                  "(exact check on a subsample of treated prompts) and donor distance (Mahalanobis, 10 principal "
                  "components of the patched prompts' activations; off_distribution = beyond their 99th "
                  "percentile)", checks)

    # units singled out: ranked on one half, estimated and tested on the other
    select_rows, test_rows = split_halves(data, seed)
    selector = _selector(estimators, main, comp, units[0], effect, arm)

    def select():
        if selector is None:
            return sorted(units, key=lambda u: -abs(unadj.effect(u, effect, arm).estimate)), None
        fit = estimators[selector].fit(data.subset(select_rows), graph=ADJUSTED, units=units)
        ranked = sorted(units, key=lambda u: -abs(fit.effect(u, effect, arm).estimate))
        held = estimators[selector].fit(data.subset(test_rows), graph=ADJUSTED, units=ranked[:max(refute_units, 1)])
        return ranked, held

    ranked, held = steps.run("unit selection", select)
    top = ranked[0]
    split_text = (f"Units singled out below (forest plot, sensitivity contour, refutation) were ranked by "
                  f"|{effect.upper()}| of the {selector} fit on a random half of the rows (seed {seed}, "
                  f"n={len(select_rows)}); their {selector} estimates, p-values, sensitivity and refutations "
                  f"use only the other half (n={len(test_rows)}). The forest plot shows every estimator on all "
                  "rows, so it includes the selection half." if selector else
                  "No observational estimator to rank units on a separate half: the units singled out below were "
                  "ranked on the same data that estimates them, so their p-values are not selection-adjusted.")
    rep.text("Selection of units", split_text)
    if held is not None:
        rep.table(f"Selected units, estimated on the held-out half ({selector})", held.to_frame())

    def forest():
        f = comp.frame[(comp.frame.unit == top) & (comp.frame.effect == effect) & (comp.frame.arm == arm)]
        f = f.assign(label=f.estimator + " / " + f.graph.str.replace("_mediation", ""))
        if len(f):
            rep.figure(f"Estimators compared on unit {top}", rp.plot_forest(f, figs / "forest.png"),
                       f"{effect.upper()} ({arm}) with CIs, every estimator under both graphs (all rows).")

    steps.run("forest plot", forest)
    rep.table("All estimates", comp.frame.drop(columns=["refutation_passed"], errors="ignore"))
    said = pd.DataFrame([(name, graph, w) for (name, graph), res in comp.results.items() for w in res.warnings],
                        columns=["estimator", "graph", "warning"])
    if len(said):  # e.g. why an estimate is NaN
        rep.table("Estimator warnings", said)
    # patching on the model's own outcome is the interventional reference for the observational estimators
    ref = "patching" if "patching" in estimators else None
    agree = steps.run("agreement", comp.agreement, effect=effect, arm=arm, reference=ref)
    if len(agree):
        title = (f"Agreement with the interventional (patching, {estimand}) estimate on the same outcome; only "
                 "rows of the same population are comparable" if ref else "Pairwise agreement")
        rep.table(title, agree)
        steps.tables["agreement.csv"] = agree

    sens_text = None
    if held is not None and selector == "dml":
        sens_text = steps.run("sensitivity", _sensitivity, rep, held, figs, top, effect, arm)
        refute_on = ranked[:refute_units]
        if refute_on:  # refute_units=0 skips the refutation
            from . import refute

            _say(f"refuting the DML fit on {refute_on} (held-out half) with {refuters or 'every refuter'}")
            table = steps.run("refutation", refute.refute_all, estimators["dml"],
                              data.subset(test_rows).select_units(refute_on), graph=ADJUSTED, refuters=refuters,
                              random_state=seed, original=held)  # held covers exactly refute_on
            rep.table(f"Refutation tests (DML, top {len(refute_on)} units, held-out half)", table)

    if ("patching", ADJUSTED) in comp.results and patcher is not None and refute_units:
        _null_checks(rep, estimators["patching"], comp.results[("patching", ADJUSTED)], data, patcher, units,
                     effect, arm, refute_units, seed, quick)

    meta = {"data": data.meta, "seed": seed, "estimators": {k: repr(v) for k, v in estimators.items()},
            "selection": {"selector": selector, "select_rows": len(select_rows), "test_rows": len(test_rows)},
            **(provenance or {})}
    rep.table("Provenance", rp.provenance_table(meta), floatfmt=None)
    lines = summary_lines(adj, unadj, diff, units, effect=effect, arm=arm, main=main, estimand=estimand,
                          adjusted_for=adjusted_for)
    rep.sections.insert(0, ("text", "Summary", "\n\n".join(lines + [split_text])))
    paths = steps.run("writing the report", rep.write, out)
    steps.save()
    if sens_text:
        (out / "sensitivity.txt").write_text(sens_text)
    return {**paths, "comparison": comp, "localization": diff, "summary": lines, "selected": ranked,
            "split": (select_rows, test_rows)}


def _null_checks(rep, estimator, fit, data, patcher, units, effect, arm, n_units, seed, quick) -> None:
    """Null-model refuters of the patching fit: a random copy of the model, and random directions."""
    from . import refute

    ranked = sorted(units, key=lambda u: -abs(fit.effect(u, effect, arm).estimate))[:n_units]
    names = [n for n in refute.PATCHER_ONLY if n != "random_model" or hasattr(patcher, "random_copy")]
    _say(f"null-model checks of the patching fit on {ranked}: {names}")
    table = refute.refute_all(estimator, data.select_units(ranked), graph=ADJUSTED, refuters=names,
                              random_state=seed, original=fit, patcher=patcher,
                              options={"random_directions": {"n_draws": 19 if quick else 39}})
    rep.table(f"Null-model checks (patching, top {len(ranked)} units)", table)
    rep.text("Reading the null-model checks",
             f"{refute.RULES['null_model']} (random_model: the same analysis on a randomly initialised copy of the "
             f"model). {refute.RULES['null_directions']} (random_directions). A unit that fails either has an "
             "effect that the model's training, or the donor's direction, does not explain.")


def _sensitivity(rep, fit, figs, top, effect, arm):
    from . import sensitivity

    sens = sensitivity.sensitivity_analysis(fit)
    rep.table("Sensitivity to an unobserved confounder (cf_y = cf_d = 0.03, rho = 1; held-out half)",
              sens.to_frame())
    try:
        path = sensitivity.sensitivity_plot(fit, figs / "sensitivity.png", unit=top, effect=effect, arm=arm)
        rep.figure(f"Sensitivity contour, unit {top} (held-out half)", path, "Bound on the effect over (cf_y, cf_d).")
    except (TypeError, ValueError, KeyError) as exc:
        rep.text("Sensitivity contour", f"not drawn: {exc}")
    return sens.summary()


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


def summary_lines(adj, unadj, diff, units, *, effect, arm, main, estimand="NIE", adjusted_for="topic") -> list[str]:
    d = diff.set_index("index")
    conc = d.loc["concentration"]
    verdict = (f"less localized after adjusting for {adjusted_for}" if conc.ci_upper < 0 else
               f"more localized after adjusting for {adjusted_for}" if conc.ci_lower > 0 else
               "no significant change in localization")
    name = effect.upper() if estimand == "NIE" else estimand
    rank = lambda res: sorted(units, key=lambda u: -abs(res.effect(u, effect, arm).estimate))[:5]
    fmt = lambda res: ", ".join(f"{u} ({res.effect(u, effect, arm).estimate:+.3g})" for u in rank(res))
    ent = d.loc["renyi2_entropy"]
    head = f"Estimator: {main}; effect {name} ({arm}); {len(units)} units; n={adj.n} ({adj.n_treated} treated)."
    if not np.isfinite(conc.difference):
        cv = lambda v: "infinite (no squared effect above the noise)" if np.isinf(v) else f"{v:.2f}"
        loc = [f"Concentration of the squared {name} not estimated: the curves' total squared effect is too noisy "
               f"(coefficient of variation adjusted {cv(conc.signal_cv_adjusted)}, unadjusted "
               f"{cv(conc.signal_cv_unadjusted)}; a ratio needs it below {MAX_SIGNAL_CV}), so localization is "
               "not compared. " + signal_scale(prompts_for_signal(max(conc.signal_cv_adjusted, conc.signal_cv_unadjusted),
                                                                  adj.n), adj.n)]
    else:
        loc = [f"Concentration of the squared {name} (noise-corrected): adjusted {conc.adjusted:.3f}, unadjusted "
               f"{conc.unadjusted:.3f}; difference {conc.difference:+.3f} (95% CI {conc.ci_lower:+.3f} to "
               f"{conc.ci_upper:+.3f}, p = {conc.p_value:.3g}): {verdict}.",
               f"Effective number of units: adjusted {d.loc['effective_units'].adjusted:.2f}, unadjusted "
               f"{d.loc['effective_units'].unadjusted:.2f}; normalized Renyi-2 entropy {ent.adjusted:.3f} vs "
               f"{ent.unadjusted:.3f}."]
    return [head, *loc,
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

DEFAULT_N = 400


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


def run_llm(*, out="demo_out", quick: bool = False, n_prompts: int | None = None, seed: int = 0,
            neurons: bool = False, full: bool = False, model="smollm2-135m", dtype="float32", device="cpu",
            **neuron_options) -> int:
    """The main job on the embedded default: the study design of :mod:`deconfound.study` (treatment within the
    RealToxicityPrompts pool by one instrument, continuation toxicity for every estimator, patching against the
    observational estimators, the null model, sensitivity and refuters) at the size of
    :data:`deconfound.study.DESIGNS` ``"default"``; ``quick=True`` the smoke run (``"quick"``), ``full=True`` the
    powered design (``"full"``). ``neurons=True`` runs :func:`deconfound.demo_neurons.run_neurons` instead.
    ``model``, ``dtype`` and ``device`` go to :func:`deconfound.lm.models.load_model`."""
    if neurons:
        if full:
            raise ValueError("neurons: expected no full=True with the neuron-level analysis, got both")
        from .demo_neurons import run_neurons

        return run_neurons(out=out, quick=quick, n_prompts=n_prompts, seed=seed, model=model, dtype=dtype,
                           device=device, **neuron_options)
    if neuron_options:
        raise ValueError(f"{sorted(neuron_options)}: expected only with neurons=True, got them without")
    if quick and full:
        raise ValueError("quick, full: expected the smoke run (quick) or the powered design (full), got both")
    from .study import run_demo

    return run_demo(out=out, design="full" if full else "quick" if quick else "default", n_prompts=n_prompts,
                    seed=seed, model=model, dtype=dtype, device=device)
