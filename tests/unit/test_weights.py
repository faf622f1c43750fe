"""Entropy balancing: closed forms, infeasibility, diagnostics, frequency weights, batches."""
import numpy as np
import pandas as pd
import pytest

from deconfound.errors import ConvergenceError, DataError, PositivityError
from deconfound.weights import (
    balance_matrix, eb_atc, eb_ate, eb_att, eb_weights_batch, entropy_balance, entropy_balance_batch,
)


def _topics(seed, n=600, levels="abcde"):
    rng = np.random.default_rng(seed)
    topic = rng.choice(list(levels), n, p=np.linspace(2, 1, len(levels)) / np.linspace(2, 1, len(levels)).sum())
    p_treat = np.where(np.isin(topic, ["a", "b"]), 0.25, 0.6)
    t = (rng.random(n) < p_treat).astype(int)
    return topic, t


def _poststrat(topic, t, source_arm, target):
    """Closed form: w_j = (n_target(x_j) / n_target) / n_source(x_j) over the source arm."""
    src = topic[t == source_arm]
    tgt = topic[target]
    levels, n_src = np.unique(src, return_counts=True)
    n_src = dict(zip(levels, n_src))
    n_tgt = {lv: np.sum(tgt == lv) for lv in levels}
    return np.array([(n_tgt[x] / tgt.size) / n_src[x] for x in src])


def _mixed(seed, n0=400, n1=200, kc=3, levels=4):
    """Continuous columns plus one-hots (reference level dropped); treated rows shifted."""
    rng = np.random.default_rng(seed)

    def make(n, shift):
        xc = rng.normal(shift, 1.0, (n, kc))
        topic = rng.choice(levels, n, p=np.r_[0.4, np.full(levels - 1, 0.6 / (levels - 1))])
        return np.hstack([xc, (topic[:, None] == np.arange(1, levels)).astype(float)])
    return make(n0, 0.0), make(n1, 0.4)


# ---------------------------------------------------------------- closed forms (post-stratification)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_att_equals_post_stratification(seed):
    topic, t = _topics(seed)
    res = eb_att(pd.Series(topic, name="topic"), t)
    expected = _poststrat(topic, t, 0, t == 1)
    np.testing.assert_allclose(res.weights[t == 0], expected, rtol=1e-10, atol=0)
    np.testing.assert_allclose(res.weights[t == 1], 1.0 / np.sum(t == 1), rtol=1e-12)


def test_att_control_only_topic_gets_weight_zero():
    topic, t = _topics(3)
    t[topic == "e"] = 0                        # topic e: controls only, so its controls must get weight 0
    res = eb_att(topic, t)
    expected = _poststrat(topic, t, 0, t == 1)
    assert np.all(res.weights[(t == 0) & (topic == "e")] == 0.0)
    np.testing.assert_allclose(res.weights[t == 0], expected, rtol=1e-10, atol=1e-15)
    assert res.fits["control"].diagnostics["n_forced_zero"] == np.sum(topic == "e")


def test_atc_and_ate_equal_post_stratification():
    topic, t = _topics(4)
    atc = eb_atc(topic, t)
    np.testing.assert_allclose(atc.weights[t == 1], _poststrat(topic, t, 1, t == 0), rtol=1e-10)
    ate = eb_ate(topic, t)
    everyone = np.ones(t.size, bool)
    np.testing.assert_allclose(ate.weights[t == 1], _poststrat(topic, t, 1, everyone), rtol=1e-10)
    np.testing.assert_allclose(ate.weights[t == 0], _poststrat(topic, t, 0, everyone), rtol=1e-10)
    for arm in (0, 1):
        assert ate.weights[t == arm].sum() == pytest.approx(1.0, abs=1e-12)


def test_hand_computed_weights_ess_and_max_share():
    # topic A: n1=2, n0=1; topic B: n1=2, n0=3 -> control weights 0.5 and 1/6 each (post-stratification)
    topic = np.array(["A", "A", "B", "B", "A", "B", "B", "B"])
    t = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    res = eb_att(topic, t)
    np.testing.assert_allclose(res.weights[t == 0], [0.5, 1 / 6, 1 / 6, 1 / 6], rtol=1e-12)
    d = res.diagnostics
    # ESS = 1 / (0.25 + 3/36) = 3; ESS/n = 3/4; largest share 0.5
    assert d.loc["control", "ess"] == pytest.approx(3.0, rel=1e-12)
    assert d.loc["control", "ess_ratio"] == pytest.approx(0.75, rel=1e-12)
    assert d.loc["control", "max_share"] == pytest.approx(0.5, rel=1e-12)
    assert d.loc["treated", "ess"] == pytest.approx(4.0, rel=1e-12)
    counts = res.topic_counts().set_index("level")
    assert counts.loc["A", "n1"] == 2 and counts.loc["A", "n0"] == 1
    assert counts.loc["B", "n1"] == 2 and counts.loc["B", "n0"] == 3


