"""Weighting mediation (Huber 2014) and the entropy-balanced total effect: oracles, identities, diagnostics."""
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from deconfound.data import MediationData
from deconfound.errors import PositivityError
from deconfound.estimators import get_estimator
from deconfound.estimators import _learners
from deconfound.estimators._learners import eb_odds
from deconfound.estimators.weighting import EntropyBalancedTotalEffect, WeightingMediation, _design, _WeightingStatistic
from deconfound.simulate import topic_mediation

KEYS = [("te", "average"), ("nie", "treated"), ("nie", "control"), ("nde", "control"), ("nde", "treated")]


@pytest.fixture(scope="module")
def sim():
    return topic_mediation(1500, n_topics=4, n_units=2, dim=2, seed=5)[0]


def quiet_fit(est, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(data, **kw)


def cell_px(data):
    """p(X) = n1(x) / n(x) per topic (closed form)."""
    codes = data.x["topic"].cat.codes.to_numpy()
    share = np.bincount(codes, weights=data.t) / np.bincount(codes)
    return share[codes]


def huber_oracle(data, unit, trim, population="ate"):
    """Independent re-implementation of causalweight::medweight (normalized weights, trimming on p(M,X)):
    p(X) by topic cells, p(M,X) by an unpenalized statsmodels Logit on [1, M, one-hot topic]. For the ATT the
    densities are reweighted to the treated rows' X: f(m|0,x)/f(m|1,x) on the treated, f(m|1,x)f(x|1) /
    (f(m|0,x)f(x|0)) on the controls (Bayes' rule in p(X) and p(M,X))."""
    t, y = data.t.astype(float), data.y
    px = cell_px(data)
    onehot = pd.get_dummies(data.x["topic"], drop_first=True).to_numpy(float)
    z = sm.add_constant(np.column_stack([data.mediator(unit).astype(float), onehot]))
    pmx = sm.Logit(t, z).fit(disp=0, method="newton", tol=1e-12, maxiter=100).predict(z)
    keep = (pmx >= trim) & (pmx <= 1 - trim)
    t, y, px, pmx = t[keep], y[keep], px[keep], pmx[keep]

    def mean(w):
        return np.sum(w * y) / np.sum(w)

    if population == "att":
        odds = px / (1 - px)
        y11, y00 = mean(t), mean((1 - t) * odds)
        y10 = mean(t * (1 - pmx) / pmx * odds)
        y01 = mean((1 - t) * pmx / (1 - pmx) / odds * odds)
    else:
        y11, y00 = mean(t / px), mean((1 - t) / (1 - px))
        y10 = mean(t * (1 - pmx) / (pmx * (1 - px)))
        y01 = mean((1 - t) * pmx / ((1 - pmx) * px))
    return {("te", "average"): y11 - y00, ("nie", "treated"): y11 - y10, ("nie", "control"): y01 - y00,
            ("nde", "control"): y10 - y00, ("nde", "treated"): y11 - y01}, int((~keep).sum())


@pytest.mark.parametrize("propensity", ["eb", "logit"])
@pytest.mark.parametrize("population", ["ate", "att"])
def test_defaults_match_an_independent_huber_implementation(sim, propensity, population):
    """The default learner is unpenalized here (n1, n0 >= 5 rows per feature), and nothing is trimmed."""
    res = quiet_fit(WeightingMediation(propensity=propensity, population=population), sim)
    assert res.population == population and res.settings["trim"] == 0.0
    for unit in sim.units:
        truth, trimmed = huber_oracle(sim, unit, 0.0, population)
        assert trimmed == 0 and res.diagnostics[unit]["n_trimmed"] == 0 and res.diagnostics[unit]["C"] == np.inf
        for key in KEYS:
            assert res.effect(unit, *key).estimate == pytest.approx(truth[key], abs=1e-7)


def test_explicit_trimming_matches_causalweight_and_is_flagged_as_no_population(sim):
    with pytest.warns(RuntimeWarning, match="post-treatment mediator"):
        res = WeightingMediation(trim=0.05).fit(sim)
    assert res.population == "overlap" and "selected on the mediator" in res.settings["population_note"]
    assert res.diagnostics["u0"]["n_trimmed"] > 0
    for unit in sim.units:
        truth, trimmed = huber_oracle(sim, unit, 0.05)
        assert res.diagnostics[unit]["n_trimmed"] == trimmed
        for key in KEYS:
            assert res.effect(unit, *key).estimate == pytest.approx(truth[key], abs=1e-7)


def test_eb_implied_propensity_is_the_topic_share(sim):
    bm = _design(sim, ["topic"])
    h, blocks, _ = eb_odds(bm, sim.t, np.ones(sim.n), blocks=True)
    px = np.where(sim.t == 1, 1 / (1 + h), h / (1 + h))
    np.testing.assert_allclose(px, cell_px(sim), rtol=0, atol=1e-10)
    # the influence of the EB parameters is centred (mean of the estimating equations is zero at the solution)
    for phi, _ in blocks:
        np.testing.assert_allclose(phi.mean(axis=0), 0, atol=1e-8)


def test_eb_implied_weights_balance_soft_topics_to_the_pooled_means():
    rng = np.random.default_rng(3)
    n = 600
    probs = rng.dirichlet([2, 1, 1], size=n)
    t = (rng.random(n) < 0.2 + 0.6 * probs[:, 0]).astype(int)
    data = MediationData.from_arrays(t=t, y=rng.normal(size=n), mediators={"m": rng.normal(size=(n, 1))},
                                     x=pd.DataFrame(probs, columns=["pa", "pb", "pc"]))
    bm = _design(data, ["pa", "pb", "pc"])
    h, _, _ = eb_odds(bm, t, np.ones(n), blocks=False)
    for arm in (0, 1):
        w = (1 + h) * (t == arm)  # 1/p(X) on the treated, 1/(1-p(X)) on the controls
        np.testing.assert_allclose(w @ bm.values / w.sum(), bm.values.mean(axis=0), atol=1e-7)
        assert w.sum() == pytest.approx(n, rel=1e-8)  # the implied inverse probabilities sum to n


def test_effect_identities_hold_for_estimates_and_scores(sim):
    res = quiet_fit(WeightingMediation(), sim)
    for u in sim.units:
        e = {k: res.effect(u, *k) for k in KEYS}
        for a, b in ((("nie", "treated"), ("nde", "control")), (("nie", "control"), ("nde", "treated"))):
            assert e[a].estimate + e[b].estimate == pytest.approx(e[("te", "average")].estimate, abs=1e-12)
            np.testing.assert_allclose(e[a].scores + e[b].scores, e[("te", "average")].scores, atol=1e-9)
        for key in KEYS:  # influence values are centred
            assert abs(e[key].scores.mean()) < 1e-8
        avg = res.effect(u, "nie", "average")
        assert avg.estimate == pytest.approx((e[("nie", "treated")].estimate + e[("nie", "control")].estimate) / 2)
        assert ("te", "treated") not in res.effects[u] and ("te", "control") not in res.effects[u]
        pots = res.diagnostics[u]["potential_outcomes"]
        assert (pots["y11"] - pots["y10"]).estimate == pytest.approx(e[("nie", "treated")].estimate)


@pytest.mark.parametrize("propensity,population,c", [("eb", "ate", None), ("logit", "ate", None),
                                                     ("eb", "att", None), ("eb", "ate", 1e3)])
def test_influence_values_equal_the_empirical_influence_function(propensity, population, c, monkeypatch):
    """The stacked influence function is the derivative of the whole estimator (weights refitted) in the
    frequency weight of one row: n * d theta / d f_i, by central differences. The default p(M,X) is
    unpenalized here; c = 1e3 forces the penalized (glum) branch with its C held fixed (a C large enough that
    the standardization, held fixed by the SE, does not matter)."""
    if c is not None:
        monkeypatch.setattr(_learners, "default_c", lambda *args, **kwargs: c)
    data, _ = topic_mediation(300, n_topics=3, n_units=1, seed=8)
    est = WeightingMediation(propensity=propensity, population=population)
    res = quiet_fit(est, data)
    stat = _WeightingStatistic(est, ["u0"], ["topic"], {"u0": res.diagnostics["u0"]["C"]})
    keys = [("te", "average"), ("nie", "treated"), ("nie", "control"), ("nde", "control"), ("nde", "treated")]
    f, eps = np.ones(data.n), 1e-5
    for i in (0, 7, 150, 299):
        up, down = f.copy(), f.copy()
        up[i] += eps
        down[i] -= eps
        numeric = data.n * (stat(data, up) - stat(data, down)) / (2 * eps)
        analytic = [res.effect("u0", *k).scores[i] for k in keys]
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-5)


