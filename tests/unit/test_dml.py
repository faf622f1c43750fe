"""DMLMediation: an independent re-implementation on the same splits, simulation truths, identities, errors."""
import importlib
import warnings

import numpy as np
import pandas as pd
import pytest
from joblib import parallel_config
from scipy.special import expit
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.svm import LinearSVC

from deconfound.data import MediationData
from deconfound.errors import DataError
from deconfound.estimators import get_estimator
from deconfound.estimators import dml as dml_mod
from deconfound.estimators.dml import DMLMediation, cross_fit_splits, shared_nuisances
from deconfound.folds import data_folds, make_folds
from deconfound.simulate import topic_mediation

PRIMARY = [("te", "average"), ("nie", "treated"), ("nie", "control"), ("nde", "treated"), ("nde", "control"),
           ("nie", "average"), ("nde", "average")]
CHEAP = dict(outcome_learner=Ridge(alpha=1.0), propensity_learner=LogisticRegression(C=1.0))


@pytest.fixture(scope="module")
def linear():
    data, truth = topic_mediation(5000, n_units=2, n_topics=4, seed=11)
    return data, truth, DMLMediation().fit(data)


@pytest.fixture(scope="module")
def linear1(linear):
    """The same data with one sample split: exact identities and the OVB contract."""
    data, truth, _ = linear
    return data, truth, DMLMediation(n_rep=1).fit(data)


def strong_tm(n, seed, beta=1.0, kappa=1.0, theta=0.5, b=0.5):
    """Linear SEM with a strong T -> M path and a T x M interaction; its closed-form truth per population.

    topic k uniform on 4 levels with a_k = (-1, -0.3, 0.3, 1); T ~ Bernoulli(expit(a_k));
    M = 0.5 a_k + beta T + e; Y = theta T + 0.8 a_k + (b + kappa T) M + u (e, u standard normal). Then
    E[Y(d, M(d')) | pop] = theta d + 0.8 E[a] + (b + kappa d)(0.5 E[a] + beta d'), E over the topic's
    distribution in the population (uniform for the ATE, proportional to expit(a_k) for the ATT).
    With beta = 1, causalweight's trimming rule at 0.05 drops about 8% of the rows.
    """
    a, pi = np.array([-1.0, -0.3, 0.3, 1.0]), np.full(4, 0.25)
    rng = np.random.default_rng(seed)
    k = rng.choice(4, size=n, p=pi)
    t = (rng.random(n) < expit(a[k])).astype(int)
    m = 0.5 * a[k] + beta * t + rng.normal(size=n)
    y = theta * t + 0.8 * a[k] + (b + kappa * t) * m + rng.normal(size=n)
    x = pd.DataFrame({"topic": pd.Categorical([f"t{j}" for j in k], categories=[f"t{j}" for j in range(4)])})
    data = MediationData.from_arrays(t=t, y=y, mediators={"u0": m[:, None]}, x=x)
    truth = {}
    for pop, w in (("ate", pi), ("att", pi * expit(a) / (pi * expit(a)).sum())):
        def q(d, dp):
            return theta * d + 0.8 * (w @ a) + (b + kappa * d) * (0.5 * (w @ a) + beta * dp)
        truth[pop] = {("nie", "treated"): q(1, 1) - q(1, 0), ("nie", "control"): q(0, 1) - q(0, 0),
                      ("nde", "treated"): q(1, 1) - q(0, 1), ("nde", "control"): q(1, 0) - q(0, 0),
                      ("te", "average"): q(1, 1) - q(0, 0)}
    return data, truth


