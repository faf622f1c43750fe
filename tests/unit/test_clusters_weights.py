"""Clusters and sampling weights: cluster-robust scores, folds, count matrices and the estimators' fits.

Oracles: a hand computation of the CR1 score SE; statsmodels WLS / GLM with ``cov_type="cluster"`` for
coefficients and sandwiches (1e-8); integer weights equal repeated rows (exact); for the score estimators
with unweighted learners, the weighted mean of the unweighted per-row scores; for ``eb_total`` with one-hot
topics, weighted post-stratification and its linearization variance computed from cell totals.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from deconfound import DataError, MediationData, simulate
from deconfound.bootstrap import draw_counts
from deconfound.estimators import interventional as itv
from deconfound.estimators import parametric as par
from deconfound.estimators.dml import DMLMediation
from deconfound.estimators.interventional import InterventionalMediation
from deconfound.estimators.parametric import ParametricMediation
from deconfound.estimators.weighting import EntropyBalancedTotalEffect, WeightingMediation
from deconfound.folds import make_folds
from deconfound.inference import Effect


def clustered_data(n_clusters=60, size=10, seed=0, *, icc=1.0, binary_m=False):
    """Rows in clusters; treatment assigned per cluster; cluster random effects in M and Y."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), size)
    n = len(g)
    topic = rng.integers(0, 3, n)
    t = np.repeat(rng.random(n_clusters) < 0.5, size).astype(int)
    u, v = np.sqrt(icc) * rng.normal(size=(2, n_clusters))
    if binary_m:
        m = (rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 0.9 * t + 0.2 * topic + u[g])))).astype(float)
    else:
        m = 0.5 * t + 0.2 * topic + u[g] + rng.normal(size=n)
    y = 0.3 * t + 0.4 * m + 0.1 * topic + v[g] + rng.normal(size=n)
    df = pd.DataFrame({"T": t, "Y": y, "topic": pd.Categorical([f"k{k}" for k in topic]), "m": m})
    data = MediationData.from_frame(df, treatment="T", outcome="Y", confounders=["topic"], mediators="m")
    return data, g


# ---- shared pieces -----------------------------------------------------------------------------------
def test_cluster_robust_score_se_by_hand():
    s = np.array([1.0, -2.0, 0.5, 0.5, 3.0, -3.0])
    g = np.array(["a", "a", "b", "b", "c", "c"])
    eff = Effect.from_scores(2.0, s, clusters=g)
    sums = np.array([-1.0, 1.0, 0.0])  # per cluster
    assert eff.se == pytest.approx(np.sqrt(3 / 2 * np.sum(sums**2)) / 6, rel=1e-12)
    # the labels travel with arithmetic: (a - b) sums the differenced scores within the same clusters
    other = Effect.from_scores(1.0, s[::-1], clusters=g)
    diff = eff - other
    dsums = np.array([-1.0 - 0.0, 1.0 - 1.0, 0.0 + 1.0])
    assert diff.se == pytest.approx(np.sqrt(3 / 2 * np.sum(dsums**2)) / 6, rel=1e-12)
    assert eff.scale(2.0).se == pytest.approx(2 * eff.se)
    # singleton clusters: the plain SE times sqrt(n / (n - 1))
    single = Effect.from_scores(0.0, s, clusters=np.arange(6))
    assert single.se == pytest.approx(Effect.from_scores(0.0, s).se * np.sqrt(6 / 5), rel=1e-12)


def test_group_folds_keep_clusters_whole_and_balanced():
    groups = np.repeat(np.arange(37), np.arange(37) % 5 + 1)
    folds = make_folds(len(groups), 5, groups=groups, random_state=3)
    for gr in np.unique(groups):
        assert len(np.unique(folds[groups == gr])) == 1
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 5
    assert np.array_equal(folds, make_folds(len(groups), 5, groups=groups, random_state=3))
    with pytest.raises(ValueError, match="at least k = 5 clusters"):
        make_folds(6, 5, groups=np.repeat([0, 1], 3), random_state=0)