def test_single_column_closed_form():
    # binary x, target 0.75: w = 0.75/2 on the ones, 0.25/2 on the zeros; ESS = 1 / (2*0.375^2 + 2*0.125^2)
    res = entropy_balance(np.array([[0.0], [1.0], [1.0], [0.0]]), [0.75])
    np.testing.assert_allclose(res.weights, [0.125, 0.375, 0.375, 0.125], rtol=1e-12)
    assert res.diagnostics["ess"] == pytest.approx(1 / (2 * 0.375**2 + 2 * 0.125**2), rel=1e-12)
    assert res.diagnostics["max_share"] == pytest.approx(0.375, rel=1e-12)
    assert res.lambda_[0] == pytest.approx(np.log(3.0), rel=1e-10)   # odds ratio 0.375/0.125


# ---------------------------------------------------------------- generic solver
@pytest.mark.parametrize("seed", [0, 1])
def test_balance_reached_and_lambda_reproduces_weights(seed):
    c, tr = _mixed(seed)
    res = entropy_balance(c, tr)
    np.testing.assert_allclose(res.weights @ c, tr.mean(axis=0), atol=1e-10)
    assert res.weights.sum() == pytest.approx(1.0, abs=1e-13)
    assert res.converged and res.max_rel_imbalance < 1e-8
    eta = (c - tr.mean(axis=0)) @ res.lambda_
    manual = np.exp(eta - eta.max())
    np.testing.assert_allclose(res.weights, manual / manual.sum(), rtol=1e-9)


def test_collinear_and_constant_columns_do_not_change_weights():
    c, tr = _mixed(5)
    base = entropy_balance(c, tr)
    extra_c = np.hstack([c, c[:, :1] * 2.0 + 1.0, np.full((len(c), 1), 3.0)])
    extra_t = np.hstack([tr, tr[:, :1] * 2.0 + 1.0, np.full((len(tr), 1), 3.0)])
    res = entropy_balance(extra_c, extra_t)
    np.testing.assert_allclose(res.weights, base.weights, rtol=1e-9)
    assert res.lambda_[-1] == 0.0


def test_moments_two_matches_variances_and_skips_one_hots():
    c, tr = _mixed(6)
    res = entropy_balance(c, tr, moments=2)
    assert [nm for nm in res.names if nm.endswith("^2")] == ["x0^2", "x1^2", "x2^2"]
    w = res.weights
    mean = w @ c[:, :3]
    np.testing.assert_allclose(w @ (c[:, :3] - mean) ** 2, tr[:, :3].var(axis=0), rtol=1e-8)
    table = res.balance_table()
    np.testing.assert_allclose(table["var_ratio_after"].to_numpy()[:3], 1.0, rtol=1e-8)
    with pytest.raises(ValueError, match="target rows"):
        entropy_balance(c, tr.mean(axis=0), moments=2)


def test_balance_table_matches_manual_formulas():
    c, tr = _mixed(7)
    res = entropy_balance(c, tr)
    table = res.balance_table()
    w = res.weights
    t_mean, t_var = tr.mean(axis=0), tr.var(axis=0)
    r_mean, r_var = c.mean(axis=0), c.var(axis=0)
    sd = np.sqrt((t_var + r_var) / 2)
    np.testing.assert_allclose(table["smd_before"], (r_mean - t_mean) / sd, rtol=1e-10)
    np.testing.assert_allclose(table["smd_after"], (w @ c - t_mean) / sd, atol=1e-9)
    wvar = w @ (c - w @ c) ** 2
    np.testing.assert_allclose(table["var_ratio_after"], wvar / t_var, rtol=1e-10)


def test_estimand_balance_table_smd_before_after():
    topic, t = _topics(8)
    res = eb_ate(topic, t)
    table = res.balance_table()
    x = balance_matrix(topic).values
    m1, m0 = x[t == 1].mean(axis=0), x[t == 0].mean(axis=0)
    sd = np.sqrt((x[t == 1].var(axis=0) + x[t == 0].var(axis=0)) / 2)
    np.testing.assert_allclose(table["smd_before"], (m1 - m0) / sd, rtol=1e-10)
    np.testing.assert_allclose(table["smd_after"], 0.0, atol=1e-8)
    np.testing.assert_allclose(table["treated_weighted"], x.mean(axis=0), atol=1e-10)
    assert "Balance table" in res.summary() and "Topic counts" in res.summary()


