"""MediationData: the table of roles T, X, Y and named mediator blocks, checked once on construction."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
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

    def columns_of(self, unit: str) -> list[str]:
        d = self.mediator(unit).shape[1]
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
        return self.replace(t=self.t[rows], y=self.y[rows], x=self.x.iloc[rows].reset_index(drop=True),
                            mediators={u: m[rows] for u, m in self.mediators.items()}, ids=self.ids[rows])

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
        dims = ", ".join(f"{u}:{m.shape[1]}" for u, m in list(self.mediators.items())[:4])
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
            save_file({u: np.ascontiguousarray(m) for u, m in self.mediators.items()}, str(tmp / "mediators.safetensors"))
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
    def load(cls, path) -> "MediationData":
        """Read a folder written by :meth:`save`."""
        from safetensors.numpy import load_file

        path = Path(path)
        for name in ("table.parquet", "mediators.safetensors", "meta.json"):
            if not (path / name).exists():
                raise DataError(f"{path}: expected a MediationData folder with {name}, got no such file")
        info = json.loads((path / "meta.json").read_text())
        table = pd.read_parquet(path / "table.parquet")
        tensors = load_file(str(path / "mediators.safetensors"))
        x = table.drop(columns=["__id", "__t", "__y"])
        for col, levels in info.get("categories", {}).items():
            x[col] = pd.Categorical(x[col].astype(str), categories=levels)
        return cls(t=table["__t"].to_numpy(), y=table["__y"].to_numpy(), x=x,
                   mediators={u: tensors[u] for u in info["units"]}, ids=table["__id"].to_numpy(),
                   meta=info.get("meta", {}), treatment_name=info["treatment_name"],
                   outcome_name=info["outcome_name"], mediator_columns=info.get("mediator_columns", {}))