def test_cluster_count_matrix_resamples_whole_clusters():
    data, g = clustered_data(seed=1)
    counts = draw_counts(data, 50, random_state=0, cluster=g)
    for gr in (0, 7, 59):
        rows = counts[:, g == gr]
        assert np.all(rows == rows[:, :1])
    per_cluster = counts[:, ::10]  # one row per cluster (size 10)
    t_cl = data.t[::10]
    assert np.all(per_cluster[:, t_cl == 1].sum(1) == (t_cl == 1).sum())  # stratified by arm, in clusters
    mixed = g.copy()
    mixed[:2] = 1  # rows of cluster 0 joined to cluster 1, which now spans both arms if they differ
    if data.t[0] != data.t[10]:
        with pytest.raises(DataError, match="one stratum per cluster"):
            draw_counts(data, 5, random_state=0, cluster=mixed)
    assert draw_counts(data, 5, random_state=0, cluster=mixed, stratify=None).shape == (5, data.n)


# ---- parametric: fits against statsmodels ------------------------------------------------------------
def _model(data, **kw):
    x1, n1 = par._confounder_design(data, ["topic"])
    model = par._Model(data, "m", x1, n1, x1, n1, kw.pop("family", "gaussian"), False, **kw)
    model.fit()
    return model


@pytest.mark.parametrize("with_weights,with_cluster", [(True, False), (False, True), (True, True)])
def test_weighted_and_cluster_robust_fits_match_statsmodels(with_weights, with_cluster):
    data, g = clustered_data(seed=2)
    w = np.random.default_rng(0).uniform(0.5, 2.0, data.n) if with_weights else None
    wn = None if w is None else w / w.mean()
    model = _model(data, weights=wn, groups=g if with_cluster else None)
    groups = g if with_cluster else np.arange(data.n)
    fit_y = sm.WLS(data.y, model.w, weights=np.ones(data.n) if w is None else w).fit()
    rob_y = fit_y.get_robustcov_results(cov_type="cluster", groups=groups)
    np.testing.assert_allclose(model.gamma, fit_y.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.out_cov, rob_y.cov_params(), rtol=1e-8, atol=1e-12)
    m = data.mediator("m")[:, 0].astype(float)
    fit_m = sm.WLS(m, model.z, weights=np.ones(data.n) if w is None else w).fit()
    rob_m = fit_m.get_robustcov_results(cov_type="cluster", groups=groups)
    np.testing.assert_allclose(model.b_med[:, 0], fit_m.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.med_cov, rob_m.cov_params(), rtol=1e-8, atol=1e-12)


def test_binary_mediator_weighted_cluster_glm_matches_statsmodels():
    data, g = clustered_data(seed=3, binary_m=True)
    w = np.random.default_rng(1).uniform(0.5, 2.0, data.n)
    model = _model(data, mediator_family="logit", weights=w / w.mean(), groups=g)
    ref = sm.GLM(data.mediator("m")[:, 0].astype(float), model.z, family=sm.families.Binomial(),
                 var_weights=w).fit(cov_type="cluster", cov_kwds={"groups": g})
    np.testing.assert_allclose(model.b_med[:, 0], ref.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.med_cov, ref.cov_params(), rtol=1e-8, atol=1e-12)
    # and by hand: logit scores w_i z_i (m_i - p_i) summed per cluster, bread (sum w p (1 - p) z z')^-1, CR1
    z, m = model.z, data.mediator("m")[:, 0].astype(float)
    p = 1 / (1 + np.exp(-z @ model.b_med[:, 0]))
    bread = np.linalg.inv((z * (w * p * (1 - p))[:, None]).T @ z)
    u = np.array([(z[g == k] * (w * (m - p))[g == k, None]).sum(0) for k in range(60)])
    n, k = z.shape
    hand = 60 / 59 * (n - 1) / (n - k) * bread @ u.T @ u @ bread
    np.testing.assert_allclose(model.med_cov, hand, rtol=1e-6)


@pytest.mark.parametrize("family", ["gaussian", "logit"])
def test_integer_weights_equal_repeated_rows(family):
    data, _ = clustered_data(seed=4, binary_m=family == "logit")
    reps = np.random.default_rng(2).integers(1, 4, data.n)
    est = ParametricMediation(mediator_family=family, n_sims=50)
    weighted = est.fit(data, weights=reps.astype(float))
    repeated = est.fit(data.subset(np.repeat(np.arange(data.n), reps)))
    for key in [("nie", "control"), ("nde", "treated"), ("te", "average")]:
        np.testing.assert_allclose(weighted.effect("m", *key).estimate, repeated.effect("m", *key).estimate,
                                   rtol=1e-9)


