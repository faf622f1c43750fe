"""The patcher's prompt caches: each prompt's key/value prefix, kept in groups of equal length, and the
batch's cache gathered from them."""
from __future__ import annotations

from ._resume import layer_inputs
from ._torch import require_torch
from .sampling import stored_cache


def prefix_cache_bytes(model, tokens: float) -> int:
    """Bytes of keys and values that ``tokens`` prefix positions of one prompt take, in the model's dtype."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    size = next(model.parameters()).element_size()
    return int(2 * layers * kv_heads * head_dim * size * tokens)


def has_sliding_window(config, longest: int) -> bool:
    """Whether an attention layer keeps only a sliding window of positions shorter than the longest prompt."""
    win = getattr(config, "sliding_window", None)
    if win is None or getattr(config, "use_sliding_window", True) is False or longest < int(win):
        return False
    types = getattr(config, "layer_types", None)
    return True if not types else any("sliding" in str(t) for t in types)


def prefix_group(patcher, members, length):
    """``(prefix length, [(K, V)] per layer, members, last-token layer inputs)`` of prompts of one length.

    Full attention: one pass over the whole prompt caches the prefix plus the last token and every layer's
    input at the last token (for resumed rows). A sliding window keeps only its last positions, so there
    the prefix alone is run (nothing resumes)."""
    torch = require_torch()
    dev = patcher._device
    if patcher._windowed:
        kv = None
        if length > 0:
            ids = torch.as_tensor([patcher.tokens[i][:-1] for i in members], dtype=torch.long, device=dev)
            pos = torch.arange(length, device=dev).expand(len(members), -1)
            with torch.no_grad():
                out = patcher.lm.model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids),
                                    use_cache=True)
            patcher.n_forward += 1
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            kv = [(layer.keys, layer.values) for layer in cache.layers]
        return length, kv, members, None
    ids = torch.as_tensor([patcher.tokens[i] for i in members], dtype=torch.long, device=dev)
    pos = torch.arange(length + 1, device=dev).expand(len(members), -1)
    resid: list = []
    with torch.no_grad(), layer_inputs(patcher.lm.model, resid):
        out = patcher.lm.model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids), use_cache=True)
    patcher.n_forward += 1
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    kv = [(layer.keys, layer.values) for layer in cache.layers]  # the whole prompt: prefix + last token
    return length, kv, members, torch.stack(resid)


def gather(patcher, pidx, rows_per_layer=None):
    """The batch's prefix cache (left-padded with zeros), its attention mask, prefix lengths and the
    batch's cache groups ``[(batch rows, group rows, group)]``. With ``rows_per_layer``, layer j's cache
    holds only the batch's first ``rows_per_layer[j]`` rows. A sliding-window layer's stored positions
    (its last window) are right-aligned."""
    torch = require_torch()
    dev = patcher._device
    plen = torch.as_tensor(patcher._plen[pidx], dtype=torch.long, device=dev)
    width = int(plen.max())
    mask = (torch.arange(width, device=dev)[None, :] >= (width - plen)[:, None]).long()
    where = [patcher._where[int(i)] for i in pidx]
    parts = []
    for g in sorted({g for g, _ in where}):
        sel = [r for r, (gg, _) in enumerate(where) if gg == g]
        rows = torch.as_tensor([where[r][1] for r in sel], dtype=torch.long, device=dev)
        parts.append((torch.as_tensor(sel, dtype=torch.long, device=dev), rows, patcher._groups[g]))
    if width == 0:
        return None, mask, plen, parts
    ref = next(p[2][1] for p in parts if p[2][1] is not None)
    layers = []
    for li in range(len(ref)):
        n = len(pidx) if rows_per_layer is None else int(rows_per_layer[li])
        kv = []
        for which in (0, 1):
            # the prefix of each group (the whole-prompt caches also hold the last token)
            stored = [(sel, rows, g[1][li][which] if patcher._windowed else g[1][li][which][:, :, :g[0]])
                      for sel, rows, g in parts if g[0]]
            if len(parts) == 1 and stored[0][2].shape[2] == width:
                kv.append(stored[0][2].index_select(0, stored[0][1][:n]))
                continue
            lw = max(t.shape[2] for _, _, t in stored)
            shape = list(ref[li][which].shape)
            shape[0], shape[2] = n, lw
            full = torch.zeros(shape, dtype=ref[li][which].dtype, device=dev)
            for sel, rows, t in stored:
                use = sel < n
                if bool(use.any()):
                    full[sel[use], :, lw - t.shape[2]:] = t.index_select(0, rows[use])
            kv.append(full)
        layers.append(tuple(kv))
    return stored_cache(layers, patcher.lm.model.config, width), mask, plen, parts