def test_analytic_se_agrees_with_the_bootstrap(sim):
    data = sim.select_units(["u0"])
    ana = quiet_fit(WeightingMediation(), data)
    boot = quiet_fit(WeightingMediation(n_boot=300, random_state=1), data)
    assert boot.diagnostics["u0"]["se"] == "bootstrap: 300 of 300 replicates"
    assert ana.diagnostics["u0"]["se"] == "influence: p(X) and p(M,X) estimated"
    for key in KEYS:
        a, b = ana.effect("u0", *key), boot.effect("u0", *key)
        assert a.estimate == b.estimate
        assert 0.8 < a.se / b.se < 1.25, (key, a.se, b.se)
    draws = {k: boot.effect("u0", *k).draws for k in KEYS}
    np.testing.assert_allclose(draws[("nie", "treated")] + draws[("nde", "control")], draws[("te", "average")],
                               atol=1e-12)


def test_partial_penalty_leaves_the_confounders_unpenalized(sim):
    bm = _design(sim, ["topic"])
    z = np.column_stack([sim.mediator("u1"), bm.values])
    t, f = sim.t.astype(int), np.ones(sim.n)
    zs, zt, mask = _learners.standardize(z, bm.values.shape[1], f)
    assert mask.tolist() == [0, 1, 1, 0, 0, 0]
    free, pen = _learners._penalized(zs, t, f, mask, np.inf)
    ref = sm.Logit(t.astype(float), zt).fit(disp=0, method="newton", tol=1e-12).params
    np.testing.assert_allclose(free, ref, atol=1e-6)
    assert not pen.any()
    heavy, pen = _learners._penalized(zs, t, f, mask, 1e-9)  # mediator shrunk to 0: the topic-cell model remains
    np.testing.assert_allclose(1 / (1 + np.exp(-zt @ heavy)), cell_px(sim), atol=1e-5)
    np.testing.assert_allclose(pen, mask / 1e-9)
    # a moderate penalty: glum's solution satisfies the penalized score equations the SE block uses
    mid, pen = _learners._penalized(zs, t, f, mask, 0.5)
    p = 1 / (1 + np.exp(-zt @ mid))
    np.testing.assert_allclose(zt.T @ (t - p) - pen * mid, 0, atol=1e-6)