# ---------------------------------------------------------------- infeasible problems
def test_positivity_error_names_topics_and_counts():
    topic = np.array(["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["zz"] * 3)
    t = np.array([1, 0, 0, 1] + [1, 1, 1] + [0, 0] + [1, 1, 0])
    with pytest.raises(PositivityError) as err:
        eb_att(topic, t)
    msg = str(err.value)
    assert "topic 'b': n1=3, n0=0" in msg and "ATT" in msg and "'c'" not in msg
    with pytest.raises(PositivityError) as err:
        eb_atc(topic, t)
    assert "topic 'c': n1=0, n0=2" in str(err.value) and "'b'" not in str(err.value)
    with pytest.raises(PositivityError) as err:
        eb_ate(topic, t)
    assert "topic 'b': n1=3, n0=0" in str(err.value) and "topic 'c': n1=0, n0=2" in str(err.value)


def test_positivity_detects_missing_reference_level():
    # the reference level 'a' has treated rows only: the one-hot ranges look fine, the categorical check does not
    topic = np.array(["a", "a", "b", "b", "c", "c", "b", "c"])
    t = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    with pytest.raises(PositivityError, match=r"topic 'a': n1=2, n0=0"):
        eb_att(topic, t)
    # as plain one-hot columns, the same problem fails in the solver instead
    x = balance_matrix(topic).values
    with pytest.raises(ConvergenceError, match="did not converge"):
        entropy_balance(x[t == 0], x[t == 1])


def test_drop_unsupported_records_and_matches_closed_form():
    topic, t = _topics(9, n=500)
    t[topic == "e"] = 1                        # topic e: treated only
    n_e = int(np.sum(topic == "e"))
    res = eb_att(topic, t, drop_unsupported=True)
    assert res.dropped.to_dict("records") == [{"variable": "topic", "level": "e", "n1": n_e, "n0": 0}]
    np.testing.assert_array_equal(res.kept, topic != "e")
    assert np.all(res.weights[topic == "e"] == 0.0)
    kept = topic != "e"
    expected = _poststrat(topic, t, 0, (t == 1) & kept)
    np.testing.assert_allclose(res.weights[t == 0], expected, rtol=1e-10)
    assert res.weights[t == 1].sum() == pytest.approx(1.0)
    assert "Dropped topics" in res.summary()
    ate = eb_ate(topic, t, drop_unsupported=True)
    assert list(ate.dropped["level"]) == ["e"]
    np.testing.assert_allclose(ate.weights[t == 0], _poststrat(topic, t, 0, kept), rtol=1e-10)


def test_drop_unsupported_reference_level():
    topic, t = _topics(10)
    t[topic == "a"] = 1                        # the reference level itself lacks controls
    res = eb_att(topic, t, drop_unsupported=True)
    kept = topic != "a"
    np.testing.assert_allclose(res.weights[t == 0], _poststrat(topic, t, 0, (t == 1) & kept), rtol=1e-10)


def test_convergence_error_reports_remaining_imbalance():
    rng = np.random.default_rng(11)
    c = rng.normal(size=(200, 2))
    with pytest.raises(ConvergenceError, match=r"outside the range .*remaining imbalance at least 7.36"):
        entropy_balance(c, [10.0, 0.0])        # target outside the data
    # inside every column's range but outside the convex hull (x + y <= 1)
    hull = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]] * 5)
    with pytest.raises(ConvergenceError, match=r"remaining imbalance [0-9.e-]+ in column"):
        entropy_balance(hull, [0.6, 0.6])
    c2, tr2 = _mixed(12)
    with pytest.raises(ConvergenceError, match=r"did not converge in 1 Newton steps"):
        entropy_balance(c2, tr2 + 0.5, max_iter=1)


# ---------------------------------------------------------------- frequency weights and determinism
def test_base_weights_equal_row_duplication():
    c, tr = _mixed(13, n0=150, n1=80)
    rng = np.random.default_rng(13)
    counts = rng.multinomial(150, np.full(150, 1 / 150)).astype(float)   # zeros included
    assert (counts == 0).any() and (counts > 1).any()
    res = entropy_balance(c, tr, base_weights=counts, moments=2)
    rows = np.repeat(np.arange(150), counts.astype(int))
    dup = entropy_balance(c[rows], tr, moments=2)
    summed = np.zeros(150)
    np.add.at(summed, rows, dup.weights)
    np.testing.assert_allclose(res.weights, summed, rtol=1e-12, atol=1e-16)
    assert np.all(res.weights[counts == 0] == 0.0)
    for key in ("n", "ess", "ess_ratio", "max_share"):
        assert res.diagnostics[key] == pytest.approx(dup.diagnostics[key], rel=1e-12)
    pd.testing.assert_frame_equal(res.balance_table(), dup.balance_table(), rtol=1e-10, atol=1e-12)