# ---- an independent re-implementation (causalweight medDML's formulas, written out) -------------------------
def manual_dml(data, unit, *, n_folds, random_state, trim, clip, normalize):
    """Plain loops over folds with LinearRegression / LogisticRegression, then causalweight's sums on the rows
    with trim <= p(X) <= 1 - trim, with p(M,X) clipped to [clip, 1 - clip]."""
    folds, halves = cross_fit_splits(data, n_folds, random_state)
    t, y, n = data.t.astype(int), data.y, data.n
    x = pd.get_dummies(data.x["topic"], drop_first=True).to_numpy(float)
    xm = np.hstack([data.mediator(unit).astype(float), x])
    cols = {c: np.zeros(n) for c in ("px", "pmx", "m0x", "m1x", "m0mx", "m1mx", "om0", "om1")}
    for k in range(n_folds):
        te, tr = folds == k, folds != k
        a, b = tr & (halves == 0), tr & (halves == 1)
        cols["px"][te] = LogisticRegression().fit(x[tr], t[tr]).predict_proba(x[te])[:, 1]
        cols["pmx"][te] = LogisticRegression().fit(xm[tr], t[tr]).predict_proba(xm[te])[:, 1]
        for d in (0, 1):
            cols[f"m{d}x"][te] = LinearRegression().fit(x[tr & (t == d)], y[tr & (t == d)]).predict(x[te])
            fit_m = LinearRegression().fit(xm[a & (t == d)], y[a & (t == d)])
            cols[f"m{d}mx"][te] = fit_m.predict(xm[te])
            other = b & (t == 1 - d)
            cols[f"om{d}"][te] = LinearRegression().fit(x[other], fit_m.predict(xm[other])).predict(x[te])
    q = np.clip(cols["pmx"], clip, 1 - clip)
    p1, p0, q1, q0 = cols["px"], 1 - cols["px"], q, 1 - q
    keep = (p1 >= trim) & (p0 >= trim)
    c = {key: v[keep] for key, v in cols.items()}
    t, y, nk = t[keep], y[keep], int(keep.sum())
    p1, p0, q1, q0 = p1[keep], p0[keep], q1[keep], q0[keep]
    w = {"a10": (t == 1) * q0 / (q1 * p0), "b10": (t == 0) / p0, "a11": (t == 1) / p1,
         "a01": (t == 0) * q1 / (q0 * p1), "b01": (t == 1) / p1, "a00": (t == 0) / p0}
    if normalize:
        w = {key: nk * v / v.sum() for key, v in w.items()}
    y10 = w["a10"] * (y - c["m1mx"]) + w["b10"] * (c["m1mx"] - c["om1"]) + c["om1"]
    y11 = w["a11"] * (y - c["m1x"]) + c["m1x"]
    y01 = w["a01"] * (y - c["m0mx"]) + w["b01"] * (c["m0mx"] - c["om0"]) + c["om0"]
    y00 = w["a00"] * (y - c["m0x"]) + c["m0x"]
    pairs = {("te", "average"): (y11, y00), ("nie", "treated"): (y11, y10), ("nie", "control"): (y01, y00),
             ("nde", "treated"): (y11, y01), ("nde", "control"): (y10, y00)}
    out = {}
    for key, (s1, s0) in pairs.items():
        est = np.mean(s1) - np.mean(s0)
        out[key] = (est, np.sqrt(np.mean((s1 - s0 - est) ** 2) / nk))
    return out, int(n - keep.sum())


@pytest.mark.parametrize("normalize,trim,clip", [(True, 0.0, 0.01), (False, 0.0, 0.05), (True, 0.25, 0.01)])
def test_matches_independent_reimplementation(normalize, trim, clip):
    data, _ = topic_mediation(800, n_units=2, dim=2, n_topics=3, seed=5)
    res = DMLMediation(outcome_learner=LinearRegression(), propensity_learner=LogisticRegression(),
                       n_folds=4, n_rep=1, trim=trim, clip=clip, normalize=normalize, random_state=3).fit(data)
    for unit in data.units:
        oracle, trimmed = manual_dml(data, unit, n_folds=4, random_state=3, trim=trim, clip=clip,
                                     normalize=normalize)
        assert res.diagnostics[unit]["n_trimmed"] == trimmed and (trim == 0) == (trimmed == 0)
        for key, (est, se) in oracle.items():
            eff = res.effect(unit, *key)
            assert eff.estimate == pytest.approx(est, rel=1e-9, abs=1e-12)
            assert eff.se == pytest.approx(se, rel=1e-9)