def test_default_learner_penalizes_only_when_rows_are_few():
    """Unpenalized with >= 5 rows of the smaller arm per feature; else C by cross-validation (finite)."""
    rng = np.random.default_rng(0)
    n = 200
    topic = rng.integers(0, 3, n)
    t = (rng.random(n) < 0.3 + 0.2 * topic).astype(int)
    m = rng.normal(size=(n, 30)) + 0.2 * t[:, None]
    data = MediationData.from_arrays(t=t, y=t + 0.2 * m[:, 0] + rng.normal(size=n), mediators={"wide": m,
                                     "narrow": m[:, :1]}, x=pd.DataFrame({"topic": [f"k{v}" for v in topic]}))
    res = quiet_fit(WeightingMediation(), data)
    assert res.diagnostics["narrow"]["C"] == np.inf
    wide = res.diagnostics["wide"]
    assert np.isfinite(wide["C"]) and np.isclose(wide["C"], _learners.CV_CS, rtol=1e-9).any()
    assert wide["se"].endswith("(the cross-validated penalty treated as fixed)")
    again = quiet_fit(WeightingMediation(), data).effect("wide", "nie", "treated")
    assert again.estimate == res.effect("wide", "nie", "treated").estimate


def test_pca_inside_the_estimator():
    rng = np.random.default_rng(0)
    n = 400
    topic = rng.integers(0, 3, n)
    t = (rng.random(n) < 0.3 + 0.2 * topic).astype(int)
    m = rng.normal(size=(n, 60)) + 0.3 * t[:, None]
    data = MediationData.from_arrays(t=t, y=t + m[:, :5].sum(1) * 0.1 + rng.normal(size=n), mediators={"m": m},
                                     x=pd.DataFrame({"topic": [f"k{v}" for v in topic]}))
    res = quiet_fit(WeightingMediation(pca=4), data)
    assert res.diagnostics["m"]["n_features"] == 4 + 2 and res.diagnostics["m"]["C"] == np.inf
    assert quiet_fit(WeightingMediation(), data).diagnostics["m"]["n_features"] == 60 + 2
    # bootstrap counts: the PCA is fitted on the resample (rows repeated by their counts)
    f = rng.multinomial(n, np.full(n, 1 / n)).astype(float)
    rows = np.repeat(np.arange(n), f.astype(int))
    z = _learners.features(m, np.zeros((n, 0)), 4, f)[rows]
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-10)           # centred on the resample
    cov = np.cov(z.T)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-10)  # uncorrelated on the resample
    top = np.linalg.eigvalsh(np.cov(m[rows].T))[::-1][:4]
    np.testing.assert_allclose(np.diag(cov), top, rtol=1e-8)             # the top-4 eigenvalues


