"""The path tests of deconfound.estimators.paths and the NullPathsWarning the NIE estimators raise with them."""
import warnings

import numpy as np
import pytest
import statsmodels.api as sm

from deconfound import coverage as cv
from deconfound import get_estimator, simulate
from deconfound.errors import CalibrationWarning, NullPathsWarning
from deconfound.estimators.paths import ALPHA, MAX_WIDTH, path_p_values, unit_paths


def _hc3_p(design, y, cols):
    fit = sm.OLS(y, design).fit(cov_type="HC3")
    r = np.zeros((len(cols), design.shape[1]))
    r[np.arange(len(cols)), cols] = 1.0
    return float(fit.wald_test(r, use_f=False, scalar=True).pvalue)


def test_path_p_values_match_statsmodels_hc3_wald_tests():
    rng = np.random.default_rng(5)
    n = 400
    x = rng.normal(size=(n, 2))
    t = (rng.random(n) < 1 / (1 + np.exp(-x[:, 0]))).astype(float)
    m = 0.2 * t[:, None] + x[:, :1] + rng.normal(size=(n, 2))
    y = 0.15 * m[:, 0] + t + x[:, 1] + rng.normal(size=n) * (1 + t)
    got = path_p_values(t, y, x, m)
    one = np.ones((n, 1))
    want_tm = _hc3_p(np.column_stack([one, x, m]), t, [3, 4])
    design = np.column_stack([one, x, t, t[:, None] * x, m, t[:, None] * m])
    want_my = _hc3_p(design, y, [6, 7, 8, 9])
    assert got["t_to_m"] == pytest.approx(want_tm, rel=1e-8)
    assert got["m_to_y"] == pytest.approx(want_my, rel=1e-8)
    assert 1e-6 < got["t_to_m"] < 0.5 and got["m_to_y"] < 0.05  # neither a trivial 0 nor 1


def test_path_tests_keep_their_size_when_both_paths_are_zero():
    """Over 400 simulated double nulls (M depends on X only, Y on T and X only; noise unequal across arms), each
    test rejects near 5% (binomial 99.9% range for 400 draws: 0.017-0.093)."""
    rng = np.random.default_rng(11)
    rej = np.zeros(2)
    for _ in range(400):
        x = rng.integers(0, 4, 300)
        xd = np.eye(4)[x][:, 1:]
        t = (rng.random(300) < 0.3 + 0.1 * x).astype(float)
        m = 0.8 * x + rng.normal(size=300)
        y = t * (1 + 0.5 * x) + x + rng.normal(size=300) * (1 + 2 * t)
        p = path_p_values(t, y, xd, m)
        rej += [p["t_to_m"] < 0.05, p["m_to_y"] < 0.05]
    assert np.all((0.017 <= rej / 400) & (rej / 400 <= 0.093)), rej / 400


def test_a_block_wider_than_max_width_is_not_tested():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(500, MAX_WIDTH + 1))
    p = path_p_values(rng.integers(0, 2, 500), rng.normal(size=500), np.zeros((500, 0)), m)
    assert np.isnan(p["t_to_m"]) and np.isnan(p["m_to_y"])