def test_trim_selects_on_pre_treatment_px_only():
    """trim drops rows on the out-of-fold p(X) only; the result is an overlap population and says which rows.
    A mediator that reveals T (p(M,X) near 0/1) changes no row's membership: only its clip count."""
    data, _ = topic_mediation(1500, n_topics=4, topic_strength=3.0, seed=2)
    res = DMLMediation(**CHEAP, trim=0.1).fit(data)
    diag = res.diagnostics["u0"]
    folds, _ = cross_fit_splits(data, 5, 0)
    x = data.x_design()[0]
    p1x, _ = shared_nuisances(data.t.astype(int), data.y, x, x, folds, outcome=Ridge(alpha=1.0),
                              propensity=LogisticRegression(C=1.0), random_state=0)
    outside = int(((p1x < 0.1) | (p1x > 0.9)).sum())
    assert diag["n_trimmed"] == outside > 0 and diag["n_kept"] + diag["n_trimmed"] == data.n
    assert res.population == "overlap" and "0.1 <= p(X) <= 0.9" in res.settings["population_note"]
    assert any("overlap population" in w for w in res.warnings)
    scores = res.effect("u0", "nie", "treated").scores
    assert len(scores) == data.n and (scores == 0).sum() >= outside
    revealing = MediationData.from_arrays(t=data.t, y=data.y, x=data.x,
                                          mediators={"u0": 6.0 * data.t[:, None] + data.mediator("u0")})
    other = DMLMediation(**CHEAP, trim=0.1).fit(revealing).diagnostics["u0"]
    assert other["n_trimmed"] == outside and other["n_clipped"] > diag["n_clipped"] + 100
    plain = DMLMediation(**CHEAP).fit(data)
    assert plain.diagnostics["u0"]["n_trimmed"] == 0 and plain.population == "ate"
    assert "population_note" not in plain.settings


def test_clip_count_reported():
    data, _ = topic_mediation(1000, n_topics=4, seed=3)
    res = DMLMediation(**CHEAP, clip=0.2, n_rep=1).fit(data)
    folds, halves = cross_fit_splits(data, 5, 0)
    x = data.x_design()[0]
    p1mx, _, _ = dml_mod.unit_nuisances(data.mediator("u0"), data.t.astype(int), data.y, x, x, folds, halves,
                                        outcome=Ridge(alpha=1.0), propensity=LogisticRegression(C=1.0), pca=None,
                                        random_state=0)
    clipped = int(((p1mx < 0.2) | (p1mx > 0.8)).sum())
    assert res.diagnostics["u0"]["n_clipped"] == clipped > 0
    assert any(f"p(M,X) of {clipped} of 1000 rows" in w for w in res.warnings)


def test_bias_within_3se_linear(linear):
    data, truth, res = linear
    for unit in data.units:
        for key in PRIMARY:
            eff, tv = res.effect(unit, *key), truth.value(unit, *key)
            assert abs(eff.estimate - tv) <= 3 * eff.se, (unit, key, eff, tv)


def test_identities_hold_exactly(linear1):
    _, _, res = linear1
    e = res.effects["u0"]
    te = e[("te", "average")]
    for a, b in ((("nie", "treated"), ("nde", "control")), (("nie", "control"), ("nde", "treated"))):
        total = e[a] + e[b]
        assert total.estimate == pytest.approx(te.estimate, abs=1e-12)
        np.testing.assert_allclose(total.scores, te.scores, atol=1e-12)
    assert (te - e[("nie", "average")]).estimate == pytest.approx(e[("nde", "average")].estimate, abs=1e-12)
    assert e[("prop_mediated", "average")].estimate == pytest.approx(e[("nie", "average")].estimate / te.estimate)
    assert [k for k in e if k[0] == "te"] == [("te", "average")]  # one total-effect row
    pos = res.diagnostics["u0"]["potential_outcomes"]
    assert (pos["Y(1,M(1))"] - pos["Y(1,M(0))"]).estimate == pytest.approx(e[("nie", "treated")].estimate)


