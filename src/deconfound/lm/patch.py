"""The batched patching engine: g(q; do(h_u = m)) for many (prompt, unit, value) triples at once.

A :class:`Patcher` holds a model, a list of prompts and an outcome strategy. It overwrites a unit's
activation at the last prompt token and returns the outcome score of each patched prompt.

Speed comes from three facts:

- Patching the last prompt token changes nothing at earlier positions. Each prompt's prefix (all tokens
  but the last) is run once and its key/value cache is kept. A patched variant then runs only the last
  token (plus teacher-forced continuation tokens for ``"reweight"``) on top of that cache.
- Nothing below the patched layer changes either. The last token's input to every layer is cached with
  the prefix, and each patched row enters the decoder stack at its own layer (:mod:`deconfound.lm._resume`).
- Many variants share one forward pass. Rows of a batch come from different prompts, units (layers) and
  donor values; each hooked module edits only its own rows. Prefix caches are left-padded and masked out.

A unit set (:class:`PatchSet`, a joint mediator; units and requests live in :mod:`deconfound.lm.units`)
patches all its units at once in the same rows; such a row enters the decoder stack at its lowest patched layer.

Outcome strategies (``"next_token_mass"``, the deterministic default; ``"reweight"``; ``"generate"``) live in
:mod:`deconfound.lm.outcomes`. :meth:`Patcher.random_copy` gives the same analysis on a random model.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

from ..errors import DataError, ModelSiteError
from ._torch import require_torch, set_threads
from ._prefix import gather, has_sliding_window, prefix_cache_bytes, prefix_group
from .sampling import default_id, eos_ids, forward_kwargs, sample_tokens, sample_uniforms
from ._null import fresh_outcome
from ._resume import base_rows, decoder_layers, empty_cache, resumed, row_state, start_counts, start_layers
from .hooks import _register
from .models import LoadedModel, as_loaded
from .outcomes import OUTCOMES, Generate, NextTokenMass, Reweight, as_outcome
from .sites import Site, bind
from .units import PatchRequest, PatchScores, PatchSet, PatchUnit, as_unit, members, start_layer

__all__ = ["PatchUnit", "PatchSet", "PatchRequest", "PatchScores", "Patcher", "NextTokenMass", "Reweight",
           "Generate", "OUTCOMES", "as_unit"]

# ---- the engine ----------------------------------------------------------------------------------


def _looks_like_prompts(obj) -> bool:
    return isinstance(obj, (list, tuple)) and all(isinstance(p, str) for p in obj)


class Patcher:
    """Patched outcome scores g(q_i; do(h_u = m)) for many prompts, units and values.

    Parameters
    ----------
    model : LoadedModel or torch model
        With a torch model, pass its ``tokenizer`` too: ``Patcher(model, tokenizer, prompts)``; with a
        LoadedModel, ``Patcher(lm, prompts)``.
    tokenizer : tokenizer, optional
    prompts : sequence of str
        Row i of the mediation data must be prompt i.
    site : str
        Site kind used for bare layer numbers (``3`` or ``"L3"`` means ``f"{site}.L3"``).
    position : "last"
        The patched position: the last prompt token (the one the mediators are extracted at).
    outcome : str or outcome object
        ``"next_token_mass"`` (default), ``"reweight"``, ``"generate"`` or an instance of
        :class:`NextTokenMass`, :class:`Reweight`, :class:`Generate`.
    batch_size : int
        Rows per forward pass (for sampled outcomes, rows x samples). Rows that enter the decoder stack at
        their patched layer are batched by work instead: a pass holds as many as run the layers of
        ``batch_size`` full-depth rows (at most 4 ``batch_size``).
    cache_prompts : int
        Prompt prefix caches kept in memory at once.
    cache_bytes : int, optional
        A memory budget for the prefix caches instead: ``cache_prompts`` becomes the number of mean-length
        prefixes whose keys and values (in the model's dtype) fit in it (:func:`prefix_cache_bytes`).
    threads : int, optional
        torch threads (see :func:`deconfound.lm._torch.set_threads`).
    ids : sequence, optional
        Prompt ids, checked against the data's ids by the estimator. They key the random streams of sampled
        outcomes (as in extraction), so pass them whenever the prompts are a subset or a reordering of an
        extraction's; default ``p000000``, ``p000001``, ... (extraction's default).
    resume : bool
        Start each patched row at its unit's layer, from the last token's residual stream cached per prompt
        (exact: nothing below the patched layer changes). False runs every layer for every row; models with a
        sliding attention window always run every layer.
    """

    def __init__(self, model, tokenizer=None, prompts=None, *, site="mlp_out", position="last",
                 outcome="next_token_mass", batch_size=64, cache_prompts=256, threads=None, ids=None,
                 resume=True, cache_bytes=None):
        torch = require_torch()
        if prompts is None and _looks_like_prompts(tokenizer):
            prompts, tokenizer = tokenizer, None
        if isinstance(model, LoadedModel):
            if tokenizer is not None:
                raise TypeError("tokenizer: expected None with a LoadedModel (it has its own), got a tokenizer")
            self.lm = model
        elif tokenizer is None:
            raise TypeError(f"tokenizer: expected a tokenizer with a {type(model).__name__}, got None")
        else:
            self.lm = as_loaded((model, tokenizer))
        if position != "last":
            raise ValueError(f"position: expected 'last' (the last prompt token), got {position!r}")
        if isinstance(prompts, str) or prompts is None:
            raise DataError("prompts: expected a sequence of strings, got " + ("None" if prompts is None else "one str"))
        self.prompts = list(prompts)
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise DataError("prompts: expected a non-empty sequence of non-empty strings, got an empty one or a "
                            "non-string entry")
        for key, value in (("batch_size", batch_size), ("cache_prompts", cache_prompts)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        self.site = site
        self.position = position
        self.batch_size = int(batch_size)
        self.cache_prompts = int(cache_prompts)
        self.threads = set_threads(threads)
        self.resume = bool(resume)
        self.ids = None if ids is None else np.asarray(list(ids))
        if self.ids is not None and self.ids.shape != (len(self.prompts),):
            raise DataError(f"ids: expected {len(self.prompts)} ids, got {self.ids.shape}")
        self.outcome = as_outcome(outcome)
        tok = self.lm.tokenizer
        self.tokens = [list(x) for x in tok(self.prompts)["input_ids"]]
        empty = [i for i, x in enumerate(self.tokens) if not x]
        if empty:
            raise DataError(f"prompts: expected at least one token each, got none for prompt(s) {empty[:5]}")
        model = self.lm.model
        if cache_bytes is not None:
            per = prefix_cache_bytes(model, float(np.mean([len(x) - 1 for x in self.tokens])))
            self.cache_prompts = max(1, int(cache_bytes // max(per, 1)))
        self._cache_kw, _ = forward_kwargs(model)
        self.pad_id = tok.pad_token_id
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._n_layers = len(decoder_layers(model))
        self._windowed = has_sliding_window(model.config, max(len(x) for x in self.tokens))
        self._device = self.lm.device
        self._last = torch.as_tensor([x[-1] for x in self.tokens], dtype=torch.long)
        self._plen = np.asarray([len(x) - 1 for x in self.tokens])
        self._groups: OrderedDict = OrderedDict()  # gid -> (prefix length, prompt [(K, V)] per layer, members,
        # (L, members, d) last-token input of every layer)
        self._where: dict = {}  # prompt -> (gid, row)
        self._next_gid = 0
        self._bound: dict = {}
        self._base = None
        self._uniforms: dict = {}
        self.n_forward = 0

    # ---- facts -----------------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    def unit(self, spec) -> PatchUnit | PatchSet:
        """Resolve a unit or unit-set spec (see :func:`as_unit`) and check it against the model."""
        unit = as_unit(spec, self.site)
        for one in members(unit):
            self._bind(one)
        return unit

    def dim(self, spec) -> int:
        """Width of a unit: the site's width or the number of its coordinates (a set: the sum of its units')."""
        widths = []
        for one in members(as_unit(spec, self.site)):
            bound, coords = self._bind(one)
            widths.append(bound.dim if coords is None else int(coords.numel()))
        return sum(widths)

    def describe(self) -> dict:
        """Settings for provenance (model, outcome, position)."""
        return {"model_id": self.lm.model_id, "model_fingerprint": self.lm.fingerprint, "n_prompts": self.n_prompts,
                "position": "last prompt token", **self.outcome.describe()}

    def random_copy(self, seed: int = 0) -> "Patcher":
        """The same prompts and outcome on a randomly initialised model of the same architecture and config
        (:func:`deconfound.lm._null.random_model`): the null model of the refuters."""
        from ._null import random_model

        return Patcher(random_model(self.lm, seed), self.prompts, site=self.site, outcome=fresh_outcome(self.outcome),
                       batch_size=self.batch_size, cache_prompts=self.cache_prompts, ids=self.ids, resume=self.resume)

    def _bind(self, unit: PatchUnit):
        if unit not in self._bound:
            torch = require_torch()
            bound = bind(self.lm.model, unit.site)
            coords = None
            if unit.coords is not None:
                c = np.asarray(unit.coords)
                if c.min() < 0 or c.max() >= bound.dim or len(np.unique(c)) != c.size:
                    raise ModelSiteError(f"unit {unit.name}: expected distinct coordinates in [0, {bound.dim}), "
                                         f"got {len(c)} with range [{c.min()}, {c.max()}]")
                coords = torch.as_tensor(c, dtype=torch.long, device=self._device)
            self._bound[unit] = (bound, coords)
        return self._bound[unit]

    # ---- prefix caches ---------------------------------------------------------------------
    def _ensure_prefix(self, prompts) -> None:
        need = sorted({int(i) for i in prompts if int(i) not in self._where}, key=lambda i: (self._plen[i], i))
        keep = {self._where[int(i)][0] for i in prompts if int(i) in self._where}
        cached = sum(len(g[2]) for g in self._groups.values())
        for gid in list(self._groups):  # least recently made first
            if cached + len(need) <= self.cache_prompts:
                break
            if gid in keep:
                continue
            members = self._groups.pop(gid)[2]
            for i in members:
                del self._where[i]
            cached -= len(members)
        start = 0
        while start < len(need):
            length = self._plen[need[start]]
            stop = start
            while stop < len(need) and self._plen[need[stop]] == length and stop - start < self.batch_size:
                stop += 1
            members = need[start:stop]
            gid = self._next_gid
            self._next_gid += 1
            self._groups[gid] = prefix_group(self, members, int(length))
            for row, i in enumerate(members):
                self._where[i] = (gid, row)
            start = stop

    # ---- forward passes --------------------------------------------------------------------
    def _last_tokens(self, pidx):  # noqa: D102
        return self._last[np.asarray(pidx)][:, None].to(self._device)

    def _install(self, groups, capture=None):
        by_module: dict = {}
        for unit, rows, vals in groups:
            bound, coords = self._bind(unit)
            by_module.setdefault(id(bound.module), (bound, []))[1].append((rows, coords, vals))
        handles = []
        for bound, items in by_module.values():
            def edit(tensor, items=items):
                new = tensor.clone()
                for rows, coords, vals in items:
                    vals = vals.to(dtype=new.dtype)
                    if coords is None:
                        new[rows, 0] = vals
                    else:
                        new[rows[:, None], 0, coords[None, :]] = vals
                return new

            handles.append(_register(bound, edit))
        for unit in list(capture or ()):
            bound, coords = self._bind(unit)

            def grab(tensor, unit=unit, coords=coords):
                value = tensor[:, 0].detach()
                capture[unit] = value if coords is None else value[:, coords]
                return None

            handles.append(_register(bound, grab))
        return handles

    def _forward(self, pidx, tokens, groups, capture=None, keep_cache=False):
        """Run ``tokens`` (R, k) after each row's prefix cache, with the row-wise patches ``groups``.

        Without capture, and with rows sorted by their patched layer (as :meth:`_run` makes them), each row
        enters the decoder stack at its patched layer (see :mod:`deconfound.lm._resume`): from the cached last
        token with one new token, from unpatched base rows run alongside with several.
        """
        torch = require_torch()
        pidx = np.asarray(pidx)
        self._ensure_prefix(pidx)
        r, k = tokens.shape
        starts = start_layers(groups, r) if (self.resume and not self._windowed and capture is None) else None
        base = None
        if starts is not None and k > 1:
            base = None if keep_cache else base_rows(pidx, tokens.cpu().numpy(), starts, self._n_layers)
            if base is None:
                starts = None
            else:  # the base rows go first, start at 0 and are dropped from the output
                first, source = base
                pidx, tokens = np.concatenate([pidx[first], pidx]), torch.cat([tokens[first], tokens])
                groups = [(unit, rows + len(first), vals) for unit, rows, vals in groups]
                starts = np.concatenate([np.zeros(len(first), dtype=starts.dtype), starts])
                source = torch.as_tensor(np.concatenate([np.arange(len(first)), source]), device=self._device)
                r = len(pidx)
        # resumed: layer j's prefix keys only for the rows started there, unless the cache is kept
        keep = None if starts is None or keep_cache else np.maximum(start_counts(starts, self._n_layers), 1)
        cache, pmask, plen, parts = gather(self, pidx, keep)
        mask = torch.cat([pmask, torch.ones((r, k), dtype=pmask.dtype, device=pmask.device)], dim=1)
        pos = plen[:, None] + torch.arange(k, device=plen.device)[None, :]
        entry = contextlib.nullcontext()
        if starts is not None:
            cache = empty_cache(self.lm.model) if cache is None else cache
            resid, last_kv = row_state(parts, r, keep_cache) if base is None else (None, None)
            entry = resumed(self.lm.model, starts, resid, cache, last_kv, None if base is None else source)
        kwargs = {} if cache is None else {self._cache_kw: cache}
        handles = self._install(groups, capture)
        try:
            with entry:
                out = self.lm.model(input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True,
                                    **kwargs)
        finally:
            for h in handles:
                h.remove()
        self.n_forward += 1
        if base is not None:
            out.logits = out.logits[len(base[0]):]
        if keep_cache:
            new = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            return out, new, mask, pos[:, -1] + 1
        return out

    def _sample(self, pidx, groups, n_samples, steps, seed, temperature, top_p):
        """Sample ``n_samples`` continuations per row (cut after the first eos, which is kept)."""
        torch = require_torch()
        s = n_samples
        with torch.no_grad():
            out, cache, mask, nxt_pos = self._forward(pidx, self._last_tokens(pidx), groups, keep_cache=True)
            rows = len(pidx) * s
            cache.batch_repeat_interleave(s)
            mask = mask.repeat_interleave(s, dim=0)
            nxt_pos = nxt_pos.repeat_interleave(s)
            logits = out.logits[:, -1].repeat_interleave(s, dim=0)
            u = np.concatenate([self._uniform(int(i), s, steps, seed) for i in pidx])
            u = torch.as_tensor(u, device=self._device)
            eos = torch.as_tensor(eos_ids(self.lm), device=self._device, dtype=torch.long)
            finished = torch.zeros(rows, dtype=torch.bool, device=self._device)
            gen = []
            for step in range(steps):
                tok = sample_tokens(logits, u[:, step], temperature, top_p)
                tok = torch.where(finished, torch.full_like(tok, self.pad_id), tok)
                gen.append(tok)
                finished = finished | torch.isin(tok, eos)
                if step == steps - 1 or bool(finished.all()):
                    break
                mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                out = self.lm.model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt_pos[:, None],
                                    use_cache=True, **{self._cache_kw: cache})
                self.n_forward += 1
                cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                nxt_pos = nxt_pos + 1
                logits = out.logits[:, -1]
        seqs = torch.stack(gen, dim=1).cpu().tolist()
        eos_set = set(eos.tolist())
        out_tokens = []
        for seq in seqs:
            cut = next((j for j, t in enumerate(seq) if t in eos_set), None)
            out_tokens.append(seq if cut is None else seq[:cut + 1])
        return out_tokens

    def _uniform(self, i, s, steps, seed):
        key = (i, s, steps, seed)
        if key not in self._uniforms:
            pid = default_id(i) if self.ids is None else str(self.ids[i])
            self._uniforms[key] = sample_uniforms(seed, pid, s, steps)
        return self._uniforms[key]

    def _decode(self, conts) -> list[str]:
        eos = set(eos_ids(self.lm))
        return [self.lm.tokenizer.decode([t for t in c if t not in eos], skip_special_tokens=True) for c in conts]

    # ---- public evaluation -----------------------------------------------------------------
    def activations(self, units, prompts=None) -> dict:
        """Unpatched activations at the last prompt token: ``{unit name: (R, d) float32}`` (a unit set: its
        units' activations side by side)."""
        torch = require_torch()
        single = isinstance(units, (str, PatchUnit, PatchSet, Site, int))
        units = [self.unit(u) for u in ([units] if single else units)]
        pidx = np.arange(self.n_prompts) if prompts is None else self._check_prompts(prompts, "prompts")
        out = {u.name: [] for u in units}
        for start in range(0, len(pidx), self.batch_size):
            sel = pidx[start:start + self.batch_size]
            cap = {one: None for u in units for one in members(u)}
            with torch.no_grad():
                self._forward(sel, self._last_tokens(sel), [], capture=cap)
            for u in units:
                out[u.name].append(np.hstack([cap[one].float().cpu().numpy() for one in members(u)]))
        return {k: np.concatenate(v) for k, v in out.items()}

    def base_scores(self) -> np.ndarray:
        """Unpatched scores g(q_i) for every prompt (computed once)."""
        if self._base is None:
            self.outcome.prepare(self)
            self._base = self._run(np.arange(self.n_prompts), [], grad=False)[0]
        return self._base.copy()

    def scores(self, unit, prompts, values) -> np.ndarray:
        """Patched scores of one unit: row r patches prompt ``prompts[r]`` with ``values[r]``."""
        return self.evaluate([PatchRequest(unit, prompts, values)])[0].scores

    def evaluate(self, requests, *, grad: bool = False) -> list[PatchScores]:
        """Patched scores for many requests at once (rows of different units share forward passes).

        Parameters
        ----------
        requests : sequence of PatchRequest or (unit, prompts, values) tuples
            A request's ``unit`` may be a unit set (a :class:`PatchSet`, a list of units or names joined by
            ``"+"``): its units are patched at once in every row of the request, each with its own values (side
            by side, or a list of one array per unit).
        grad : bool
            Also return d score / d value per row (``PatchScores.grad``, shape (R, d_unit); a set: its units'
            gradients side by side); needs a differentiable outcome (``next_token_mass`` or ``reweight``).

        Returns
        -------
        list of PatchScores, in the order of ``requests``
        """
        if grad and not getattr(self.outcome, "differentiable", False):
            raise ValueError(f"grad: expected a differentiable outcome (next_token_mass, reweight), got "
                             f"{getattr(self.outcome, 'name', self.outcome)!r}")
        self.outcome.prepare(self)
        checked = [self._check_request(r if isinstance(r, PatchRequest) else PatchRequest(*r)) for r in requests]
        if not checked:
            return []
        sizes = [len(p) for _, p, _ in checked]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        pidx = np.concatenate([p for _, p, _ in checked])
        which = np.repeat(np.arange(len(checked)), sizes)
        local = np.concatenate([np.arange(s) for s in sizes])
        scores, extras, grads = self._run(pidx, (checked, which, local), grad=grad)
        out = []
        for q, (unit, _, _) in enumerate(checked):
            sl = slice(offsets[q], offsets[q + 1])
            out.append(PatchScores(unit, scores[sl], {k: v[sl] for k, v in extras.items()},
                                   None if grads is None else grads[q]))
        return out

    def _check_request(self, req: PatchRequest):
        unit = self.unit(req.unit)
        pidx = self._check_prompts(req.prompts, f"prompts for {unit.name}")
        parts = [(unit, req.values)]
        if isinstance(unit, PatchSet) and isinstance(req.values, (list, tuple)):
            if len(req.values) != len(unit.units):
                raise DataError(f"values for {unit.name}: expected {len(unit.units)} arrays (one per unit) or one "
                                f"array of the units' values side by side, got a list of {len(req.values)}")
            parts = list(zip(unit.units, req.values))
        checked = []
        for one, values in parts:
            d = self.dim(one)
            vals = np.asarray(values, dtype=np.float32)
            if vals.ndim == 1:
                vals = np.broadcast_to(vals, (len(pidx), vals.shape[0]))
            if vals.shape != (len(pidx), d):
                raise DataError(f"values for {one.name}: expected shape ({len(pidx)}, {d}) or ({d},), got "
                                f"{vals.shape}")
            if not np.isfinite(vals).all():
                raise DataError(f"values for {one.name}: expected finite values, got NaN/inf")
            checked.append(vals)
        return unit, pidx, checked[0] if len(checked) == 1 else np.hstack(checked)

    def _patches(self, unit, rows, vals) -> list:
        """The engine's row-wise patches ``[(PatchUnit, rows, values)]`` of a unit or set (columns split)."""
        out, at = [], 0
        for one in members(unit):
            d = self.dim(one)
            out.append((one, rows, vals[:, at:at + d]))
            at += d
        return out

    def _check_prompts(self, prompts, name) -> np.ndarray:
        p = np.asarray(prompts).reshape(-1)
        if p.size and (not np.issubdtype(p.dtype, np.integer) or p.min() < 0 or p.max() >= self.n_prompts):
            raise DataError(f"{name}: expected prompt indices in [0, {self.n_prompts}), got dtype {p.dtype}"
                            + (f", range [{p.min()}, {p.max()}]" if np.issubdtype(p.dtype, np.number) else ""))
        return p.astype(np.int64)

    def _blocks(self, order, per, starts=None):
        """``order`` cut into forward passes of ``per`` rows; or, with each row's start layer ``starts`` (rows
        that resume), of as many rows as run the layers of ``per`` full-depth rows (the same layer work and
        prefix-cache memory per pass), at most 4 ``per``."""
        if starts is None:
            return [order[s:s + per] for s in range(0, len(order), per)]
        work = np.cumsum(self._n_layers - starts[order])
        out, lo = [], 0
        while lo < len(order):
            done = work[lo - 1] if lo else 0
            hi = int(np.searchsorted(work, done + per * self._n_layers, side="right"))
            hi = min(max(hi, lo + 1), lo + 4 * per)
            out.append(order[lo:hi])
            lo = hi
        return out

    def _run(self, pidx, spec, grad=False):
        """Score rows in batches sorted by prefix length; ``spec`` is (requests, request of row, local row)."""
        torch = require_torch()
        n = len(pidx)
        order = np.lexsort((pidx, self._plen[pidx]))
        per = max(1, self.batch_size // max(1, int(getattr(self.outcome, "rows_per_request", 1))))
        scores = np.empty(n)
        extras: dict = {}
        grads = None
        if spec and grad:
            grads = [np.zeros_like(v) for _, _, v in spec[0]]
        layer_of = np.asarray([start_layer(unit) for unit, _, _ in spec[0]]) if spec else None
        upcoming = pidx[order][np.sort(np.unique(pidx[order], return_index=True)[1])]  # prompts in visiting order
        resumes = bool(spec) and self.resume and not self._windowed and self.outcome.one_token
        for sel in self._blocks(order, per, layer_of[spec[1]] if resumes else None):
            if spec:  # rows sorted by their lowest patched layer: each enters the decoder stack there
                sel = sel[np.argsort(layer_of[spec[1][sel]], kind="stable")]
            if any(int(i) not in self._where for i in pidx[sel]):  # build prefix caches for the next block at once
                at = int(np.flatnonzero(upcoming == pidx[sel][0])[0])
                self._ensure_prefix(np.union1d(pidx[sel], upcoming[at:at + self.cache_prompts]))
            groups, leaves = [], []
            if spec:
                checked, which, local = spec
                for q in np.unique(which[sel]):
                    rows = np.flatnonzero(which[sel] == q)
                    vals = torch.as_tensor(checked[q][2][local[sel][rows]], device=self._device)
                    if grad:
                        vals.requires_grad_(True)
                        leaves.append((q, local[sel][rows], vals))
                    groups += self._patches(checked[q][0], torch.as_tensor(rows, device=self._device), vals)
            ctx = torch.enable_grad() if grad else torch.no_grad()
            with ctx:
                value, extra = self.outcome.batch(self, pidx[sel], groups, grad=grad)
                if grad:
                    got = torch.autograd.grad(value.sum(), [v for _, _, v in leaves])
                    for (q, rows, _), g in zip(leaves, got):
                        grads[q][rows] = g.detach().float().cpu().numpy()
            scores[sel] = torch.as_tensor(value).detach().double().cpu().numpy()
            for key, arr in extra.items():
                arr = np.asarray(arr)
                if key not in extras:
                    extras[key] = np.zeros(n, dtype=arr.dtype)
                extras[key][sel] = arr
        return scores, extras, grads
