"""Enter the decoder stack mid-way: a patched row runs only the layers at and above its patched one.

Patching the last prompt token at layer l changes nothing below l. The patching engine therefore keeps, per
prompt, the last token's residual stream at the input of every decoder layer (recorded by
:func:`layer_inputs` while the prompt's key/value cache is built). In a batch whose rows are sorted by their
start layer, :func:`resumed` replaces each decoder layer's ``forward`` for the duration of one model call:
at layer j the rows starting at j take their cached input, and only the rows that have started (a leading
slice of the batch) run the layer. Everything else is the model's own forward: embeddings, rotary position
embeddings, attention masks and the final norm are computed by the model as usual and sliced to the active
rows, so the mechanism needs nothing per architecture beyond the site table's path to the decoder layers.

The active rows' key/value cache at layer j is a slice of the prefix cache; when the cache is used after
the call (sampling continues from it), the rows that had not started at layer j get the last token's
unpatched keys and values there, which are exact because nothing below their patch changed.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ._torch import require_torch
from .hooks import _main_tensor
from .sites import arch_table, get_module


def decoder_layers(model):
    """The model's decoder layers (a ModuleList), found through the site table."""
    return get_module(model, arch_table(model).layers)


@contextmanager
def layer_inputs(model, out: list):
    """Within the block, ``out[j]`` is set to decoder layer j's input at the last position, (B, d), detached."""
    layers = decoder_layers(model)
    out[:] = [None] * len(layers)
    handles = []

    def make(j):
        def pre(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            out[j] = hidden[:, -1].detach()
            return None

        return pre

    try:
        for j, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(make(j), with_kwargs=True))
        yield out
    finally:
        for h in handles:
            h.remove()


def empty_cache(model):
    """An empty transformers DynamicCache for ``model`` (a batch whose prompts are all one token long)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _rows(obj, n: int, total: int):
    """``obj`` with every batch-first tensor (dim >= 2, first axis ``total``) cut to its first ``n`` rows."""
    torch = require_torch()
    if isinstance(obj, torch.Tensor):
        return obj[:n] if obj.dim() >= 2 and obj.shape[0] == total else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_rows(v, n, total) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rows(v, n, total) for v in obj)
    if isinstance(obj, dict):
        return {k: _rows(v, n, total) for k, v in obj.items()}
    return obj


def start_layers(groups, n: int):
    """Each row's first layer (the lowest layer patched in it: a unit set patches several), or None when every
    row starts at 0 or the rows are not sorted by it (then every row runs every layer)."""
    starts = np.full(n, np.iinfo(np.int64).max)
    for unit, rows, _ in groups:
        r = rows.cpu().numpy()
        starts[r] = np.minimum(starts[r], unit.site.layer)
    starts[starts == np.iinfo(np.int64).max] = 0  # unpatched rows run every layer
    if not groups or starts.max() == 0 or np.any(np.diff(starts) < 0):
        return None
    return starts


def row_state(parts, n: int, with_kv: bool):
    """Per batch row, from the engine's prompt-cache groups ``[(batch rows, group rows, group)]``: the last
    token's input of every layer (L, R, d) and, with ``with_kv``, its unpatched keys and values per layer
    [(R, heads, 1, head_dim) x 2]."""
    ref = parts[0][2]
    resid = ref[3].new_empty((ref[3].shape[0], n, ref[3].shape[2]))
    last = None
    if with_kv:
        last = [tuple(t.new_empty((n, t.shape[1], 1, t.shape[3])) for t in kv) for kv in ref[1]]
    for sel, rows, (length, group_kv, _, group_resid) in parts:
        resid[:, sel] = group_resid.index_select(1, rows)
        for li in range(len(last or ())):
            for which in (0, 1):
                last[li][which][sel] = group_kv[li][which].index_select(0, rows)[:, :, length:length + 1]
    return resid, last


def start_counts(starts: np.ndarray, n_layers: int) -> np.ndarray:
    """Rows that have started at each layer: ``counts[j] = #{r: starts[r] <= j}`` (starts sorted)."""
    return np.searchsorted(starts, np.arange(n_layers), side="right")


