"""Interventional patching (the seed paper's estimator): the language model itself is the outcome model.

NIE_ATT(u) = (1/n1) sum_{i treated} [g(q_i) - g(q_i; do(h_u = donor_i))], where g is the outcome score of
a :class:`~deconfound.lm.patch.Patcher` and the donor is drawn from (or averages) the control activations
M(0), with the control topic distribution matched to the treated one. The graph decides: with
``topic_mediation.gml`` the donors are topic-adjusted; with ``unadjusted_mediation.gml`` (no confounder) the
same code gives the classic unadjusted mean patching. This module never imports torch: everything model
related goes through the patcher's methods.
"""
from __future__ import annotations

import hashlib
import zlib

import numpy as np
import pandas as pd

from .._validation import check_probability
from ..errors import ConvergenceError, DataError
from ..graph import resolve
from ..bootstrap import draw_counts
from ..inference import Effect
from ..results import MediationResult
from ._patching_checks import MEAN_PATCH, PatchingResult, donor_distance, exact_check
from ._learners import _arm_constant
from ._patching_design import _Design, _feasible, _normalize
from .base import MediationEstimator, register, sample_roles

__all__ = ["PatchingMediation", "paired_difference", "resample_key", "DONORS"]

DONORS = ("mean", "eb_mean", "topic_mean", "exact")
_DIRECTIONS = ("ablation", "injection")
_BOOT = ("repatch", "linear", "fixed")
_STRATA = ("auto", "treatment", "treatment_topic")
_CONDITIONAL = ("auto", "categorical", "soft")
_MAX_INVALID = 0.1  # largest share of bootstrap replicates allowed to fail (weights infeasible)
_MIN_CONTROLS = 5  # strata="auto": fewer controls than this in a treated topic -> treatment x topic strata
_CHECK_DONORS = 16  # donors sampled per prompt in the exact check of a mean patch
_PCA_K = 10  # components of the off-distribution distance


def resample_key(data, stratify, n_boot, random_state) -> str:
    """Names the count matrix of ``bootstrap.draw_counts(data, n_boot, stratify=..., random_state=...)``.

    Two results with equal keys were bootstrapped on the same resamples, so their draws pair.
    """
    h = hashlib.sha256(np.ascontiguousarray(data.t).tobytes())
    for name in stratify[1:]:
        h.update(np.ascontiguousarray(data.x[name].cat.codes.to_numpy()).tobytes())
    return (f"draw_counts:stratify={'+'.join(stratify)}:n={data.n}:B={int(n_boot)}:seed={random_state}:"
            f"{h.hexdigest()[:12]}")


def _check_choice(value, options, name):
    if value not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")


