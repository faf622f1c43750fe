"""First-order (attribution) patching: a stand-in for :class:`~deconfound.lm.patch.Patcher` that answers from gradients.

Exact patching costs one patched row (a forward of the last prompt token) per prompt and unit: for every
neuron of a layer and 150 treated prompts, 230,000 rows, about 20 minutes on one CPU core. Attribution
patching (Nanda 2023; Syed, Rager & Conmy 2023; Kramar et al. 2024, "AtP") replaces the patched score by its
first-order expansion around the unpatched activation h_i of prompt i:

    g(q_i; do(h_u = m)) ~= g(q_i) + grad_u g(q_i) . (m - h_{i,u})

One forward and backward per prompt and site gives grad g(q_i) with respect to the whole site vector, hence
the patched score of every coordinate subset of that site (every neuron, any top-k group) for any value m.

:class:`LinearizedPatcher` answers the calls the patching estimator makes (``base_scores``, ``unit``, ``dim``,
``evaluate`` with or without ``grad``, ``describe``), so ``PatchingMediation(...).fit(data,
patcher=LinearizedPatcher(patcher, sites))`` gives attribution-patching estimates with the estimator's donors,
weights and bootstrap unchanged; each replicate's donor costs a dot product instead of a forward pass. The
approximation error is not bounded by the method: check it against exact patching on some units (the neuron
demo does, and reports the largest difference).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError, ModelSiteError
from .units import PatchRequest, PatchScores, PatchSet, as_unit

__all__ = ["LinearizedPatcher"]


class LinearizedPatcher:
    """Patched scores to first order, from gradients at the unpatched activations of chosen sites.

    Parameters
    ----------
    patcher : Patcher
        Gives the unpatched scores, the activations and their gradients (``evaluate(..., grad=True)`` with
        every prompt patched to its own activation: the same forward, differentiated). Its outcome must be
        differentiable (``next_token_mass`` or ``reweight``).
    sites : str or list of str
        Whole sites, e.g. ``["mlp_neurons.L6", "mlp_neurons.L12"]``; units are these sites or coordinate
        subsets of them (``"mlp_neurons.L12[5]"``, ``("mlp_neurons.L12", [3, 9])``).
    prompts : array of int, optional
        Prompts whose gradients are computed (default all); the estimator patches targets only (the treated
        prompts for ablation), so passing those halves the cost.

    Attributes
    ----------
    activations, gradients : dict site -> (n_prompts, d) float64
        Rows of prompts without gradients are NaN.
    seconds : float
        Time spent computing the gradients.
    """

    def __init__(self, patcher, sites, *, prompts=None):
        import time

        if not getattr(patcher.outcome, "differentiable", False):
            raise ValueError(f"patcher outcome: expected a differentiable outcome (next_token_mass, reweight), got "
                             f"{getattr(patcher.outcome, 'name', patcher.outcome)!r}")
        sites = [sites] if isinstance(sites, str) else list(sites)
        units = [patcher.unit(s) for s in sites]
        for s, u in zip(sites, units):
            if u.coords is not None:
                raise ModelSiteError(f"site {s!r}: expected a whole site (gradients cover all its coordinates), got "
                                     "a coordinate subset")
        self.patcher = patcher
        self.sites = [u.site.name for u in units]
        n = patcher.n_prompts
        pidx = np.arange(n) if prompts is None else patcher._check_prompts(prompts, "prompts")
        if len(np.unique(pidx)) != len(pidx):
            raise DataError("prompts: expected distinct prompt indices, got duplicates")
        self.prompts = pidx
        start = time.perf_counter()
        base = patcher.base_scores()
        acts = patcher.activations(units, prompts=pidx)
        res = patcher.evaluate([(u, pidx, acts[u.name]) for u in units], grad=True)
        self.seconds = time.perf_counter() - start
        self.activations, self.gradients = {}, {}
        for u, r in zip(units, res):
            h = np.full((n, acts[u.name].shape[1]), np.nan)
            g = np.full_like(h, np.nan)
            h[pidx], g[pidx] = acts[u.name], r.grad
            self.activations[u.name], self.gradients[u.name] = h, g
        # patching a prompt with its own activation reproduces its score up to float32 rounding (batching)
        self.own_patch_gap = float(max(np.max(np.abs(r.scores - base[pidx])) for r in res))
        self._base = base
        self._has = np.zeros(n, bool)
        self._has[pidx] = True

    # ---- what the patching estimator reads ---------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return self.patcher.n_prompts

    @property
    def ids(self):
        return self.patcher.ids

    @property
    def outcome(self):
        return self.patcher.outcome

    def base_scores(self) -> np.ndarray:
        return self._base.copy()

    def unit(self, spec):
        """Resolve a unit spec; its site must be one of :attr:`sites`."""
        unit = self.patcher.unit(as_unit(spec, self.patcher.site))
        if isinstance(unit, PatchSet):
            raise ModelSiteError(f"unit {unit.name}: expected one unit, got a unit set (a first-order patched score "
                                 "is additive over units, so a joint patch's interaction would be 0 by "
                                 "construction); patch sets with the exact Patcher")
        if unit.site.name not in self.gradients:
            raise ModelSiteError(f"unit {unit.name}: expected a site among {self.sites} (gradients were computed "
                                 f"for those), got {unit.site.name}")
        return unit

    def dim(self, spec) -> int:
        return self.patcher.dim(self.unit(spec))

    def describe(self) -> dict:
        return {**self.patcher.describe(), "approximation": "first order in the patched value (attribution "
                "patching): g + grad . (m - h) at the unpatched activation", "sites": self.sites}

    def scores(self, unit, prompts, values) -> np.ndarray:
        return self.evaluate([PatchRequest(unit, prompts, values)])[0].scores

    def evaluate(self, requests, *, grad: bool = False) -> list[PatchScores]:
        """First-order patched scores for each request (same arguments and result as ``Patcher.evaluate``)."""
        out = []
        for req in requests:
            req = req if isinstance(req, PatchRequest) else PatchRequest(*req)
            unit = self.unit(req.unit)
            pidx = self.patcher._check_prompts(req.prompts, f"prompts for {unit.name}")
            if not self._has[pidx].all():
                missing = np.unique(pidx[~self._has[pidx]])[:5].tolist()
                raise DataError(f"prompts for {unit.name}: expected prompts with gradients, got prompt(s) {missing} "
                                "(pass them in prompts=)")
            cols = slice(None) if unit.coords is None else np.asarray(unit.coords)
            h = self.activations[unit.site.name][:, cols][pidx]  # columns first: a neuron copies n values
            g = self.gradients[unit.site.name][:, cols][pidx]
            vals = np.asarray(req.values, dtype=np.float64)
            if vals.ndim == 1:
                vals = np.broadcast_to(vals, (len(pidx), vals.shape[0]))
            if vals.shape != h.shape:
                raise DataError(f"values for {unit.name}: expected shape {h.shape} or ({h.shape[1]},), got "
                                f"{vals.shape}")
            if not np.isfinite(vals).all():
                raise DataError(f"values for {unit.name}: expected finite values, got NaN/inf")
            scores = self._base[pidx] + np.einsum("ij,ij->i", g, vals - h)
            out.append(PatchScores(unit, scores, {}, g.copy() if grad else None))
        return out