def test_estimand_base_weights_equal_row_duplication():
    topic, t = _topics(14, n=120)
    counts = np.random.default_rng(14).poisson(1.0, 120).astype(float)
    res = eb_ate(topic, t, base_weights=counts)
    rows = np.repeat(np.arange(120), counts.astype(int))
    dup = eb_ate(topic[rows], t[rows])
    summed = np.zeros(120)
    np.add.at(summed, rows, dup.weights)
    np.testing.assert_allclose(res.weights, summed, rtol=1e-12, atol=1e-16)
    pd.testing.assert_frame_equal(res.topic_counts(), dup.topic_counts())
    np.testing.assert_allclose(res.diagnostics["ess"].astype(float), dup.diagnostics["ess"].astype(float), rtol=1e-12)


def test_deterministic():
    c, tr = _mixed(15)
    a, b = entropy_balance(c, tr, moments=2), entropy_balance(c, tr, moments=2)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.lambda_, b.lambda_)


# ---------------------------------------------------------------- balance functions
def test_balance_matrix_categorical_soft_and_mixed():
    frame = pd.DataFrame({"topic": ["b", "a", "c", "a"], "p_x": [0.2, 0.5, 0.1, 1.0], "p_y": [0.8, 0.5, 0.9, 0.0]})
    bm = balance_matrix(frame)
    assert bm.names == ("topic[b]", "topic[c]", "p_y")
    assert bm.kinds == ("onehot", "onehot", "soft")
    np.testing.assert_array_equal(bm.values[:, 0], [1, 0, 0, 0])
    assert bm.topics["topic"][1] == ("a", "b", "c")
    soft_only = balance_matrix(frame[["p_x", "p_y"]].assign(p_x=[0.2, 0.5, 0.1, 0.3]))
    assert soft_only.names == ("p_x", "p_y")      # rows do not sum to 1: nothing dropped
    ints = balance_matrix(pd.Series([3, 1, 2, 1], name="tid"))       # one integer column: topic ids
    assert ints.names == ("tid[2]", "tid[3]")
    as_frame = balance_matrix(pd.DataFrame({"n_tokens": [3, 1, 2, 1], "topic": ["a", "b", "a", "b"]}))
    assert as_frame.names == ("n_tokens", "topic[b]")                  # in a DataFrame: numeric, as in data.py
    cat = pd.Categorical(["x", "y", "y", "x"], categories=["y", "x", "z"])
    bm_cat = balance_matrix(pd.DataFrame({"topic": cat}))             # reference = first category, as x_design
    assert bm_cat.names == ("topic[x]", "topic[z]")
    np.testing.assert_array_equal(bm_cat.values[:, 0], [1, 0, 0, 1])
    with pytest.raises(DataError, match="topic: expected a topic label in every row, got 1 missing"):
        balance_matrix(pd.Series(["a", None, "b"], name="topic"))


def test_soft_topics_balance():
    rng = np.random.default_rng(16)
    probs = rng.dirichlet([2, 1, 1], size=300)
    t = (rng.random(300) < 0.3 + 0.4 * probs[:, 0]).astype(int)
    frame = pd.DataFrame(probs, columns=["p_a", "p_b", "p_c"])
    res = eb_att(frame, t)
    np.testing.assert_allclose(res.weights[t == 0] @ probs[t == 0], probs[t == 1].mean(axis=0), atol=1e-9)
    counts = res.topic_counts()
    assert list(counts["kind"]) == ["soft"] * 3
    assert counts["n1"].sum() == pytest.approx(t.sum(), rel=1e-3)


def test_bad_inputs():
    with pytest.raises(DataError, match="base_weights: expected non-negative"):
        entropy_balance(np.ones((3, 1)), [1.0], base_weights=[1, -1, 1])
    with pytest.raises(DataError, match="expected 2 target means"):
        entropy_balance(np.ones((3, 2)), [1.0])
    with pytest.raises(DataError, match="treatment"):
        eb_att(["a", "b"], [0, 2])


