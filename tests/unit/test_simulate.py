"""simulate.topic_mediation: the analytic truth checked by an independent Monte Carlo, the sampler checked
against the structural parameters, spurious units, determinism and coarsening."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm

from deconfound import simulate

N_MC = 1_000_000


def _mc_effects(p, *, nonlinear: bool, population: str, rng) -> dict:
    """Monte Carlo on the structural model, written from the docstring, not from simulate.py's truth code.

    For unit u: E[Y(t, M_u(t'), M_other(t))]: every other unit's mediator is drawn with T=t, unit u's with T=t'.
    Outcome mean given the mediators is idx (linear) or Phi(idx) (nonlinear).
    Returns {(u, effect, arm): (estimate, mc_se)}.
    """
    pi, a, delta, gamma, beta, b = p["pi"], p["a"], p["delta"], p["gamma"], p["beta"], p["b"]
    n_units = gamma.shape[0]
    share = {"ate": 1.0, "att": pi @ expit(a), "atc": pi @ (1 - expit(a))}[population]
    k = rng.choice(len(pi), size=int(1.05 * N_MC / share), p=pi)
    if population != "ate":  # condition on the arm by rejection: draw T ~ Bernoulli(sigmoid(a_k)) and keep it
        treated = rng.random(len(k)) < expit(a[k])
        k = k[treated] if population == "att" else k[~treated]
    n = len(k)
    assert n >= N_MC
    # b_v . M_v(t) for every unit v and t in {0, 1}, with the same noise for both t (common random numbers)
    bm = np.empty((2, n_units, n))
    for v in range(n_units):
        noise = rng.normal(size=(n, gamma.shape[2]))
        for t in (0, 1):
            bm[t, v] = (gamma[v][k] + t * beta[v] + noise) @ b[v]
    out = {}
    for u in range(n_units):
        others = lambda t: bm[t].sum(0) - bm[t, u]  # noqa: E731

        def y(t, tu):
            idx = p["c"] + p["theta"] * t + delta[k] + (1 + p["kappa"] * t) * (others(t) + bm[tu, u])
            return norm.cdf(idx) if nonlinear else idx

        y00, y01, y10, y11 = y(0, 0), y(0, 1), y(1, 0), y(1, 1)
        diffs = {("nie", "control"): y01 - y00, ("nie", "treated"): y11 - y10,
                 ("nde", "control"): y10 - y00, ("nde", "treated"): y11 - y01, ("te", "average"): y11 - y00}
        diffs[("nie", "average")] = (diffs[("nie", "control")] + diffs[("nie", "treated")]) / 2
        diffs[("nde", "average")] = (diffs[("nde", "control")] + diffs[("nde", "treated")]) / 2
        for key, d in diffs.items():
            out[(f"u{u}", *key)] = (float(d.mean()), float(d.std(ddof=1) / np.sqrt(n)))
    return out


@pytest.mark.parametrize("interaction,nonlinear", [(0.0, False), (0.7, False), (0.0, True), (-0.4, True)],
                         ids=["linear", "interaction", "nonlinear", "nonlinear-interaction"])
@pytest.mark.parametrize("population", ["ate", "att", "atc"])
def test_truth_matches_independent_monte_carlo(interaction, nonlinear, population):
    _, truth = simulate.topic_mediation(10, n_topics=5, n_units=3, dim=2, interaction=interaction,
                                        nonlinear=nonlinear, seed=0)
    mc = _mc_effects(truth.params, nonlinear=nonlinear, population=population,
                     rng=np.random.default_rng(zlib.crc32(repr((interaction, nonlinear, population)).encode())))
    checked = 0
    for (unit, effect, arm), (est, se) in mc.items():
        exact = truth.value(unit, effect, arm, population)
        # 4 Monte Carlo SEs; the floor covers effects that are constant across draws (se = 0 up to rounding)
        assert abs(est - exact) <= 4 * se + 1e-10, (unit, effect, arm, population, est, exact, se)
        checked += 1
    assert checked == 3 * 7
    # the causal unit has a real indirect effect (the check is not vacuous)
    assert abs(truth.value("u0", "nie", "average", population)) > 0.05


def test_truth_identities(sim_vector):
    _, truth = sim_vector
    for unit in ("u0", "u1", "u2"):
        for pop in ("ate", "att", "atc"):
            v = lambda e, a: truth.value(unit, e, a, pop)  # noqa: E731
            te = v("te", "average")
            assert te == pytest.approx(v("nie", "treated") + v("nde", "control"), abs=1e-12)
            assert te == pytest.approx(v("nie", "control") + v("nde", "treated"), abs=1e-12)
            assert v("te", "treated") == v("te", "control") == te
    with pytest.raises(KeyError, match="truth"):
        truth.value("u9")


def _ols(X, y):
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    cov = np.linalg.inv(X.T @ X) * (resid @ resid) / (len(y) - X.shape[1])
    return beta, np.sqrt(np.diag(cov))


@pytest.mark.parametrize("interaction", [0.0, 0.5])
def test_sampler_matches_structural_parameters(interaction):
    """The data come from the model whose parameters the truth uses: OLS on a big sample recovers them."""
    n = 200_000
    data, truth = simulate.topic_mediation(n, n_topics=4, n_units=2, dim=2, interaction=interaction, seed=11)
    p = truth.params
    k = truth.topic
    onehot = np.eye(4)[k]
    t = data.t.astype(float)
    # treatment model: the share treated in each topic is sigmoid(a_k)
    share = np.array([t[k == j].mean() for j in range(4)])
    sizes = np.bincount(k, minlength=4)
    assert np.all(np.abs(share - expit(p["a"])) <= 4 * np.sqrt(share * (1 - share) / sizes))
    assert np.all(np.abs(sizes / n - p["pi"]) <= 4 * np.sqrt(p["pi"] * (1 - p["pi"]) / n))
    # mediator model: M_u = gamma_{u,k} + T beta_u + noise
    for u in range(2):
        m = data.mediator(f"u{u}").astype(float)
        for j in range(2):
            coef, se = _ols(np.column_stack([onehot, t]), m[:, j])
            expected = np.append(p["gamma"][u][:, j], p["beta"][u][j])
            assert np.all(np.abs(coef - expected) <= 4 * se + 1e-6), (u, j)
    # outcome model: Y = c + theta T + delta_k + (1 + kappa T) sum_u b_u . M_u + N(0, 1)
    bm = sum(data.mediator(f"u{u}").astype(float) @ p["b"][u] for u in range(2))
    X = np.column_stack([onehot, t, bm, t * bm])
    coef, se = _ols(X, data.y)
    expected = np.concatenate([p["c"] + p["delta"], [p["theta"], 1.0, p["kappa"]]])
    assert np.all(np.abs(coef - expected) <= 4 * se)


@pytest.mark.parametrize("outcome", ["probit", "binary"])
def test_sampler_nonlinear_cell_means(outcome):
    """Probit and binary outcomes: within topic x arm, mean(Y) = Phi(mean idx / sqrt(1 + var idx))."""
    n = 200_000
    data, truth = simulate.topic_mediation(n, n_topics=3, n_units=2, dim=1, outcome=outcome, seed=12)
    if outcome == "binary":
        assert set(np.unique(data.y)) == {0.0, 1.0}
    p = truth.params
    var = float((p["b"] ** 2).sum())
    for kk in range(3):
        for tt in (0, 1):
            rows = (truth.topic == kk) & (data.t == tt)
            mean_idx = p["c"] + p["theta"] * tt + p["delta"][kk] + sum(
                (p["gamma"][u][kk] + tt * p["beta"][u]) @ p["b"][u] for u in range(2))
            expected = norm.cdf(mean_idx / np.sqrt(1 + var))
            y = data.y[rows]
            assert abs(y.mean() - expected) <= 4 * y.std(ddof=1) / np.sqrt(len(y)), (kk, tt)


def test_mediator_strength_scales_the_t_to_m_path_and_keeps_the_truth_exact():
    """A strong T -> M path (r = 3): the slope of M on T within topic is r times the r = 1 slope, and the
    analytic truth still matches the independent Monte Carlo."""
    weak = simulate.topic_mediation(10, n_topics=4, n_units=2, seed=0)[1].params["beta"]
    _, truth = simulate.topic_mediation(10, n_topics=4, n_units=2, seed=0, mediator_strength=3.0, interaction=0.5)
    assert np.allclose(truth.params["beta"], 3.0 * weak)
    mc = _mc_effects(truth.params, nonlinear=False, population="ate", rng=np.random.default_rng(5))
    for (unit, effect, arm), (est, se) in mc.items():
        assert abs(est - truth.value(unit, effect, arm)) <= 4 * se + 1e-10, (unit, effect, arm)


def test_spurious_units_zero_effect_but_associated():
    n = 20_000
    data, truth = simulate.topic_mediation(n, n_units=4, seed=5)
    assert truth.spurious == ["u2", "u3"] and truth.causal == ["u0", "u1"]
    for u in truth.spurious:
        for e in ("nie",):
            for arm in ("control", "treated", "average"):
                for pop in ("ate", "att", "atc"):
                    assert truth.value(u, e, arm, pop) == 0.0
        m = data.mediator(u)[:, 0].astype(float)
        bound = 4 / np.sqrt(n)  # 4 SE of a zero correlation
        assert abs(np.corrcoef(m, data.t)[0, 1]) > 5 * bound
        assert abs(np.corrcoef(m, data.y)[0, 1]) > 5 * bound
        # within a topic the spurious unit is pure noise: no association with T or Y left
        for kk in range(8):
            rows = truth.topic == kk
            r_bound = 4.5 / np.sqrt(rows.sum())
            assert abs(np.corrcoef(m[rows], data.y[rows])[0, 1]) < r_bound
            assert abs(np.corrcoef(m[rows], data.t[rows])[0, 1]) < r_bound
    for u in truth.causal:
        assert truth.value(u, "nie", "average") > 0.1


def test_no_confounding_without_topic_strength():
    n = 20_000
    data, truth = simulate.topic_mediation(n, n_units=2, topic_strength=0.0, seed=6)
    m = data.mediator("u1")[:, 0].astype(float)
    assert abs(np.corrcoef(m, data.y)[0, 1]) < 4 / np.sqrt(n)
    assert abs(np.corrcoef(m, data.t)[0, 1]) < 4 / np.sqrt(n)
    assert abs(data.t.mean() - 0.5) < 4 * 0.5 / np.sqrt(n)


def test_n_spurious_and_shapes():
    data, truth = simulate.topic_mediation(300, n_units=3, dim=5, n_spurious=0, seed=1)
    assert truth.spurious == [] and truth.causal == ["u0", "u1", "u2"]
    assert all(data.mediator(u).shape == (300, 5) for u in data.units)
    assert data.mediator("u0").dtype == np.float32
    assert set(truth.frame.population) == {"ate", "att", "atc"}
    assert len(truth.frame) == 3 * 3 * 9


def test_determinism_by_seed():
    a, ta = simulate.topic_mediation(500, n_units=2, dim=3, seed=9)
    b, tb = simulate.topic_mediation(500, n_units=2, dim=3, seed=9)
    c, tc = simulate.topic_mediation(500, n_units=2, dim=3, seed=10)
    assert a.t.tobytes() == b.t.tobytes() and a.y.tobytes() == b.y.tobytes()
    assert all(a.mediator(u).tobytes() == b.mediator(u).tobytes() for u in a.units)
    np.testing.assert_array_equal(ta.topic, tb.topic)
    assert not np.array_equal(a.y, c.y)
    # the seed draws the data; param_seed fixes the truth, shared across replications
    assert ta.frame.equals(tc.frame)
    _, td = simulate.topic_mediation(500, n_units=2, dim=3, seed=9, param_seed=1)
    assert not np.allclose(ta.frame.value, td.frame.value)


def test_meta_records_settings():
    data, _ = simulate.topic_mediation(100, interaction=0.3, nonlinear=True, seed=2)
    assert data.meta["seed"] == 2 and data.meta["interaction"] == 0.3 and data.meta["nonlinear"] is True


def test_coarsen_hides_part_of_the_topic():
    data, truth = simulate.topic_mediation(400, n_topics=8, coarsen=3, seed=2)
    full, truth_full = simulate.topic_mediation(400, n_topics=8, seed=2)
    assert list(data.x["topic"].cat.categories) == ["t0", "t1", "t2"]
    np.testing.assert_array_equal(data.x["topic"].astype(str).to_numpy(),
                                  np.array([f"t{k % 3}" for k in truth.topic]))
    assert truth.frame.equals(truth_full.frame)  # coarsening changes what is observed, not the truth
    np.testing.assert_array_equal(data.y, full.y)


@pytest.mark.parametrize("kw,msg", [(dict(n_units=0), "expected >= 1"), (dict(dim=0), "expected >= 1"),
                                    (dict(n_topics=0), "expected >= 1"), (dict(outcome="poisson"), "poisson"),
                                    (dict(nonlinear=True, outcome="linear"), "nonlinear=True")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        simulate.topic_mediation(50, **kw)


@pytest.mark.parametrize("kw", [dict(n_spurious=3), dict(n_spurious=-1), dict(coarsen=0), dict(coarsen=9)])
def test_bad_spurious_or_coarsen(kw):
    with pytest.raises(ValueError, match="expected"):
        simulate.topic_mediation(50, n_units=2, **kw)
