"""Small input checks shared by all layers. Each raises with 'expected X, got Y'."""
from __future__ import annotations

import numpy as np

from .errors import DataError


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def check_finite(values, name: str) -> np.ndarray:
    """Return ``values`` as a float array; raise DataError naming ``name`` if any entry is NaN or inf."""
    raw = np.asarray(values)
    try:
        arr = raw.astype(float)
    except (TypeError, ValueError):
        row, value = next(((i, v) for i, v in enumerate(raw.ravel()) if not _is_number(v)), (None, None))
        raise DataError(f"{name}: expected numeric values, got dtype {raw.dtype} "
                        f"(first bad value {value!r} at flat position {row})") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(
            f"{name}: expected finite values, got {int(bad.sum())} NaN/inf "
            f"(first rows: {rows[:5].tolist()})"
        )
    return arr


def check_binary(values, name: str) -> np.ndarray:
    """Return a 0/1 int array; raise DataError naming ``name`` for any other value."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr.astype(np.int8)
    try:
        num = arr.astype(float)
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected a binary 0/1 treatment, got dtype {arr.dtype}") from None
    levels = np.unique(num[np.isfinite(num)])
    if not np.isfinite(num).all() or not set(levels.tolist()) <= {0.0, 1.0}:
        shown = np.unique(arr.astype(str))[:6].tolist()
        raise DataError(f"{name}: expected a binary 0/1 treatment, got values {shown}")
    return num.astype(np.int8)


def check_length(values, n: int, name: str) -> None:
    if len(values) != n:
        raise DataError(f"{name}: expected {n} rows, got {len(values)}")


def check_probability(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    value = float(value)
    if not (low <= value <= high):
        raise ValueError(f"{name}: expected a number in [{low}, {high}], got {value}")
    return value


def check_random_state(random_state) -> np.random.Generator:
    """A numpy Generator from an int, None, or a Generator."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(random_state)
    raise TypeError(f"random_state: expected an int, None or numpy Generator, got {type(random_state).__name__}")
