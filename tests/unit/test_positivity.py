"""The shared positivity check: one function, one error, one drop_unsupported choice, for every estimator."""
import warnings

import numpy as np
import pandas as pd
import pytest

from deconfound.data import MediationData
from deconfound.errors import PositivityError
from deconfound.estimators import get_estimator
from deconfound.positivity import check_positivity, level_counts, unsupported

pytest.importorskip("econml")

COMMON = (r"needs both arms in every topic \(expected n1 > 0 and n0 > 0\), got 1 topic\(s\) without overlap: "
          r"topic 'z': n1=6, n0=0\. Pass drop_unsupported=True")


def make_data(seed=0):
    """Topics a, b, c with both arms, and z with 6 treated rows and no control."""
    rng = np.random.default_rng(seed)
    topic = np.repeat(["a", "b", "c"], 60)
    t = (rng.random(180) < np.repeat([0.3, 0.5, 0.7], 60)).astype(int)
    topic, t = np.r_[topic, ["z"] * 6], np.r_[t, np.ones(6, int)]
    m = 0.8 * t + rng.normal(size=len(t))
    y = 0.5 * t + 0.7 * m + (topic == "c") + rng.normal(size=len(t))
    x = pd.DataFrame({"topic": pd.Categorical(topic, categories=["a", "b", "c", "z"])})
    return MediationData.from_arrays(t=t, y=y, mediators={"u0": m[:, None]}, x=x)


def test_counts_and_rules():
    t = np.array([1, 1, 0, 0, 1, 0])
    topics = {"topic": (np.array([0, 0, 0, 1, 2, 3]), ("a", "b", "c", "d"))}
    table = level_counts(topics, t, np.ones(6), "ate")
    assert table[["level", "n1", "n0"]].values.tolist() == [["a", 2, 1], ["b", 0, 1], ["c", 1, 0], ["d", 0, 1]]
    assert table["unsupported"].tolist() == [False, True, True, True]
    n1, n0 = table["n1"].to_numpy(), table["n0"].to_numpy()
    assert unsupported(n1, n0, "att").tolist() == [False, False, True, False]   # treated without controls
    assert unsupported(n1, n0, "atc").tolist() == [False, True, False, True]    # controls without treated
    assert not unsupported(0, 0, "ate")                                          # an empty level is harmless
    with pytest.raises(ValueError, match="estimand: expected one of 'ate', 'att', 'atc', got 'xyz'"):
        unsupported(n1, n0, "xyz")


def test_check_positivity_raises_names_every_level_and_drops_on_request():
    data = make_data()
    with pytest.raises(PositivityError, match="ATE my estimator " + COMMON):
        check_positivity(data, ["topic"], what="my estimator")
    assert check_positivity(data, ["topic"], estimand="atc") is data   # z has no controls: fine for the ATC
    with pytest.raises(PositivityError, match="ATT"):
        check_positivity(data, ["topic"], estimand="att")
    kept = check_positivity(data, ["topic"], drop_unsupported=True)
    assert kept.n == 180 and "z" not in set(kept.x["topic"]) and list(kept.x["topic"].cat.categories) == ["a", "b", "c"]
    assert kept.meta["positivity_dropped"] == [{"variable": "topic", "level": "z", "n1": 6, "n0": 0}]
    assert kept.meta["positivity_rows_dropped"] == 6 and "positivity_dropped" not in data.meta
    assert check_positivity(data, []) is data                          # nothing adjusted for: nothing checked
    with pytest.raises(ValueError, match=r"columns: expected confounders of the data \['topic'\], got unknown"):
        check_positivity(data, ["nope"])


def test_two_bad_levels_are_both_named():
    data = make_data()
    t = data.t.copy()
    t[data.x["topic"].to_numpy() == "a"] = 0
    with pytest.raises(PositivityError, match=r"got 2 topic\(s\) without overlap: topic 'a': n1=0, n0=60; "
                                              r"topic 'z': n1=6, n0=0"):
        check_positivity(data.replace(t=t), ["topic"])


ESTIMATORS = [("parametric", {"n_sims": 200}), ("dml", {"n_folds": 2}), ("econml_te", {"n_folds": 2}),
              ("weighting", {}), ("eb_total", {"population": "ate"}),
              ("interventional", {"population": "ate", "n_folds": 2})]


