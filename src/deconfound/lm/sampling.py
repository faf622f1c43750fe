"""Sampling continuations with one random stream per (prompt id, sample), and the batched forward pass.

A prompt's streams are keyed by its id (:func:`stream_key`), never by its position, so its samples are the
same in a full extraction, a subset, another batch or another shard, and the patching engine's
:class:`~deconfound.lm.outcomes.Generate` reuses them as common random numbers.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ._torch import require_torch
from .hooks import capture

@dataclass
class BatchResult:
    """What :func:`run_batch` returns for B prompts and S samples each."""

    activations: dict  # unit -> (B, d) float32
    tokens: list  # B lists of S lists of token ids (up to and without eos)
    texts: list  # B lists of S decoded continuations


# ------------------------------------------------------------------------------------------
# Sampling with one random stream per (prompt, sample)


def default_id(i: int) -> str:
    """The id of prompt ``i`` when none are given: ``p000000``, ``p000001``, ..."""
    return f"p{int(i):06d}"


def default_ids(n: int) -> list[str]:
    """:func:`default_id` of prompts 0..n-1."""
    return [default_id(i) for i in range(int(n))]


def stream_key(prompt_id) -> int:
    """The integer that keys a prompt's random streams.

    A prompt id (any value but an int) is keyed by ``str(prompt_id)``: the first 8 bytes of its SHA-256,
    plus 2**64, so the same id gets the same streams in every run, subset and order. A non-negative int is
    used as it is (the offset keeps the two kinds apart).
    """
    if isinstance(prompt_id, (int, np.integer)) and not isinstance(prompt_id, bool):
        if prompt_id < 0:
            raise ValueError(f"stream key: expected a non-negative int or a prompt id, got {prompt_id}")
        return int(prompt_id)
    digest = hashlib.sha256(str(prompt_id).encode("utf-8")).digest()
    return (1 << 64) + int.from_bytes(digest[:8], "big")


def sample_uniforms(seed: int, prompt_id, n_samples: int, steps: int) -> np.ndarray:
    """The uniforms that drive sampling for one prompt: shape (n_samples, steps).

    Sample k uses ``SeedSequence(seed, spawn_key=(stream_key(prompt_id), k))``.
    """
    key = stream_key(prompt_id)
    out = np.empty((n_samples, steps))
    for k in range(n_samples):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(key, k)))
        out[k] = rng.random(steps)
    return out


def _pick(probs, order, u, top_p: float):
    """Inverse-CDF pick from probabilities sorted in descending order (``order`` maps back to token ids)."""
    torch = require_torch()
    probs = probs.double()
    if top_p < 1.0:
        probs = probs * ((probs.cumsum(dim=-1) - probs) < top_p)
    cdf = probs.cumsum(dim=-1)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(1)
    j = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
    return (order.gather(1, j) if order is not None else j).squeeze(1)


def sample_tokens(logits, u, temperature: float = 1.0, top_p: float = 1.0):
    """Draw one token per row by inverting the (nucleus-truncated) CDF at ``u``.

    Parameters
    ----------
    logits : tensor (R, V)
    u : tensor (R,) of uniforms in [0, 1)
    temperature : float
        0 means greedy (argmax).
    top_p : float
        Keep the smallest set of most likely tokens whose mass reaches top_p.

    Returns
    -------
    LongTensor (R,)
    """
    torch = require_torch()
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # sums in float64 below
    if top_p >= 1.0:
        return _pick(probs, None, u, 1.0)
    # The nucleus is usually small (SmolLM2 at top_p 0.9: median about 300 tokens, rarely over 4,000):
    # sort only the top k, and move the rows whose nucleus does not fit on to a larger k.
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    rows = torch.arange(probs.shape[0], device=probs.device)
    vocab = probs.shape[1]
    for k in (512, 4096, vocab):
        k = min(k, vocab)
        part = probs[rows]
        if k == vocab:
            top, order = part.sort(dim=-1, descending=True, stable=True)
        else:
            top, order = part.topk(k, dim=-1, sorted=True)
        fits = top.double().sum(dim=-1) >= top_p if k < vocab else torch.ones_like(rows, dtype=torch.bool)
        if bool(fits.any()):
            out[rows[fits]] = _pick(top[fits], order[fits], u[rows[fits]], top_p)
        rows = rows[~fits]
        if rows.numel() == 0:
            break
    return out


def stored_cache(kv, config, width: int):
    """A transformers DynamicCache holding the stored per-layer ``(keys, values)`` ``kv`` of ``width`` positions.

    A full-attention layer takes the tensors as they are (transformers' own constructor would copy them). A
    sliding-window layer goes through its own update, which keeps only the last ``window - 1`` positions and
    places the attention mask by the count of positions it has seen; rebuilt from stored tensors it would count
    only the stored ones and misplace the mask of a prompt longer than the window, so the count is set to
    ``width``.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    for layer, (keys, values) in zip(cache.layers, kv):
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        else:
            layer.update(keys, values)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = int(width)
    return cache


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def forward_kwargs(model):
    """The model's cache keyword (``cache`` or ``past_key_values``) and whether it takes ``logits_to_keep``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), ("logits_to_keep" in params)


def eos_ids(lm) -> list[int]:
    """End-of-sequence token ids of the tokenizer and the generation config, sorted."""
    ids = set()
    for value in (lm.tokenizer.eos_token_id, getattr(getattr(lm.model, "generation_config", None),
                                                      "eos_token_id", None)):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return sorted(int(i) for i in ids)


def run_batch(lm, texts, prompt_ids, *, units=(), n_samples: int = 1, max_new_tokens: int = 20,
              seed: int = 0, temperature: float = 1.0, top_p: float = 1.0) -> BatchResult:
    """One left-padded forward pass with capture, then seeded sampling with a KV cache.

    Hooks already active (e.g. a :func:`~deconfound.lm.hooks.patch` block)
    apply to the prefill, so this also gives patched continuations with the
    same random numbers.

    Parameters
    ----------
    lm : LoadedModel
    texts : list of str
    prompt_ids : sequence
        Each prompt's id; it keys the prompt's random streams (see :func:`stream_key`), so a prompt's
        samples do not depend on the batch, the shard or the other prompts.
    units : sequence of site names
        Captured at the last prompt token.
    n_samples, max_new_tokens : int
        Continuations per prompt and their length (0 tokens: capture only).
    seed, temperature, top_p
        Sampling settings; see :func:`sample_tokens`.
    """
    torch = require_torch()
    model, tok = lm.model, lm.tokenizer
    device = lm.device
    enc = tok(list(texts), return_tensors="pt", padding=True)
    ids = enc["input_ids"].to(device)
    mask = enc["attention_mask"].to(device)
    if (mask.sum(dim=1) == 0).any():
        bad = [texts[i] for i in torch.nonzero(mask.sum(dim=1) == 0).flatten().tolist()]
        raise DataError(f"prompts: expected at least one token each, got none for {bad[:3]}")
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache_kw, has_keep = forward_kwargs(model)
    generate = n_samples > 0 and max_new_tokens > 0
    extra = {"logits_to_keep": 1} if has_keep else {}
    with torch.inference_mode():
        if units:
            with capture(model, list(units), positions="last") as cap:
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=generate, **extra)
            acts = cap.numpy()
        else:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=generate, **extra)
            acts = {}
        b = ids.shape[0]
        if not generate:
            return BatchResult(acts, [[] for _ in range(b)], [[] for _ in range(b)])
        cache = _cache_of(out)
        cache.batch_repeat_interleave(n_samples)
        rows = b * n_samples
        u = np.concatenate([sample_uniforms(seed, i, n_samples, max_new_tokens) for i in prompt_ids])
        u = torch.as_tensor(u, device=device)
        mask = mask.repeat_interleave(n_samples, dim=0)
        next_pos = pos[:, -1].repeat_interleave(n_samples) + 1
        logits = out.logits[:, -1].repeat_interleave(n_samples, dim=0)
        eos = torch.as_tensor(eos_ids(lm), device=device, dtype=torch.long)
        pad = tok.pad_token_id
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        steps = []
        for step in range(max_new_tokens):
            nxt = sample_tokens(logits, u[:, step], temperature, top_p)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            steps.append(nxt)
            finished = finished | torch.isin(nxt, eos)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                        use_cache=True, **{cache_kw: cache}, **extra)
            cache = _cache_of(out)
            next_pos = next_pos + 1
            logits = out.logits[:, -1]
    gen = torch.stack(steps, dim=1).cpu().tolist()
    eos_set = set(eos.tolist())
    tokens, decoded = [], []
    for i in range(b):
        row_tokens, row_texts = [], []
        for k in range(n_samples):
            seq = gen[i * n_samples + k]
            cut = next((j for j, t in enumerate(seq) if t in eos_set), len(seq))
            row_tokens.append(seq[:cut])
            row_texts.append(tok.decode(seq[:cut], skip_special_tokens=True))
        tokens.append(row_tokens)
        decoded.append(row_texts)
    return BatchResult(acts, tokens, decoded)