def test_cluster_robust_draws_have_the_sandwich_variance():
    # linear-linear: NIE = a b with a, b drawn independently, so Var = b^2 Var(a) + a^2 Var(b) + Var(a) Var(b)
    data, g = clustered_data(seed=5)
    res = ParametricMediation(n_sims=20000, random_state=0).fit(data, cluster=g)
    model = _model(data, groups=g)
    a, b = model.b_med[1, 0], model.gamma[2]
    va, vb = model.med_cov[1, 1], model.out_cov[2, 2]
    exact = np.sqrt(b**2 * va + a**2 * vb + va * vb)
    assert res.effect("m", "nie").se == pytest.approx(exact, rel=0.03)  # MC error of an SD from 20000 draws: 0.5%
    naive = ParametricMediation(n_sims=2000, random_state=0).fit(data)
    assert res.effect("m", "nie").se > 1.3 * naive.effect("m", "nie").se
    assert res.settings["cluster"] == 60


def test_roles_from_columns_and_data_attributes_and_bad_input():
    data, g = clustered_data(seed=6)
    est = ParametricMediation(n_sims=100, random_state=0)
    by_array = est.fit(data, cluster=g)
    with_col = data.replace(x=data.x.assign(school=g.astype(float)))  # also a (numeric) confounder here
    by_name = est.fit(with_col, cluster="school")
    assert by_name.effect("m", "nie").se == pytest.approx(est.fit(with_col, cluster=g).effect("m", "nie").se,
                                                         rel=1e-12)

    by_role = est.fit(data.replace(cluster=g))  # the data's own cluster role
    assert by_role.effect("m", "nie").se == pytest.approx(by_array.effect("m", "nie").se, rel=1e-12)
    with pytest.raises(DataError, match="weights: expected finite positive"):
        est.fit(data, weights=np.r_[-1.0, np.ones(data.n - 1)])
    with pytest.raises(DataError, match="cluster: expected one value per row"):
        est.fit(data, cluster=g[:-1])
    with pytest.raises(DataError, match="expected a per-row array or a column"):
        est.fit(data, cluster="nope")


def test_cluster_bootstrap_runs_and_widens():
    data, g = clustered_data(seed=7)
    boot = ParametricMediation(method="bootstrap", n_sims=400, random_state=0)
    plain = boot.fit(data).effect("m", "nie").se
    clustered = boot.fit(data, cluster=g).effect("m", "nie").se
    assert clustered > 1.3 * plain


# ---- score-based estimators ----------------------------------------------------------------------------
def test_dml_cluster_se_is_the_cluster_sum_of_its_scores():
    data, g = clustered_data(seed=8)
    res = DMLMediation(n_folds=3, n_rep=1, random_state=0).fit(data, cluster=g)  # one split: exact identity
    for key in [("nie", "treated"), ("te", "average"), ("nde", "control")]:
        eff = res.effect("m", *key)
        sums = np.bincount(g, weights=eff.scores)
        assert eff.se == pytest.approx(np.sqrt(60 / 59 * np.sum(sums**2)) / data.n, rel=1e-10)
    ones = DMLMediation(n_folds=3, n_rep=1, random_state=0).fit(data, cluster=g, weights=np.ones(data.n))
    assert ones.effect("m", "nie").estimate == pytest.approx(res.effect("m", "nie").estimate, rel=1e-12)


def test_dml_repeated_splits_keep_the_clusters_in_their_scores():
    # the default n_rep=3: the aggregated Effect's scores, summed within clusters, give its SE, and its labels
    # travel on, so a difference of two effects stays cluster-robust (row-level scores give a smaller SE here)
    data, g = clustered_data(seed=8)
    res = DMLMediation(n_folds=3, random_state=0).fit(data, cluster=g)
    eff = res.effect("m", "nie")
    assert eff.method == "influence-cluster" and np.array_equal(eff.clusters, g)
    assert Effect.from_scores(eff.estimate, eff.scores, clusters=g).se == pytest.approx(eff.se, rel=1e-10)
    assert Effect.from_scores(eff.estimate, eff.scores).se < 0.8 * eff.se
    diff = eff - res.effect("m", "nde")
    assert diff.method == "influence-cluster"


