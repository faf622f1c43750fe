"""MediationData: no silent wrong numbers (mediator precision, numbers held as text, duplicated columns), and the
optional cluster and sampling-weight roles."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deconfound import DataError, MediationData, get_estimator
from deconfound.data import FLOAT32_TOLERANCE


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """400 rows: a topic confounds T, M and Y; emo mediates (true NIE 0.2 on the ATT); age is numeric."""
    r = np.random.default_rng(0)
    n = 400
    topic = r.choice(["a", "b", "c", "d"], n)
    shift = pd.Series(topic).map({"a": -1.0, "b": 0.0, "c": 0.5, "d": 1.0}).to_numpy()
    age = r.integers(20, 70, n)
    t = (r.random(n) < 1 / (1 + np.exp(-shift))).astype(int)
    emo = 0.5 * t + 0.3 * shift + 0.01 * age + r.normal(size=n)
    y = 0.4 * emo + 0.2 * t + 0.5 * shift + r.normal(size=n)
    return pd.DataFrame({"treat": t, "y": y, "emo": emo, "age": age, "topic": topic,
                         "school": np.repeat(np.arange(40), 10), "w": r.uniform(0.5, 2.0, n)})


def build(df, **kw):
    args = dict(treatment="treat", outcome="y", confounders=["age", "topic"], mediators="emo")
    args.update(kw)
    return MediationData.from_frame(df, **args)


# ---- mediator precision --------------------------------------------------------------------------------------
def test_tabular_mediators_keep_float64_and_an_offset_changes_nothing(frame):
    """1e8 + emo: float32 would round it to steps of 8 (NIE ~ 0 instead of ~0.21). float64 keeps every bit."""
    base = build(frame)
    shifted = build(frame.assign(emo=frame.emo + 1e8))
    assert base.dtype == shifted.dtype == "float64"
    np.testing.assert_array_equal(shifted.mediator("emo")[:, 0], frame.emo.to_numpy() + 1e8)
    nie = [get_estimator("weighting").fit(d).effect("emo", "nie", "treated").estimate for d in (base, shifted)]
    np.testing.assert_allclose(nie[1], nie[0], rtol=1e-6)
    # what the old float32 storage did to the same column: the estimate collapses
    snapped = frame.emo.add(1e8).astype(np.float32).astype(float) - 1e8
    old = get_estimator("weighting").fit(build(frame.assign(emo=snapped))).effect("emo", "nie", "treated").estimate
    assert abs(old - nie[0]) > 0.1


def test_float32_is_an_explicit_choice_that_never_loses_precision_silently(frame):
    d = build(frame, dtype="float32")  # centred data: the cast is harmless and allowed
    assert d.dtype == "float32" and d.mediator("emo").dtype == np.float32
    with pytest.raises(DataError, match=r"mediator unit 'emo', column 0: .*float32.*1e\+08.*dtype='float64'"):
        build(frame.assign(emo=frame.emo + 1e8), dtype="float32")
    # the tolerance: 1e-4 SD of the column; an offset of 1e3 SDs moves values by ~6e-5 SD (allowed), 1e5 SDs not
    sd = frame.emo.std()
    build(frame.assign(emo=frame.emo + 1e3 * sd), dtype="float32")
    with pytest.raises(DataError, match="standard deviations"):
        build(frame.assign(emo=frame.emo + 1e5 * sd), dtype="float32")
    assert FLOAT32_TOLERANCE == 1e-4
    # float32 input stays float32 bit for bit (the LM path); int64 counts beyond 2**24 are checked too
    acts = np.random.default_rng(1).normal(size=(len(frame), 3)).astype(np.float32)
    lm = MediationData.from_arrays(t=frame.treat, y=frame.y, mediators={"L0": acts}, dtype="float32")
    assert lm.mediator("L0").tobytes() == acts.tobytes()
    counts = (np.arange(len(frame)) % 7 + 2**30).astype(np.int64)
    with pytest.raises(DataError, match="float32"):
        MediationData.from_arrays(t=frame.treat, y=frame.y, mediators={"c": counts}, dtype="float32")
    with pytest.raises(ValueError, match="dtype: expected 'float64' or 'float32', got 'int8'"):
        build(frame, dtype="int8")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_preserves_dtype(tmp_path, frame, dtype, mmap):
    d = build(frame, dtype=dtype)
    back = MediationData.load(d.save(tmp_path / "d"), mmap=mmap)
    assert back.dtype == dtype and back.mediator("emo").dtype == np.dtype(dtype)
    assert back.mediator("emo").tobytes() == d.mediator("emo").tobytes()
    again = MediationData.load(back.save(tmp_path / "e"))  # a lazy folder is written by streaming
    assert again.dtype == dtype and again.mediator("emo").tobytes() == d.mediator("emo").tobytes()


def test_replace_and_subset_keep_the_dtype(frame):
    d = build(frame, dtype="float32")
    assert d.subset(np.arange(100)).dtype == "float32"
    assert d.replace(mediators={"emo": frame.emo.to_numpy()}).mediator("emo").dtype == np.float32


# ---- numbers held as text ------------------------------------------------------------------------------------
def test_numeric_confounder_with_one_stray_value_raises_naming_it(frame):
    bad = frame.assign(age=frame.age.astype(str))
    bad.loc[7, "age"] = "?"  # what read_csv makes of one stray value: an object column of 51 labels
    with pytest.raises(DataError, match=r"confounder 'age': expected numbers, got .*\['\?'\].*first rows \[7\]"):
        build(bad)


def test_numbers_as_text_raise_instead_of_becoming_dummies(frame):
    with pytest.raises(DataError, match=r"confounder 'age': .*text that reads as numbers.*pd.to_numeric"):
        build(frame.assign(age=frame.age.astype(str)))
    # the explicit choice: categories stay categories, numbers stay numbers
    cat = build(frame.assign(age=pd.Categorical(frame.age.astype(str))))
    assert cat.categorical_confounders() == ["age", "topic"]
    num = build(frame)
    assert num.x_design()[0].shape[1] == 1 + 3  # age, and topic's 3 non-reference levels


def test_text_topics_stay_categorical_and_identifiers_raise(frame):
    d = build(frame)
    assert list(d.x["topic"].cat.categories) == ["a", "b", "c", "d"]
    ids = frame.assign(topic=[f"doc{i}" for i in range(len(frame))])
    with pytest.raises(DataError, match=r"confounder 'topic': expected a categorical confounder with at most .* "
                                        r"got 400 levels in 400 rows"):
        build(ids)


@pytest.mark.parametrize("values, fragment", [
    (pd.date_range("2020-01-01", periods=400), "datetime64"),
    (pd.to_timedelta(np.arange(400), unit="D"), "timedelta64"),
    (np.arange(400) + 1j, "complex"),
    ([(i % 3, 0) for i in range(400)], "tuple"),
])
def test_other_confounder_types_raise(frame, values, fragment):
    with pytest.raises(DataError, match=f"confounder 'age': expected numbers or category labels.*{fragment}"):
        build(frame.assign(age=pd.Series(list(values)) if isinstance(values, list) else values))


# ---- duplicated columns --------------------------------------------------------------------------------------
def test_duplicated_treatment_column_raises_instead_of_doubling_n_treated(frame):
    twice = pd.concat([frame, frame[["treat"]]], axis=1)
    with pytest.raises(DataError, match=r"expected each column name once, got \['treat'\]"):
        build(twice)
    wide = np.column_stack([frame.treat, frame.treat])  # a 2-column treatment from arrays
    with pytest.raises(DataError, match=r"treatment 'T': expected one value per row .*shape \(400, 2\)"):
        MediationData.from_arrays(t=wide, y=frame.y, mediators={"m": frame.emo})


@pytest.mark.parametrize("kw, fragment", [
    (dict(confounders=["age", "age"]), r"confounder: expected each column once, got \['age'\]"),
    (dict(mediators={"u": ["emo", "emo"]}), r"mediator unit 'u': expected each column once, got \['emo'\]"),
    (dict(mediators={"u": ["emo"], "v": ["emo"]}), "column 'emo': expected one role"),
])
def test_a_column_listed_twice_raises(frame, kw, fragment):
    with pytest.raises(DataError, match=fragment):
        build(frame, **kw)


def test_duplicated_confounder_names_from_a_frame_x(frame):
    x = pd.concat([frame[["age"]], frame[["age"]]], axis=1)
    with pytest.raises(DataError, match=r"confounders: expected each column once, got \['age'\]"):
        MediationData.from_arrays(t=frame.treat, y=frame.y, mediators={"m": frame.emo}, x=x)


# ---- cluster and weights ---------------------------------------------------------------------------------------
def test_cluster_and_weights_from_frame_and_arrays(frame):
    d = build(frame, cluster="school", weights="w")
    np.testing.assert_array_equal(d.cluster, frame.school.to_numpy())
    np.testing.assert_array_equal(d.weights, frame.w.to_numpy())
    assert d.n_clusters == 40 and d.cluster_codes().max() == 39 and d.cluster_codes()[10] == 1
    plain = build(frame)
    assert plain.cluster is None and plain.weights is None and plain.n_clusters is None
    labels = [("doc", i // 20) for i in range(len(frame))]  # any hashable labels
    a = MediationData.from_arrays(t=frame.treat, y=frame.y, mediators={"m": frame.emo}, cluster=labels,
                                  weights=frame.w.to_numpy())
    assert a.cluster[0] == ("doc", 0) and a.n_clusters == 20
    both = build(frame, cluster="topic")  # a confounder may also be the cluster
    assert both.n_clusters == 4 and "topic" in both.confounder_names


def test_cluster_and_weights_survive_views_frames_and_files(tmp_path, frame):
    d = build(frame, cluster="school", weights="w")
    rows = np.arange(0, 400, 3)
    sub = d.subset(rows)
    np.testing.assert_array_equal(sub.cluster, frame.school.to_numpy()[rows])
    np.testing.assert_array_equal(sub.weights, frame.w.to_numpy()[rows])
    rep = d.replace(y=frame.y.to_numpy() + 1)
    np.testing.assert_array_equal(rep.cluster, d.cluster)
    np.testing.assert_array_equal(rep.weights, d.weights)
    flat = d.to_frame("emo")
    assert list(flat.columns) == ["treat", "y", "age", "topic", "school", "w", "emo__0"]
    np.testing.assert_array_equal(flat.w, frame.w)
    for mmap in (False, True):
        back = MediationData.load(d.save(tmp_path / "d"), mmap=mmap)
        np.testing.assert_array_equal(back.cluster, d.cluster)
        assert back.weights.tobytes() == d.weights.tobytes()
        assert (back.cluster_name, back.weights_name) == ("school", "w")
        assert back.confounder_names == ["age", "topic"]
    plain = MediationData.load(build(frame).save(tmp_path / "p"))
    assert plain.cluster is None and plain.weights is None


@pytest.mark.parametrize("column, change, fragment", [
    ("w", {3: np.nan}, r"weights 'w': expected finite values, got 1 NaN/inf \(first rows: \[3\]\)"),
    ("w", {5: -1.0, 9: 0.0}, r"weights 'w': expected positive weights, got 2 <= 0 \(first rows: \[5, 9\]"),
    ("school", {4: np.nan}, r"cluster 'school': expected a label on every row, got 1 missing \(first rows: \[4\]\)"),
])
def test_bad_cluster_and_weights_are_named(frame, column, change, fragment):
    bad = frame.copy()
    bad[column] = bad[column].astype(float)
    for row, value in change.items():
        bad.loc[row, column] = value
    with pytest.raises(DataError, match=fragment):
        build(bad, cluster="school", weights="w")


def test_a_single_cluster_and_role_clashes_raise(frame):
    with pytest.raises(DataError, match=r"cluster 'school': expected at least 2 clusters, got 1"):
        build(frame.assign(school=7), cluster="school")
    with pytest.raises(DataError, match="column 'y': expected one role, got both outcome and weights"):
        build(frame, weights="y")
    with pytest.raises(DataError, match="cluster: expected column 'nope'"):
        build(frame, cluster="nope")


def test_cluster_labels_that_parquet_cannot_store_raise_on_save(tmp_path, frame):
    d = MediationData.from_arrays(t=frame.treat, y=frame.y, mediators={"m": frame.emo},
                                  cluster=[("doc", i // 20) for i in range(len(frame))])
    with pytest.raises(DataError, match="save: expected ids and cluster labels that parquet stores"):
        d.save(tmp_path / "d")
    assert not (tmp_path / "d").exists()