@register("patching")
class PatchingMediation(MediationEstimator):
    """Interventional patching estimates of NIE_ATT per unit, with TE_ATT and NDE = TE - NIE.

    Parameters
    ----------
    donors : {"eb_mean", "topic_mean", "exact", "mean"}
        ``"mean"``: the plain control mean (classic activation patching). ``"eb_mean"``: the EB-weighted
        control mean with the control topic distribution matched to the treated one (one patch per prompt
        and unit). ``"topic_mean"``: each treated prompt gets the control mean of its own topic (soft
        topics: EB weights targeting the prompt's topic vector). ``"exact"``: the average patched score over
        the prompt's donor distribution (all same-topic controls, weighted, or ``n_donors`` sampled ones).
        With a graph that has no confounder every strategy uses unweighted controls.
    direction : {"ablation", "injection"}
        ``"ablation"``: treated prompts get control activations; NIE(1) (ACME treated). ``"injection"``:
        control prompts, EB-weighted to the treated topic mix, get treated activations (causal tracing's
        restore); NIE(0) (ACME control), and NDE(1) = TE - NIE(0).
    n_boot : int
        Bootstrap replicates over prompts (drawn by :func:`deconfound.bootstrap.draw_counts`, see ``strata``).
    n_donors : int or None
        ``"exact"`` only: donors sampled per prompt (with replacement, from its donor weights); None uses
        every donor with its weight (no Monte Carlo error).
    level : float
        CI level.
    random_state : int
        Seeds the resamples (alone, so results with the same seed pair) and the donor draws.
    donor_bootstrap : {"repatch", "linear", "fixed"}
        Mean donors depend on the resample. ``"repatch"`` re-runs the model with each replicate's donor
        (exact, costs n_boot x n_targets patched rows per unit); ``"linear"`` uses a first-order expansion
        of g around the full-sample donor (gradients: ``NextTokenMass`` and ``Reweight``; ``Generate`` raises
        ValueError, since sampled text has no gradient); ``"fixed"`` keeps the
        full-sample donor (the CI then omits the donor's sampling error; a warning says so).
    strata : {"auto", "treatment", "treatment_topic"}
        Bootstrap strata. ``"treatment"``: resample within each arm, so n1 and n0 are fixed but each arm's
        topic mix varies as it does between samples. ``"treatment_topic"``: within T x every categorical
        confounder, which holds each arm's topic mix fixed; for the unadjusted graph that mix is the
        confounding, so its CIs come out too narrow (about half the true SD in a six-topic simulation).
        ``"auto"`` (default): ``"treatment"``, unless a level of a categorical confounder that has treated
        prompts has fewer than 5 controls (replicates would often leave it without any); then
        ``"treatment_topic"``, with a warning that the unadjusted CIs are too narrow. The choice depends on
        the data only, so adjusted and unadjusted fits with the same ``n_boot`` and seed share resamples,
        which is all :func:`paired_difference` needs.
    conditional : {"auto", "categorical", "soft"}
        How topic_mean / exact condition on the topic: on the joint categorical confounders of the
        adjustment set, or by EB on all its columns targeting each prompt's own values.
    drop_unsupported : bool
        Drop treated topics without control prompts (and their rows) instead of raising PositivityError.
    exact_check : int
        Mean donors only: the ``("nie", arm)`` rows then hold the mean-patch contrast
        g(q) - g(q; do(h = donor mean)) (``settings["estimand"]``), which is the NIE only when g is affine in h.
        ``exact_check`` treated prompts (sampled by their weight, seeded) are also patched with 16 donors each
        drawn from their donor distribution and with those donors' mean, and ``diagnostics[unit]["exact_gap"]``
        (with ``exact_gap_se``) estimates exact NIE minus the reported contrast (exactly 0 for an affine g,
        unbiased for a quadratic one, second order otherwise). 0 skips the check.

    Every fit also reports, per unit, how far the donor mean lies from the natural activations of the
    patched prompts (``diagnostics[unit]["donor_distance"]``, a Mahalanobis distance in the first 10 principal
    components of those activations; ``donor_distance_pct``, its percentile among the prompts' own distances;
    ``off_distribution``, beyond the 99th percentile).

    Examples
    --------
    A random two-layer model (needs the ``lm`` extra); the topic ``a`` has mostly toxic prompts:

    >>> import numpy as np, pandas as pd
    >>> from deconfound import MediationData
    >>> from deconfound.lm.models import TINY_TEXT, tiny_model
    >>> from deconfound.lm.patch import NextTokenMass, Patcher
    >>> lm = tiny_model("llama", seed=2)
    >>> outcome = NextTokenMass(lm.tokenizer.convert_tokens_to_ids(["stupid", "idiot", "hate"]))
    >>> patcher = Patcher(lm, TINY_TEXT.strip().splitlines()[:16], outcome=outcome)
    >>> t = np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 6)
    >>> acts = patcher.activations(["mlp_out.L1"])             # {unit: (16, 64) activations}
    >>> data = MediationData.from_arrays(t=t, y=patcher.base_scores(), mediators=acts,
    ...                                  x=pd.DataFrame({"topic": ["a"] * 8 + ["b"] * 8}))
    >>> res = PatchingMediation(n_boot=10, random_state=0).fit(data, patcher=patcher)
    >>> print(res.population, res.units)
    att ['mlp_out.L1']
    >>> e = lambda effect, arm: res.effect("mlp_out.L1", effect, arm).estimate
    >>> abs(e("te", "treated") - e("nie", "treated") - e("nde", "control")) < 1e-12
    True
    >>> raw = PatchingMediation(n_boot=10, random_state=0).fit(data, graph="unadjusted_mediation", patcher=patcher)
    >>> bool(abs(raw.effect("mlp_out.L1", "nie", "treated").estimate - e("nie", "treated")) > 1e-4)
    True
    """

    def __init__(self, donors="eb_mean", direction="ablation", n_boot=200, n_donors=None, level=0.95, random_state=0,
                 donor_bootstrap="repatch", strata="auto", conditional="auto", drop_unsupported=False,
                 exact_check=32):
        self.donors = donors
        self.direction = direction
        self.n_boot = n_boot
        self.n_donors = n_donors
        self.level = level
        self.random_state = random_state
        self.donor_bootstrap = donor_bootstrap
        self.strata = strata
        self.conditional = conditional
        self.drop_unsupported = drop_unsupported
        self.exact_check = exact_check

    def _check(self):
        _check_choice(self.donors, DONORS, "donors")
        _check_choice(self.direction, _DIRECTIONS, "direction")
        _check_choice(self.donor_bootstrap, _BOOT, "donor_bootstrap")
        _check_choice(self.strata, _STRATA, "strata")
        _check_choice(self.conditional, _CONDITIONAL, "conditional")
        for name, value, low in (("n_boot", self.n_boot, 2), ("n_donors", self.n_donors, 1),
                                 ("exact_check", self.exact_check, 0)):
            if value is None and name == "n_donors":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        check_probability(self.level, "level", low=0.5, high=0.999)
        if not isinstance(self.random_state, (int, np.integer)) or isinstance(self.random_state, bool):
            raise TypeError(f"random_state: expected an int (resamples are keyed on it), got {self.random_state!r}")

    # ---- inputs ------------------------------------------------------------------------------
    def _units(self, data, patcher, units):
        if units is None:
            pairs = [(u, u) for u in data.units]
        elif isinstance(units, dict):
            pairs = list(units.items())
        else:
            pairs = [(u, u) for u in ([units] if isinstance(units, str) else list(units))]
        out = []
        for name, spec in pairs:
            block = data.mediator(name)
            unit = patcher.unit(spec)
            d = patcher.dim(unit)
            if block.shape[1] != d:
                raise DataError(f"mediator unit {name!r}: expected {d} columns (width of "
                                f"{getattr(unit, 'name', unit)}), got {block.shape[1]}")
            out.append((name, unit))
        if not out:
            raise DataError("units: expected at least one unit, got none")
        return out

    def _stratify(self, data) -> tuple:
        cats = data.categorical_confounders()
        if self.strata == "treatment" or (self.strata == "auto" and not _sparse_controls(data, cats)):
            return ("treatment",)
        if not cats:
            raise DataError("strata='treatment_topic': expected a categorical confounder in the data, got none")
        return ("treatment", *cats)

    # ---- fit ---------------------------------------------------------------------------------
    def fit(self, data, *, graph=None, patcher, units=None, cluster=None) -> MediationResult:
        """Estimate NIE, NDE and TE (population ATT) for each unit.

        ``cluster`` (labels per row, or a confounder column; default the data's own role, e.g. the prompts
        drawn from one document) makes the bootstrap resample whole clusters (within the treatment arms when
        every cluster lies in one arm). Sampling weights are not supported: a weights role raises.

        Parameters
        ----------
        data : MediationData
            Row i is prompt i of ``patcher``; the mediators are the donor activations.
        graph : str, path or CausalGraph, optional
            Default ``topic_mediation``; ``unadjusted_mediation`` gives the classic unadjusted estimate.
        patcher : deconfound.lm.patch.Patcher
        units : list of unit names, dict (data unit -> patch unit), or None for all of the data's units
            A patch unit may be a unit set (a list of units) patched at once: see :mod:`deconfound.joint`.

        Returns
        -------
        MediationResult
            ``effects[unit]``: ("nie", arm), ("nde", other arm), ("te", "average"), ("prop_mediated", arm),
            with arm "treated" for ablation and "control" for injection. TE uses the patcher's unpatched
            score g(q) of every prompt as Y, so NIE, NDE and TE are on one scale.
        """
        self._check()
        g, adj = resolve(graph, data)
        if patcher.n_prompts != data.n:
            raise DataError(f"patcher: expected {data.n} prompts (one per data row), got {patcher.n_prompts}")
        if getattr(patcher, "ids", None) is not None and not np.array_equal(np.asarray(patcher.ids).astype(str),
                                                                           np.asarray(data.ids).astype(str)):
            raise DataError("patcher ids: expected the data's ids in the same order, got different ids")
        units = self._units(data, patcher, units)
        base = np.asarray(patcher.base_scores(), dtype=float)
        design = _Design(self, data, adj, base)
        outcome = getattr(patcher, "outcome", None)
        if self.donor_bootstrap == "linear" and design.strategy != "exact" and \
                not getattr(outcome, "differentiable", True):
            raise ValueError(f"donor_bootstrap='linear': expected a differentiable outcome (next_token_mass, "
                             f"reweight), got {getattr(outcome, 'name', outcome)!r}, whose sampled text has no "
                             "gradient in the patched activation; use donor_bootstrap='repatch' (re-runs the model "
                             "for each replicate's donor), or the 'reweight' outcome (the same continuation "
                             "toxicity, importance-weighted, differentiable)")
        stratify = self._stratify(data)
        cluster, weights = sample_roles(data, cluster, None)
        if weights is not None:
            raise NotImplementedError("patching: expected data without a weights role, got one (the bootstrap "
                                      "would treat weighted prompts as equal); use parametric, dml or weighting")
        if cluster is not None:  # whole clusters; by arm only if no cluster spans both arms
            stratify = ("treatment",) if _arm_constant(cluster, data.t) else None
        counts = draw_counts(data, int(self.n_boot), stratify=stratify, random_state=int(self.random_state),
                             cluster=cluster)
        allc = np.vstack([np.ones((1, data.n), counts.dtype), counts])[:, design.rows].astype(float)
        w_te = design.att_weights(allc, design.outcome_cols)
        w_donor = w_te if design.donor_cols == design.outcome_cols else design.att_weights(allc, design.donor_cols)
        t1 = design.t == 1
        te = (w_te[:, t1] * design.base[t1]).sum(1) - (w_te[:, ~t1] * design.base[~t1]).sum(1)
        if self.direction == "ablation":
            v = _normalize(allc[:, design.targets])
        else:
            v = w_te[:, design.targets]
        first = design.donor_weights(allc[0], w_donor[0])
        valid = np.isfinite(te) & np.isfinite(v).all(1)
        valid[0] &= _feasible(first, v[0])
        if not valid[0]:
            raise ConvergenceError(f"patching ({design.strategy} donors): expected feasible weights on the full sample, "
                                   "got infeasible ones (a prompt's topic vector lies outside the donors' range); "
                                   "use conditional='categorical', donors='eb_mean' or drop_unsupported=True")
        rng = np.random.default_rng([int(self.random_state), 1])
        per_unit = self._estimate_units(design, units, data, patcher, v, allc, w_donor, first, valid, rng)
        return self._result(g, adj, data, design, units, per_unit, te, valid, stratify, patcher)

    # ---- per-unit estimates ------------------------------------------------------------------
    def _estimate_units(self, design, units, data, patcher, v, allc, w_donor, first, valid, rng):
        """Full-sample patches per unit, then one pass over the replicates.

        A replicate's donor weights ((n_targets, n_pool) with soft topics) are computed once, used by every
        unit and dropped, so memory holds one replicate's weights, never all of them. Invalid replicates are
        marked in ``valid`` (in place).
        """
        sign = 1.0 if self.direction == "ablation" else -1.0
        gt = design.base[design.targets]
        pools = {name: data.mediator(name)[design.rows][design.pool].astype(np.float64) for name, _ in units}
        wu0, m0 = first
        live0 = np.flatnonzero(v[0] > 0)
        natural = {name: data.mediator(name)[design.rows][design.targets[live0]].astype(np.float64)
                   for name, _ in units}
        steps = {}
        if design.strategy == "exact":
            for name, unit in units:  # every unit samples the same donors (common random numbers across units)
                same = np.random.default_rng(rng.bit_generator.seed_seq)
                steps[name] = self._exact(design, unit, patcher, pools[name], v, first, gt, sign, same)
                steps[name][2].update(_distance_diag(natural[name], wu0[m0[live0]] @ pools[name]))
        else:  # mean-type donors: one patched row per target, all units in one engine call for the point estimate
            prompts0 = design.rows[design.targets[live0]]
            reqs = [(unit, prompts0, (wu0[m0[live0]] @ pools[name])) for name, unit in units]
            point = patcher.evaluate(reqs, grad=self.donor_bootstrap == "linear")
            for (name, unit), ps in zip(units, point):
                steps[name] = self._mean(design, name, unit, patcher, pools[name], natural[name], v, first, gt,
                                         sign, ps)
        for b in range(1, len(v)):
            if not valid[b]:
                continue
            wu, m = design.donor_weights(allc[b], w_donor[b])
            valid[b] = _feasible((wu, m), v[b])
            if valid[b]:
                for update, _, _ in steps.values():
                    update(b, wu, m)
        n_bad = int((~valid[1:]).sum())
        if n_bad > _MAX_INVALID * self.n_boot:
            raise ConvergenceError(f"bootstrap: expected at most {_MAX_INVALID:.0%} of {self.n_boot} replicates with "
                                   f"infeasible weights, got {n_bad}; use coarser topics or drop_unsupported=True")
        return {name: finish() for name, (_, finish, _) in steps.items()}

    def _mean(self, design, name, unit, patcher, pool_m, natural, v, first, gt, sign, ps):
        """Mean-type donors: (update(b, wu, m), finish() -> (nie, diag), diag) for one unit."""
        wu0, m0 = first
        live0 = np.flatnonzero(v[0] > 0)
        prompts0 = design.rows[design.targets[live0]]
        gp0 = np.full(len(design.targets), np.nan)
        gp0[live0] = ps.scores
        nie = np.full(len(v), np.nan)
        nie[0] = sign * np.sum(v[0, live0] * (gt[live0] - gp0[live0]))
        diag = {"patched_rows": len(live0), **_extras_summary(ps.extras, patcher)}
        donors0 = wu0[m0] @ pool_m
        diag.update(_distance_diag(natural, donors0[live0]))
        if self.exact_check:
            check = exact_check(patcher, unit, prompts0, v[0, live0] / v[0, live0].sum(), wu0[m0[live0]],
                                pool_m, n_check=self.exact_check, n_donors=_CHECK_DONORS,
                                sign=sign, rng=np.random.default_rng([int(self.random_state), 2,
                                                                      zlib.crc32(str(name).encode())]))
            diag["patched_rows"] += check.pop("patched_rows")
            diag.update(check)
        mode = self.donor_bootstrap
        if mode == "linear":
            grads = np.zeros((len(design.targets), pool_m.shape[1]))
            grads[live0] = ps.grad
        rows, vals, bidx = [], [], []

        def update(b, wu, m):
            if mode == "fixed":
                live = v[b] > 0
                nie[b] = sign * np.sum(v[b, live] * (gt[live] - gp0[live]))
                return
            live = np.flatnonzero(v[b] > 0)
            if mode == "linear":
                if not np.isin(live, live0).all():
                    raise ConvergenceError("linear bootstrap: expected every resampled target in the full sample, "
                                           "got one with weight 0 there")
                delta = np.einsum("ij,ij->i", grads[live], wu[m[live]] @ pool_m - donors0[live])
                nie[b] = sign * np.sum(v[b, live] * (gt[live] - gp0[live] - delta))
            else:  # repatch: the rows are patched after the pass, in one engine call
                rows.append(live)
                vals.append(wu[m[live]] @ pool_m)
                bidx.append(np.full(len(live), b))

        def finish():
            if rows:
                live_all, b_all = np.concatenate(rows), np.concatenate(bidx)
                res = patcher.evaluate([(unit, design.rows[design.targets[live_all]], np.vstack(vals))])[0]
                diag["patched_rows"] += len(live_all)
                contrib = v[b_all, live_all] * (gt[live_all] - res.scores)
                sums = np.bincount(b_all, weights=contrib, minlength=len(v))
                boots = np.unique(b_all)
                nie[boots] = sign * sums[boots]
            return nie, diag

        return update, finish, diag

    def _exact(self, design, unit, patcher, pool_m, v, first, gt, sign, rng):
        """Average patched score over each target's donors; replicates re-weight the cached scores.

        Returns (update(b, wu, m), finish() -> (nie, diag), diag) for one unit.
        """
        wu0, m0 = first
        nt = len(design.targets)
        live0 = np.flatnonzero(v[0] > 0)
        if self.n_donors is None:  # every donor that can get weight in some replicate
            if design.mode == "categorical":
                pool_codes = design.codes[design.pool]
                cand = [np.flatnonzero(pool_codes == design.codes[design.targets[i]]) for i in live0]
            else:
                cand = [np.arange(len(design.pool))] * len(live0)
            ti = np.repeat(live0, [len(c) for c in cand])
            pj = np.concatenate(cand)
        else:
            s = int(self.n_donors)
            ti = np.repeat(live0, s)
            pj = np.concatenate([rng.choice(len(design.pool), size=s, p=wu0[m0[i]]) for i in live0])
        res = patcher.evaluate([(unit, design.rows[design.targets[ti]], pool_m[pj]),
                                (unit, design.rows[design.targets[live0]],
                                 (wu0[m0[live0]] @ pool_m))])
        gij, mean_patch = res[0].scores, res[1].scores
        diag = {"patched_rows": len(ti) + len(live0), **_extras_summary(res[0].extras, patcher)}

        def patched(wu, m, vb):
            w = wu[m[ti], pj]
            if self.n_donors is not None:  # importance ratio of the replicate's donor weights to the sampling ones
                w = w / wu0[m0[ti], pj]
            num = np.bincount(ti, weights=w * gij, minlength=nt)
            den = np.bincount(ti, weights=w, minlength=nt)
            flat = np.bincount(ti, weights=gij, minlength=nt) / np.maximum(np.bincount(ti, minlength=nt), 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(den > 0, num / np.where(den > 0, den, 1.0), flat), int(((den <= 0) & (vb > 0)).sum())

        nie = np.full(len(v), np.nan)
        gp0, _ = patched(wu0, m0, v[0])
        nie[0] = sign * np.sum(v[0, live0] * (gt[live0] - gp0[live0]))
        empty = [0]

        def update(b, wu, m):
            gp, k = patched(wu, m, v[b])
            empty[0] += k
            live = v[b] > 0
            nie[b] = sign * np.sum(v[b, live] * (gt[live] - gp[live]))

        mean_nie = sign * np.sum(v[0, live0] * (gt[live0] - mean_patch))
        diag.update(mean_patch_nie=float(mean_nie), affine_gap=float(nie[0] - mean_nie))
        if self.n_donors is not None:
            s = int(self.n_donors)
            var = np.array([np.var(gij[ti == i], ddof=1) if s > 1 else np.nan for i in range(nt)])
            diag["mc_se"] = float(np.sqrt(np.sum(v[0, live0] ** 2 * var[live0] / s)))

        def finish():
            if self.n_donors is not None:
                diag["replicate_targets_without_donors"] = empty[0]
            return nie, diag

        return update, finish, diag

    # ---- result ------------------------------------------------------------------------------
    def _result(self, g, adj, data, design, units, per_unit, te, valid, stratify, patcher):
        arm = "treated" if self.direction == "ablation" else "control"
        other = "control" if arm == "treated" else "treated"
        ok = np.flatnonzero(valid)[1:]
        te_eff = Effect.from_draws(te[0], te[ok], level=self.level)
        effects, diagnostics = {}, {}
        for name, _ in units:
            nie, diag = per_unit[name]
            nie_eff = Effect.from_draws(nie[0], nie[ok], level=self.level)
            effects[name] = {("nie", arm): nie_eff, ("nde", other): te_eff - nie_eff, ("te", "average"): te_eff,
                             ("prop_mediated", arm): nie_eff.ratio(te_eff)}
            diagnostics[name] = {**diag, "eb_ess_control": design.eb_ess} if design.eb_ess is not None else diag
        warnings = []
        if not adj.identified:
            warnings.append(f"graph {g.name}: the effects are not identified (latent {list(adj.latent)}); the "
                            "estimate adjusts for the observed confounders only")
        if self.donor_bootstrap == "fixed" and design.strategy != "exact":
            warnings.append("donor_bootstrap='fixed': the donor is held at its full-sample value, so the CIs omit "
                            "the donor's own sampling error")
        if self.strata == "auto" and len(stratify) > 1:
            warnings.append(f"bootstrap strata: treatment x {'/'.join(stratify[1:])} (some treated topics have fewer "
                            f"than {_MIN_CONTROLS} controls), which fixes each arm's topic mix: CIs of the "
                            "unadjusted fit and of adjusted-minus-unadjusted differences are too narrow")
        n_bad = int((~valid[1:]).sum())
        if n_bad:
            warnings.append(f"{n_bad} of {self.n_boot} bootstrap replicates had infeasible weights and were dropped")
        if len(design.dropped):
            warnings.append(f"dropped topics without overlap ({int((~design.kept).sum())} rows): "
                            + "; ".join(f"{r.level} (n1={r.n1}, n0={r.n0})" for r in design.dropped.itertuples()))
        flagged = sum(d.get("ess_flagged", 0) for d in diagnostics.values())
        if flagged:
            warnings.append(f"reweight: {flagged} patched rows have importance-weight ESS/S below "
                            f"{getattr(patcher.outcome, 'min_ess_ratio', 0.1)} (see diagnostics)")
        off = [name for name, _ in units if diagnostics[name].get("off_distribution")]
        if off:
            warnings.append(f"{len(off)} unit(s) patched with a donor mean beyond the 99th percentile of the patched "
                            f"prompts' own activations (off-distribution): {off[:10]}")
        key = resample_key(data, stratify, self.n_boot, self.random_state)
        settings = {"estimand": "NIE" if design.strategy == "exact" else MEAN_PATCH,
            "donors": self.donors, "donors_effective": design.strategy, "direction": self.direction,
            "conditional": design.mode, "n_boot": int(self.n_boot), "n_donors": self.n_donors,
            "donor_bootstrap": self.donor_bootstrap, "stratify": list(stratify), "resample_key": key,
            "boot_valid": valid[1:].tolist(), "outcome_y": "the patcher's unpatched score g(q) of every prompt",
            "patcher": patcher.describe(), "donor_columns": design.donor_cols, "weight_columns": design.outcome_cols,
        }
        n = int(len(design.rows))
        return PatchingResult(estimator="patching", effects=effects, n=n, n_treated=int(design.t.sum()),
                               population="att", graph=g.name, adjustment=adj.as_dict(), level=self.level,
                               random_state=self.random_state, settings=settings, diagnostics=diagnostics,
                               warnings=warnings)


def _extras_summary(extras: dict, patcher) -> dict:
    out = {}
    if "ess" in extras and len(extras["ess"]):
        s = getattr(patcher.outcome, "n_samples", np.nan)
        out["ess_ratio_min"] = float(np.min(extras["ess"]) / s)
        out["ess_flagged"] = int(np.sum(extras.get("flagged", 0)))
    if "mc_se" in extras and len(extras["mc_se"]):
        out["generate_mc_se_max"] = float(np.nanmax(extras["mc_se"]))
    return out


def _sparse_controls(data, cats) -> bool:
    """True when a level (with treated prompts) of a categorical confounder has 1 to _MIN_CONTROLS - 1 controls."""
    t = np.asarray(data.t).astype(int)
    for c in cats:
        codes = data.x[c].cat.codes.to_numpy()
        ok = codes >= 0
        n1 = np.bincount(codes[ok & (t == 1)], minlength=codes.max() + 1)
        n0 = np.bincount(codes[ok & (t == 0)], minlength=codes.max() + 1)
        if np.any((n1 > 0) & (n0 > 0) & (n0 < _MIN_CONTROLS)):
            return True
    return False


def _distance_diag(natural, donors) -> dict:
    r = donor_distance(natural, donors, k=_PCA_K)
    return {"donor_distance": r["distance"], "donor_distance_pct": r["percentile"],
            "off_distribution": r["off_distribution"]}


def paired_difference(adjusted: MediationResult, unadjusted: MediationResult, *, effect="nie", arm=None,
                      units=None) -> pd.DataFrame:
    """Adjusted minus unadjusted effect per unit, with a paired bootstrap CI (same resamples).

    Both results must share ``settings["resample_key"]`` (same data, strata, ``n_boot`` and seed); replicates
    dropped in either fit are dropped from both.

    Returns
    -------
    DataFrame
        unit, adjusted, unadjusted, difference, se, ci_lower, ci_upper, p_value.
    """
    ka, kb = adjusted.settings.get("resample_key"), unadjusted.settings.get("resample_key")
    if ka is None or ka != kb:
        raise ValueError(f"paired_difference: expected both results to share a resample_key, got {ka!r} and {kb!r}")
    va = np.asarray(adjusted.settings.get("boot_valid"), bool)
    vb = np.asarray(unadjusted.settings.get("boot_valid"), bool)
    both = va & vb
    if arm is None:
        arm = "treated" if adjusted.settings.get("direction", "ablation") == "ablation" else "control"
    rows = []
    for u in units or [u for u in adjusted.units if u in unadjusted.units]:
        ea, eb = adjusted.effect(u, effect, arm), unadjusted.effect(u, effect, arm)
        da, db = np.full(len(va), np.nan), np.full(len(vb), np.nan)
        da[va], db[vb] = ea.draws, eb.draws
        d = Effect.from_draws(ea.estimate - eb.estimate, (da - db)[both], level=adjusted.level)
        rows.append({"unit": u, "adjusted": ea.estimate, "unadjusted": eb.estimate, "difference": d.estimate,
                     "se": d.se, "ci_lower": d.ci[0], "ci_upper": d.ci[1], "p_value": d.p_value})
    return pd.DataFrame(rows)