def test_dml_sampling_weights_weight_the_means():
    # without trimming or normalization the per-row psi do not depend on the weights (the learners are
    # unweighted and the folds the same), so the weighted estimate is the weighted mean of the unweighted psi
    data, _ = simulate.topic_mediation(600, seed=2)
    w = np.random.default_rng(0).uniform(0.5, 2.0, data.n)
    est = DMLMediation(n_folds=3, n_rep=1, trim=0.0, normalize=False, random_state=0)
    plain, weighted = est.fit(data), est.fit(data, weights=w)
    for key in ["Y(1,M(1))", "Y(1,M(0))", "Y(0,M(1))", "Y(0,M(0))"]:
        p, q = plain.diagnostics["u0"]["potential_outcomes"][key], weighted.diagnostics["u0"]["potential_outcomes"][key]
        psi = p.scores + p.estimate
        assert q.estimate == pytest.approx(np.average(psi, weights=w), rel=1e-10)
        np.testing.assert_allclose(q.scores, w / w.mean() * (psi - q.estimate), rtol=1e-9, atol=1e-12)
    assert weighted.effect("u0", "nie").estimate != pytest.approx(plain.effect("u0", "nie").estimate, rel=1e-4)


def test_weighting_cluster_and_weights():
    data, g = clustered_data(seed=9)
    plain = WeightingMediation().fit(data)
    single = WeightingMediation().fit(data, cluster=np.arange(data.n))
    ratio = single.effect("m", "nie").se / plain.effect("m", "nie").se
    assert ratio == pytest.approx(np.sqrt(data.n / (data.n - 1)), rel=1e-10)
    clustered = WeightingMediation().fit(data, cluster=g)
    assert clustered.effect("m", "nie").se > 1.3 * plain.effect("m", "nie").se
    with pytest.raises(NotImplementedError, match="n_boot > 0"):
        WeightingMediation().fit(data, weights=np.ones(data.n))


# ---- interventional ------------------------------------------------------------------------------------
POTENTIAL = ("E[Y(1)]", "E[Y(0)]", "theta(1,0)", "theta(0,1)")


def test_interventional_all_ones_weights_reproduce_the_unweighted_fit():
    data, _ = simulate.intermediate_confounding(600, seed=3)
    est = InterventionalMediation(n_folds=3, random_state=0)
    plain, ones = est.fit(data, units="m"), est.fit(data, units="m", weights=np.ones(data.n))
    for key in [("nie", "treated"), ("nie", "control"), ("nde", "control"), ("te", "average")]:
        a, b = plain.effect("m", *key), ones.effect("m", *key)
        assert (a.estimate, a.se) == (b.estimate, b.se)
    assert ones.settings["weights"] and not plain.settings["weights"]


@pytest.mark.parametrize("population", ["ate", "att"])
def test_interventional_weights_weight_the_means_of_the_unweighted_scores(population):
    # the learners are unweighted and the folds do not depend on the weights, so the per-row pieces are the
    # same: the weighted estimate is the weighted mean of the unweighted psi (ATT: of T theta(X) + g1 rest,
    # divided by the weighted share of treated rows), and its scores are the weighted centred psi
    data, _ = simulate.intermediate_confounding(600, seed=4)
    w = np.random.default_rng(0).uniform(0.5, 2.0, data.n)
    wn, t = w / w.mean(), data.t.astype(float)
    est = InterventionalMediation(n_folds=3, population=population, random_state=0)
    plain, weighted = est.fit(data, units="m"), est.fit(data, units="m", weights=w)
    assert plain.n == data.n  # no row left out, so rows line up
    for key in POTENTIAL:
        p, q = plain.diagnostics["m"]["potential_outcomes"][key], weighted.diagnostics["m"]["potential_outcomes"][key]
        if population == "ate":
            psi, lead = p.scores + p.estimate, np.ones(data.n)
            assert q.estimate == pytest.approx(np.average(psi, weights=w), rel=1e-10)
        else:  # plain scores: (num - T est) / P(T=1)
            num = p.scores * t.mean() + t * p.estimate
            assert q.estimate == pytest.approx(np.sum(w * num) / np.sum(w * t), rel=1e-10)
            share = np.mean(wn * t)
            psi, lead = num / share, t / share
        np.testing.assert_allclose(q.scores, wn * (psi - q.estimate * lead), rtol=1e-9, atol=1e-12)
    assert weighted.effect("m", "nie", "treated").estimate != pytest.approx(
        plain.effect("m", "nie", "treated").estimate, rel=1e-4)


