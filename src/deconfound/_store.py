"""Mediator blocks and the saved folder of a MediationData: block checks, lazy safetensors reads, and readers
that turn a damaged file into a DataError naming the file and what is wrong with it."""
from __future__ import annotations

import json
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._validation import check_length
from .errors import DataError

DTYPES = ("float64", "float32")
# A float32 cast may move a value by at most this many standard deviations of its column (above: DataError).
# 1e-4 sd of rounding adds a relative variance of ~1e-9: harmless; a column far from zero relative to its
# spread (1e8 + x with sd 1 rounds to steps of 8) is not.
FLOAT32_TOLERANCE = 1e-4
# safetensors dtypes that numpy reads and that are numeric
_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
              "U8": 1, "BOOL": 1}
_ST_NAMES = {"float64": "F64", "float32": "F32"}


def check_dtype(dtype) -> str:
    """'float64' or 'float32' (numpy dtypes and their names accepted)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
    return name


def as_block(values, unit: str, n: int, dtype: str = "float64") -> np.ndarray:
    """``values`` as a checked (n, d) block of ``dtype``: numeric, finite, and, for float32, representable
    within FLOAT32_TOLERANCE standard deviations of each column (else DataError naming the unit)."""
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"mediator unit {unit!r}: expected numeric values, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"mediator unit {unit!r}: expected real numbers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"mediator unit {unit!r}: expected an (n, d) array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise DataError(f"mediator unit {unit!r}: expected at least 1 column, got an empty unit")
    check_length(arr, n, f"mediator unit {unit!r}")
    if np.issubdtype(arr.dtype, np.inexact):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise DataError(f"mediator unit {unit!r}: expected finite values, got {int(bad.sum())} NaN/inf "
                            f"(first rows: {rows[:5].tolist()})")
    with np.errstate(over="ignore"):
        block = np.ascontiguousarray(arr, dtype=dtype)
    if dtype == "float32" and arr.dtype != block.dtype and arr.dtype.itemsize >= 4 and arr.dtype != np.float16:
        _check_float32(arr, block, unit)
    return block


def _check_float32(arr, block, unit) -> None:
    overflow = ~np.isfinite(block)
    if overflow.any():
        rows = np.unique(np.nonzero(overflow)[0])[:5].tolist()
        raise DataError(f"mediator unit {unit!r}: expected values within float32 range (|x| < 3.4e38), got "
                        f"{int(overflow.sum())} that overflow (first rows: {rows}); use dtype='float64'")
    exact = arr.astype(np.float64)
    moved = np.abs(block.astype(np.float64) - exact).max(axis=0)
    sd = exact.std(axis=0)
    ratio = np.divide(moved, sd, out=np.zeros_like(moved), where=sd > 0)
    j = int(np.argmax(ratio))
    if ratio[j] > FLOAT32_TOLERANCE:
        raise DataError(f"mediator unit {unit!r}, column {j}: expected values that float32 holds within "
                        f"{FLOAT32_TOLERANCE:g} standard deviations, got changes of up to {moved[j]:.3g} "
                        f"({ratio[j]:.3g} sd; values near {exact[:, j].mean():.6g}); use dtype='float64' or "
                        "centre the column")


def read_meta(file: Path, required: dict) -> dict:
    """meta.json as a dict with the ``required`` keys (name -> type); DataError naming the file otherwise."""
    try:
        info = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: expected the JSON that MediationData.save writes, got invalid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DataError(f"{file}: expected a JSON object, got a {type(info).__name__}")
    missing = [k for k in required if k not in info]
    if missing:
        raise DataError(f"{file}: expected the keys {missing}, got none (keys: {sorted(info)})")
    for key, kind in required.items():
        if not isinstance(info[key], kind):
            raise DataError(f"{file}: expected {key!r} to be a {getattr(kind, '__name__', kind)}, got "
                            f"{type(info[key]).__name__} {info[key]!r:.60}")
    return info


def read_table(file: Path, columns):
    """table.parquet, with ``columns`` present; DataError naming the file otherwise."""
    import pandas as pd

    try:
        table = pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise DataError(f"{file}: expected a readable parquet table, got {type(exc).__name__}: {exc}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{file}: expected the columns {missing}, got columns {list(table.columns)[:10]}")
    return table


def read_tensors(file: Path, units) -> dict:
    """Every unit's tensor of a safetensors file, read now; DataError naming the file otherwise."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise DataError(f"{file}: expected a readable safetensors file, got {type(exc).__name__}: {exc}") from None
    _check_keys(file, units, tensors)
    return {u: tensors[u] for u in units}


def _check_keys(file, units, found) -> None:
    missing = [u for u in units if u not in found]
    if missing:
        raise DataError(f"{file}: expected a tensor for mediator unit {missing[0]!r}, got none (tensors: "
                        f"{sorted(found)[:10]})")


