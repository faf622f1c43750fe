"""The powered design's pieces: treatment rule, design table, MC error, robustness table, MDE.

Oracles: post-stratification weights written out by hand (EB ATT on one-hot topics equals them), scipy's
normal quantiles and Spearman, and fabricated results whose bias and coverage are known.
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from deconfound import MediationData
from deconfound.errors import DataError, PositivityError
from deconfound.inference import Effect
from deconfound.study import (
    design_table, localization_mde, mc_error, mde, prompts_for_signal, robustness_summary, robustness_table, signal_scale,
    treatment_rule,
)


def _data(seed=0):
    topic = np.array(list("aaaaabbbbbcc"))
    t = np.array([1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1])
    m = np.random.default_rng(seed).normal(size=(12, 2))
    return MediationData.from_arrays(t=t, y=np.zeros(12), mediators={"u": m}, x=pd.DataFrame({"topic": topic}),
                                     meta={"treatment": {"instrument": "bilstm", "threshold": 0.3}})


def test_design_table_counts_positivity_and_ess_match_post_stratification():
    frame = design_table(_data()).set_index("topic")
    assert frame.loc["a", ["n_treated", "n_control"]].tolist() == [3, 2]
    assert frame.loc["b", ["n_treated", "n_control"]].tolist() == [1, 4]
    assert frame.loc["c", ["n_treated", "n_control"]].tolist() == [2, 0]
    assert frame.loc["c", "positivity"].startswith("no controls")
    assert frame.loc["a", "positivity"] == "both arms"
    # c is dropped (no controls); the kept treated are 3 in a, 1 in b. Control weights: a 3/4 over 2 rows,
    # b 1/4 over 4 rows. Within a topic the weights are equal, so the ESS is the count.
    w = np.array([3 / 8, 3 / 8] + [1 / 16] * 4)
    assert frame.loc["a", "ess_control"] == pytest.approx(2)
    assert frame.loc["b", "ess_control"] == pytest.approx(4)
    assert frame.loc["c", "ess_control"] == 0
    assert frame.loc["all", "ess_control"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert frame.loc["all", ["n_treated", "n_control"]].tolist() == [6, 6]
    assert frame.attrs == {"instrument": "bilstm", "threshold": 0.3}
    with pytest.raises(DataError, match="expected a confounder column, got 'source'"):
        design_table(_data(), topic="source")
    split = _data().replace(x=pd.DataFrame({"topic": np.where(_data().t == 1, "x", "y")}))
    with pytest.raises(PositivityError, match="expected a topic with both treated and control prompts, got none"):
        design_table(split)


def test_treatment_rule_quantile_of_pool_and_fixed_threshold():
    pool = np.linspace(0, 1, 101)
    s = np.array([0.1, 0.49, 0.5, 0.9])
    t, rule = treatment_rule(s, quantile=0.5, pool=pool, instrument="jigsaw")
    assert rule["threshold"] == pytest.approx(0.5) and t.tolist() == [0, 0, 1, 1]
    assert "50% quantile of the pool's 101 scores" in rule["statement"] and rule["pool_size"] == 101
    t, rule = treatment_rule(s, threshold=0.2)
    assert t.tolist() == [0, 1, 1, 1] and rule["quantile"] is None
    with pytest.raises(ValueError, match="exactly one of threshold or quantile"):
        treatment_rule(s)
    with pytest.raises(DataError, match="expected both arms"):
        treatment_rule(s, threshold=2.0)


def test_mc_error_is_sd_over_root_k():
    y = np.array([[0.0, 1.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    out = mc_error(y)
    se0 = np.std([0, 1, 0, 1], ddof=1) / 2
    assert out["k"] == 4 and out["mean_prompt_mc_se"] == pytest.approx(se0 / 2)
    assert out["mc_se_of_mean"] == pytest.approx(se0 / 2)  # sqrt(se0^2 + 0) / 2
    with pytest.raises(DataError, match="k >= 2"):
        mc_error(np.ones((3, 1)))


def _result(values, ses, population="att"):
    effects = {u: Effect(v, s, (v - 1.96 * s, v + 1.96 * s), 0.5) for u, (v, s) in zip("LMNO", zip(values, ses))}
    return SimpleNamespace(units=list(effects), population=population,
                           effect=lambda u, e, a: effects[u])


def test_robustness_table_bias_coverage_and_rank_agreement():
    patching = _result([0.0, 1.0, 2.0, 3.0], [0.1] * 4)
    close = _result([0.1, 1.1, 2.1, 3.1], [0.1] * 4)  # bias 0.1, CIs +-0.196 cover
    reversed_ = _result([3.0, 2.0, 1.0, 0.0], [0.01] * 4, population="ate")  # rank -1, no CI covers
    table = robustness_table(patching, {"close": close, "reversed": reversed_})
    assert len(table) == 8
    assert np.allclose(table[table.estimator == "close"].bias, 0.1)
    assert table[table.estimator == "close"].covers.all()
    assert not table[table.estimator == "reversed"].covers.any()
    summ = robustness_summary(table).set_index("estimator")
    assert summ.loc["close", "spearman"] == pytest.approx(1.0)
    assert summ.loc["reversed", "spearman"] == pytest.approx(-1.0)
    assert summ.loc["close", "coverage"] == 1.0 and summ.loc["reversed", "coverage"] == 0.0
    assert summ.loc["close", "rmse"] == pytest.approx(0.1)
    assert summ.loc["reversed", "mean_bias"] == pytest.approx(0.0)
    assert summ.loc["reversed", "rmse"] == pytest.approx(np.sqrt((9 + 1 + 1 + 9) / 4))
    assert summ.loc["reversed", "population"] == "ate"
    holes = _result([np.nan, 1.0, 2.0, 3.0], [np.nan, 0.1, 0.1, 0.1])
    summ = robustness_summary(robustness_table(patching, {"holes": holes})).set_index("estimator")
    assert summ.loc["holes", "layers"] == 3 and summ.loc["holes", "layers_without_estimate"] == 1
    assert summ.loc["holes", "coverage"] == 1.0 and summ.loc["holes", "spearman"] == pytest.approx(1.0)
    missing = SimpleNamespace(units=["L"], population="att", effect=close.effect)
    with pytest.raises(DataError, match="expected the patching units"):
        robustness_table(patching, {"short": missing})


def test_mde_formula():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert mde(1.0) == pytest.approx(z) and z == pytest.approx(2.8016, abs=1e-4)
    assert mde(0.5, alpha=0.01, power=0.9) == pytest.approx(0.5 * (stats.norm.ppf(0.995) + stats.norm.ppf(0.9)))
    assert np.allclose(mde(np.array([0.0, 2.0])), [0.0, 2 * z])
    with pytest.raises(ValueError, match="power"):
        mde(1.0, power=1.5)
    diff = pd.DataFrame({"index": ["concentration"], "ci_lower": [-0.196], "ci_upper": [0.196]})
    out = localization_mde(diff)
    assert out.se.iloc[0] == pytest.approx(0.1, rel=1e-3) and out.mde_80.iloc[0] == pytest.approx(0.1 * z, rel=1e-3)



def test_prompts_for_signal_closed_form():
    # n (cv / 0.3)^2: the demo's cv 7.28 at 91 prompts needs 91 * (7.28 / 0.3)^2 = 53,587 prompts
    assert prompts_for_signal(7.28, 91) == pytest.approx(91 * (7.28 / 0.3) ** 2) == pytest.approx(53587.3, abs=0.1)
    assert prompts_for_signal(0.6, 100, target=0.2) == pytest.approx(900.0)
    out = prompts_for_signal(np.array([0.3, np.inf, np.nan]), 50)
    assert out[0] == pytest.approx(50.0) and np.isinf(out[1]) and np.isnan(out[2])
    with pytest.raises(ValueError, match="expected positive"):
        prompts_for_signal(1.0, 0)
    # the frame takes the noisier curve; without n it adds no column
    diff = pd.DataFrame({"index": ["concentration"], "ci_lower": [np.nan], "ci_upper": [np.nan], "se": [np.nan],
                         "signal_cv_adjusted": [0.6], "signal_cv_unadjusted": [1.2]})
    out = localization_mde(diff, n=40)
    assert out.n_for_signal.iloc[0] == pytest.approx(40 * 16.0) and np.isnan(out.mde_80.iloc[0])
    assert "n_for_signal" not in localization_mde(diff).columns
    # the sentence beside a NaN index: 2 significant digits, and no number where none exists
    assert "about 54,000 prompts (n (cv / 0.3)^2 from 91" in signal_scale(prompts_for_signal(7.2769, 91), 91, "prompts")
    assert "no number of rows" in signal_scale(np.inf, 40) and signal_scale(np.nan, 40) == ""


def test_demo_summary_gives_the_scale_when_the_index_is_not_estimable():
    from types import SimpleNamespace

    from deconfound.demo import summary_lines

    eff = SimpleNamespace(estimate=0.01)
    res = SimpleNamespace(n=200, n_treated=90, effect=lambda u, e, a: eff)
    nan = float("nan")
    diff = pd.DataFrame([{"index": k, "adjusted": nan, "unadjusted": nan, "difference": nan, "ci_lower": nan,
                          "ci_upper": nan, "p_value": nan, "signal_cv_adjusted": 1.5, "signal_cv_unadjusted": 0.6}
                         for k in ("concentration", "effective_units", "renyi2_entropy")])
    lines = summary_lines(res, res, diff, ["u0", "u1"], effect="nie", arm="treated", main="dml")
    assert "at about 5,000 rows (n (cv / 0.3)^2 from 200" in lines[1]  # 200 * (1.5 / 0.3)^2 = 5,000


BAD = {"stupid", "idiot", "hate", "dumb", "fool", "ugly"}


class StubScorer:
    """Share of words from a small insult list, plus a tiny length term so that scores are distinct."""

    name = "stub_lexical"
    columns = ["toxic", "other"]

    def score(self, texts):
        out = []
        for text in texts:
            words = text.lower().split()
            out.append([sum(w in BAD for w in words) / (len(words) + 1) + 1e-3 * len(words), 0.0])
        return np.array(out, dtype=float).reshape(len(texts), 2)


def p_nie(result, unit):
    return result.effect(unit, "nie", "treated").estimate


@pytest.mark.lm
def test_run_study_end_to_end_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from deconfound.lm.models import tiny_model
    from deconfound.study import run_study

    base = ["the game was great", "you are a stupid idiot", "the president spoke to the people",
            "i hate you", "the team played well", "what a ugly fool", "the market fell", "shut up you dumb fool"]
    texts = [f"{p} {w}" for w in ("and", "but", "so") for p in base]  # 24 prompts
    topics = ["a" if i % 3 else "b" for i in range(24)]
    lm = tiny_model("llama", seed=5, n_layers=3)
    out = run_study(tmp_path / "study", n_prompts=None, model=lm, prompts=pd.DataFrame({"text": texts}),
                    scorer=StubScorer(), topics=topics, quantile=0.5, n_samples=4, max_new_tokens=4, n_boot=20,
                    quick=True, batch_size=16, secondary=False, exact_check=4, null_layers=[2])
    md = out["md"].read_text()
    assert not out["failures"], out["failures"]
    for heading in ("Summary", "Design table", "Outcome", "Identification", "Localization",
                    "Estimator robustness against the patching NIE", "Estimator robustness: summary", "Null model",
                    "Sensitivity of the DML NIE", "Benchmarks: strength of topic", "Provenance"):
        assert heading in md, heading
    checks = out["checks"]
    null = checks["null"]  # the trained model's patching NIE of layer 2, against the random copy's
    assert list(null.unit) == ["mlp_out.L2"] and null.estimate.iloc[0] == p_nie(out["patching"], "mlp_out.L2")
    assert np.isfinite(null.new_estimate).all() and null.new_estimate.iloc[0] != null.estimate.iloc[0]
    assert set(checks["benchmark"].to_frame().k) == {1, 2, 3}
    assert "refutation" not in checks  # refute_units=0 (24 prompts: halves too small for DML's folds)
    assert "Null model (randomly initialised copy" in "\n".join(out["lines"])
    design = out["design"].set_index("topic")
    assert design.loc["all", "n_treated"] + design.loc["all", "n_control"] == 24
    assert out["design"].attrs["instrument"] == "stub_lexical"
    # the treatment is the stated rule: scores at or above the median of the 24 prompt scores
    s = StubScorer().score(texts)[:, 0]
    assert design.loc["all", "n_treated"] == int((s >= np.quantile(s, 0.5)).sum())
    rob = out["robustness"]
    assert set(rob.estimator) == {"weighting", "dml", "interventional"} and len(rob) == 3 * 3
    p = out["patching"]
    assert np.allclose(rob[rob.estimator == "dml"].patching, [p.effect(u, "nie", "treated").estimate for u in p.units])
    assert out["mc"]["k"] == 4 and out["mc"]["n"] == 24
    loc = out["localization"]  # on 24 prompts the noise-corrected index may be NaN (too noisy): then so is its MDE
    ok = np.isfinite(loc.se)
    assert np.allclose(loc.mde_80[ok], 2.8015852 * loc.se[ok], rtol=1e-6) and np.isnan(loc.mde_80[~ok]).all()
    said = [(k, w) for k, r in out["observational"].items() for w in r.warnings]
    assert ("Estimator warnings" in md) == bool(said)
    conc = loc.set_index("index").loc["concentration"]  # the design's scale, printed when the index is NaN
    cv = max(conc.signal_cv_adjusted, conc.signal_cv_unadjusted)
    assert conc.n_for_signal == pytest.approx(out["data"].n * (cv / 0.3) ** 2)
    if not np.isfinite(conc.difference):
        assert signal_scale(conc.n_for_signal, out["data"].n, "prompts") in out["lines"][1]


def test_demo_dispatches_to_the_study_designs(monkeypatch):
    from deconfound import cli, demo, study

    calls = []
    monkeypatch.setattr(study, "run_demo", lambda **kw: calls.append(kw) or 0)
    assert cli.main(["demo", "--full", "--n-prompts", "150", "--out", "somewhere"]) == 0
    assert cli.main(["demo", "--quick", "--out", "q"]) == 0
    assert cli.main(["demo", "--out", "d"]) == 0
    assert [c["design"] for c in calls] == ["full", "quick", "default"]
    assert calls[0] == {"out": "somewhere", "design": "full", "n_prompts": 150, "seed": 0, "model": "smollm2-135m",
                        "dtype": "float32", "device": "cpu"}
    assert calls[1]["n_prompts"] is None
    with pytest.raises(ValueError, match="got both"):
        demo.run_llm(full=True, quick=True)
    assert cli.main(["demo", "--full", "--quick"]) != 0
    monkeypatch.undo()
    with pytest.raises(ValueError, match="design: expected one of"):
        study.run_demo(design="huge")


def test_designs_name_their_null_layers_among_their_layers():
    from deconfound.study import DESIGNS, FULL_N

    assert DESIGNS["full"]["n_prompts"] == FULL_N == 1500 and DESIGNS["full"]["layers"] == "all"
    for name, d in DESIGNS.items():
        layers = range(30) if d["layers"] == "all" else d["layers"]
        assert set(d["null_layers"]) <= set(layers), name
        assert d["n_samples"] >= 2, name  # the Monte Carlo error needs two samples per prompt


def test_split_refutation_selects_on_one_half_and_refutes_on_the_other():
    from sklearn.linear_model import LogisticRegression

    from deconfound import get_estimator, simulate
    from deconfound.demo import split_halves
    from deconfound.study_checks import split_refutation

    data, truth = simulate.topic_mediation(800, n_units=4, seed=3)
    est = get_estimator("dml", n_folds=3, propensity_learner=LogisticRegression(max_iter=1000), random_state=0,
                        population="att")
    table, chosen, held = split_refutation(est, data, n_units=2, seed=1)
    first, second = split_halves(data, 1)
    # the selection: |NIE (treated)| of an independent fit on the first half only
    sel = est.fit(data.subset(first), graph="topic_mediation")
    expect = sorted(data.units, key=lambda u: -abs(sel.effect(u, "nie", "treated").estimate))[:2]
    assert chosen == expect
    # the held-out fit is the fit on the second half only
    again = est.fit(data.subset(second).select_units(chosen), graph="topic_mediation")
    for u in chosen:
        assert held.effect(u, "nie", "treated").estimate == again.effect(u, "nie", "treated").estimate
    assert held.n == len(second)
    assert set(table.refuter) == {"placebo_treatment", "random_common_cause", "dummy_outcome"}
    assert set(table.unit) == set(chosen)
    orig = table[(table.effect == "nie") & (table.arm == "treated")].groupby("unit").estimate.first()
    assert np.allclose([orig[u] for u in chosen], [held.effect(u, "nie", "treated").estimate for u in chosen])