def test_learner_choice_is_reported(sim):
    data = sim.select_units(["u0"])
    default = quiet_fit(WeightingMediation(), data)
    assert default.diagnostics["u0"]["C"] == np.inf and "unpenalized" in default.settings["mediator_learner"]
    lr = quiet_fit(WeightingMediation(mediator_learner=LogisticRegression(C=0.5)), data)
    assert lr.diagnostics["u0"]["se"] == "influence: p(X) and p(M,X) estimated"
    assert lr.diagnostics["u0"]["C"] == 0.5
    nb = quiet_fit(WeightingMediation(mediator_learner=GaussianNB()), data)
    assert nb.diagnostics["u0"]["se"] == "influence: p(X) estimated, p(M,X) treated as known"
    assert np.isfinite(nb.effect("u0", "nie", "treated").estimate)


def separable_data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 3, n)
    t = (rng.random(n) < 0.3 + 0.2 * topic).astype(int)
    mediators = {"sep": (t * 10.0 + 0.01 * rng.normal(size=n))[:, None],
                 "near": (t * 2.5 + rng.normal(size=n))[:, None], "ok": (0.3 * t + rng.normal(size=n))[:, None]}
    return MediationData.from_arrays(t=t, y=t + topic * 0.3 + rng.normal(size=n), mediators=mediators,
                                     x=pd.DataFrame({"topic": [f"k{v}" for v in topic]}))


def test_near_separable_mediators_are_warned_recorded_and_never_silent():
    data = separable_data()
    with pytest.warns(RuntimeWarning) as caught:
        res = WeightingMediation().fit(data)
    msgs = [str(w.message) for w in caught]
    near = res.diagnostics["near"]
    assert near["separable"] and near["share_extreme"] > 0.1 and near["n_trimmed"] == 0
    text = (f"unit 'near': p(M,X) is near-separable: {near['share_extreme']:.1%} of the {data.n} rows have p(M,X) "
            "below 0.01 or above 0.99")
    assert any(m.startswith(text) for m in msgs) and any(m.startswith(text) for m in res.warnings)
    # the cross-world weights of 'near' rest on one or two rows: no number, and a message that says why
    assert near["ess_y10"] < 10 and near["max_share_y10"] > 0.5
    assert np.isnan(res.effect("near", "nie", "treated").estimate)
    assert any(m.startswith("unit 'near': no estimate: a cross-world mean rests on fewer than 10") for m in msgs)
    # complete separation: effects NaN, loudly
    sep = res.diagnostics["sep"]
    assert sep["separated"] and sep["separable"] and sep["share_extreme"] > 0.99
    assert np.isnan(res.effect("sep", "nie", "treated").estimate)
    assert np.isnan(res.effect("sep", "te", "average").se)
    assert any(m.startswith("unit 'sep': no estimate: p(M,X) separates the arms completely") for m in res.warnings)
    assert not res.diagnostics["ok"]["separable"] and np.isfinite(res.effect("ok", "nie", "treated").se)
    assert not any("unit 'ok'" in m for m in msgs)
    assert "Warning: unit 'near'" in res.summary()