def test_interventional_cluster_folds_and_cr1_scores(monkeypatch):
    data, g = clustered_data(seed=10)
    tests = []
    nuisances = itv._nuisances

    def spy(t, y, z, m, w, train, test, k):
        tests.append(test.copy())
        return nuisances(t, y, z, m, w, train, test, k)

    monkeypatch.setattr(itv, "_nuisances", spy)
    res = InterventionalMediation(random_state=0).fit(data, cluster=g)
    assert len(tests) == 5
    for test in tests:  # every cluster lies wholly inside or outside each held-out fold
        inside = np.bincount(g, weights=test)
        assert np.all((inside == 0) | (inside == np.bincount(g)))
    for key in [("nie", "treated"), ("nde", "control"), ("te", "average"), ("prop_mediated", "treated")]:
        eff = res.effect("m", *key)
        assert eff.method == "influence-cluster"
        sums = np.bincount(g, weights=eff.scores)
        assert eff.se == pytest.approx(np.sqrt(60 / 59 * np.sum(sums**2)) / data.n, rel=1e-10)
    assert res.settings["cluster"] == 60
    nie = res.effect("m", "nie", "treated")
    assert nie.se > 1.3 * Effect.from_scores(nie.estimate, nie.scores).se  # treatment and effects per cluster
    by_role = InterventionalMediation(random_state=0).fit(data.replace(cluster=g))
    assert by_role.effect("m", "nie", "treated").se == nie.se


@pytest.mark.parametrize("name", ["interventional", "weighting", "dml", "parametric", "eb_total"])
def test_fit_time_roles_follow_the_rows_positivity_drops(name):
    # topic k2 keeps its controls only: dropped by drop_unsupported (ATE) or outside the ATT population
    # (weighting); the fit-time cluster and weights arrays must lose those rows with it, which gives the fit of
    # the kept rows with the kept labels and weights
    data, g = clustered_data(seed=11)
    topic = data.x["topic"].astype(str).to_numpy()
    keep = np.flatnonzero(~((topic == "k2") & (data.t == 1)))
    cut, g_cut = data.subset(keep), g[keep]
    w = np.random.default_rng(1).uniform(0.5, 2.0, cut.n)
    kept = topic[keep] != "k2"
    est = {"interventional": InterventionalMediation(population="ate", drop_unsupported=True, random_state=0),
           "weighting": WeightingMediation(population="att"),
           "dml": DMLMediation(n_folds=3, n_rep=1, drop_unsupported=True, random_state=0),
           "parametric": ParametricMediation(n_sims=200, drop_unsupported=True, random_state=0),
           "eb_total": EntropyBalancedTotalEffect(population="ate", drop_unsupported=True)}[name]
    sw = {} if name == "weighting" else {"weights": w}  # weighting's weights need n_boot > 0
    res = est.fit(cut, cluster=g_cut, **sw)
    ref = est.fit(cut.subset(kept), cluster=g_cut[kept], **({k: v[kept] for k, v in sw.items()}))
    assert res.n == int(kept.sum())
    key = ("te", "average") if name == "eb_total" else ("nie", "treated")
    a, b = res.effect("m", *key), ref.effect("m", *key)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-10) and a.se == pytest.approx(b.se, rel=1e-10)


# ---- eb_total ------------------------------------------------------------------------------------------
def poststratified(data, w, g, population):
    """Independent oracle for the EB total effect with one topic column: weighted post-stratification, a smooth
    function of the weighted cell totals (n1_k, n0_k, sum y over treated / control rows of topic k), and its
    linearization SE: the per-row influence w_i grad f . z_i (f is scale-free, so the totals' means drop out),
    summed within clusters, CR1."""
    t, y = data.t.astype(float), data.y.astype(float)
    codes = data.x["topic"].cat.codes.to_numpy()
    onehot = np.eye(codes.max() + 1)[codes]
    z = np.hstack([onehot * t[:, None], onehot * (1 - t)[:, None], onehot * (t * y)[:, None],
                   onehot * ((1 - t) * y)[:, None]])

    def te(tot):
        n1, n0, s1, s0 = tot.reshape(4, -1)
        if population == "att":
            return s1.sum() / n1.sum() - (n1 / n1.sum()) @ (s0 / n0)
        return ((n1 + n0) / (n1 + n0).sum()) @ (s1 / n1 - s0 / n0)

    wn = w / w.mean()
    tot = wn @ z / data.n
    grad = np.array([(te(tot + 1e-6 * e) - te(tot - 1e-6 * e)) / 2e-6 for e in np.eye(len(tot))])
    sums = np.bincount(g, weights=wn * (z @ grad))
    return te(tot), np.sqrt(len(sums) / (len(sums) - 1) * np.sum(sums**2)) / data.n


