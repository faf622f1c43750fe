"""MediationData: the table of roles T, X, Y and named mediator blocks, checked once on construction."""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ._validation import check_binary, check_finite, check_length
from .errors import DataError

FORMAT_VERSION = 1


def _json_default(value):
    """numpy scalars and arrays as plain JSON numbers and lists, so meta round-trips exactly."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _versions() -> dict:
    """Versions written into meta.json beside the data (provenance; not part of ``meta``)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("deconfound", "numpy", "pandas", "pyarrow", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _is_categorical(col: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype)


def _as_confounder_frame(x, x_names, n: int) -> pd.DataFrame:
    if x is None:
        return pd.DataFrame(index=range(n))
    if isinstance(x, pd.Series):
        x = x.to_frame()
    if isinstance(x, pd.DataFrame):
        frame = x.reset_index(drop=True).copy()
    else:
        arr = np.asarray(x)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise DataError(f"x: expected a 1-D or 2-D array, got {arr.ndim} dimensions")
        names = list(x_names) if x_names is not None else [f"x{j}" for j in range(arr.shape[1])]
        if len(names) != arr.shape[1]:
            raise DataError(f"x_names: expected {arr.shape[1]} names, got {len(names)}")
        frame = pd.DataFrame({nm: arr[:, j] for j, nm in enumerate(names)})
    check_length(frame, n, "x")
    frame.columns = [str(c) for c in frame.columns]
    for name in frame.columns:
        col = frame[name]
        if _is_categorical(col):
            if col.isna().any():
                raise DataError(f"confounder {name!r}: expected no missing labels, got {int(col.isna().sum())}")
            if isinstance(col.dtype, pd.CategoricalDtype):
                levels = [str(c) for c in col.cat.categories]
            else:
                levels = sorted(pd.unique(col.astype(str)))
            frame[name] = pd.Categorical(col.astype(str), categories=levels)
        else:
            frame[name] = check_finite(col.to_numpy(), f"confounder {name!r}")
    return frame


def _as_block(values, unit: str, n: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"mediator unit {unit!r}: expected numeric values, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"mediator unit {unit!r}: expected an (n, d) array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise DataError(f"mediator unit {unit!r}: expected at least 1 column, got an empty unit")
    check_length(arr, n, f"mediator unit {unit!r}")
    check_finite(arr, f"mediator unit {unit!r}")
    with np.errstate(over="ignore"):
        block = np.ascontiguousarray(arr, dtype=np.float32)
    overflow = ~np.isfinite(block)
    if overflow.any():
        rows = np.unique(np.nonzero(overflow)[0])[:5].tolist()
        raise DataError(f"mediator unit {unit!r}: expected values within float32 range (|x| < 3.4e38), got "
                        f"{int(overflow.sum())} that overflow (first rows: {rows})")
    return block


# safetensors dtypes that numpy reads and that are numeric
_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
              "U8": 1, "BOOL": 1}


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
        with safe_open(str(self.path), framework="numpy") as f:
            self.specs = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
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
    ``unit -> (n, d) float32`` whose values are read from the file on every access and never cached, so a
    loop over units holds one unit's block at a time. Shapes are checked against the header on
    construction; each block goes through the same checks as in memory (numeric, finite, within float32
    range) when it is read, and errors name the unit. ``rows`` (from :meth:`MediationData.subset`) selects
    rows of every block.
    """

    def __init__(self, path, units, n: int, *, max_mapped_bytes: int = 64 << 20):
        source = _SafetensorsSource(path, max_mapped_bytes)
        units = [str(u) for u in units]
        for u in units:
            if u not in source.specs:
                raise DataError(f"{source.path}: expected a tensor for mediator unit {u!r}, got none (tensors: "
                                f"{sorted(source.specs)[:10]})")
            shape, dtype = source.specs[u]
            if dtype not in _ST_DTYPES:
                raise DataError(f"mediator unit {u!r}: expected a numeric dtype, got safetensors dtype {dtype}")
            if len(shape) not in (1, 2) or shape[0] != n:
                raise DataError(f"mediator unit {u!r}: expected an (n, d) array with n={n}, got shape {shape}")
            if len(shape) == 2 and shape[1] == 0:
                raise DataError(f"mediator unit {u!r}: expected at least 1 column, got an empty unit")
        self._source, self._units, self._rows, self.n = source, units, None, int(n)
        self._index = set(units)

    @classmethod
    def _view(cls, parent: "LazyMediators", units, rows) -> "LazyMediators":
        view = cls.__new__(cls)
        view._source, view._units, view._rows = parent._source, list(units), rows
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
        return _as_block(arr, unit, self.n)

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
        """Bytes of all blocks as float32 (what an eager load would hold)."""
        return sum(4 * self.n * self.width(u) for u in self._units)

    def __repr__(self) -> str:
        return f"LazyMediators({str(self.path)!r}, units={len(self)}, n={self.n})"


def _save_streaming(mediators, path: Path) -> None:
    """Write a safetensors file unit by unit (one block in memory at a time): the header, then each block."""
    units = list(mediators)
    header, offset = {}, 0
    for u in units:
        d = mediators.width(u)
        size = 4 * mediators.n * d
        header[u] = {"dtype": "F32", "shape": [mediators.n, d], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for u in units:
            fh.write(np.ascontiguousarray(mediators[u], dtype="<f4").tobytes())


@dataclass(eq=False)
class MediationData:
    """Treatment ``t`` (0/1), outcome ``y``, confounders ``x`` and named mediator blocks.

    Build it with :meth:`from_frame` or :meth:`from_arrays`; both check every role once.

    Examples
    --------
    >>> import numpy as np
    >>> d = MediationData.from_arrays(t=[0, 1, 0, 1], y=[0.1, 0.9, 0.2, 0.8],
    ...                               mediators={"m": np.arange(4.0)}, x=np.zeros(4))
    >>> d.n, d.n_treated, d.units
    (4, 2, ['m'])
    """

    t: np.ndarray
    y: np.ndarray
    x: pd.DataFrame
    mediators: dict[str, np.ndarray]
    ids: np.ndarray
    meta: dict = field(default_factory=dict)
    treatment_name: str = "T"
    outcome_name: str = "Y"
    mediator_columns: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self.t = check_binary(self.t, f"treatment {self.treatment_name!r}")
        n = len(self.t)
        self.y = check_finite(self.y, f"outcome {self.outcome_name!r}").reshape(-1)
        check_length(self.y, n, f"outcome {self.outcome_name!r}")
        self.x = _as_confounder_frame(self.x, None, n)
        if not self.mediators:
            raise DataError("mediators: expected at least one unit, got none")
        if isinstance(self.mediators, LazyMediators):  # checked per unit when read
            if self.mediators.n != n:
                raise DataError(f"mediators: expected blocks of {n} rows, got {self.mediators.n} rows in "
                                f"{self.mediators.path}")
        else:
            self.mediators = {str(u): _as_block(v, str(u), n) for u, v in self.mediators.items()}
        self.ids = np.asarray(self.ids) if self.ids is not None else np.arange(n)
        check_length(self.ids, n, "ids")
        for arm, name in ((1, "treated"), (0, "control")):
            count = int((self.t == arm).sum())
            if count < 2:
                raise DataError(
                    f"treatment {self.treatment_name!r}: expected at least 2 {name} rows (T={arm}), got {count}")
        roles = [self.treatment_name, self.outcome_name, *self.x.columns]
        seen = set()
        for name in roles:
            if name in seen:
                raise DataError(f"column {name!r}: expected one role, got it in two roles")
            seen.add(name)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, treatment: str, outcome: str, confounders=(), mediators,
                   meta: dict | None = None) -> "MediationData":
        """Build from a DataFrame.

        ``mediators`` is a column name, a list of columns (one unit named after the first column, or
        ``"M"`` if several), or a dict ``unit -> list of columns``.
        """
        if isinstance(confounders, str):
            confounders = [confounders]
        confounders = list(confounders)
        if isinstance(mediators, str):
            units = {mediators: [mediators]}
        elif isinstance(mediators, dict):
            units = {str(u): [cols] if isinstance(cols, str) else list(cols) for u, cols in mediators.items()}
        else:
            cols = list(mediators)
            units = {cols[0] if len(cols) == 1 else "M": cols}
        roles: dict[str, str] = {}
        for role, cols in [("treatment", [treatment]), ("outcome", [outcome]), ("confounder", confounders),
                           *[(f"mediator unit {u!r}", c) for u, c in units.items()]]:
            for col in cols:
                if col not in df.columns:
                    raise DataError(f"{role}: expected column {col!r} in the frame, got columns {list(df.columns)[:10]}")
                if col in roles and roles[col] != role:
                    raise DataError(f"column {col!r}: expected one role, got both {roles[col]} and {role}")
                roles[col] = role
        for unit, cols in units.items():
            if not cols:
                raise DataError(f"mediator unit {unit!r}: expected at least 1 column, got an empty unit")
            for col in cols:
                if not pd.api.types.is_numeric_dtype(df[col]):
                    raise DataError(f"mediator column {col!r} of unit {unit!r}: expected numeric, got {df[col].dtype}")
        blocks = {u: df[c].to_numpy(dtype=float) for u, c in units.items()}
        return cls(t=df[treatment].to_numpy(), y=df[outcome].to_numpy(), x=df[confounders],
                   mediators=blocks, ids=df.index.to_numpy(), meta=dict(meta or {}),
                   treatment_name=treatment, outcome_name=outcome, mediator_columns=units)

    @classmethod
    def from_arrays(cls, *, t, y, mediators: dict, x=None, x_names=None, meta=None, ids=None,
                    treatment_name: str = "T", outcome_name: str = "Y") -> "MediationData":
        """Build from arrays. ``x`` may be a DataFrame (string columns allowed) or a numeric array."""
        n = len(np.asarray(t))
        frame = _as_confounder_frame(x, x_names, n)
        if not isinstance(mediators, dict):
            raise DataError(f"mediators: expected a dict unit -> array, got {type(mediators).__name__}")
        return cls(t=t, y=y, x=frame, mediators=dict(mediators), ids=ids, meta=dict(meta or {}),
                   treatment_name=treatment_name, outcome_name=outcome_name)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.t)

    @property
    def n_treated(self) -> int:
        return int(self.t.sum())

    @property
    def n_control(self) -> int:
        return self.n - self.n_treated

    @property
    def units(self) -> list[str]:
        return list(self.mediators)

    @property
    def confounder_names(self) -> list[str]:
        return [str(c) for c in self.x.columns]

    def mediator(self, unit: str) -> np.ndarray:
        """The (n, d) float32 block of ``unit``."""
        try:
            return self.mediators[unit]
        except KeyError:
            raise DataError(f"mediator unit: expected one of {self.units[:10]}, got {unit!r}") from None

    @property
    def lazy(self) -> bool:
        """True when the mediators are read from disk on access (``load(path, mmap=True)``)."""
        return isinstance(self.mediators, LazyMediators)

    def width(self, unit: str) -> int:
        """Columns of ``unit`` (without reading a lazy block)."""
        if unit not in self.mediators:
            raise DataError(f"mediator unit: expected one of {self.units[:10]}, got {unit!r}")
        return self.mediators.width(unit) if self.lazy else int(self.mediators[unit].shape[1])

    def columns_of(self, unit: str) -> list[str]:
        d = self.width(unit)
        return self.mediator_columns.get(unit) or [f"{unit}__{j}" for j in range(d)]

    def x_design(self, names=None) -> tuple[np.ndarray, list[str]]:
        """Numeric design of the confounders ``names`` (default all): categoricals one-hot, first level dropped."""
        names = self.confounder_names if names is None else list(names)
        cols, labels = [], []
        for name in names:
            if name not in self.x.columns:
                raise DataError(f"confounder: expected one of {self.confounder_names}, got {name!r}")
            col = self.x[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                codes = col.cat.codes.to_numpy()
                for k, level in enumerate(col.cat.categories[1:], start=1):
                    cols.append((codes == k).astype(float))
                    labels.append(f"{name}[{level}]")
            else:
                cols.append(col.to_numpy(dtype=float))
                labels.append(name)
        if not cols:
            return np.zeros((self.n, 0)), []
        return np.column_stack(cols), labels

    def categorical_confounders(self) -> list[str]:
        return [c for c in self.confounder_names if isinstance(self.x[c].dtype, pd.CategoricalDtype)]

    # ---- views ---------------------------------------------------------------------------------
    def subset(self, rows) -> "MediationData":
        """A new MediationData on ``rows`` (a boolean mask or integer indices); categories are kept."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            check_length(rows, self.n, "rows")
            rows = np.flatnonzero(rows)
        meds = self.mediators.subset(rows) if self.lazy else {u: m[rows] for u, m in self.mediators.items()}
        return self.replace(t=self.t[rows], y=self.y[rows], x=self.x.iloc[rows].reset_index(drop=True),
                            mediators=meds, ids=self.ids[rows])

    def replace(self, **changes) -> "MediationData":
        """A checked copy with some roles replaced (used by refuters: a new T, Y, X or mediators)."""
        fields = dict(t=self.t, y=self.y, x=self.x, mediators=self.mediators, ids=self.ids, meta=dict(self.meta),
                      treatment_name=self.treatment_name, outcome_name=self.outcome_name,
                      mediator_columns=self.mediator_columns)
        fields.update(changes)
        if "mediators" in changes and "mediator_columns" not in changes:
            fields["mediator_columns"] = {u: c for u, c in self.mediator_columns.items() if u in changes["mediators"]}
        return MediationData(**fields)

    def select_units(self, units) -> "MediationData":
        if self.lazy:
            units = list(units)
            for u in units:
                self.width(u)  # DataError naming an unknown unit
            return self.replace(mediators=self.mediators.select(units))
        return self.replace(mediators={u: self.mediator(u) for u in units})

    def to_frame(self, unit: str | None = None) -> pd.DataFrame:
        """Flat table: T, Y, confounders, and the columns of ``unit`` named ``<unit>__<j>``."""
        frame = pd.DataFrame({self.treatment_name: self.t.astype(int), self.outcome_name: self.y})
        for name in self.confounder_names:
            frame[name] = self.x[name].to_numpy()
        if unit is not None:
            block = self.mediator(unit).astype(float)
            names = [f"{unit}__{j}" for j in range(block.shape[1])]
            frame = pd.concat([frame, pd.DataFrame(block, columns=names)], axis=1)
        return frame

    def __repr__(self) -> str:
        dims = ", ".join(f"{u}:{self.width(u)}" for u in self.units[:4])
        more = "" if len(self.mediators) <= 4 else f", ... ({len(self.mediators)} units)"
        return (f"MediationData(n={self.n}, n_treated={self.n_treated}, confounders={self.confounder_names}, "
                f"units=[{dims}{more}])")

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write ``table.parquet``, ``mediators.safetensors`` and ``meta.json`` into folder ``path``, atomically."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            table = self.x.copy()
            table.insert(0, "__id", self.ids)
            table.insert(1, "__t", self.t.astype(np.int8))
            table.insert(2, "__y", self.y)
            table.to_parquet(tmp / "table.parquet", index=False)
            if self.lazy:  # one unit in memory at a time
                _save_streaming(self.mediators, tmp / "mediators.safetensors")
            else:
                save_file({u: np.ascontiguousarray(m) for u, m in self.mediators.items()},
                          str(tmp / "mediators.safetensors"))
            info = {"format_version": FORMAT_VERSION, "treatment_name": self.treatment_name,
                    "outcome_name": self.outcome_name, "units": self.units,
                    "categories": {c: list(self.x[c].cat.categories) for c in self.categorical_confounders()},
                    "mediator_columns": self.mediator_columns, "meta": self.meta, "versions": _versions()}
            (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=_json_default))
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path, *, mmap: bool = False, max_mapped_bytes: int = 64 << 20) -> "MediationData":
        """Read a folder written by :meth:`save`.

        Parameters
        ----------
        path : folder with ``table.parquet``, ``mediators.safetensors`` and ``meta.json``.
        mmap : bool
            False: every block is read into memory and checked now. True: ``mediators`` is a
            :class:`LazyMediators` that reads a unit from the memory-mapped file each time it is accessed
            (checked then; errors name the unit), so estimators that loop over units hold one block at a
            time. Everything else behaves the same.
        max_mapped_bytes : int
            With ``mmap=True``: bytes read through one memory map before it is closed and reopened (bounds
            the resident size of the map).
        """
        from safetensors.numpy import load_file

        path = Path(path)
        for name in ("table.parquet", "mediators.safetensors", "meta.json"):
            if not (path / name).exists():
                raise DataError(f"{path}: expected a MediationData folder with {name}, got no such file")
        info = json.loads((path / "meta.json").read_text())
        table = pd.read_parquet(path / "table.parquet")
        if mmap:
            mediators = LazyMediators(path / "mediators.safetensors", info["units"], len(table),
                                      max_mapped_bytes=max_mapped_bytes)
        else:
            tensors = load_file(str(path / "mediators.safetensors"))
            mediators = {u: tensors[u] for u in info["units"]}
        x = table.drop(columns=["__id", "__t", "__y"])
        for col, levels in info.get("categories", {}).items():
            x[col] = pd.Categorical(x[col].astype(str), categories=levels)
        return cls(t=table["__t"].to_numpy(), y=table["__y"].to_numpy(), x=x,
                   mediators=mediators, ids=table["__id"].to_numpy(),
                   meta=info.get("meta", {}), treatment_name=info["treatment_name"],
                   outcome_name=info["outcome_name"], mediator_columns=info.get("mediator_columns", {}))


def overlap_rows(data: "MediationData", column: str = "topic") -> tuple[np.ndarray, pd.DataFrame]:
    """Rows of the levels of ``column`` that have both treated and control rows, and the dropped levels with
    their counts (columns ``topic, n0, n1``).

    Examples
    --------
    >>> d = MediationData.from_arrays(t=[0, 1, 0, 1, 1], y=[0.0] * 5, mediators={"m": np.arange(5.0)},
    ...                               x=pd.DataFrame({"topic": ["a", "a", "b", "b", "c"]}))
    >>> keep, dropped = overlap_rows(d)
    >>> keep.tolist(), dropped.topic.tolist()
    ([True, True, True, True, False], ['c'])
    """
    labels = data.x[column].astype(str)
    counts = pd.crosstab(labels, data.t).reindex(columns=[0, 1], fill_value=0)
    bad = counts[(counts[0] == 0) | (counts[1] == 0)]
    keep = ~labels.isin(bad.index).to_numpy()
    dropped = bad.rename(columns={0: "n0", 1: "n1"}).rename_axis(None, axis=1).reset_index()
    return keep, dropped.rename(columns={column: "topic"})[["topic", "n0", "n1"]]

