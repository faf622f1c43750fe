"""Capture and patch activations with context managers that always remove their hooks.

Both managers count *calls* of the module you pass (normally the causal LM).
By default (``calls="first"``) only the first call inside the ``with`` block is
captured or patched: under ``generate`` that is the prefill, so decode steps,
which see one new token at a time, are left alone. ``calls="all"`` acts on
every call and a capture then concatenates the calls along the batch axis.

Positions are indices into the sequence axis of the call being run:

``"last"``
    The last real token of each row. With left padding that is index -1; with
    right padding it is read from the ``attention_mask`` passed to the model.
``int``
    The same index for every row (negative counts from the end).
array of shape (B,)
    One index per row.
``"all"``
    Every position (capture only): values of shape (B, T, d).

Pitfalls handled here: a forward hook that returns a value replaces the
module's output, so capture hooks return None; transformers 5 GPT-2 blocks
return a bare tensor while other modules return tuples, so both are accepted.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager

import numpy as np

from ..errors import ModelSiteError
from ._torch import require_torch
from .sites import BoundSite, Site, bind, expand_sites


def _model_module(model):
    return model.model if hasattr(model, "tokenizer") and hasattr(model, "model") else model


def _main_tensor(value):
    """The activation tensor in a module output or argument tuple, and a function that puts a new one back."""
    torch = require_torch()
    if isinstance(value, torch.Tensor):
        return value, lambda new: new
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        kind = type(value)
        return value[0], lambda new: kind((new, *value[1:]))
    raise ModelSiteError(
        f"hooked module output: expected a tensor or a tuple starting with one, got {type(value).__name__}"
    )


class _CallTracker:
    """Counts top-level calls and remembers each call's attention mask."""

    def __init__(self, module, calls: str):
        if calls not in ("first", "all"):
            raise ValueError(f"calls: expected 'first' or 'all', got {calls!r}")
        self.calls = calls
        self.index = -1
        self.mask = None
        self._positions = {}
        self._signature = None
        self._module = module
        self.handle = module.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module, args, kwargs):
        self.index += 1
        self._positions = {}
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            if self._signature is None:
                self._signature = inspect.signature(module.forward)
            try:
                mask = self._signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
            except TypeError:
                mask = None
        self.mask = mask
        return None

    @property
    def active(self) -> bool:
        return self.calls == "all" or self.index <= 0

    def positions(self, spec, batch: int, length: int, device):
        """Per-row indices (LongTensor of shape (B,)) for this call, or None for "all"."""
        torch = require_torch()
        if isinstance(spec, str):
            if spec == "all":
                return None
            if spec != "last":
                raise ValueError(f"positions: expected 'last', 'all', an int or an array of ints, got {spec!r}")
            key = ("last", batch, length)
            if key not in self._positions:
                mask = self.mask
                if mask is None or mask.dim() != 2 or mask.shape[0] != batch:
                    pos = torch.full((batch,), length - 1, dtype=torch.long)
                else:
                    m = mask[:, -length:].to("cpu") != 0
                    # index of the last non-zero entry; rows with no real token fall back to -1
                    flipped = torch.flip(m, dims=[1]).to(torch.int8).argmax(dim=1)
                    pos = torch.where(m.any(dim=1), length - 1 - flipped, torch.full_like(flipped, length - 1))
                self._positions[key] = pos.to(device)
            return self._positions[key]
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
            idx = int(spec)
            if not -length <= idx < length:
                raise ValueError(f"positions: expected an index in [{-length}, {length}), got {idx}")
            return torch.full((batch,), idx % length, dtype=torch.long, device=device)
        pos = torch.as_tensor(np.asarray(spec) if not isinstance(spec, torch.Tensor) else spec)
        if pos.dim() != 1 or pos.shape[0] != batch or pos.dtype in (torch.float32, torch.float64, torch.bool):
            raise ValueError(
                f"positions: expected {batch} integer indices (one per row), got shape {tuple(pos.shape)} "
                f"dtype {pos.dtype}"
            )
        if ((pos < -length) | (pos >= length)).any():
            raise ValueError(f"positions: expected indices in [{-length}, {length}), got {pos.tolist()}")
        return (pos.to(torch.long) % length).to(device)


def _register(bound: BoundSite, fn):
    """Register ``fn(tensor) -> new tensor | None`` at a bound site; return the handle."""
    if bound.hook == "output":

        def hook(module, args, output):
            tensor, put = _main_tensor(output)
            new = fn(tensor)
            return None if new is None else put(new)

        return bound.module.register_forward_hook(hook)

    def pre_hook(module, args, kwargs):
        if args:
            tensor, put = _main_tensor(args)
            new = fn(tensor)
            return None if new is None else (put(new), kwargs)
        key = next((k for k, v in kwargs.items() if hasattr(v, "shape")), None)
        if key is None:
            raise ModelSiteError(f"{bound.name}: expected a tensor input to {type(module).__name__}, got none")
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return bound.module.register_forward_pre_hook(pre_hook, with_kwargs=True)


