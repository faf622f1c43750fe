"""The one positivity check shared by every estimator and by the entropy balancing weights.

Each level of a categorical confounder (a topic) must have rows in the arms that the estimand compares:
controls for every treated topic (ATT), treated rows for every control topic (ATC), both arms in every topic
(ATE). A level seen in neither arm is harmless. Layer 1: numpy and pandas only.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, PositivityError

__all__ = ["check_positivity", "level_counts", "outside_population", "overlap_rows", "population_note",
           "positivity_message", "unsupported"]

_NEED = {"ATT": "controls for every treated topic", "ATC": "treated rows for every control topic",
         "ATE": "both arms in every topic"}


def _estimand(estimand: str) -> str:
    key = str(estimand).upper()
    if key not in _NEED:
        raise ValueError(f"estimand: expected one of 'ate', 'att', 'atc', got {estimand!r}")
    return key


def as_count(v: float):
    """A count as an int when whole (frequency weights), else rounded to 4 decimals."""
    return int(v) if float(v).is_integer() else round(float(v), 4)


def unsupported(n1, n0, estimand: str):
    """Elementwise: the levels with counts (n1, n0) that lack the overlap the estimand needs."""
    n1, n0 = np.asarray(n1), np.asarray(n0)
    return {"ATT": (n1 > 0) & (n0 == 0), "ATC": (n0 > 0) & (n1 == 0),
            "ATE": (n1 > 0) != (n0 > 0)}[_estimand(estimand)]


def level_counts(topics: dict, t: np.ndarray, q: np.ndarray, estimand: str) -> pd.DataFrame:
    """Per level of each categorical column: n1, n0 (q-weighted counts) and whether it is unsupported.

    ``topics`` maps a column name to (integer codes (n,), levels), as in ``BalanceMatrix.topics``. Columns of
    the frame: variable, level, kind ("categorical"), n1, n0, unsupported, code."""
    recs = []
    for col, (codes, levels) in topics.items():
        n1 = np.bincount(codes, weights=q * t, minlength=len(levels))
        n0 = np.bincount(codes, weights=q * (1 - t), minlength=len(levels))
        bad = unsupported(n1, n0, estimand)
        recs += [(col, lv, "categorical", as_count(n1[j]), as_count(n0[j]), bool(bad[j]), j) for j, lv in enumerate(levels)]
    return pd.DataFrame(recs, columns=["variable", "level", "kind", "n1", "n0", "unsupported", "code"])


def _topics(data, cats) -> dict:
    """``{column: (integer codes, levels)}`` of the pandas Categorical confounders ``cats``."""
    return {c: (data.x[c].cat.codes.to_numpy().astype(np.int64), tuple(data.x[c].cat.categories)) for c in cats}


def _drop_levels(data, rows, levels: pd.DataFrame, key: str):
    """``data`` restricted to ``rows``, the dropped levels (variable, level, n1, n0) recorded in ``meta[key]``."""
    out = data.subset(rows)
    for c in set(levels["variable"]):
        out.x[c] = out.x[c].cat.remove_unused_categories()
    out.meta[key] = levels[["variable", "level", "n1", "n0"]].to_dict("records")
    return out


def positivity_message(bad: pd.DataFrame, estimand: str, what: str = "entropy balancing") -> str:
    """'<ESTIMAND> <what> needs ... (expected n1 > 0 and n0 > 0), got k topic(s) without overlap: ...'."""
    key = _estimand(estimand)
    parts = [f"topic '{r.level}'" + ("" if r.variable == "topic" else f" (column '{r.variable}')")
             + f": n1={r.n1}, n0={r.n0}" for r in bad.itertuples()]
    return (f"{key} {what} needs {_NEED[key]} (expected n1 > 0 and n0 > 0), got {len(parts)} topic(s) without "
            "overlap: " + "; ".join(parts) + ". Pass drop_unsupported=True to drop these topics (this changes the "
            "estimand to the population with overlap)")


def check_positivity(data, columns, *, estimand: str = "ate", drop_unsupported: bool = False,
                     what: str = "estimation"):
    """Check that every level of the categorical confounders in ``columns`` has the rows ``estimand`` needs.

    Parameters
    ----------
    data : MediationData
    columns : list of str
        Confounder columns of the adjustment set; numeric ones are skipped (they have no levels to check).
    estimand : "ate" (both arms in every level, the default), "att" (controls in every treated level) or
        "atc" (treated rows in every control level).
    drop_unsupported : if True, drop the rows of the unsupported levels instead of raising.
    what : the estimator's name, for the message.

    Returns
    -------
    MediationData
        ``data`` itself when every level is supported; otherwise (``drop_unsupported=True``) the rows of the
        supported levels, with ``meta["positivity_dropped"]`` listing the dropped levels (variable, level, n1,
        n0) and ``meta["positivity_rows_dropped"]`` the number of rows removed.

    Raises
    ------
    PositivityError
        A level without overlap (every such level is named with its n1 and n0), or no treated or no control
        rows left after dropping.

    Examples
    --------
    >>> import pandas as pd
    >>> from deconfound.data import MediationData
    >>> d = MediationData.from_arrays(t=[0, 1, 0, 1, 1], y=[0.0] * 5, mediators={"m": [0.0, 1, 2, 3, 4]},
    ...                               x=pd.DataFrame({"topic": ["a", "a", "b", "b", "c"]}))
    >>> kept = check_positivity(d, ["topic"], drop_unsupported=True)
    >>> kept.n, kept.meta["positivity_dropped"]
    (4, [{'variable': 'topic', 'level': 'c', 'n1': 1, 'n0': 0}])
    """
    key = _estimand(estimand)
    unknown = [c for c in columns if c not in data.x.columns]
    if unknown:
        raise DataError(f"columns: expected confounders of the data {list(data.x.columns)}, got unknown {unknown}")
    cats = [c for c in dict.fromkeys(columns) if isinstance(data.x[c].dtype, pd.CategoricalDtype)]
    if not cats:
        return data
    topics = _topics(data, cats)
    t = np.asarray(data.t, dtype=float)
    table = level_counts(topics, t, np.ones(len(t)), key)
    bad = table[table["unsupported"]]
    if not len(bad):
        return data
    if not drop_unsupported:
        raise PositivityError(positivity_message(bad, key, what))
    kept = np.ones(len(t), bool)
    for r in bad.itertuples():
        kept &= topics[r.variable][0] != r.code
    n1, n0 = int(t[kept].sum()), int((1 - t[kept]).sum())
    if n1 < 2 or n0 < 2:
        raise PositivityError(f"{what}: expected at least 2 treated and 2 control rows after dropping the topics "
                              f"without overlap, got n1={n1}, n0={n0}")
    out = _drop_levels(data, kept, bad, "positivity_dropped")
    out.meta["positivity_rows_dropped"] = int((~kept).sum())
    return out


def outside_population(data, columns, estimand: str):
    """``data`` without the rows of categorical levels that carry no weight for ``estimand``.

    For the ATT a level with controls and no treated row lies outside the treated population: p(X) = 0 there,
    so its rows get weight 0 in every ATT mean (in the limit the fit reaches), and dropping them gives the same
    effects without a separated propensity model. Symmetrically for the ATC; the ATE keeps every row. The
    dropped levels go in ``meta["outside_population"]`` (variable, level, n1, n0).
    """
    key = _estimand(estimand)
    cats = [c for c in dict.fromkeys(columns) if c in data.x.columns and isinstance(data.x[c].dtype, pd.CategoricalDtype)]
    if key == "ATE" or not cats:
        return data
    topics = _topics(data, cats)
    table = level_counts(topics, np.asarray(data.t, dtype=float), np.ones(data.n), key)
    n1, n0 = table["n1"].to_numpy(), table["n0"].to_numpy()
    outside = table[(n1 == 0) & (n0 > 0) if key == "ATT" else (n0 == 0) & (n1 > 0)]
    if not len(outside):
        return data
    kept = np.ones(data.n, bool)
    for r in outside.itertuples():
        kept &= topics[r.variable][0] != r.code
    return _drop_levels(data, np.flatnonzero(kept), outside, "outside_population")


def overlap_rows(data, column: str = "topic") -> tuple[np.ndarray, pd.DataFrame]:
    """Rows of the levels of ``column`` that have both treated and control rows (the ATE support of one column,
    counted as :func:`check_positivity` counts it), and the dropped levels with their counts (columns
    ``topic, n0, n1``). Any column works: its values are compared as text.

    Examples
    --------
    >>> from deconfound.data import MediationData
    >>> d = MediationData.from_arrays(t=[0, 1, 0, 1, 1], y=[0.0] * 5, mediators={"m": np.arange(5.0)},
    ...                               x=pd.DataFrame({"topic": ["a", "a", "b", "b", "c"]}))
    >>> keep, dropped = overlap_rows(d)
    >>> keep.tolist(), dropped.topic.tolist()
    ([True, True, True, True, False], ['c'])
    """
    codes, levels = pd.factorize(data.x[column].astype(str), sort=True)
    table = level_counts({column: (codes, tuple(levels))}, np.asarray(data.t, dtype=float), np.ones(data.n), "ATE")
    bad = table[table["unsupported"]]
    keep = ~np.isin(codes, bad["code"].to_numpy())
    return keep, bad.rename(columns={"level": "topic"})[["topic", "n0", "n1"]].reset_index(drop=True)


def population_note(data, estimand: str) -> str | None:
    """The overlap population a fit on ``data`` refers to after ``drop_unsupported`` dropped levels, else None."""
    dropped = data.meta.get("positivity_dropped") or []
    if not dropped:
        return None
    names = ", ".join(f"{r['variable']}={r['level']!r}" for r in dropped)
    return f"{_estimand(estimand)} over the confounder levels with overlap; dropped {names}"
