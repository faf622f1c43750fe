"""Null models for the refuters: a randomly initialised copy of a model, and a fresh outcome strategy."""
from __future__ import annotations

import copy
import dataclasses

from ._torch import require_torch
from .models import LoadedModel


def random_model(lm: LoadedModel, seed: int = 0) -> LoadedModel:
    """``lm`` with its weights replaced by a seeded random initialisation: ``type(model)(model.config)``
    under ``torch.manual_seed(seed)`` (the global torch RNG is left as it was), same device and dtype."""
    torch = require_torch()
    model = lm.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        null = type(model)(model.config)
    null = null.to(device=lm.device, dtype=next(model.parameters()).dtype).eval()
    return dataclasses.replace(lm, model=null, model_id=f"{lm.model_id}-random{int(seed)}",
                               provenance={"source": "random init", "of": lm.model_id, "seed": int(seed)})


def fresh_outcome(outcome):
    """A copy of an outcome strategy without state fitted to a model (``Reweight``'s stored continuations)."""
    out = copy.copy(outcome)
    for attr in ("tokens", "y", "base_logp"):
        if hasattr(out, attr):
            setattr(out, attr, None)
    return out
