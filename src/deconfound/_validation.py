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
        shown = sorted({str(v) for v in arr.ravel()[:10000]})[:6]
        raise DataError(f"{name}: expected a binary 0/1 treatment, got dtype {arr.dtype} with values {shown}") from None
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


def check_vector(values, n: int, name: str) -> np.ndarray:
    """``values`` as a 1-D array of ``n`` entries (an (n, 1) column is accepted); DataError otherwise."""
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{name}: expected one value per row (a 1-D array), got shape {arr.shape}")
    check_length(arr, n, name)
    return arr


def check_unique(names, what: str) -> None:
    """DataError naming the entries of ``names`` that occur more than once."""
    names = [str(v) for v in names]
    dup = sorted({v for v in names if names.count(v) > 1})
    if dup:
        raise DataError(f"{what}: expected each column once, got {dup} more than once")


def check_weights(values, n: int, name: str = "weights") -> np.ndarray:
    """Sampling weights: a float array of ``n`` positive finite values."""
    arr = check_finite(check_vector(values, n, name), name)
    bad = np.flatnonzero(arr <= 0)
    if len(bad):
        raise DataError(f"{name}: expected positive weights, got {len(bad)} <= 0 (first rows: {bad[:5].tolist()}, "
                        f"values {arr[bad[:5]].tolist()})")
    return arr


def check_cluster(values, n: int, name: str = "cluster") -> np.ndarray:
    """Cluster labels (any hashable values, one per row, none missing, at least two clusters), as given."""
    import pandas as pd

    if not isinstance(values, np.ndarray):  # a list of tuples stays a list of labels
        values = (values if isinstance(values, pd.Series) else pd.Series(list(values))).to_numpy()
    arr = check_vector(values, n, name)
    missing = np.flatnonzero(pd.isna(arr))
    if len(missing):
        raise DataError(f"{name}: expected a label on every row, got {len(missing)} missing "
                        f"(first rows: {missing[:5].tolist()})")
    try:
        uniques = pd.unique(pd.Series(arr))
    except TypeError as exc:
        raise DataError(f"{name}: expected hashable labels, got {exc}") from None
    if len(uniques) < 2:
        raise DataError(f"{name}: expected at least 2 clusters, got 1 (every row has label {uniques[0]!r})")
    return arr


def _as_number(value):
    """``value`` as a finite float when it is a number or reads as one ('3', ' 2.5e3'), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return None
        return out if np.isfinite(out) else None
    return None


def confounder_column(col, name: str, n: int):
    """One confounder column, checked: a finite float array, or a pandas Categorical with string levels.

    The rule: numbers (int, float, bool) are numeric; a pandas Categorical keeps its levels; a column of
    text is categorical when none of its values reads as a number and it has at most ``max(10, n/2)``
    levels. Text that reads as numbers (all of it, or with a few stray values such as '?') raises, naming the
    column and the values, since one-hot coding it would be silently wrong: convert it with
    ``pd.to_numeric``, or pass ``pd.Categorical`` to keep numeric-looking labels as categories. Datetimes,
    complex numbers and other objects raise.
    """
    import pandas as pd

    what = f"confounder {name!r}"
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        missing = np.flatnonzero(col.isna().to_numpy())
        if len(missing):
            raise DataError(f"{what}: expected no missing labels, got {len(missing)} (first rows: "
                            f"{missing[:5].tolist()})")
        return pd.Categorical(col.astype(str), categories=[str(c) for c in col.cat.categories])
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return check_finite(col.to_numpy(dtype=float, na_value=np.nan), what)
    if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        raise DataError(f"{what}: expected numbers or category labels, got dtype {dtype}; convert it first (for "
                        "a date: days since a reference date, or a period as pd.Categorical)")
    missing = np.flatnonzero(col.isna().to_numpy())
    if len(missing):
        raise DataError(f"{what}: expected no missing labels, got {len(missing)} (first rows: {missing[:5].tolist()})")
    levels = pd.unique(col.to_numpy())
    odd = [v for v in levels if not isinstance(v, str) and _as_number(v) is None]
    if odd:
        raise DataError(f"{what}: expected numbers or category labels (text), got values of type "
                        f"{sorted({type(v).__name__ for v in odd})} such as {odd[0]!r}; convert it first")
    numeric = [v for v in levels if _as_number(v) is not None]
    if numeric:
        text = [v for v in levels if _as_number(v) is None]
        if text:
            rows = np.flatnonzero(col.isin(text).to_numpy())
            raise DataError(f"{what}: expected numbers, got {len(text)} distinct values that are not numbers "
                            f"({text[:5]}, first rows {rows[:5].tolist()}) among {len(numeric)} that are; fix or "
                            "drop those rows, or pass the column as pd.Categorical to keep it as categories")
        raise DataError(f"{what}: expected numbers or category labels, got text that reads as numbers "
                        f"({[str(v) for v in numeric[:5]]}); convert it with pd.to_numeric for a numeric "
                        "confounder, or pass it as pd.Categorical to keep the values as categories")
    if len(levels) > max(10, n / 2):
        raise DataError(f"{what}: expected a categorical confounder with at most max(10, n/2) = {max(10, n // 2)} "
                        f"levels, got {len(levels)} levels in {n} rows (an identifier or free text?); pass it as "
                        "pd.Categorical if these really are categories")
    return pd.Categorical(col.astype(str), categories=sorted(str(v) for v in levels))


def refuse_roles(data, what: str, alternatives: str = "parametric, dml, weighting or interventional") -> None:
    """Raise NotImplementedError when ``data`` has a cluster or weights role that ``what`` cannot use: its SEs
    would treat clustered or weighted rows as iid, a wrong number with no warning."""
    roles = [r for r in ("cluster", "weights") if getattr(data, r, None) is not None]
    if roles:
        raise NotImplementedError(f"{what}: expected data without a {' or '.join(roles)} role, got one; its SEs "
                                  f"would ignore it (use {alternatives})")