# ---------------------------------------------------------------- batches (bootstrap)
def test_batch_equals_single_fits():
    c, tr = _mixed(17, n0=200, n1=100)
    rng = np.random.default_rng(17)
    q = rng.multinomial(200, np.full(200, 1 / 200), size=6).astype(float)
    qt = rng.multinomial(100, np.full(100, 1 / 100), size=6).astype(float)
    for warm in (True, False):
        batch = entropy_balance_batch(c, tr, q, target_weights=qt, moments=2, warm_start=warm)
        assert batch.converged.all() and batch.weights.shape == (6, 200)
        for b in range(6):
            single = entropy_balance(c, tr, base_weights=q[b], target_weights=qt[b], moments=2)
            np.testing.assert_allclose(batch.weights[b], single.weights, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("estimand", ["ATT", "ATC", "ATE"])
def test_eb_weights_batch_equals_estimand_helpers(estimand):
    topic, t = _topics(18, n=300)
    x = pd.DataFrame({"topic": topic, "z": np.random.default_rng(18).normal(size=300)})
    rng = np.random.default_rng(19)
    counts = np.zeros((5, 300))
    for arm in (0, 1):
        idx = np.flatnonzero(t == arm)
        counts[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1 / idx.size), size=5)
    batch = eb_weights_batch(x, t, counts, estimand=estimand)
    helper = {"ATT": eb_att, "ATC": eb_atc, "ATE": eb_ate}[estimand]
    for b in range(5):
        single = helper(x, t, base_weights=counts[b])
        np.testing.assert_allclose(batch.weights[b], single.weights, rtol=1e-8, atol=1e-14)


def test_eb_weights_batch_positivity_per_replicate():
    topic, t = _topics(20, n=200)
    counts = np.ones((3, 200))
    counts[1, (topic == "e") & (t == 0)] = 0.0      # replicate 1 loses every control of topic e
    n1 = int(np.sum((topic == "e") & (t == 1)))
    with pytest.raises(PositivityError, match=rf"replicate 1 .*topic 'e': n1={n1}, n0=0"):
        eb_weights_batch(topic, t, counts)
    res = eb_weights_batch(topic, t, counts, on_failure="nan")
    assert list(res.converged) == [True, False, True]
    assert np.isnan(res.weights[1]).all() and np.isfinite(res.weights[[0, 2]]).all()


def test_closed_form_without_collapsing_rows():
    # one-hots scaled by 2 are not 0/1, so the solver runs on every row instead of the distinct patterns
    topic, t = _topics(21)
    x = 2.0 * balance_matrix(topic).values
    res = entropy_balance(x[t == 0], x[t == 1])
    np.testing.assert_allclose(res.weights, _poststrat(topic, t, 0, t == 1), rtol=1e-10)


def test_support_ranges_match_brute_force():
    from deconfound._ebsolver import _ranges
    rng = np.random.default_rng(22)
    f = np.round(rng.normal(size=(300, 3)), 1)           # ties included
    sup = rng.random((40, 300)) < 0.05                   # sparse supports: the edge rows are often absent
    sup[:, 0] = True
    lo, hi = _ranges(f, sup)
    for i in range(40):
        np.testing.assert_array_equal(lo[i], f[sup[i]].min(axis=0))
        np.testing.assert_array_equal(hi[i], f[sup[i]].max(axis=0))


def test_unobserved_categories_including_the_reference():
    topic, t = _topics(23)
    cat = pd.Categorical(topic, categories=["unused", "a", "b", "c", "d", "e", "never"])
    res = eb_att(pd.DataFrame({"topic": cat}), t)
    np.testing.assert_allclose(res.weights[t == 0], _poststrat(topic, t, 0, t == 1), rtol=1e-10)
    counts = res.topic_counts().set_index("level")
    assert counts.loc["never", "n1"] == 0 and counts.loc["never", "n0"] == 0


def test_batch_failures_raise_or_give_nan():
    c = np.arange(10.0)[:, None]
    q = np.ones((3, 10))
    q[2, 5:] = 0.0                              # replicate 2 keeps only values 0..4: a target of 6 is infeasible
    with pytest.raises(ConvergenceError, match=r"1 of 3 problems failed; first: replicate 2: .*outside the range"):
        entropy_balance_batch(c, [6.0], q)
    res = entropy_balance_batch(c, [6.0], q, on_failure="nan")
    assert list(res.converged) == [True, True, False] and np.isnan(res.weights[2]).all()
    np.testing.assert_allclose(res.weights[:2] @ c[:, 0], 6.0, rtol=1e-10)