@pytest.mark.parametrize("name,kw", ESTIMATORS)
def test_every_estimator_raises_the_same_error_and_drops_alike(name, kw):
    data = make_data()
    with pytest.raises(PositivityError, match=COMMON):
        get_estimator(name, **kw).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dropped = get_estimator(name, drop_unsupported=True, **kw).fit(data)
        manual = get_estimator(name, **kw).fit(check_positivity(data, ["topic"], drop_unsupported=True))
    assert dropped.n == manual.n == 180
    a, b = dropped.effect("u0", "te", "average"), manual.effect("u0", "te", "average")
    assert np.isfinite(a.estimate) and a.estimate == b.estimate and a.se == b.se


@pytest.mark.parametrize("name,kw", [("weighting", {}), ("eb_total", {"population": "ate"}),
                                     ("interventional", {"population": "ate", "n_folds": 2})])
def test_dropping_topics_makes_an_overlap_population(name, kw):
    """drop_unsupported changes the estimand: the result must not still call itself the ATE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = get_estimator(name, drop_unsupported=True, **kw).fit(make_data())
    assert res.population == "overlap"
    assert res.settings["population_note"] == "ATE over the confounder levels with overlap; dropped topic='z'"
    assert "Population:   OVERLAP (ATE over the confounder levels with overlap" in res.summary()
    assert set(res.to_frame()["population"]) == {"overlap"}


@pytest.mark.parametrize("name,kw", [("weighting", {"population": "att"}),
                                     ("interventional", {"population": "att", "n_folds": 2})])
def test_att_needs_controls_only_in_treated_topics(name, kw):
    """A topic with controls only is outside the treated population: no PositivityError for the ATT, and the
    effects equal those of a fit without its rows (they weigh 0)."""
    data = make_data()
    t = data.t.copy()
    t[data.x["topic"].to_numpy() == "z"] = 0          # z: 6 controls, no treated row
    data = data.replace(t=t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = get_estimator(name, **kw).fit(data)
        manual = get_estimator(name, **kw).fit(data.subset(data.x["topic"].to_numpy() != "z"))
    assert res.population == "att" and res.n == manual.n == 180
    assert res.settings["outside_population"] == [{"variable": "topic", "level": "z", "n1": 0, "n0": 6}]
    for key in [("nie", "treated"), ("nde", "control"), ("te", "average")]:
        a, b = res.effect("u0", *key), manual.effect("u0", *key)
        assert np.isfinite(a.estimate) and a.estimate == pytest.approx(b.estimate, abs=1e-12)
        assert a.se == pytest.approx(b.se, abs=1e-12)


def test_overlap_rows_and_positivity_table_count_like_a_crosstab():
    # one count behind check_positivity, outside_population, overlap_rows and the identification table; the
    # oracle is pandas.crosstab of the (joint) cells
    from deconfound.identification import positivity_table
    from deconfound.positivity import overlap_rows

    rng = np.random.default_rng(5)
    n = 300
    topic = rng.choice(["a", "b", "c", "d"], n)
    lang = rng.choice(["en", "fr"], n)
    t = (rng.random(n) < 0.5).astype(int)
    t[topic == "d"] = 1                                  # d: treated only
    t[(topic == "c") & (lang == "fr")] = 0               # the cell c | fr: controls only
    data = MediationData.from_arrays(t=t, y=np.zeros(n), mediators={"u": np.zeros((n, 1))},
                                     x=pd.DataFrame({"topic": topic, "lang": lang}))
    tab = pd.crosstab(topic, t)
    bad = tab[(tab[0] == 0) | (tab[1] == 0)]
    keep, dropped = overlap_rows(data, "topic")
    np.testing.assert_array_equal(keep, ~np.isin(topic, bad.index))
    assert dropped.to_dict("list") == {"topic": ["d"], "n0": [0], "n1": [int(bad.loc["d", 1])]}
    cells = pd.Series(topic).str.cat(lang, sep=" | ")
    joint = pd.crosstab(cells, t).reindex(columns=[1, 0], fill_value=0)
    pos = positivity_table(data, ["topic", "lang"]).set_index("cell")
    assert pos.index.tolist() == joint.index.tolist()
    np.testing.assert_array_equal(pos[["n_treated", "n_control"]].to_numpy(), joint.to_numpy())
    np.testing.assert_array_equal(pos["supported"], (joint[1] > 0) & (joint[0] > 0))
    assert set(pos.index[~pos["supported"]]) == {"c | fr", "d | en", "d | fr"}