def test_unadjusted_graph_biased_on_topic_trackers(linear):
    data, truth, res = linear
    unadj = DMLMediation().fit(data, graph="unadjusted_mediation")
    assert unadj.adjustment["first_stage"] == [] and unadj.adjustment["second_stage"] == []
    lo, hi = unadj.diagnostics["u0"]["px_range"]
    assert hi - lo < 0.02  # p(X) without X is a constant per training split
    for unit in truth.spurious:
        for arm in ("treated", "control", "average"):
            eff = unadj.effect(unit, "nie", arm)
            assert abs(eff.estimate - truth.value(unit, "nie", arm)) > 5 * eff.se
            adj = res.effect(unit, "nie", arm)
            assert abs(adj.estimate - truth.value(unit, "nie", arm)) <= 3 * adj.se


def test_deterministic_parallel_and_shared_across_units():
    data, _ = topic_mediation(600, n_units=3, dim=3, n_topics=3, seed=4)
    est = DMLMediation(**CHEAP, random_state=7)
    with parallel_config(backend="threading"):  # the loky path runs in benchmarks/bench_dml.py
        a, b = est.fit(data), est.fit(data, n_jobs=2)
    single = est.fit(data, units=["u1"])
    for key in PRIMARY:
        assert a.effect("u1", *key).estimate == b.effect("u1", *key).estimate == single.effect("u1", *key).estimate
        np.testing.assert_array_equal(a.effect("u2", *key).scores, b.effect("u2", *key).scores)
    other = DMLMediation(**CHEAP, random_state=8).fit(data)
    assert other.effect("u0", "nie").estimate != a.effect("u0", "nie").estimate
    assert a.settings["random_state"] == 7 and get_estimator("dml", **a.settings).get_params() == est.get_params()


def test_shared_nuisances_fitted_once(monkeypatch):
    data, _ = topic_mediation(500, n_units=4, n_topics=3, seed=1)
    calls = []
    real = dml_mod.shared_nuisances
    monkeypatch.setattr(dml_mod, "shared_nuisances", lambda *a, **k: calls.append(1) or real(*a, **k))
    est = DMLMediation(**CHEAP)
    est.fit(data)
    assert len(calls) == est.n_rep  # once per sample split, not once per unit (4 units here)


def test_pca_fitted_on_training_folds_only(monkeypatch):
    data, _ = topic_mediation(400, dim=30, n_topics=3, seed=8)
    seen = []

    class SpyPCA(dml_mod.PCA):
        def fit(self, X, y=None):
            seen.append(np.asarray(X).copy())
            return super().fit(X, y)

    monkeypatch.setattr(dml_mod, "PCA", SpyPCA)
    res = DMLMediation(**CHEAP, pca=5, n_folds=4, n_rep=1).fit(data)  # one split: the PCA fits of its 4 folds
    folds, _ = cross_fit_splits(data, 4, 0)
    m = data.mediator("u0").astype(float)
    assert len(seen) == 4
    for k, fitted in enumerate(seen):
        np.testing.assert_array_equal(fitted, m[folds != k])
    assert np.isfinite(res.effect("u0", "nie").estimate)


def test_high_dimensional_mediator_576():
    """d = 576 runs with and without PCA; the TE (X-only nuisances) stays right. The NIE at this n is NOT
    checked: with 576 noise dimensions and n = 600 the M-models are far from their rate (docs say so)."""
    data, truth = topic_mediation(600, dim=576, n_topics=3, seed=9)
    cheap = dict(outcome_learner=Ridge(alpha=100.0), propensity_learner=LogisticRegression(C=0.01, max_iter=500))
    res = DMLMediation(**cheap, n_folds=3).fit(data)
    assert all(np.isfinite(res.effect("u0", *k).estimate) and res.effect("u0", *k).se > 0 for k in PRIMARY)
    res = DMLMediation(pca=8, n_folds=3).fit(data)
    eff = res.effect("u0", "te")
    assert abs(eff.estimate - truth.value("u0", "te")) <= 3 * eff.se