def test_unadjusted_graph_uses_a_constant_propensity(sim):
    res = quiet_fit(WeightingMediation(), sim, graph="unadjusted_mediation")
    d = res.diagnostics["u0"]
    assert d["px_min"] == pytest.approx(sim.n_treated / sim.n) and d["px_max"] == pytest.approx(sim.n_treated / sim.n)
    assert res.adjustment["first_stage"] == []
    te = quiet_fit(EntropyBalancedTotalEffect(), sim, graph="unadjusted_mediation").effect("u0", "te", "average")
    y1, y0 = sim.y[sim.t == 1], sim.y[sim.t == 0]
    assert te.estimate == pytest.approx(y1.mean() - y0.mean(), abs=1e-12)
    assert te.se == pytest.approx(np.sqrt(y1.var() / len(y1) + y0.var() / len(y0)), rel=1e-10)


def poststrat(data, population):
    """Post-stratified effect and its influence-function SE (closed forms with topic-cell means)."""
    codes, t, y = data.x["topic"].cat.codes.to_numpy(), data.t, data.y
    n, n1 = len(t), t.sum()
    k = codes.max() + 1
    n1x, nx = np.bincount(codes, weights=t, minlength=k), np.bincount(codes, minlength=k)
    n0x = nx - n1x
    m1 = np.bincount(codes, weights=y * t, minlength=k) / n1x
    m0 = np.bincount(codes, weights=y * (1 - t), minlength=k) / n0x
    c1, c0, px = m1[codes], m0[codes], (n1x / nx)[codes]
    if population == "att":
        tau = np.sum(n1x / n1 * (m1 - m0))
        psi = (t * (y - c0 - tau) - (1 - t) * (n1x / n0x)[codes] * (y - c0)) / (n1 / n)
    else:
        tau = np.sum(nx / n * (m1 - m0))
        psi = t / px * (y - c1) - (1 - t) / (1 - px) * (y - c0) + (c1 - c0) - tau
    return tau, np.sqrt(np.mean(psi**2) / n)


@pytest.mark.parametrize("population", ["att", "ate"])
def test_eb_total_effect_equals_post_stratification(sim, population):
    res = EntropyBalancedTotalEffect(population=population).fit(sim)
    tau, se = poststrat(sim, population)
    te = res.effect("u0", "te", "average")
    assert te.estimate == pytest.approx(tau, abs=1e-10)
    assert te.se == pytest.approx(se, rel=1e-8)
    assert res.population == population
    assert set(res.effects["u1"]) == {("te", "average")}
    assert "balance" in res.diagnostics["u0"] and res.diagnostics["u0"]["ess_control"] > 0


@pytest.mark.parametrize("population", ["att", "ate"])
def test_eb_total_bootstrap_refits_the_weights(sim, population):
    res = EntropyBalancedTotalEffect(population=population, n_boot=200, random_state=3).fit(sim)
    te = res.effect("u0", "te", "average")
    assert te.draws.shape == (200,) and te.method == "percentile"
    _, se = poststrat(sim, population)
    assert 0.8 < te.se / se < 1.25


def test_registry_determinism_and_settings(sim):
    est = get_estimator("weighting", trim=0.02)
    assert isinstance(est, WeightingMediation) and est.trim == 0.02
    assert isinstance(get_estimator("eb_total"), EntropyBalancedTotalEffect)
    a, b = quiet_fit(WeightingMediation(), sim), quiet_fit(WeightingMediation(), sim)
    assert a.to_frame().equals(b.to_frame())
    assert a.settings["trim"] == 0.0 and a.settings["pca"] is None and a.population == "ate"
    assert a.settings["adjusted_for"] == ["topic"]
    assert "balance_att" in a.diagnostics["_weights"]