class Capture:
    """Activations captured by :func:`capture`: a mapping from site name to a tensor.

    ``cap["mlp_out.L3"]`` is a detached tensor of shape (B, d) (or (B, T, d) for
    ``positions="all"``); with ``calls="all"`` the calls are concatenated
    along the batch axis.
    """

    def __init__(self, names):
        self.names = list(names)
        self._store = {name: [] for name in self.names}

    def _add(self, name, value):
        self._store[name].append(value)

    def __contains__(self, name):
        return name in self._store

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def keys(self):
        return list(self.names)

    def __getitem__(self, name):
        torch = require_torch()
        if name not in self._store:
            raise KeyError(f"site: expected one of {self.names}, got {name!r}")
        parts = self._store[name]
        if not parts:
            raise ModelSiteError(f"{name}: expected at least one captured forward call, got none")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def numpy(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """All captured values as numpy arrays (float32 by default)."""
        torch = require_torch()
        out = {}
        for name in self.names:
            value = self[name]
            out[name] = value.detach().to("cpu", torch.float32).numpy().astype(dtype, copy=False)
        return out


@contextmanager
def capture(model, sites, positions="last", *, calls="first"):
    """Capture activations at one or more sites.

    Parameters
    ----------
    model : torch.nn.Module or LoadedModel
        The module whose calls are counted (normally the causal LM).
    sites : str, Site or sequence
        Site names, e.g. ``"mlp_out"`` (all layers) or ``["mlp_out.L3", "resid_post.L5"]``.
    positions : "last", "all", int or array of shape (B,)
        Which sequence positions to keep (see the module docstring).
    calls : {"first", "all"}
        Capture only the first call in the block (the prefill under
        ``generate``) or every call.

    Yields
    ------
    Capture
        Filled as the model runs; read it after the forward pass.

    Examples
    --------
    >>> with capture(lm, ["mlp_out.L0", "mlp_out.L1"]) as cap:  # doctest: +SKIP
    ...     lm.model(**batch)
    >>> cap["mlp_out.L1"].shape  # doctest: +SKIP
    torch.Size([4, 64])
    """
    torch = require_torch()
    module = _model_module(model)
    bounds = [bind(module, s) for s in expand_sites(module, sites)]
    cap = Capture([b.name for b in bounds])
    handles = []
    try:
        tracker = _CallTracker(module, calls)
        handles.append(tracker.handle)
        for bound in bounds:

            def fn(tensor, name=bound.name):
                if not tracker.active:
                    return None
                pos = tracker.positions(positions, tensor.shape[0], tensor.shape[1], tensor.device)
                with torch.no_grad():
                    if pos is None:
                        value = tensor.detach().clone()
                    else:
                        value = tensor.detach()[torch.arange(tensor.shape[0], device=tensor.device), pos]
                cap._add(name, value)
                return None

            handles.append(_register(bound, fn))
        yield cap
    finally:
        for handle in handles:
            handle.remove()


def _as_values(values, batch: int, dim: int, name: str, like):
    torch = require_torch()
    vals = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if vals.dim() == 1:
        vals = vals.unsqueeze(0).expand(batch, -1)
    if vals.dim() != 2 or vals.shape[0] != batch or vals.shape[1] != dim:
        raise ValueError(
            f"patch values for {name}: expected shape ({batch}, {dim}) or ({dim},), got {tuple(vals.shape)}"
        )
    return vals.to(device=like.device, dtype=like.dtype)


def _as_rows(rows, batch: int, name: str, device):
    torch = require_torch()
    if rows is None:
        return torch.arange(batch, device=device)
    mask = rows if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows))
    if mask.dtype != torch.bool or mask.dim() != 1 or mask.shape[0] != batch:
        raise ValueError(
            f"patch rows for {name}: expected a boolean mask of length {batch}, got shape "
            f"{tuple(mask.shape)} dtype {mask.dtype}"
        )
    return torch.nonzero(mask.to(device), as_tuple=False).flatten()


@contextmanager
def patch(model, site, values, positions="last", *, rows=None, calls="first"):
    """Overwrite the activation at one site with given values.

    Parameters
    ----------
    model : torch.nn.Module or LoadedModel
    site : str or Site
        One site, e.g. ``"mlp_out.L12"``.
    values : array or tensor of shape (B, d) or (d,)
        Row ``i`` of ``values`` replaces row ``i``'s activation at its position.
        A 1-D vector is used for every row.
    positions : "last", int or array of shape (B,)
        The sequence position patched in each row.
    rows : bool array of shape (B,), optional
        Only rows where this is True are patched; the others run untouched.
        Default: all rows.
    calls : {"first", "all"}
        Patch only the first call in the block (the prefill under
        ``generate``) or every call.

    Notes
    -----
    Several sites are patched at once by nesting ``patch`` blocks (for example
    with :class:`contextlib.ExitStack`), each with its own row mask.
    """
    if isinstance(positions, str) and positions != "last":
        raise ValueError(f"patch positions: expected 'last', an int or an array of ints, got {positions!r}")
    module = _model_module(model)
    if isinstance(site, str):
        one = Site.parse(site)
    elif isinstance(site, Site):
        one = site
    else:
        raise ModelSiteError(f"patch site: expected one site like 'mlp_out.L3', got {type(site).__name__}")
    bound = bind(module, one)
    handles = []
    try:
        tracker = _CallTracker(module, calls)
        handles.append(tracker.handle)

        def fn(tensor):
            if not tracker.active:
                return None
            batch = tensor.shape[0]
            vals = _as_values(values, batch, tensor.shape[-1], bound.name, tensor)
            idx = _as_rows(rows, batch, bound.name, tensor.device)
            pos = tracker.positions(positions, batch, tensor.shape[1], tensor.device)
            return tensor.index_put((idx, pos[idx]), vals[idx])

        handles.append(_register(bound, fn))
        yield bound
    finally:
        for handle in handles:
            handle.remove()