def test_ovb_pieces_follow_the_contract(linear1):
    data, _, res = linear1
    ovb = res.diagnostics["u0"]["ovb"]
    assert set(ovb) == {("te", "average")} | {(e, a) for e in ("nie", "nde") for a in ("treated", "control", "average")}
    for key, piece in ovb.items():  # one column per regression: g(D,X) for TE; g, mu(D,M,X), omega for NIE/NDE
        stages = 1 if key[0] == "te" else 3
        assert piece["sigma2"].shape == piece["nu2"].shape == (stages,)
        assert np.all(piece["sigma2"] > 0) and np.all(piece["nu2"] > 0)
        assert piece["psi_sigma2"].shape == piece["psi_nu2"].shape == (data.n, stages)
        assert np.all(np.abs(piece["psi_nu2"].mean(0)) < 1e-9) and np.all(np.abs(piece["psi_sigma2"].mean(0)) < 1e-9)
    # TE: EconML's DR form, sigma2 = mean (Y - mu(D,X))^2 and alpha = D/p1(X) - (1-D)/p0(X) (normalized)
    folds, _ = cross_fit_splits(data, 5, 0)
    x = data.x_design()[0]
    est = DMLMediation()
    outcome, propensity = dml_mod.check_learners(None, None)
    t = data.t.astype(int)
    p1x, mux = shared_nuisances(t, data.y, x, x, folds, outcome=outcome, propensity=propensity, random_state=0)
    w1, w0 = t / p1x, (1 - t) / (1 - p1x)
    alpha = w1 / w1.mean() - w0 / w0.mean()
    resid = data.y - np.where(t == 1, mux[:, 1], mux[:, 0])
    assert ovb[("te", "average")]["sigma2"] == pytest.approx(np.mean(resid**2), rel=1e-9)
    assert ovb[("te", "average")]["nu2"] == pytest.approx(np.mean(alpha**2), rel=1e-9)
    assert est.get_params()["trim"] == 0.0 and res.diagnostics["u0"]["n_trimmed"] == 0
    sens = pytest.importorskip("deconfound.sensitivity")
    out = sens.sensitivity_analysis(res, cf_y=0.0, cf_d=0.0).to_frame()
    row = out[(out.unit == "u0") & (out.effect == "nie") & (out.arm == "treated")].iloc[0]
    eff = res.effect("u0", "nie", "treated")
    assert row.ci_lower == pytest.approx(eff.ci[0], rel=1e-6) and row.ci_upper == pytest.approx(eff.ci[1], rel=1e-6)


def test_bad_inputs():
    data, _ = topic_mediation(300, n_topics=3, seed=0)
    with pytest.raises(TypeError, match="LinearSVC"):
        DMLMediation(propensity_learner=LinearSVC()).fit(data)
    with pytest.raises(TypeError, match="Ridge"):
        DMLMediation(propensity_learner=Ridge()).fit(data)
    with pytest.raises(TypeError, match="outcome_learner"):
        DMLMediation(outcome_learner="ridge").fit(data)
    for kwargs, pattern in [({"trim": 0.5}, "trim"), ({"trim": -0.1}, "trim"), ({"clip": 0.5}, "clip"),
                            ({"n_rep": 0}, "n_rep"), ({"n_rep": 2.0}, "n_rep"), ({"population": "atc"}, "population"),
                            ({"n_folds": 1}, "n_folds"),
                            ({"n_folds": 2.5}, "n_folds"), ({"pca": 0}, "pca"), ({"level": 1.0}, "level")]:
        with pytest.raises(ValueError, match=pattern):
            DMLMediation(**kwargs).fit(data)
    with pytest.raises(DataError, match="u9"):
        DMLMediation(**CHEAP).fit(data, units=["u9"])