def test_positivity_and_bad_arguments(sim):
    t = np.array([1] * 10 + [0] * 10 + [1] * 4)
    rng = np.random.default_rng(0)
    data = MediationData.from_arrays(t=t, y=rng.normal(size=24), mediators={"m": rng.normal(size=(24, 1))},
                                     x=pd.DataFrame({"topic": ["a"] * 20 + ["b"] * 4}))
    with pytest.raises(PositivityError, match=r"ATE weighting mediation needs both arms in every topic \(expected "
                       r"n1 > 0 and n0 > 0\), got 1 topic\(s\) without overlap: topic 'b': n1=4, n0=0"):
        WeightingMediation().fit(data)
    with pytest.raises(PositivityError, match="topic 'b': n1=4, n0=0"):
        EntropyBalancedTotalEffect().fit(data)
    dropped = [{"variable": "topic", "level": "b", "n1": 4, "n0": 0}]
    for est in (WeightingMediation(drop_unsupported=True), EntropyBalancedTotalEffect(drop_unsupported=True)):
        res = quiet_fit(est, data)
        assert res.n == 20 and res.settings["positivity_dropped"] == dropped
    for kw, msg in [({"trim": 0.6}, "trim"), ({"propensity": "x"}, "propensity"), ({"n_boot": -1}, "n_boot"),
                    ({"level": 1.5}, "level"), ({"pca": 0}, "pca"), ({"population": "atc"}, "population"), ({"mediator_learner": object()}, "predict_proba")]:
        with pytest.raises((ValueError, TypeError), match=msg):
            WeightingMediation(**kw).fit(sim)
    with pytest.raises(ValueError, match="population"):
        EntropyBalancedTotalEffect(population="atc").fit(sim)


def test_latent_graph_is_flagged(sim):
    with pytest.warns(RuntimeWarning, match="not identified"):
        res = EntropyBalancedTotalEffect().fit(sim, graph="latent_topic")
    assert any("not identified" in w for w in res.warnings)


def test_statistics_for_paired_bootstraps(sim):
    from deconfound.bootstrap import bootstrap, paired_bootstrap

    data = sim.select_units(["u1"])  # u1 is the spurious unit (true NIE 0)
    est = WeightingMediation()
    adjusted = est.statistic(data)
    unadjusted = est.statistic(data, graph="unadjusted_mediation")
    assert adjusted.names == ["u1:te", "u1:nie_treated", "u1:nie_control", "u1:nde_control", "u1:nde_treated"]
    fitted = quiet_fit(est, data)
    np.testing.assert_allclose(adjusted(data, np.ones(data.n)), [fitted.effect("u1", *k).estimate for k in KEYS],
                               atol=1e-12)
    boot_fit = quiet_fit(WeightingMediation(n_boot=40, random_state=2), data)
    boot = bootstrap(WeightingMediation(random_state=2).statistic(data), data, n_boot=40, random_state=2)
    np.testing.assert_allclose(boot.draws[:, 1], boot_fit.effect("u1", "nie", "treated").draws, atol=1e-12)
    pb = paired_bootstrap(unadjusted, adjusted, data, n_boot=60, random_state=0)
    lo, _ = pb.diff.effect("u1:nie_treated").ci
    assert lo > 0  # the topic-driven spurious NIE disappears after adjustment, on the same resamples
    total = EntropyBalancedTotalEffect()
    assert total.statistic(data)(data, np.ones(data.n))[0] == pytest.approx(
        total.fit(data).effect("u1", "te", "average").estimate, abs=1e-12)


def test_progress_bar_over_units_only_when_asked_or_on_a_terminal(sim, capsys):
    quiet_fit(WeightingMediation(), sim)                               # default: stderr is not a terminal
    assert "weighting: units" not in capsys.readouterr().err
    quiet_fit(WeightingMediation(), sim, progress=True)
    assert "weighting: units" in capsys.readouterr().err


def test_a_unit_without_extreme_scores_is_not_called_near_separable():
    """A unit left without an estimate for a thin cross-world mean, with no p(M,X) outside [0.01, 0.99], gets the
    'no estimate' message only (it used to be called near-separable with '0.0% of the rows')."""
    from deconfound.estimators.weighting import _unit_warnings

    diag = {"separable": False, "separated": False, "share_trimmed": 0.0, "share_extreme": 0.0, "pmx_min": 0.02,
            "pmx_max": 0.94, "n_trimmed": 0, "ess_y10": 35.7, "ess_y01": 8.9, "n_kept": 91}
    msgs = _unit_warnings("u", diag, 91, WeightingMediation())
    assert not any("near-separable" in m for m in msgs)
    assert any(m.startswith("unit 'u': no estimate: a cross-world mean rests on fewer than 10") for m in msgs)
    assert any("near-separable" in m for m in _unit_warnings("u", {**diag, "share_extreme": 0.2, "separable": True}, 91,
                                                               WeightingMediation()))


