"""Lazy imports of torch and transformers, and the torch thread setting.

Nothing in ``deconfound`` outside ``lm/`` imports torch. Modules in ``lm/`` call
:func:`require_torch` / :func:`require_transformers` inside functions, so a
missing install gives a :class:`~deconfound.errors.MissingDependencyError` with
the pip command instead of a bare ``ModuleNotFoundError``.
"""
from __future__ import annotations

import os

from ..errors import MissingDependencyError

THREADS_ENV = "DECONFOUND_TORCH_THREADS"
_LM_HINT = 'pip install "deconfound[lm]"'


def require_torch():
    """Return the ``torch`` module, or raise MissingDependencyError with the install command."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            f"deconfound.lm needs torch: expected it installed, got ImportError. Install it with {_LM_HINT}"
        ) from None
    return torch


def require_transformers():
    """Return the ``transformers`` module, or raise MissingDependencyError with the install command."""
    require_torch()
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError(
            f"deconfound.lm needs transformers: expected it installed, got ImportError. Install it with {_LM_HINT}"
        ) from None
    return transformers


def default_threads() -> int:
    """The thread count from ``DECONFOUND_TORCH_THREADS``, or 1."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}: expected a positive integer, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{THREADS_ENV}: expected a positive integer, got {n}")
    return n


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    Parameters
    ----------
    n : int, optional
        Number of threads. ``None`` reads ``DECONFOUND_TORCH_THREADS`` and
        defaults to 1: on small shared machines more threads are often slower.

    Returns
    -------
    int
        The thread count now in effect.
    """
    torch = require_torch()
    if n is None:
        n = default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected a positive integer, got {n!r}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
