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

from ._store import (DTYPES, FLOAT32_TOLERANCE, LazyMediators, as_block, check_dtype, read_meta, read_table,
                     read_tensors, save_streaming)
from ._validation import (check_binary, check_cluster, check_finite, check_length, check_unique, check_vector,
                          check_weights, confounder_column)
from .errors import DataError
from .positivity import overlap_rows  # noqa: F401 - re-exported (the one home is positivity.py)

FORMAT_VERSION = 2  # 2: mediator dtype, cluster and weights recorded; version-1 folders (float32) still load
__all__ = ["MediationData", "LazyMediators", "overlap_rows", "DTYPES", "FLOAT32_TOLERANCE"]


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
    check_unique(frame.columns, "confounders")
    for name in frame.columns:
        frame[name] = confounder_column(frame[name], name, n)
    return frame


@dataclass(eq=False)
class MediationData:
    """Treatment ``t`` (0/1), outcome ``y``, confounders ``x``, named mediator blocks, and optional per-row
    ``cluster`` labels and sampling ``weights``.

    Build it with :meth:`from_frame` or :meth:`from_arrays`; both check every role once. Mediator blocks
    are float64 unless ``dtype="float32"`` is asked for (the language-model extraction does, to halve the
    memory of activations); a float32 cast that would move a value by more than ``FLOAT32_TOLERANCE``
    standard deviations of its column raises instead of losing precision silently.

    Confounders: numbers are numeric; a pandas Categorical keeps its levels; text is categorical when none
    of its values reads as a number and it has at most max(10, n/2) levels. Text that reads as numbers,
    datetimes and other types raise a DataError naming the column.

    Examples
    --------
    >>> import numpy as np
    >>> d = MediationData.from_arrays(t=[0, 1, 0, 1], y=[0.1, 0.9, 0.2, 0.8],
    ...                               mediators={"m": np.arange(4.0)}, x=np.zeros(4))
    >>> d.n, d.n_treated, d.units, d.dtype, d.cluster
    (4, 2, ['m'], 'float64', None)
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
    cluster: np.ndarray | None = None
    weights: np.ndarray | None = None
    dtype: str = "float64"
    cluster_name: str = "cluster"
    weights_name: str = "weights"

    def __post_init__(self):
        self.t = check_binary(check_vector(self.t, np.size(self.t), f"treatment {self.treatment_name!r}"),
                              f"treatment {self.treatment_name!r}")
        n = len(self.t)
        self.y = check_finite(check_vector(self.y, n, f"outcome {self.outcome_name!r}"), f"outcome {self.outcome_name!r}")
        self.x = _as_confounder_frame(self.x, None, n)
        self.dtype = check_dtype(self.dtype)
        if not self.mediators:
            raise DataError("mediators: expected at least one unit, got none")
        if isinstance(self.mediators, LazyMediators):  # checked per unit when read
            if self.mediators.n != n:
                raise DataError(f"mediators: expected blocks of {n} rows, got {self.mediators.n} rows in "
                                f"{self.mediators.path}")
            self.dtype = self.mediators.dtype
        else:
            self.mediators = {str(u): as_block(v, str(u), n, self.dtype) for u, v in self.mediators.items()}
        self.ids = np.asarray(self.ids) if self.ids is not None else np.arange(n)
        check_length(self.ids, n, "ids")
        if self.cluster is not None:
            self.cluster = check_cluster(self.cluster, n, f"cluster {self.cluster_name!r}")
        if self.weights is not None:
            self.weights = check_weights(self.weights, n, f"weights {self.weights_name!r}")
        for arm, name in ((1, "treated"), (0, "control")):
            count = int((self.t == arm).sum())
            if count < 2:
                raise DataError(
                    f"treatment {self.treatment_name!r}: expected at least 2 {name} rows (T={arm}), got {count}")
        roles = [self.treatment_name, self.outcome_name, *self.x.columns]
        if self.weights is not None:
            roles.append(self.weights_name)
        seen = set()
        for name in roles:
            if name in seen:
                raise DataError(f"column {name!r}: expected one role, got it in two roles")
            seen.add(name)
        if self.cluster is not None and self.cluster_name in (self.treatment_name, self.outcome_name,
                                                              self.weights_name if self.weights is not None else None):
            raise DataError(f"column {self.cluster_name!r}: expected one role, got it as cluster and another role")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, treatment: str, outcome: str, confounders=(), mediators,
                   cluster: str | None = None, weights: str | None = None, dtype="float64",
                   meta: dict | None = None) -> "MediationData":
        """Build from a DataFrame.

        ``mediators`` is a column name, a list of columns (one unit named after the first column, or
        ``"M"`` if several), or a dict ``unit -> list of columns``. ``cluster`` and ``weights`` name
        optional columns of cluster labels (any hashable values; a confounder column may also be the
        cluster) and positive sampling weights. ``dtype``: "float64" (default) or "float32" for the mediator
        blocks.
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"df: expected a pandas DataFrame, got {type(df).__name__} (for arrays use "
                            "MediationData.from_arrays)")
        if isinstance(confounders, str):
            confounders = [confounders]
        confounders = list(confounders)
        if isinstance(mediators, str):
            units = {mediators: [mediators]}
        elif isinstance(mediators, dict):
            units = {str(u): [cols] if isinstance(cols, str) else list(cols) for u, cols in mediators.items()}
        else:
            cols = list(mediators)
            if not cols:
                raise DataError("mediators: expected at least one column, got none")
            units = {cols[0] if len(cols) == 1 else "M": cols}
        roles: dict[str, str] = {}
        used = [("treatment", [treatment]), ("outcome", [outcome]), ("confounder", confounders),
                *[(f"mediator unit {u!r}", c) for u, c in units.items()],
                ("cluster", [] if cluster is None else [cluster]), ("weights", [] if weights is None else [weights])]
        for role, cols in used:
            check_unique(cols, role)
            for col in cols:
                if col not in df.columns:
                    raise DataError(f"{role}: expected column {col!r} in the frame, got columns {list(df.columns)[:10]}")
                if col in roles and roles[col] != role and not (role == "cluster" and roles[col] == "confounder"):
                    raise DataError(f"column {col!r}: expected one role, got both {roles[col]} and {role}")
                roles[col] = role
        dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]} & {str(c) for c in roles})
        if dup:
            raise DataError(f"frame: expected each column name once, got {dup} more than once")
        for unit, cols in units.items():
            if not cols:
                raise DataError(f"mediator unit {unit!r}: expected at least 1 column, got an empty unit")
            for col in cols:
                if not (pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])):
                    raise DataError(f"mediator column {col!r} of unit {unit!r}: expected numeric, got {df[col].dtype}")
        blocks = {u: df[c].to_numpy() for u, c in units.items()}
        return cls(t=df[treatment].to_numpy(), y=df[outcome].to_numpy(), x=df[confounders],
                   mediators=blocks, ids=df.index.to_numpy(), meta=dict(meta or {}),
                   treatment_name=treatment, outcome_name=outcome, mediator_columns=units,
                   cluster=None if cluster is None else df[cluster].to_numpy(),
                   weights=None if weights is None else df[weights].to_numpy(), dtype=dtype,
                   cluster_name=cluster or "cluster", weights_name=weights or "weights")

    @classmethod
    def from_arrays(cls, *, t, y, mediators: dict, x=None, x_names=None, meta=None, ids=None,
                    treatment_name: str = "T", outcome_name: str = "Y", cluster=None, weights=None,
                    dtype="float64") -> "MediationData":
        """Build from arrays. ``x`` may be a DataFrame (string columns allowed) or a numeric array;
        ``cluster`` (labels) and ``weights`` (positive) are optional arrays of one value per row; ``dtype``
        of the mediator blocks is "float64" (default) or "float32"."""
        n = len(check_vector(t, np.size(t), f"treatment {treatment_name!r}"))
        frame = _as_confounder_frame(x, x_names, n)
        if not isinstance(mediators, dict):
            raise DataError(f"mediators: expected a dict unit -> array, got {type(mediators).__name__}")
        return cls(t=t, y=y, x=frame, mediators=dict(mediators), ids=ids, meta=dict(meta or {}),
                   treatment_name=treatment_name, outcome_name=outcome_name, cluster=cluster, weights=weights,
                   dtype=dtype)

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
        """The (n, d) block of ``unit`` (of ``dtype``)."""
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

    def cluster_codes(self) -> np.ndarray | None:
        """Integer codes 0..G-1 of the cluster labels in order of first appearance (None without clusters)."""
        return None if self.cluster is None else pd.factorize(pd.Series(self.cluster))[0]

    @property
    def n_clusters(self) -> int | None:
        return None if self.cluster is None else int(self.cluster_codes().max() + 1)

    # ---- views ---------------------------------------------------------------------------------
    def subset(self, rows) -> "MediationData":
        """A new MediationData on ``rows`` (a boolean mask or integer indices); categories are kept."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            check_length(rows, self.n, "rows")
            rows = np.flatnonzero(rows)
        elif rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise DataError(f"rows: expected a boolean mask or integer indices, got dtype {rows.dtype}")
        elif rows.size and not (-self.n <= rows.min() and rows.max() < self.n):
            raise DataError(f"rows: expected indices in [0, {self.n}), got values from {rows.min()} to {rows.max()}")
        meds = self.mediators.subset(rows) if self.lazy else {u: m[rows] for u, m in self.mediators.items()}
        return self.replace(t=self.t[rows], y=self.y[rows], x=self.x.iloc[rows].reset_index(drop=True),
                            mediators=meds, ids=self.ids[rows],
                            cluster=None if self.cluster is None else self.cluster[rows],
                            weights=None if self.weights is None else self.weights[rows])

    def replace(self, **changes) -> "MediationData":
        """A checked copy with some roles replaced (used by refuters: a new T, Y, X or mediators)."""
        fields = dict(t=self.t, y=self.y, x=self.x, mediators=self.mediators, ids=self.ids, meta=dict(self.meta),
                      treatment_name=self.treatment_name, outcome_name=self.outcome_name,
                      mediator_columns=self.mediator_columns, cluster=self.cluster, weights=self.weights,
                      dtype=self.dtype, cluster_name=self.cluster_name, weights_name=self.weights_name)
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TypeError(f"replace: expected fields from {sorted(fields)}, got {unknown}")
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
        """Flat table: T, Y, confounders, cluster and weights (when set), and the columns of ``unit`` named
        ``<unit>__<j>``."""
        frame = pd.DataFrame({self.treatment_name: self.t.astype(int), self.outcome_name: self.y})
        for name in self.confounder_names:
            frame[name] = self.x[name].to_numpy()
        for name, values in ((self.cluster_name, self.cluster), (self.weights_name, self.weights)):
            if values is not None and name not in frame:  # a confounder that is also the cluster: once
                frame[name] = values
        if unit is not None:
            block = self.mediator(unit).astype(float)
            names = [f"{unit}__{j}" for j in range(block.shape[1])]
            frame = pd.concat([frame, pd.DataFrame(block, columns=names)], axis=1)
        return frame

    def __repr__(self) -> str:
        dims = ", ".join(f"{u}:{self.width(u)}" for u in self.units[:4])
        more = "" if len(self.mediators) <= 4 else f", ... ({len(self.mediators)} units)"
        extra = "".join(f", {role}={name!r}" for role, name, v in (("cluster", self.cluster_name, self.cluster),
                                                                  ("weights", self.weights_name, self.weights))
                        if v is not None)
        return (f"MediationData(n={self.n}, n_treated={self.n_treated}, confounders={self.confounder_names}, "
                f"units=[{dims}{more}]{extra}, dtype={self.dtype})")

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
            for col, values in (("__cluster", self.cluster), ("__weights", self.weights)):
                if values is not None:
                    table[col] = values
            try:
                table.to_parquet(tmp / "table.parquet", index=False)
            except (TypeError, ValueError) as exc:  # pyarrow's ArrowTypeError/ArrowInvalid derive from these
                raise DataError(f"save: expected ids and cluster labels that parquet stores (numbers or text), got "
                                f"{type(exc).__name__}: {exc}") from None
            if self.lazy:  # one unit in memory at a time
                save_streaming(self.mediators, tmp / "mediators.safetensors")
            else:
                save_file({u: np.ascontiguousarray(m) for u, m in self.mediators.items()},
                          str(tmp / "mediators.safetensors"))
            info = {"format_version": FORMAT_VERSION, "treatment_name": self.treatment_name,
                    "outcome_name": self.outcome_name, "units": self.units, "dtype": self.dtype,
                    "categories": {c: list(self.x[c].cat.categories) for c in self.categorical_confounders()},
                    "mediator_columns": self.mediator_columns, "meta": self.meta,
                    "cluster_name": self.cluster_name if self.cluster is not None else None,
                    "weights_name": self.weights_name if self.weights is not None else None,
                    "versions": _versions()}
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
        path = Path(path)
        for name in ("table.parquet", "mediators.safetensors", "meta.json"):
            if not (path / name).exists():
                raise DataError(f"{path}: expected a MediationData folder with {name}, got no such file")
        info = read_meta(path / "meta.json", {"format_version": int, "treatment_name": str, "outcome_name": str,
                                              "units": list, "categories": dict, "mediator_columns": dict,
                                              "meta": dict})
        if not 1 <= info["format_version"] <= FORMAT_VERSION:
            raise DataError(f"{path / 'meta.json'}: expected format_version 1 to {FORMAT_VERSION}, got "
                            f"{info['format_version']} (written by a newer deconfound?)")
        try:
            dtype = check_dtype(info.get("dtype", "float32"))  # version 1 stored float32
        except ValueError as exc:
            raise DataError(f"{path / 'meta.json'}: {exc}") from None
        roles = {"__cluster": info.get("cluster_name"), "__weights": info.get("weights_name")}
        table = read_table(path / "table.parquet", ["__id", "__t", "__y", *[c for c, nm in roles.items() if nm]]
                           + list(info["categories"]))
        if mmap:
            mediators = LazyMediators(path / "mediators.safetensors", info["units"], len(table), dtype=dtype,
                                      max_mapped_bytes=max_mapped_bytes)
        else:
            mediators = read_tensors(path / "mediators.safetensors", info["units"])
        x = table.drop(columns=["__id", "__t", "__y", *[c for c in roles if c in table]])
        for col, levels in info["categories"].items():
            x[col] = pd.Categorical(x[col].astype(str), categories=levels)
        extra = {c[2:]: table[c].to_numpy() for c, nm in roles.items() if nm}
        extra.update({f"{c[2:]}_name": nm for c, nm in roles.items() if nm})
        try:
            return cls(t=table["__t"].to_numpy(), y=table["__y"].to_numpy(), x=x, mediators=mediators,
                       ids=table["__id"].to_numpy(), meta=info["meta"], treatment_name=info["treatment_name"],
                       outcome_name=info["outcome_name"], mediator_columns=info["mediator_columns"], dtype=dtype,
                       **extra)
        except (DataError, ValueError) as exc:
            raise DataError(f"{path}: {exc}") from None