def test_a_penalized_default_warns_that_the_nie_is_shrunk():
    """The dim50 cell at n = 300: the default learner is penalized there and the NIE was ~6 SE too small."""
    from deconfound import simulate
    from deconfound.errors import CalibrationWarning

    wide, truth = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    with pytest.warns(CalibrationWarning, match=r"units 'u0' \(53 features\) of \[M, X\] for 149 rows.*shrinks p\(M,X\) toward p\(X\)"):
        res = WeightingMediation().fit(wide)
    assert np.isfinite(res.diagnostics["u0"]["C"])
    nie = res.effect("u0", "nie", "treated")
    assert (truth.value("u0", "nie", "treated", "ate") - nie.estimate) / nie.se > 3  # what the warning is about
    roomy, _ = simulate.topic_mediation(600, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = WeightingMediation().fit(roomy)  # 5 rows per feature: unpenalized, no such warning
    assert res.diagnostics["u0"]["C"] == np.inf and not any("shrinks" in str(w.message) for w in caught)
    with pytest.warns(CalibrationWarning, match="shrinks"):  # pca below the width is applied at any width
        assert WeightingMediation(pca=60).fit(wide).diagnostics["u0"]["n_features"] == 53
    assert quiet_fit(WeightingMediation(pca=5), wide).diagnostics["u0"]["C"] == np.inf  # 8 features: unpenalized


def test_pca_weights_rows_by_sampling_weights_that_are_not_counts():
    """Sampling weights (scaled to mean 1, so mostly not integers) weight the PCA like copies of the rows: weights
    c / 2 give the components of the counts c (the rows repeated c times), not those of the rows with weight >= 1."""
    rng = np.random.default_rng(3)
    n = 300
    m = rng.normal(size=(n, 8)) @ rng.normal(size=(8, 8))
    counts = rng.integers(1, 4, n).astype(float)  # 1, 2 or 3 copies
    rows = np.repeat(np.arange(n), counts.astype(int))
    want = _learners.features(m, np.zeros((n, 0)), 3, counts)
    got = _learners.features(m, np.zeros((n, 0)), 3, counts / 2)  # 0.5, 1, 1.5
    signs = np.sign(np.sum(want * got, axis=0))
    np.testing.assert_allclose(got * signs, want, atol=1e-8)
    top = np.linalg.eigvalsh(np.cov(m[rows].T))[::-1][:3]
    np.testing.assert_allclose(np.var(want[rows], axis=0, ddof=1), top, rtol=1e-8)  # the repeated rows' PCA


def test_penalized_warning_names_each_unit_with_its_features():
    from deconfound import simulate
    from deconfound.errors import CalibrationWarning

    wide, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    m = wide.mediator("u0")
    data = MediationData.from_arrays(t=wide.t, y=wide.y, x=wide.x, mediators={
        "a": m, "b": np.column_stack([m, np.random.default_rng(1).normal(size=(300, 30))]), "one": m[:, :1]})
    with pytest.warns(CalibrationWarning, match=r"units 'a' \(53 features\), 'b' \(83 features\) of \[M, X\] "
                                                rf"for {min(wide.n_treated, wide.n - wide.n_treated)} rows"):
        res = WeightingMediation().fit(data)
    assert res.diagnostics["one"]["C"] == np.inf  # 4 features: unpenalized, not named


def test_the_statistic_warns_when_its_default_learner_is_penalized():
    """statistic() (the paired bootstrap of the adjusted against the unadjusted NIE) chooses the same penalty as
    fit(), so it shrinks the same NIEs toward 0, and says so."""
    from deconfound import simulate
    from deconfound.errors import CalibrationWarning

    wide, _ = simulate.topic_mediation(300, seed=0, n_topics=4, n_units=1, n_spurious=0, dim=50)
    with pytest.warns(CalibrationWarning, match=r"units 'u0' \(53 features\) of \[M, X\] for 149 rows.*shrinks"):
        stat = WeightingMediation().statistic(wide)
    assert np.isfinite(stat.cs["u0"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WeightingMediation(pca=5).statistic(wide)  # 8 features: unpenalized, no warning