@pytest.mark.parametrize("name", ["parametric", "weighting", "dml", "interventional"])
def test_nie_estimators_warn_about_the_unit_whose_paths_are_both_null_only(name):
    data, truth = simulate.topic_mediation(300, n_topics=4, n_units=2, seed=0)  # u1: both paths 0 (p 0.68, 0.59)
    assert truth.spurious == ["u1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = get_estimator(name).fit(data)
    null = [w for w in caught if issubclass(w.category, NullPathsWarning)]
    assert len(null) == 1 and issubclass(null[0].category, CalibrationWarning)
    assert null[0].message.units == ["u1"]
    assert "'u1'" in str(null[0].message) and "'u0'" not in str(null[0].message)
    assert null[0].filename == __file__  # points at the caller's fit
    paths = {u: res.diagnostics[u]["paths"] for u in ("u0", "u1")}
    assert paths == unit_paths(data, ["u0", "u1"], ["topic"])
    assert min(paths["u1"].values()) >= ALPHA and max(paths["u0"].values()) < 1e-4


def test_no_null_paths_warning_without_a_null_unit():
    data, _ = simulate.topic_mediation(300, n_topics=4, n_units=1, n_spurious=0, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_estimator("parametric").fit(data)
    assert not [w for w in caught if issubclass(w.category, NullPathsWarning)]


def test_the_coverage_study_marks_only_the_named_units_nie_rows_as_warned():
    cell = next(c for c in cv.grid("full") if c.name == "linear-n300")
    rows = cv._one(("parametric", cell, 0, {}))
    warned = {(r["unit"], r["effect"]): r["warned"] for r in rows}
    assert warned == {("u0", "nie"): False, ("u0", "nde"): False, ("u0", "te"): False,
                      ("u1", "nie"): True, ("u1", "nde"): False, ("u1", "te"): False}
    assert all(r["warning"].startswith("parametric (units ['u1']") for r in rows if r["effect"] == "nie"
               and r["unit"] == "u1")


def test_a_column_the_design_already_holds_or_a_few_rows_carry_gives_nan():
    """A constant column, a copy of a confounder dummy and a column active in one row per arm used to give
    p-values near 0 (a "supported" NIE for a unit that cannot carry one); a rare topic does not trip the check."""
    rng = np.random.default_rng(0)
    n = 600
    k = rng.integers(0, 4, n)
    x = (k[:, None] == np.arange(1, 4)).astype(float)
    t = (rng.random(n) < 0.5).astype(float)
    y = k + t + rng.normal(size=n)
    rare = np.zeros(n)
    rare[[np.flatnonzero(t == 1)[0], np.flatnonzero(t == 0)[0]]] = 1.0
    for m in (np.ones(n), x[:, 0].copy(), rare):
        p = path_p_values(t, y, x, m)
        assert np.isnan(p["m_to_y"]), p
    t2 = np.where(k == 3, 0.0, t)
    t2[np.flatnonzero(k == 3)[0]] = 1.0  # topic 3 has one treated row: T x topic has leverage 1 there
    p = path_p_values(t2, k + t2 + rng.normal(size=n), x, rng.normal(size=n))
    assert np.isfinite(p["t_to_m"]) and np.isfinite(p["m_to_y"])


def test_a_block_needs_30_rows_per_tested_column():
    """Under a double null 10 columns at n = 300 rejected M -> Y 11% of the time with HC3: the M -> Y test of
    such a block (20 tested columns) is nan below 600 rows, its T -> M test (10 columns) is not."""
    rng = np.random.default_rng(1)
    t, x = rng.integers(0, 2, 599).astype(float), np.zeros((599, 0))
    p = path_p_values(t, rng.normal(size=599), x, rng.normal(size=(599, 10)))
    assert np.isfinite(p["t_to_m"]) and np.isnan(p["m_to_y"])
    p = path_p_values(np.append(t, 1.0), rng.normal(size=600), np.zeros((600, 0)), rng.normal(size=(600, 10)))
    assert np.isfinite(p["m_to_y"])


def test_clustered_rows_get_cr1_f_tests_that_match_statsmodels_and_keep_their_size():
    rng = np.random.default_rng(2)
    n, g = 400, rng.integers(0, 30, 400)
    x = (rng.integers(0, 3, n)[:, None] == np.arange(1, 3)).astype(float)
    t = (rng.random(n) < 0.4).astype(float)
    m = rng.normal(size=30)[g] + rng.normal(size=n)
    y = t + rng.normal(size=30)[g] + rng.normal(size=n)
    got = path_p_values(t, y, x, m, groups=g)
    design = np.column_stack([np.ones(n), x, m])
    fit = sm.OLS(t, design).fit(cov_type="cluster", cov_kwds={"groups": g})
    stat = fit.params[3] ** 2 / fit.cov_params()[3, 3]
    from scipy import stats
    assert got["t_to_m"] == pytest.approx(stats.f.sf(stat, 1, 29), rel=1e-8)
    # size over 300 clustered double nulls (cluster effects in M and Y; HC3 rejected M -> Y 20-57% here)
    rej = np.zeros(2)
    for s in range(300):
        r = np.random.default_rng(100 + s)
        g = r.integers(0, 30, 300)
        t = (r.random(300) < 0.5).astype(float)
        p = path_p_values(t, t + r.normal(size=30)[g] + r.normal(size=300), np.zeros((300, 0)),
                          r.normal(size=30)[g] + r.normal(size=300), groups=g)
        rej += [p["t_to_m"] < 0.05, p["m_to_y"] < 0.05]
    assert np.all(rej / 300 <= 0.10), rej / 300  # 0.05 plus 3 binomial SEs (0.038), with room for CR1 at G = 30


def test_unit_paths_reads_the_datas_cluster_labels():
    data, _ = simulate.topic_mediation(300, n_topics=4, n_units=2, seed=0)
    labels = np.arange(data.n) % 25
    plain = unit_paths(data, ["u1"], ["topic"])["u1"]
    clustered = unit_paths(data.replace(cluster=labels), ["u1"], ["topic"])["u1"]
    t, y, x = data.t, np.asarray(data.y, float), data.x_design(["topic"])[0]
    assert clustered == path_p_values(t, y, x, data.mediator("u1"), labels)
    assert clustered != plain


def test_unit_paths_on_kept_rows_equal_the_tests_on_those_rows_alone():
    """``rows`` (the rows a trimmed fit kept) subsets t, y, X, M and the cluster labels, recoded to 0..G-1 when a
    whole cluster is dropped; dml with trim > 0 tests the rows it kept."""
    data, _ = simulate.topic_mediation(600, n_topics=4, n_units=2, seed=3)
    labels = np.arange(data.n) % 40
    rows = labels >= 5  # clusters 0-4 dropped: the kept labels run 5..39
    got = unit_paths(data.replace(cluster=labels), ["u0", "u1"], ["topic"], rows=rows)
    t, y, x = data.t[rows], np.asarray(data.y, float)[rows], data.x_design(["topic"])[0][rows]
    for u in ("u0", "u1"):
        assert got[u] == path_p_values(t, y, x, data.mediator(u)[rows], labels[rows] - 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = get_estimator("dml", trim=0.2).fit(data)
    kept = res.diagnostics["u0"]["n_kept"]
    assert 0 < kept < data.n
    whole = unit_paths(data, ["u1"], ["topic"])["u1"]
    assert res.diagnostics["u1"]["paths"] != whole  # computed on the kept rows, not all of them
