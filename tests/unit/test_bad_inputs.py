"""The table of bad-input classes: one row per class, through the public entry points (MediationData.from_frame /
from_arrays / load, get_estimator(...).fit, load_graph, the command line). Each row names the exception type
(or exit code 2 and one line on stderr, for the CLI) and the fragments its message must contain: the column,
unit, topic, node, file or flag at fault. Add a row when a new class of bad input turns up.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from deconfound import DataError, GraphError, MediationData, PositivityError, get_estimator, load_graph
from deconfound.cli import main

N = 40


def frame() -> pd.DataFrame:
    r = np.random.default_rng(3)
    return pd.DataFrame({"T": np.tile([0, 1], N // 2), "Y": r.normal(size=N), "m": r.normal(size=N),
                         "m2": r.normal(size=N), "age": r.integers(20, 70, N).astype(float),
                         "topic": np.array(["t0", "t1", "t2", "t3"])[np.arange(N) // 2 % 4],
                         "school": np.arange(N) // 5, "w": r.uniform(0.5, 2, N)})


def build(df=None, **kw):
    args = dict(treatment="T", outcome="Y", confounders=["age", "topic"], mediators="m")
    args.update(kw)
    return MediationData.from_frame(frame() if df is None else df, **args)


def edit(**columns):
    """The frame with some cells replaced: column -> {row: value} or a whole new column."""
    df = frame()
    for col, change in columns.items():
        if isinstance(change, dict):
            df[col] = df[col].astype(object) if any(isinstance(v, str) for v in change.values()) else df[col]
            for row, value in change.items():
                df.loc[row, col] = value
        else:
            df[col] = change
    return df


def saved(tmp_path, damage):
    folder = build().save(tmp_path / "data")
    damage(folder)
    return folder


def graph_file(tmp_path, text, name="g.gml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CYCLE = ('graph [ directed 1 node [id 0 label "T"] node [id 1 label "M"] node [id 2 label "Y"] '
         'edge [source 0 target 1] edge [source 1 target 2] edge [source 2 target 0] ]')
NO_M = 'graph [ directed 1 node [id 0 label "T"] node [id 2 label "Y"] edge [source 0 target 2] ]'
EXTRA = "digraph { T -> M; M -> Y; T -> Y; lang -> T; lang -> M; lang -> Y }"


def no_controls_in_t0():
    df = frame()
    df.loc[df.topic == "t0", "T"] = 1
    return build(df)


def cli(tmp_path, *argv):
    """Run the CLI on a CSV of the frame (``{csv}``) or a saved folder (``{dir}``); return (rc, stderr)."""
    csv = tmp_path / "study.csv"
    frame().to_csv(csv, index=False)
    folder = build().save(tmp_path / "folder")
    args = [str(a).replace("{csv}", str(csv)).replace("{dir}", str(folder)).replace("{tmp}", str(tmp_path))
            for a in argv]
    return main(args)


ROLES = ["--treatment", "T", "--outcome", "Y", "--mediators", "m", "--confounders", "age,topic"]

# (class of bad input, call(tmp_path), expected exception or "exit 2", fragments of the message)
TABLE = [
    # -- missing and non-finite values, per role
    ("NaN in T", lambda p: build(edit(T={3: np.nan})), DataError, ["treatment 'T'", "binary", "nan"]),
    ("NaN in Y", lambda p: build(edit(Y={3: np.nan})), DataError, ["outcome 'Y'", "NaN/inf", "[3]"]),
    ("inf in Y", lambda p: build(edit(Y={5: np.inf})), DataError, ["outcome 'Y'", "NaN/inf", "[5]"]),
    ("NaN in numeric X", lambda p: build(edit(age={4: np.nan})), DataError, ["confounder 'age'", "NaN/inf", "[4]"]),
    ("missing X label", lambda p: build(edit(topic={6: None})), DataError, ["confounder 'topic'", "missing", "[6]"]),
    ("NaN in M", lambda p: build(edit(m={7: np.nan})), DataError, ["mediator unit 'm'", "NaN/inf", "[7]"]),
    # -- the treatment
    ("non-binary T", lambda p: build(edit(T=np.arange(N) % 3)), DataError, ["treatment 'T'", "['0', '1', '2']"]),
    ("text T", lambda p: build(edit(T=np.where(np.arange(N) % 2, "yes", "no"))), DataError,
     ["treatment 'T'", "['no', 'yes']"]),
    ("constant T", lambda p: build(edit(T=1)), DataError, ["treatment 'T'", "at least 2 control rows", "got 0"]),
    ("one treated row", lambda p: build(edit(T=(np.arange(N) == 0).astype(int))), DataError,
     ["treatment 'T'", "at least 2 treated rows", "got 1"]),
    ("2-column T", lambda p: MediationData.from_arrays(t=np.ones((N, 2)), y=np.zeros(N), mediators={"m": np.ones(N)}),
     DataError, ["treatment 'T'", "shape (40, 2)"]),
    # -- roles and columns
    ("missing column", lambda p: build(confounders=["age", "region"]), DataError, ["confounder", "'region'"]),
    ("column in two roles", lambda p: build(mediators="age"), DataError, ["column 'age'", "one role"]),
    ("duplicated column name", lambda p: build(pd.concat([frame(), frame()[["T"]]], axis=1)), DataError,
     ["['T'] more than once"]),
    ("column listed twice", lambda p: build(confounders=["age", "age"]), DataError, ["confounder", "['age']"]),
    ("length mismatch", lambda p: MediationData.from_arrays(t=[0, 1] * 5, y=np.zeros(9), mediators={"m": np.ones(10)}),
     DataError, ["outcome 'Y'", "expected 10 rows, got 9"]),
    ("no mediators", lambda p: build(mediators={}), DataError, ["mediators", "at least one unit"]),
    ("not a DataFrame", lambda p: MediationData.from_frame(frame().to_numpy(), treatment="T", outcome="Y",
                                                           mediators="m"), TypeError, ["pandas DataFrame", "ndarray"]),
    # -- types
    ("non-numeric mediator", lambda p: build(edit(m=np.where(np.arange(N) % 2, "a", "b"))), DataError,
     ["mediator column 'm'", "numeric"]),
    ("numbers as text", lambda p: build(edit(age=frame().age.astype(int).astype(str))), DataError,
     ["confounder 'age'", "reads as numbers", "pd.to_numeric"]),
    ("one stray value", lambda p: build(edit(age={9: "?"})), DataError, ["confounder 'age'", "['?']", "[9]"]),
    ("datetime confounder", lambda p: build(edit(age=pd.date_range("2020-01-01", periods=N))), DataError,
     ["confounder 'age'", "datetime64"]),
    ("identifier as confounder", lambda p: build(edit(topic=[f"id{i}" for i in range(N)])), DataError,
     ["confounder 'topic'", "40 levels in 40 rows"]),
    ("float32 precision loss", lambda p: build(edit(m=frame().m + 1e9), dtype="float32"), DataError,
     ["mediator unit 'm'", "float32", "dtype='float64'"]),
    ("unknown dtype", lambda p: build(dtype="float16"), ValueError, ["dtype", "'float16'"]),
    # -- cluster and weights
    ("negative weight", lambda p: build(edit(w={2: -1.0}), weights="w"), DataError, ["weights 'w'", "positive", "[2]"]),
    ("NaN weight", lambda p: build(edit(w={2: np.nan}), weights="w"), DataError, ["weights 'w'", "NaN/inf", "[2]"]),
    ("missing cluster label", lambda p: build(edit(school={8: None}), cluster="school"), DataError,
     ["cluster 'school'", "missing", "[8]"]),
    ("single cluster", lambda p: build(edit(school=1), cluster="school"), DataError,
     ["cluster 'school'", "at least 2 clusters"]),
    ("fit-time weights of the wrong length", lambda p: get_estimator("eb_total").fit(build(), weights=np.ones(N - 1)),
     DataError, ["weights", f"one value per row ({N})", f"({N - 1},)"]),
    ("fit-time cluster naming no column", lambda p: get_estimator("interventional", n_folds=2).fit(
        build(), cluster="nope"), DataError, ["cluster", "'nope'"]),
    *[(f"{name} with a {role} role it would ignore", lambda p, name=name, role=role: get_estimator(name).fit(
        build(**{role: {"cluster": "school", "weights": "w"}[role]})), NotImplementedError,
       [name, f"expected data without a {role} role"]) for name in ("econml_te", "econml_diff")
      for role in ("cluster", "weights")],
    ("fewer clusters than folds", lambda p: get_estimator("interventional").fit(build(), cluster=np.arange(N) % 2),
     ValueError, ["at least k = 5 clusters", "got 2"]),
    ("unhashable cluster labels", lambda p: MediationData.from_arrays(t=[0, 1] * 5, y=np.zeros(10),
                                                                      mediators={"m": np.ones(10)},
                                                                      cluster=[[i % 2] for i in range(10)]),
     DataError, ["cluster", "hashable"]),
    # -- views
    ("rows out of range", lambda p: build().subset([0, 99]), DataError, ["rows", "[0, 40)", "99"]),
    ("unknown unit", lambda p: build().to_frame("m9"), DataError, ["mediator unit", "'m9'"]),
    ("unknown field", lambda p: build().replace(outcome=1), TypeError, ["replace", "['outcome']"]),
    # -- saved folders
    ("missing folder", lambda p: MediationData.load(p / "nothing"), DataError, ["nothing", "table.parquet"]),
    ("truncated safetensors", lambda p: MediationData.load(saved(p, lambda f: (f / "mediators.safetensors")
                                                                 .write_bytes(b"\x10\x00"))), DataError,
     ["mediators.safetensors", "readable safetensors"]),
    ("invalid meta.json", lambda p: MediationData.load(saved(p, lambda f: (f / "meta.json").write_text("{"))),
     DataError, ["meta.json", "invalid JSON"]),
    ("meta.json missing a key", lambda p: MediationData.load(saved(p, lambda f: (f / "meta.json").write_text(
        json.dumps({k: v for k, v in json.loads((f / "meta.json").read_text()).items() if k != "treatment_name"})))),
     DataError, ["meta.json", "['treatment_name']"]),
    ("missing table.parquet", lambda p: MediationData.load(saved(p, lambda f: (f / "table.parquet").unlink())),
     DataError, ["table.parquet", "no such file"]),
    ("corrupted parquet", lambda p: MediationData.load(saved(p, lambda f: (f / "table.parquet").write_bytes(b"PAR1"))),
     DataError, ["table.parquet", "readable parquet"]),
    ("damaged folder, mmap", lambda p: MediationData.load(saved(p, lambda f: (f / "mediators.safetensors")
                                                                .write_bytes(b"junk")), mmap=True), DataError,
     ["mediators.safetensors", "readable safetensors"]),
    # -- estimators
    *[(f"fit {name} on a DataFrame", lambda p, name=name: get_estimator(name).fit(frame()), TypeError,
       ["fit: expected a MediationData, got DataFrame", "from_frame"]) for name in ("parametric", "weighting", "dml",
                                                                                   "eb_total")],
    ("fit an unknown unit", lambda p: get_estimator("parametric").fit(build(), units=["m9"]), DataError,
     ["units", "'m9'"]),
    ("unknown estimator", lambda p: get_estimator("nope"), ValueError, ["estimator", "'nope'"]),
    ("bad estimator setting", lambda p: get_estimator("dml", n_folds=1).fit(build()), ValueError, ["n_folds", "1"]),
    ("topic with no controls", lambda p: get_estimator("weighting").fit(no_controls_in_t0()), PositivityError,
     ["'t0'"]),
    # -- graphs
    ("unknown graph", lambda p: load_graph("nograph"), GraphError, ["'nograph'", "topic_mediation"]),
    ("missing graph file", lambda p: load_graph(str(p / "gone.gml")), GraphError, ["gone.gml"]),
    ("cyclic graph", lambda p: load_graph(graph_file(p, CYCLE)), GraphError, ["cycle", "T -> M -> Y -> T"]),
    ("missing graph node", lambda p: load_graph(graph_file(p, NO_M)), GraphError, ["role 'M'"]),
    ("unparsable graph", lambda p: load_graph(graph_file(p, "graph [ directed 1 node [")), GraphError,
     ["g.gml", "GML"]),
    ("graph node not in the data", lambda p: get_estimator("eb_total").fit(build(), graph=graph_file(p, EXTRA, "x.dot")),
     GraphError, ["'lang'", "['age', 'topic']"]),
    # -- the command line
    ("CLI: unknown estimator", lambda p: cli(p, "estimate", "--data", "{dir}", "--estimator", "nope"), "exit 2",
     ["--estimator", "'nope'"]),
    ("CLI: role flags with a folder", lambda p: cli(p, "estimate", "--data", "{dir}", "--treatment", "T"), "exit 2",
     ["--treatment", "CSV or parquet"]),
    ("CLI: table without roles", lambda p: cli(p, "estimate", "--data", "{csv}"), "exit 2",
     ["--treatment", "study.csv"]),
    ("CLI: unknown column", lambda p: cli(p, "estimate", "--data", "{csv}", *ROLES[:-2], "--confounders", "region"),
     "exit 2", ["--confounders", "'region'"]),
    ("CLI: pattern matches nothing", lambda p: cli(p, "estimate", "--data", "{csv}", *ROLES, "--mediators", "h*"),
     "exit 2", ["--mediators", "'h*'"]),
    ("CLI: no confounders for X", lambda p: cli(p, "estimate", "--data", "{csv}", *ROLES[:-2]), "exit 2",
     ["graph topic_mediation", "node X", "--confounders"]),
    ("CLI: bad data in a table", lambda p: cli(p, "estimate", "--data", "{csv}", *ROLES, "--weights", "Y"), "exit 2",
     ["column 'Y'", "one role"]),
    ("CLI: unreadable table", lambda p: cli(p, "estimate", "--data", graph_file(p, "\x00\xff", "bad.parquet"), *ROLES),
     "exit 2", ["bad.parquet", "readable parquet"]),
    ("CLI: unknown file type", lambda p: cli(p, "estimate", "--data", graph_file(p, "x", "data.xlsx")), "exit 2",
     ["data.xlsx", ".csv"]),
    ("CLI: number out of range", lambda p: cli(p, "medsens", "--data", "{dir}", "--rho-by", "0.9"), "exit 2",
     ["--rho-by", "'0.9'"]),
    ("CLI: unwritable output", lambda p: cli(p, "estimate", "--data", "{dir}", "--out", "{tmp}/study.csv/x.csv"),
     "exit 2", ["--out", "study.csv"]),
    ("CLI: OVB bounds for parametric", lambda p: cli(p, "sensitivity", "--data", "{dir}", "--estimator", "parametric"),
     "exit 2", ["deconfound medsens"]),
]


@pytest.mark.parametrize("what, call, expected, fragments", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_gets_a_named_error(tmp_path, capsys, what, call, expected, fragments):
    if expected == "exit 2":
        rc = call(tmp_path)
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deconfound: error: "), err
        message = lines[0]
    else:
        with pytest.raises(expected) as info:
            call(tmp_path)
        message = str(info.value)
        assert "expected" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_table_covers_every_entry_point():
    text = " ".join(row[0] for row in TABLE)
    for needle in ("NaN in T", "NaN in Y", "NaN in numeric X", "NaN in M", "non-binary T", "constant T",
                   "missing column", "topic with no controls", "cyclic graph", "missing graph node",
                   "non-numeric mediator", "duplicated column", "numbers as text", "datetime confounder",
                   "truncated safetensors", "invalid meta.json", "missing table.parquet", "CLI:"):
        assert needle in text, needle