class _SafetensorsSource:
    """One ``mediators.safetensors`` file: tensor shapes from its header, tensors read on demand.

    Reads go through one ``safetensors.safe_open`` handle (a memory map). The pages a read touches stay
    resident while the map is open, so the handle is closed and reopened once ``max_mapped_bytes`` have been
    read through it: the resident size of the map stays near that budget, whatever the file's size.
    """

    def __init__(self, path, max_mapped_bytes: int):
        from safetensors import safe_open

        self.path = Path(path)
        self.max_mapped_bytes = int(max_mapped_bytes)
        try:
            with safe_open(str(self.path), framework="numpy") as f:
                self.specs = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise DataError(f"{self.path}: expected a readable safetensors file, got {type(exc).__name__}: "
                            f"{exc}") from None
        self._handle = None
        self._mapped = 0
        self._lock = threading.Lock()

    def read(self, key: str) -> np.ndarray:
        from safetensors import safe_open

        with self._lock:
            if self._handle is None or self._mapped > self.max_mapped_bytes:
                self.close()
                self._handle = safe_open(str(self.path), framework="numpy")
            arr = self._handle.get_tensor(key)
            self._mapped += arr.nbytes
            return arr

    def close(self) -> None:
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle, self._mapped = None, 0

    def __getstate__(self):  # picklable (joblib, Dask): the handle and the lock stay behind
        return {"path": self.path, "max_mapped_bytes": self.max_mapped_bytes, "specs": self.specs}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._handle, self._mapped, self._lock = None, 0, threading.Lock()


class LazyMediators(Mapping):
    """Mediator blocks read from ``mediators.safetensors`` when accessed, one unit at a time.

    What :meth:`MediationData.load` puts in ``data.mediators`` with ``mmap=True``: a read-only mapping
    ``unit -> (n, d)`` block of ``dtype`` whose values are read from the file on every access and never
    cached, so a loop over units holds one unit's block at a time. Shapes are checked against the header on
    construction; each block goes through the same checks as in memory (numeric, finite, representable in
    ``dtype``) when it is read, and errors name the unit. ``rows`` (from :meth:`MediationData.subset`)
    selects rows of every block.
    """

    def __init__(self, path, units, n: int, *, dtype: str = "float32", max_mapped_bytes: int = 64 << 20):
        source = _SafetensorsSource(path, max_mapped_bytes)
        units = [str(u) for u in units]
        _check_keys(source.path, units, source.specs)
        for u in units:
            shape, st_dtype = source.specs[u]
            if st_dtype not in _ST_DTYPES:
                raise DataError(f"mediator unit {u!r}: expected a numeric dtype, got safetensors dtype {st_dtype}")
            if len(shape) not in (1, 2) or shape[0] != n:
                raise DataError(f"mediator unit {u!r}: expected an (n, d) array with n={n}, got shape {shape}")
            if len(shape) == 2 and shape[1] == 0:
                raise DataError(f"mediator unit {u!r}: expected at least 1 column, got an empty unit")
        self._source, self._units, self._rows, self.n = source, units, None, int(n)
        self.dtype = check_dtype(dtype)
        self._index = set(units)

    @classmethod
    def _view(cls, parent: "LazyMediators", units, rows) -> "LazyMediators":
        view = cls.__new__(cls)
        view._source, view._units, view._rows, view.dtype = parent._source, list(units), rows, parent.dtype
        view.n = parent.n if rows is None else len(rows)
        view._index = set(view._units)
        return view

    @property
    def path(self) -> Path:
        return self._source.path

    def __getitem__(self, unit) -> np.ndarray:
        if unit not in self._index:
            raise KeyError(unit)
        arr = self._source.read(unit)
        if self._rows is not None:
            arr = arr[self._rows]
        return as_block(arr, unit, self.n, self.dtype)

    def __iter__(self):
        return iter(self._units)

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, unit) -> bool:
        return unit in self._index

    def width(self, unit: str) -> int:
        """Columns of ``unit``, from the file's header (nothing is read)."""
        shape = self._source.specs[unit][0]
        return int(shape[1]) if len(shape) == 2 else 1

    def subset(self, rows) -> "LazyMediators":
        """The same units restricted to ``rows`` (integer indices into this view's rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._view(self, self._units, rows if self._rows is None else self._rows[rows])

    def select(self, units) -> "LazyMediators":
        """A view on some of the units (in the given order)."""
        return self._view(self, units, self._rows)

    def nbytes(self) -> int:
        """Bytes of all blocks in ``dtype`` (what an eager load would hold)."""
        return sum(np.dtype(self.dtype).itemsize * self.n * self.width(u) for u in self._units)

    def __repr__(self) -> str:
        return f"LazyMediators({str(self.path)!r}, units={len(self)}, n={self.n}, dtype={self.dtype})"


def save_streaming(mediators: LazyMediators, path: Path) -> None:
    """Write a safetensors file unit by unit (one block in memory at a time): the header, then each block."""
    units = list(mediators)
    item = np.dtype(mediators.dtype).itemsize
    header, offset = {}, 0
    for u in units:
        d = mediators.width(u)
        size = item * mediators.n * d
        header[u] = {"dtype": _ST_NAMES[mediators.dtype], "shape": [mediators.n, d],
                     "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    little = np.dtype(mediators.dtype).newbyteorder("<")
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for u in units:
            fh.write(np.ascontiguousarray(mediators[u], dtype=little).tobytes())