def base_rows(pidx, tokens, starts, n_layers: int):
    """For rows of several new tokens: the rows to run unpatched from layer 0 so that the others can enter at
    their layer from them, as ``(first, source)``: row ``first[b]`` of the batch is base row b's prompt and
    tokens, and row r enters from base row ``source[r]``. None when the base rows would cost more layers than
    resuming saves (each row's layers below its start)."""
    keys = np.concatenate([np.asarray(pidx)[:, None], np.asarray(tokens)], axis=1)
    _, first, source = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    if int(np.sum(starts)) <= len(first) * n_layers:
        return None
    return first, source.reshape(-1)


def _entry(forward, j, prev, n, total, resid, cache, last_kv, source=None):
    torch = require_torch()

    def run(hidden, *args, **kwargs):
        layer_cache = None if cache is None else cache.layers[j]
        if n == 0:  # no row has started: only the cache gets the unpatched last token
            if last_kv is not None:
                layer_cache.update(*last_kv)
            return hidden
        if n > prev and source is not None:  # rows [prev, n) enter from their (started) base rows
            hidden = torch.cat([hidden[:prev], hidden[source[prev:n]], hidden[n:]]) if j else hidden
        elif n > prev:  # rows [prev, n) enter the stack here, from their cached input
            enter = resid[prev:n, None].to(hidden.dtype).expand(-1, hidden.shape[1], -1)
            hidden = torch.cat([hidden[:prev], enter, hidden[n:]])
        if n == total:
            return forward(hidden, *args, **kwargs)
        saved = None
        if layer_cache is not None and layer_cache.is_initialized:
            saved = (layer_cache.keys, layer_cache.values)
            layer_cache.keys, layer_cache.values = saved[0][:n], saved[1][:n]
        out = forward(hidden[:n], *_rows(args, n, total), **_rows(kwargs, n, total))
        if last_kv is not None:
            rest = [kv[n:] if saved is None else torch.cat([old[n:], kv[n:]], dim=2) for old, kv in
                    zip(saved or (None, None), last_kv)]
            layer_cache.keys = torch.cat([layer_cache.keys, rest[0]])
            layer_cache.values = torch.cat([layer_cache.values, rest[1]])
        tensor, put = _main_tensor(out)
        return put(torch.cat([tensor, hidden[n:]]))

    return run


@contextmanager
def resumed(model, starts: np.ndarray, resid, cache, last_kv=None, source=None):
    """Within the block, row r of the next model call enters the decoder stack at layer ``starts[r]``.

    Parameters
    ----------
    model : torch model
    starts : int array (R,), non-decreasing
        Each row's first layer.
    resid : tensor (L, R, d)
        Input of layer j for each row's (one) new token; read only where ``starts[r] == j > 0``.
    cache : DynamicCache
        The prefix cache passed to the model call (all R rows).
    last_kv : list of (keys, values), each (R, heads, 1, head_dim), optional
        The new token's unpatched keys and values per layer. Give it when the cache is used after the call.
    source : int tensor (R,), optional
        Instead of ``resid``: row r enters with the layer input of row ``source[r]``, an unpatched row that
        starts at 0 (see :func:`base_rows`); any number of new tokens.
    """
    starts = np.asarray(starts)
    if starts.size and np.any(np.diff(starts) < 0):
        raise ValueError("starts: expected rows sorted by their start layer, got an unsorted order")
    layers = decoder_layers(model)
    total = len(starts)
    counts = start_counts(starts, len(layers))
    changed = []
    try:
        for j in range(int(starts.max()) + 1 if total else 0):
            layer = layers[j]
            changed.append((layer, layer.__dict__.get("forward")))
            prev = int(counts[j - 1]) if j else 0
            layer.forward = _entry(layer.forward, j, prev, int(counts[j]), total,
                                   None if resid is None else resid[j], cache,
                                   None if last_kv is None else last_kv[j], source)
        yield
    finally:
        for layer, own in changed:
            if own is None:
                del layer.forward
            else:
                layer.forward = own