def test_make_folds_balanced_stratified_and_seeded():
    strata = np.repeat([0, 1, 2], [50, 31, 19])
    f = make_folds(100, 5, strata=strata, random_state=1)
    assert np.bincount(f).tolist() == [20] * 5
    for s in range(3):
        counts = np.bincount(f[strata == s], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert (make_folds(100, 5, strata=strata, random_state=1) == f).all()
    assert not (make_folds(100, 5, strata=strata, random_state=2) == f).all()
    with pytest.raises(ValueError, match="k"):
        make_folds(10, 1, random_state=0)
    with pytest.raises(ValueError, match="strata"):
        make_folds(10, 2, strata=[0, 1], random_state=0)
    data, _ = topic_mediation(400, n_topics=3, seed=0)
    folds = data_folds(data, 5, random_state=0)
    for arm in (0, 1):
        counts = np.bincount(folds[data.t == arm], minlength=5)
        assert counts.max() - counts.min() <= 3  # stratified by T x topic: within one row per stratum


@pytest.mark.filterwarnings("ignore:unit .* trimmed:RuntimeWarning")  # weighting's own trimming note
@pytest.mark.parametrize("module", ["parametric", "weighting"])
def test_agrees_with_other_estimators_on_linear_case(linear, module):
    """DML, weighting and parametric estimate the same NIE/NDE/TE on the linear case: within 2 SE."""
    try:
        importlib.import_module(f"deconfound.estimators.{module}")
    except ModuleNotFoundError:
        pytest.skip(f"deconfound.estimators.{module} has not landed yet")
    data, _, res = linear
    other = get_estimator(module, random_state=0).fit(data, units=["u0"])
    for key in [("te", "average"), ("nie", "average"), ("nde", "average")]:
        a, b = res.effect("u0", *key), other.effect("u0", *key)
        assert abs(a.estimate - b.estimate) <= 2 * max(a.se, b.se), (module, key, a, b)


# ---- defaults on a strong T -> M path with a T x M interaction ---------------------------------------------
def test_default_recovers_strong_mediator_with_interaction():
    """The default estimator keeps every row (no selection on M) and recovers every effect within 3 SE.

    causalweight's rule (drop rows with p_d(M,X) p_d'(X) < 0.05) would select on the post-treatment M here."""
    data, truth = strong_tm(5000, seed=7)
    res = DMLMediation().fit(data)
    diag = res.diagnostics["u0"]
    assert diag["n_trimmed"] == 0 and res.population == "ate"
    lo, hi = diag["pmx_range"]
    assert lo < 0.05 or hi > 0.95  # the case the old rule trimmed
    for key, tv in truth["ate"].items():
        eff = res.effect("u0", *key)
        assert abs(eff.estimate - tv) <= 3 * eff.se, (key, eff, tv)


# ---- repeated cross-fitting ---------------------------------------------------------------------------------
def test_repeated_crossfitting_matches_hand_aggregation():
    """Split r is the one-split fit seeded by child_seed(random_state, 9, r) (split 0: random_state); the
    result is the median of the splits with se = sqrt(median(se_r^2 + (theta_r - theta)^2))."""
    data, _ = topic_mediation(600, n_units=2, n_topics=3, seed=12)
    res = DMLMediation(**CHEAP, n_rep=3, random_state=5).fit(data)
    seeds = [5, dml_mod.child_seed(5, 9, 1), dml_mod.child_seed(5, 9, 2)]
    singles = [DMLMediation(**CHEAP, n_rep=1, random_state=s).fit(data) for s in seeds]
    for unit in data.units:
        split = res.diagnostics[unit]["split"]
        for key, eff in res.effects[unit].items():
            est = np.array([s.effect(unit, *key).estimate for s in singles])
            se = np.array([s.effect(unit, *key).se for s in singles])
            np.testing.assert_allclose(split[key]["estimates"], est, rtol=0, atol=1e-12)
            theta = np.median(est)
            assert eff.estimate == pytest.approx(theta, abs=1e-12)
            assert eff.se == pytest.approx(np.sqrt(np.median(se**2 + (est - theta) ** 2)), abs=1e-12)
            assert np.sqrt(np.mean(eff.scores**2) / data.n) == pytest.approx(eff.se, rel=1e-12)
            assert split[key]["min"] == est.min() and split[key]["max"] == est.max()
            assert split[key]["sd"] == pytest.approx(est.std(ddof=1), abs=1e-15)
    one = DMLMediation(**CHEAP, n_rep=1, random_state=5).fit(data)
    assert one.effect("u0", "nie").estimate == singles[0].effect("u0", "nie").estimate
    assert "split" not in one.diagnostics["u0"]


# ---- ATT ----------------------------------------------------------------------------------------------------
def test_att_matches_simulation_truth():
    data, truth = topic_mediation(5000, n_topics=4, interaction=1.0, seed=13)
    res = DMLMediation(population="att").fit(data)
    assert res.population == "att"
    ate = DMLMediation().fit(data)
    for key in PRIMARY:
        eff, tv = res.effect("u0", *key), truth.value("u0", *key, population="att")
        assert abs(eff.estimate - tv) <= 3 * eff.se, (key, eff, tv)
    # the NDE differs between the populations here (topic mix of the treated): the two are not the same numbers
    att_nde, ate_nde = (truth.value("u0", "nde", "control", population=p) for p in ("att", "ate"))
    assert abs(att_nde - ate_nde) > 0.05
    assert res.effect("u0", "nde", "control").estimate != ate.effect("u0", "nde", "control").estimate


def test_att_scores_closed_forms():
    """E[Y(1, M(1)) | T=1] is the treated mean exactly; its score is the influence function of a ratio
    of means, (D (Y - theta)) / P(T=1); the ATT TE's score includes the estimation of P(T=1)."""
    data, _ = topic_mediation(800, n_topics=3, seed=14)
    res = DMLMediation(**CHEAP, n_rep=1, population="att").fit(data)
    y1 = res.diagnostics["u0"]["potential_outcomes"]["Y(1,M(1))"]
    t, y = data.t.astype(float), data.y
    mean1 = y[t == 1].mean()
    assert y1.estimate == pytest.approx(mean1, rel=1e-12)
    np.testing.assert_allclose(y1.scores, t * (y - mean1) / t.mean(), atol=1e-10)
    te = res.effect("u0", "te")
    assert abs(te.scores.mean()) < 1e-10
    y0 = res.diagnostics["u0"]["potential_outcomes"]["Y(0,M(0))"]
    assert te.estimate == pytest.approx(mean1 - y0.estimate, abs=1e-12)
    assert [k for k in res.effects["u0"] if k[0] == "te"] == [("te", "average")]


def test_curvature_matches_statsmodels_hc3_wald_test():
    """RESET of the out-of-fold outcome regressions: per arm [1, z, x, z^2, z^3], the z^2 and z^3 terms of both
    arms tested jointly with HC3 covariances, equals statsmodels' Wald test on the stacked arm-specific design;
    the share is the drop in the residual sum of squares; noise that grows with z is not read as a curve."""
    import statsmodels.api as sm

    from deconfound.estimators.dml_scores import curvature
    rng = np.random.default_rng(2)
    n = 400
    t = (rng.random(n) < 0.4).astype(int)
    x = np.eye(3)[rng.integers(0, 3, n)][:, 1:]
    mumx = rng.normal(size=(n, 2)) + x[:, :1]
    fit = np.where(t == 1, mumx[:, 1], mumx[:, 0])
    y = fit + 0.2 * fit**2 + x[:, 1] + rng.normal(size=n)
    blocks_r, blocks_f = [], []
    for d in (0, 1):
        f = mumx[:, d]
        z = np.where(t == d, (f - f[t == d].mean()) / f[t == d].std(), 0.0)
        on = (t == d).astype(float)
        base = [on, on * z, on * x[:, 0], on * x[:, 1]]
        blocks_r += base
        blocks_f += base + [on * z**2, on * z**3]
    design = np.column_stack(blocks_f)
    full = sm.OLS(y - fit, design).fit(cov_type="HC3")
    short = sm.OLS(y - fit, np.column_stack(blocks_r)).fit()
    restrict = np.zeros((4, design.shape[1]))
    restrict[[0, 1, 2, 3], [4, 5, 10, 11]] = 1.0
    wald = full.wald_test(restrict, use_f=False, scalar=True)
    got_p, share = curvature(t, y, mumx, x)
    assert got_p == pytest.approx(float(wald.pvalue), rel=1e-6) and got_p < 1e-6  # the z^2 term is there
    assert share == pytest.approx((short.ssr - full.ssr) / short.ssr, rel=1e-8)
    assert curvature(t, fit + x[:, 1] + rng.normal(size=n), mumx, x)[0] > 0.01
    rejected = 0  # a linear mean with noise that grows with z: HC3 keeps the rejections rare (3% of 200 at
    for seed in range(100):  # p < 0.001; a classical F test read such noise as a curve at p ~ 1e-45)
        g = np.random.default_rng(seed)
        tt = (g.random(n) < 0.4).astype(int)
        xx = np.eye(3)[g.integers(0, 3, n)][:, 1:]
        mm = g.normal(size=(n, 2)) + xx[:, :1]
        ff = np.where(tt == 1, mm[:, 1], mm[:, 0])
        rejected += curvature(tt, ff + xx[:, 1] + g.normal(size=n) * np.exp(0.4 * ff), mm, xx)[0] < 0.001
    assert rejected <= 5, rejected


def test_warns_when_the_outcome_is_curved_in_the_mediator():
    """The probit cell of docs/coverage.md (NIE(treated) covered 0.885, SE/SD 0.85 at n = 2,000): the RESET of
    the default ridge's out-of-fold predictions rejects with a large curve and the fit warns; on the linear and
    binary processes it does not."""
    from deconfound._calibration import CURVATURE_ALPHA, CURVATURE_SHARE
    from deconfound.errors import CalibrationWarning
    data, _ = topic_mediation(2000, n_topics=4, n_units=2, outcome="probit", seed=1)
    with pytest.warns(CalibrationWarning, match=r"dml \(units \['u0'.*RESET p = .*SplineTransformer"):
        res = DMLMediation().fit(data)
    assert res.diagnostics["u0"]["curvature_p"] < CURVATURE_ALPHA
    assert res.diagnostics["u0"]["curvature_share"] >= CURVATURE_SHARE
    # linear: no curve; binary: a significant but small one (0/1 noise dwarfs it), where dml covered 0.91-0.97
    for kind in ("linear", "binary"):
        data, _ = topic_mediation(2000, n_topics=4, n_units=2, seed=1, outcome=kind)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = DMLMediation().fit(data)
        assert not [w for w in caught if "RESET" in str(w.message)], kind
        assert res.diagnostics["u0"]["curvature_share"] < CURVATURE_SHARE, kind
    with warnings.catch_warnings(record=True) as caught:  # a learner the user chose: no advice about the default
        warnings.simplefilter("always")
        DMLMediation(**CHEAP).fit(topic_mediation(2000, n_topics=4, outcome="probit", seed=1)[0])
    assert not [w for w in caught if "RESET" in str(w.message)]


def test_default_propensity_learner_is_unpenalized_when_the_rows_allow():
    """EPVLogistic: the maximum-likelihood logistic regression (statsmodels' Logit as the oracle) when the
    smaller class has at least 5 rows per feature; below that exactly LogisticRegressionCV's L2 fit."""
    import statsmodels.api as sm
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegressionCV

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    t = (rng.random(300) < expit(0.3 + x @ [1.0, -0.5, 0.2, 0.0])).astype(int)
    learner = clone(dml_mod.default_propensity_learner()).fit(x, t)
    assert not learner[-1].penalized_  # about 140 rows in the smaller arm for 4 features
    oracle = sm.Logit(t, sm.add_constant(x)).fit(disp=0).predict(sm.add_constant(x))
    np.testing.assert_allclose(learner.predict_proba(x)[:, 1], oracle, atol=1e-6)
    wide = rng.normal(size=(300, 40))  # 40 features need 200 rows in the smaller arm
    learner = clone(dml_mod.default_propensity_learner()).fit(wide, t)
    assert learner[-1].penalized_
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cv = dml_mod.EPVLogistic().fit(wide, t).model_
    assert isinstance(cv, LogisticRegressionCV) and not caught, [str(w.message)[:80] for w in caught]
    ref = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7), cv=3, scoring="neg_log_loss", max_iter=2000,
                               **({"l1_ratios": (0.0,)} if "l1_ratios" in LogisticRegressionCV().get_params() else {}))
    from sklearn.preprocessing import StandardScaler
    z = StandardScaler().fit_transform(wide)
    np.testing.assert_allclose(learner.predict_proba(wide), ref.fit(z, t).predict_proba(z), atol=1e-12)
    assert dml_mod.EPVLogistic(epv=1).fit(wide, t).penalized_ is False  # the threshold is the parameter