@pytest.mark.parametrize("population", ["att", "ate"])
def test_eb_total_weights_and_clusters_match_weighted_poststratification(population):
    data, g = clustered_data(seed=12)
    w = np.random.default_rng(3).uniform(0.3, 3.0, data.n)
    est = EntropyBalancedTotalEffect(population=population)
    res = est.fit(data, cluster=g, weights=w)
    te = res.effect("m", "te", "average")
    want, se = poststratified(data, w, g, population)
    assert te.estimate == pytest.approx(want, abs=1e-8)
    assert te.se == pytest.approx(se, rel=1e-6)
    assert te.method == "influence-cluster" and res.settings["cluster"] == 60 and res.settings["weights"]
    sums = np.bincount(g, weights=te.scores)  # and it is the CR1 formula of its own scores
    assert te.se == pytest.approx(np.sqrt(60 / 59 * np.sum(sums**2)) / data.n, rel=1e-12)
    rows = est.fit(data, cluster=np.arange(data.n), weights=w).effect("m", "te", "average")  # singletons
    assert rows.se == pytest.approx(poststratified(data, w, np.arange(data.n), population)[1], rel=1e-6)
    assert te.se > 1.3 * rows.se
    # the balance targets are weighted: controls (and, for the ATE, the treated) reweighted to the
    # weighted treated (pooled) topic shares
    onehot = np.eye(3)[data.x["topic"].cat.codes.to_numpy()][:, 1:]
    tr = data.t == 1
    target = np.average(onehot[tr], weights=w[tr], axis=0) if population == "att" else \
        np.average(onehot, weights=w, axis=0)
    table = res.diagnostics["m"]["balance"]
    np.testing.assert_allclose(table["control_weighted"], target, atol=1e-8)
    np.testing.assert_allclose(table["treated_weighted"], target, atol=1e-8)
    np.testing.assert_allclose(table["control_raw"], np.average(onehot[~tr], weights=w[~tr], axis=0), atol=1e-12)


@pytest.mark.parametrize("population", ["att", "ate"])
def test_eb_total_ones_reproduce_unweighted_and_integer_weights_repeat_rows(population):
    data, _ = clustered_data(seed=13)
    est = EntropyBalancedTotalEffect(population=population)
    plain = est.fit(data).effect("m", "te", "average")
    ones = est.fit(data, weights=np.ones(data.n)).effect("m", "te", "average")
    assert (ones.estimate, ones.se) == (plain.estimate, plain.se)
    reps = np.random.default_rng(4).integers(1, 4, data.n)
    weighted = est.fit(data, weights=reps.astype(float)).effect("m", "te", "average")
    repeated = est.fit(data.subset(np.repeat(np.arange(data.n), reps))).effect("m", "te", "average")
    assert weighted.estimate == pytest.approx(repeated.estimate, abs=1e-8)
    # no confounders: the weighted difference of arm means
    bare = est.fit(data, graph="unadjusted_mediation", weights=reps.astype(float)).effect("m", "te", "average")
    tr = data.t == 1
    assert bare.estimate == pytest.approx(np.average(data.y[tr], weights=reps[tr])
                                          - np.average(data.y[~tr], weights=reps[~tr]), rel=1e-12)


def test_eb_total_cluster_bootstrap_with_weights():
    data, g = clustered_data(seed=14)
    w = np.random.default_rng(5).uniform(0.5, 2.0, data.n)
    est = EntropyBalancedTotalEffect(n_boot=300, random_state=0)
    analytic = EntropyBalancedTotalEffect().fit(data, cluster=g, weights=w).effect("m", "te", "average")
    boot = est.fit(data, cluster=g, weights=w).effect("m", "te", "average")
    assert boot.estimate == pytest.approx(analytic.estimate, abs=1e-8)  # the statistic carries the weights
    stat = EntropyBalancedTotalEffect().statistic(data.replace(weights=w))  # the data's weights role
    assert stat(data, np.ones(data.n))[0] == pytest.approx(analytic.estimate, abs=1e-8)
    assert boot.se == pytest.approx(analytic.se, rel=0.15)  # MC error of an SD from 300 draws: about 4%
    assert boot.se > 1.3 * est.fit(data, weights=w).effect("m", "te", "average").se

