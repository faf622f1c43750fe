"""Data in for the command line: ``--data`` is a saved MediationData folder, or a CSV / parquet table whose
columns get their roles from flags.

Role flags (only with a table):

``--treatment COL``, ``--outcome COL`` (required); ``--mediators SPEC`` (required); ``--confounders COLS``;
``--categorical COLS`` (confounders whose values are categories even if they read as numbers, e.g. topic codes
1..8); ``--cluster COL`` (cluster labels); ``--weights COL`` (positive sampling weights).

``COLS`` is a comma-separated list of column names or shell-style patterns (``*``, ``?``, ``[...]``) matched
against the table's columns, in the table's order. ``SPEC`` is the same list where each column becomes its
own mediator unit (``--mediators emo`` or ``--mediators 'act_*'``), plus items ``NAME=COLS+COLS`` that make one
vector unit ``NAME`` of every column they match (``--mediators 'layer3=l3_*'``, ``--mediators 'both=emo+anx'``).
"""
from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from .errors import DeconfoundError

TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")
ROLE_FLAGS = ("treatment", "outcome", "mediators", "confounders", "categorical", "cluster", "weights")


class CliError(DeconfoundError, ValueError):
    """A bad command-line value; the message is printed as one line."""


def _shown(columns) -> list:
    columns = list(columns)
    return columns[:12] + (["..."] if len(columns) > 12 else [])


def expand(items, columns, flag: str) -> list[str]:
    """Column names matching ``items`` (names or shell-style patterns), in table order, each once."""
    columns = [str(c) for c in columns]
    out = []
    for item in items:
        hits = [c for c in columns if fnmatch.fnmatchcase(c, item)] if any(ch in item for ch in "*?[") else (
            [item] if item in columns else [])
        if not hits:
            raise CliError(f"{flag}: expected a column (or pattern) of the table, got {item!r}; columns: "
                           f"{_shown(columns)}")
        out.extend(h for h in hits if h not in out)
    return out


def mediator_units(spec: str, columns) -> dict[str, list[str]]:
    """``--mediators`` SPEC -> unit name -> columns (see the module doc)."""
    units: dict[str, list[str]] = {}
    for item in [v.strip() for v in spec.split(",") if v.strip()]:
        name, sep, cols = item.partition("=")
        if sep:
            if not name.strip() or not cols.strip():
                raise CliError(f"--mediators: expected NAME=COLUMNS (e.g. layer3=l3_*), got {item!r}")
            found = {name.strip(): expand([c.strip() for c in cols.split("+") if c.strip()], columns, "--mediators")}
        else:
            found = {c: [c] for c in expand([item], columns, "--mediators")}
        for unit, cols in found.items():
            if unit in units:
                raise CliError(f"--mediators: expected each unit once, got {unit!r} twice")
            units[unit] = cols
    if not units:
        raise CliError(f"--mediators: expected column names, patterns or NAME=COLUMNS, got {spec!r}")
    return units


def read_table(path: Path):
    """A CSV (also .csv.gz, .tsv) or parquet file as a DataFrame; CliError naming the file otherwise."""
    import pandas as pd

    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    except Exception as exc:  # noqa: BLE001 - pandas and pyarrow raise many types for a bad file
        kind = "parquet" if name.endswith((".parquet", ".pq")) else "CSV"
        raise CliError(f"--data: expected a readable {kind} file, got {type(exc).__name__} reading {str(path)!r}: "
                       f"{exc}") from None


def load_data(args):
    """The MediationData that ``--data`` and the role flags describe, checked against the graphs of ``args``."""
    data = _read_data(args)
    graphs = getattr(args, "graphs", None) or [getattr(args, "graph", None) or "topic_mediation"]
    if not data.confounder_names:  # a graph whose node X is "all confounders" would silently adjust for nothing
        from .graph import load_graph

        for g in graphs:
            if "X" in load_graph(g).confounder_nodes:
                raise CliError(f"graph {g}: expected confounder columns for its node X, got none in the data; pass "
                               "--confounders, or use --graph unadjusted_mediation to adjust for nothing")
    return data


def _read_data(args):
    from .data import MediationData

    path = Path(args.data)
    given = [f for f in ROLE_FLAGS if getattr(args, f, None) is not None]
    if path.is_dir():
        if given:
            raise CliError(f"--{given[0]}: expected role flags only with a CSV or parquet --data (a saved folder "
                           f"has its roles), got --data {str(path)!r}, a folder")
        return MediationData.load(path)
    if not path.exists():
        raise CliError(f"--data: expected a saved MediationData folder or a CSV/parquet file, got a missing path "
                       f"{str(path)!r}")
    if not path.name.lower().endswith(TABLE_SUFFIXES):
        raise CliError(f"--data: expected a saved MediationData folder or a file ending in "
                       f"{', '.join(TABLE_SUFFIXES)}, got {str(path)!r}")
    for flag in ("treatment", "outcome", "mediators"):
        if getattr(args, flag) is None:
            raise CliError(f"--{flag}: expected a column of {path.name} (a table needs --treatment, --outcome and "
                           f"--mediators), got none")
    df = read_table(path)
    confounders = expand(args.confounders or [], df.columns, "--confounders")
    categorical = expand(args.categorical or [], df.columns, "--categorical")
    stray = [c for c in categorical if c not in confounders]
    if stray:
        raise CliError(f"--categorical: expected columns among --confounders {confounders}, got {stray}")
    for col in categorical:  # missing values stay missing (and raise, naming the column)
        df[col] = df[col].astype("string").astype("category")
    for flag in ("treatment", "outcome", "cluster", "weights"):
        value = getattr(args, flag)
        if value is not None:
            expand([value], df.columns, f"--{flag}")
    return MediationData.from_frame(df, treatment=args.treatment, outcome=args.outcome, confounders=confounders,
                                    mediators=mediator_units(args.mediators, df.columns), cluster=args.cluster,
                                    weights=args.weights, meta={"source": str(path)})


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {value!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"expected each name once, got {dup} more than once")
    return names


def add_data_args(sp) -> None:
    """``--data`` and the role flags (see the module doc)."""
    sp.add_argument("--data", required=True, metavar="PATH",
                    help="a saved MediationData folder (MediationData.save), or a CSV/parquet table with the role "
                    "flags below")
    g = sp.add_argument_group("roles of a CSV/parquet --data (COLS: comma-separated names or patterns like x_*)")
    g.add_argument("--treatment", metavar="COL", help="binary 0/1 treatment column")
    g.add_argument("--outcome", metavar="COL", help="outcome column")
    g.add_argument("--mediators", metavar="SPEC", help="mediator columns, each its own unit (e.g. emo,anx or 'h*'); "
                   "NAME=COLS+COLS makes one vector unit (e.g. 'layer3=l3_*')")
    g.add_argument("--confounders", type=_names, metavar="COLS", help="confounder columns (text columns are "
                   "categorical)")
    g.add_argument("--categorical", type=_names, metavar="COLS", help="confounders to treat as categories even if "
                   "their values read as numbers")
    g.add_argument("--cluster", metavar="COL", help="cluster labels (e.g. the document a prompt comes from)")
    g.add_argument("--weights", metavar="COL", help="positive sampling weights")
