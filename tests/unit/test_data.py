"""MediationData: construction from frames and arrays, the checks run once, save/load, views."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from deconfound import DataError, MediationData


def frame_data(df, **kw):
    args = dict(treatment="toxic", outcome="score", confounders=["topic", "length"], mediators={"a": ["a0", "a1"]})
    args.update(kw)
    return MediationData.from_frame(df, **args)


def arrays(n=8, **kw):
    r = np.random.default_rng(1)
    args = dict(t=np.tile([0, 1], n // 2), y=r.normal(size=n), mediators={"u": r.normal(size=(n, 3))},
                x=r.normal(size=(n, 2)), x_names=["x0", "x1"])
    args.update(kw)
    return args


# ---- from_frame --------------------------------------------------------------------------------------------
def test_from_frame_mediators_as_column_name(mixed_frame):
    d = frame_data(mixed_frame, mediators="b0")
    assert d.units == ["b0"]
    block = d.mediator("b0")
    assert block.shape == (12, 1) and block.dtype == np.float64  # tabular data keeps its precision
    np.testing.assert_array_equal(block[:, 0], mixed_frame["b0"].to_numpy())


def test_from_frame_mediators_as_list_is_one_unit(mixed_frame):
    d = frame_data(mixed_frame, mediators=["a0", "a1", "b0"])
    assert d.units == ["M"]
    np.testing.assert_array_equal(d.mediator("M"), mixed_frame[["a0", "a1", "b0"]].to_numpy())
    assert d.columns_of("M") == ["a0", "a1", "b0"]
    single = frame_data(mixed_frame, mediators=["a1"])
    assert single.units == ["a1"]


def test_from_frame_mediators_as_dict(mixed_frame):
    d = frame_data(mixed_frame, mediators={"a": ["a0", "a1"], "b": "b0"})
    assert d.units == ["a", "b"]
    assert d.mediator("a").shape == (12, 2) and d.mediator("b").shape == (12, 1)
    np.testing.assert_array_equal(d.mediator("a")[:, 1], mixed_frame["a1"].to_numpy())
    np.testing.assert_array_equal(d.t, mixed_frame["toxic"].to_numpy())
    np.testing.assert_array_equal(d.y, mixed_frame["score"].to_numpy())
    np.testing.assert_array_equal(d.ids, mixed_frame.index.to_numpy())


def test_string_confounder_kept_and_one_hot_drop_first(mixed_frame):
    d = frame_data(mixed_frame)
    assert isinstance(d.x["topic"].dtype, pd.CategoricalDtype)
    assert list(d.x["topic"].cat.categories) == ["politics", "religion", "sports"]  # sorted labels
    np.testing.assert_array_equal(d.x["topic"].astype(str).to_numpy(), mixed_frame["topic"].to_numpy())
    design, labels = d.x_design()
    # oracle: pandas' own dummy coding with the first level dropped, then the numeric column
    oracle = pd.get_dummies(mixed_frame["topic"], drop_first=True, dtype=float)
    assert labels == ["topic[religion]", "topic[sports]", "length"]
    np.testing.assert_array_equal(design[:, :2], oracle.to_numpy())
    np.testing.assert_array_equal(design[:, 2], mixed_frame["length"].to_numpy())
    only_topic, lab = d.x_design(["topic"])
    assert only_topic.shape == (12, 2) and lab == labels[:2]


def test_categorical_confounder_keeps_its_level_order(mixed_frame):
    df = mixed_frame.assign(topic=pd.Categorical(mixed_frame["topic"], categories=["sports", "religion", "politics"]))
    d = frame_data(df)
    assert list(d.x["topic"].cat.categories) == ["sports", "religion", "politics"]
    design, labels = d.x_design(["topic"])
    assert labels == ["topic[religion]", "topic[politics]"]  # the first level of the categorical is dropped
    np.testing.assert_array_equal(design[:, 1], (mixed_frame["topic"] == "politics").to_numpy().astype(float))


def test_x_design_unknown_confounder_named(mixed_frame):
    d = frame_data(mixed_frame)
    with pytest.raises(DataError, match="'colour'"):
        d.x_design(["colour"])


# ---- from_arrays -------------------------------------------------------------------------------------------
def test_from_arrays_numeric_and_names():
    args = arrays()
    d = MediationData.from_arrays(**args)
    assert d.confounder_names == ["x0", "x1"]
    np.testing.assert_array_equal(d.x_design()[0], args["x"])
    np.testing.assert_array_equal(d.mediator("u"), args["mediators"]["u"])
    assert d.t.dtype == np.int8 and d.y.dtype == np.float64


def test_from_arrays_without_confounders():
    d = MediationData.from_arrays(**arrays(x=None, x_names=None))
    assert d.confounder_names == []
    design, labels = d.x_design()
    assert design.shape == (8, 0) and labels == []


def test_from_arrays_default_names_and_frame_x():
    d = MediationData.from_arrays(**arrays(x_names=None))
    assert d.confounder_names == ["x0", "x1"]
    x = pd.DataFrame({"topic": list("abcdabcd"), "w": np.arange(8.0)})
    d2 = MediationData.from_arrays(**arrays(x=x, x_names=None))
    assert d2.categorical_confounders() == ["topic"]
    assert d2.x_design()[1] == ["topic[b]", "topic[c]", "topic[d]", "w"]


def test_bool_treatment_accepted():
    d = MediationData.from_arrays(**arrays(t=np.tile([False, True], 4)))
    np.testing.assert_array_equal(d.t, np.tile([0, 1], 4))


# ---- construction errors: each names the column or unit and says expected vs got --------------------------
def _raises(match, fn, *args, **kw):
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "expected" in msg and "got" in msg, msg
    return msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("column,role", [("toxic", "treatment"), ("score", "outcome"), ("length", "confounder"),
                                         ("a0", "mediator")])
def test_nonfinite_in_each_role(mixed_frame, bad, column, role):
    df = mixed_frame.copy()
    df[column] = df[column].astype(float)
    df.loc["p4", column] = bad
    msg = _raises(repr(column) if role != "mediator" else "'a'", frame_data, df)
    assert role in msg


def test_missing_label_in_string_confounder(mixed_frame):
    df = mixed_frame.copy()
    df["topic"] = df["topic"].astype(object)
    df.loc["p2", "topic"] = None
    _raises("'topic'", frame_data, df)


@pytest.mark.parametrize("key", ["t", "y", "x"])
def test_nonfinite_from_arrays(key):
    args = arrays()
    arr = np.asarray(args[key], dtype=float).copy()
    arr.flat[3] = np.nan
    args[key] = arr
    _raises({"t": "treatment 'T'", "y": "outcome 'Y'", "x": "confounder 'x"}[key], MediationData.from_arrays, **args)


def test_nonfinite_mediator_from_arrays_names_unit_and_row():
    args = arrays()
    m = args["mediators"]["u"].copy()
    m[5, 2] = np.inf
    args["mediators"] = {"u": m}
    msg = _raises("mediator unit 'u'", MediationData.from_arrays, **args)
    assert "[5]" in msg


def test_non_binary_treatment(mixed_frame):
    df = mixed_frame.assign(toxic=np.arange(12) % 3)
    msg = _raises("treatment 'toxic'", frame_data, df)
    assert "'2'" in msg and "0/1" in msg


def test_non_binary_treatment_from_arrays():
    _raises("binary", MediationData.from_arrays, **arrays(t=np.array([0, 1, 0, 1, 0.5, 1, 0, 1])))
    _raises("binary", MediationData.from_arrays, **arrays(t=np.array(list("abababab"))))


@pytest.mark.parametrize("key", ["y", "x", "mediators"])
def test_length_mismatch(key):
    args = arrays()
    if key == "mediators":
        args["mediators"] = {"u": args["mediators"]["u"][:6]}
        match = "mediator unit 'u': expected 8 rows, got 6"
    elif key == "x":
        args["x"] = args["x"][:7]
        match = "x: expected 8 rows, got 7"
    else:
        args["y"] = args["y"][:5]
        match = "outcome 'Y': expected 8 rows, got 5"
    _raises(match, MediationData.from_arrays, **args)


@pytest.mark.parametrize("kw,col,roles", [
    (dict(confounders=["topic", "toxic"]), "toxic", ("treatment", "confounder")),
    (dict(mediators=["a0", "length"]), "length", ("confounder", "mediator")),
    (dict(mediators={"a": ["a0"], "b": ["a0"]}), "a0", ("mediator unit 'a'", "mediator unit 'b'")),
    (dict(outcome="a0"), "a0", ("outcome", "mediator")),
])
def test_column_in_two_roles(mixed_frame, kw, col, roles):
    msg = _raises(repr(col), frame_data, mixed_frame, **kw)
    assert all(r in msg for r in roles), msg


def test_column_in_two_roles_from_arrays():
    _raises("'T'", MediationData.from_arrays, **arrays(x=np.zeros((8, 1)), x_names=["T"]))


def test_missing_column_named(mixed_frame):
    msg = _raises("'colour'", frame_data, mixed_frame, confounders=["colour"])
    assert "confounder" in msg


def test_empty_unit(mixed_frame):
    _raises("unit 'e'", frame_data, mixed_frame, mediators={"a": ["a0"], "e": []})
    _raises("unit 'e'", MediationData.from_arrays, **arrays(mediators={"e": np.zeros((8, 0))}))
    _raises("mediators", MediationData.from_arrays, **arrays(mediators={}))


def test_non_numeric_mediator(mixed_frame):
    df = mixed_frame.assign(b0=list("abcdefghijkl"))
    msg = _raises("'b0'", frame_data, df, mediators={"b": ["b0"]})
    assert "unit 'b'" in msg and "numeric" in msg
    _raises("unit 'u'", MediationData.from_arrays, **arrays(mediators={"u": np.array(list("abcdefgh"), dtype=object)}))


def test_non_numeric_outcome_named(mixed_frame):
    df = mixed_frame.assign(score=list("abcdefghijkl"))
    _raises("outcome 'score'", frame_data, df)


@pytest.mark.parametrize("t,arm,count", [([0, 0, 0, 0, 0, 0, 0, 1], "treated", 1), ([1] * 8, "control", 0)])
def test_fewer_than_two_rows_in_an_arm(t, arm, count):
    msg = _raises(arm, MediationData.from_arrays, **arrays(t=np.array(t)))
    assert f"got {count}" in msg


# ---- properties and views -----------------------------------------------------------------------------------
def test_properties(sim_small):
    data, truth = sim_small
    assert data.n == 600
    assert data.n_treated == int(data.t.sum()) and data.n_control == 600 - data.n_treated
    assert data.units == ["u0", "u1"]
    assert data.confounder_names == ["topic"]
    assert "n=600" in repr(data)


def test_subset_keeps_categories(mixed_frame):
    d = frame_data(mixed_frame)
    rows = np.array([0, 1, 3, 4, 6, 7])  # topics sports/politics only
    sub = d.subset(rows)
    assert sub.n == 6
    assert list(sub.x["topic"].cat.categories) == ["politics", "religion", "sports"]
    assert sub.x_design()[0].shape == (6, 3)  # the absent level still has its (all-zero) column
    np.testing.assert_array_equal(sub.ids, mixed_frame.index.to_numpy()[rows])
    np.testing.assert_array_equal(sub.mediator("a"), d.mediator("a")[rows])
    np.testing.assert_array_equal(sub.y, d.y[rows])
    mask = np.zeros(12, bool)
    mask[rows] = True
    np.testing.assert_array_equal(d.subset(mask).y, sub.y)
    with pytest.raises(DataError, match="rows: expected 12 rows, got 3"):
        d.subset(np.array([True, False, True]))


def test_replace_is_checked_and_select_units(mixed_frame):
    d = frame_data(mixed_frame, mediators={"a": ["a0", "a1"], "b": "b0"})
    with pytest.raises(DataError, match="binary"):
        d.replace(t=np.full(12, 2))
    only_b = d.select_units(["b"])
    assert only_b.units == ["b"] and only_b.mediator_columns == {"b": ["b0"]}
    with pytest.raises(DataError, match="'zz'"):
        d.mediator("zz")


def test_to_frame_columns(mixed_frame):
    d = frame_data(mixed_frame, mediators={"a": ["a0", "a1"], "b": "b0"})
    f = d.to_frame("a")
    assert list(f.columns) == ["toxic", "score", "topic", "length", "a__0", "a__1"]
    np.testing.assert_array_equal(f["a__1"].to_numpy(), d.mediator("a")[:, 1].astype(float))
    np.testing.assert_array_equal(f["toxic"].to_numpy(), mixed_frame["toxic"].to_numpy())
    np.testing.assert_array_equal(f["topic"].astype(str).to_numpy(), mixed_frame["topic"].to_numpy())
    assert list(d.to_frame().columns) == ["toxic", "score", "topic", "length"]
    assert list(d.to_frame("b").columns)[-1] == "b__0"


def test_to_frame_vector_unit(sim_vector):
    data, _ = sim_vector
    f = data.to_frame("u2")
    assert list(f.columns) == ["T", "Y", "topic", "u2__0", "u2__1", "u2__2", "u2__3"]
    np.testing.assert_array_equal(f[[f"u2__{j}" for j in range(4)]].to_numpy(), data.mediator("u2").astype(float))


# ---- save / load ---------------------------------------------------------------------------------------------
def _assert_same(a: MediationData, b: MediationData):
    for name in ("t", "y", "ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        if x.dtype == object:  # string ids
            assert x.tolist() == y.tolist(), name
        else:
            assert x.tobytes() == y.tobytes(), name
    assert a.units == b.units
    for u in a.units:
        assert a.mediator(u).dtype == b.mediator(u).dtype == np.dtype(a.dtype)
        assert a.mediator(u).tobytes() == b.mediator(u).tobytes(), u
    assert a.confounder_names == b.confounder_names
    for c in a.confounder_names:
        if isinstance(a.x[c].dtype, pd.CategoricalDtype):
            assert list(a.x[c].cat.categories) == list(b.x[c].cat.categories)
            np.testing.assert_array_equal(a.x[c].cat.codes.to_numpy(), b.x[c].cat.codes.to_numpy())
        else:
            assert a.x[c].to_numpy().tobytes() == b.x[c].to_numpy().tobytes()
    assert a.meta == b.meta
    assert (a.treatment_name, a.outcome_name, a.mediator_columns) == (b.treatment_name, b.outcome_name,
                                                                      b.mediator_columns)


def test_save_load_round_trip_exact(tmp_path, mixed_frame):
    df = mixed_frame.copy()
    df["a0"] = df["a0"] * 1e-310  # float64 subnormals survive bit for bit
    df["topic"] = pd.Categorical(df["topic"], categories=["sports", "religion", "politics", "unused"])
    meta = {"source": "unit test", "seed": np.int64(5), "layers": [1, 2], "nested": {"k": 0.1}}
    d = frame_data(df, mediators={"a": ["a0", "a1"], "b": "b0"}, meta=meta)
    out = d.save(tmp_path / "ds")
    assert sorted(os.listdir(out)) == ["mediators.safetensors", "meta.json", "table.parquet"]
    back = MediationData.load(out)
    assert back.meta == {"source": "unit test", "seed": 5, "layers": [1, 2], "nested": {"k": 0.1}}
    d.meta["seed"] = 5
    _assert_same(d, back)
    assert list(back.x["topic"].cat.categories) == ["sports", "religion", "politics", "unused"]


def test_save_load_simulated_and_versions(tmp_path, sim_vector):
    import json

    data, _ = sim_vector
    back = MediationData.load(data.save(tmp_path / "sim"))
    _assert_same(data, back)
    info = json.loads((tmp_path / "sim" / "meta.json").read_text())
    assert info["versions"]["numpy"] == np.__version__


def test_load_missing_file_named(tmp_path, sim_small):
    data, _ = sim_small
    out = data.save(tmp_path / "d")
    (out / "mediators.safetensors").unlink()
    with pytest.raises(DataError, match="mediators.safetensors"):
        MediationData.load(out)


def _fail_save(*args, **kwargs):
    raise RuntimeError("disk full (simulated)")


def test_atomic_save_failure_keeps_old_folder(tmp_path, monkeypatch, sim_small, mixed_frame):
    import safetensors.numpy

    old, _ = sim_small
    target = tmp_path / "ds"
    old.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(safetensors.numpy, "save_file", _fail_save)
    with pytest.raises(RuntimeError, match="disk full"):
        frame_data(mixed_frame).save(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary or .old folders left
    _assert_same(old, MediationData.load(target))


def test_atomic_save_failure_on_new_path_leaves_nothing(tmp_path, monkeypatch, sim_small):
    import safetensors.numpy

    data, _ = sim_small
    monkeypatch.setattr(safetensors.numpy, "save_file", _fail_save)
    with pytest.raises(RuntimeError):
        data.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_cleanly(tmp_path, sim_small, mixed_frame):
    data, _ = sim_small
    data.save(tmp_path / "ds")
    other = frame_data(mixed_frame)
    other.save(tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    _assert_same(other, MediationData.load(tmp_path / "ds"))


def test_mediator_beyond_float32_range_named():
    m = np.ones((8, 2))
    m[6, 1] = 1e39  # finite as float64, inf as float32
    msg = _raises("unit 'u'", MediationData.from_arrays, **arrays(mediators={"u": m}), dtype="float32")
    assert "float32" in msg and "[6]" in msg
