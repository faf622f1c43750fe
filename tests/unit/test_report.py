"""report.py: every figure is written, the HTML inlines every image, the markdown links existing files."""
import base64
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from deconfound import report


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_report_with_all_figure_kinds(tmp_path):
    curve = pd.DataFrame({"unit": [f"L{i}" for i in range(6)], "estimate": np.linspace(0, 1, 6)})
    curve = curve.assign(ci_lower=curve.estimate - 0.1, ci_upper=curve.estimate + 0.1)
    figs = tmp_path / "figures"
    paths = [
        report.plot_effect_curves({"adjusted": curve, "unadjusted": curve.assign(estimate=curve.estimate * 2)},
                                  figs / "curves.png"),
        report.plot_forest(curve.rename(columns={"unit": "label"}), figs / "forest.png"),
        report.plot_balance(pd.DataFrame({"covariate": ["a", "b"], "smd_before": [0.5, -0.3],
                                          "smd_after": [0.0, 0.01]}), figs / "balance.png", ess=123.4),
        report.plot_localization(pd.DataFrame({"index": ["entropy", "entropy", "gini", "gini"],
                                               "curve": ["adj", "unadj"] * 2, "estimate": [0.9, 0.7, 0.2, 0.4],
                                               "ci_lower": [0.8, 0.6, 0.1, 0.3], "ci_upper": [1, 0.8, 0.3, 0.5]}),
                                 figs / "loc.png"),
    ]
    rep = report.Report("Test report").text("Summary", "first\n\nsecond")
    rep.table("Numbers", pd.DataFrame({"a": [1.23456, 2.0], "b": ["x", "y"]}))
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rep.figure(p.stem, p, caption="cap")
    rep.table("Provenance", report.provenance_table({"model": {"id": "m", "layers": 30}, "seed": 0}))
    out = rep.write(tmp_path)
    parser = _Images()
    parser.feed(out["html"].read_text())
    assert len(parser.srcs) == len(paths)
    for src, p in zip(parser.srcs, paths):
        assert base64.b64decode(src.split(",", 1)[1]) == p.read_bytes()
    md = out["md"].read_text()
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (tmp_path / rel).exists()
    assert "1.235" in md and "model.layers" in md


def test_missing_figure_is_a_clear_error(tmp_path):
    rep = report.Report("x").figure("gone", tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        rep.write(tmp_path)


def test_intervals_that_miss_their_estimate_are_drawn(tmp_path):
    """Regression: a percentile CI need not contain its estimate; errorbar's yerr refused negative lengths."""
    frame = pd.DataFrame({"index": ["concentration"] * 2, "curve": ["adj", "unadj"], "estimate": [0.5, 0.2],
                          "ci_lower": [0.6, 0.1], "ci_upper": [0.9, 0.3]})
    assert report.plot_localization(frame, tmp_path / "loc.png").read_bytes()[:4] == b"\x89PNG"
    forest = pd.DataFrame({"label": ["a", "b"], "estimate": [1.0, 0.0], "ci_lower": [1.2, -0.1], "ci_upper": [2, 0.1]})
    assert report.plot_forest(forest, tmp_path / "forest.png").exists()


class _MeanDiff:
    """Observational toy: NIE(treated) = mean difference of the mediator's first column, with scores."""

    name = "meandiff"

    def __init__(self, random_state=0):
        self.random_state = random_state

    def get_params(self):
        return {"random_state": self.random_state}

    def set_params(self, **p):
        self.random_state = p.get("random_state", self.random_state)
        return self

    def fit(self, data, *, graph=None, units=None):
        from deconfound.inference import Effect
        from deconfound.results import MediationResult, add_derived

        t = data.t.astype(bool)
        effs = {}
        for u in units or data.units:
            m = data.mediator(u)[:, 0].astype(float)
            s = np.where(t, (m - m[t].mean()) / t.mean(), -(m - m[~t].mean()) / (1 - t.mean()))
            effs[u] = add_derived({("nie", "treated"): Effect.from_scores(m[t].mean() - m[~t].mean(), s)})
        return MediationResult("meandiff", effs, n=data.n, n_treated=int(t.sum()), graph=str(graph),
                               adjustment={"first_stage": ["topic"] if graph == "topic_mediation" else []})


def _sim(n=400):
    from deconfound.simulate import topic_mediation

    return topic_mediation(n, n_units=4, n_topics=3, seed=3)[0]


def test_units_are_selected_on_one_half_and_tested_on_the_other(tmp_path):
    from deconfound.demo import analyse_and_report, split_halves

    data = _sim()
    sel, test = split_halves(data, seed=5)
    assert len(np.intersect1d(sel, test)) == 0 and len(sel) + len(test) == data.n
    for arm in (0, 1):  # each arm split in half
        assert abs((data.t[sel] == arm).sum() - (data.t[test] == arm).sum()) <= 1
    again = split_halves(data, seed=5)
    assert np.array_equal(again[0], sel) and np.array_equal(again[1], test)
    assert not np.array_equal(split_halves(data, seed=6)[0], sel)
    out = analyse_and_report(data, out=tmp_path, estimators={"md": _MeanDiff()}, seed=5, quick=True,
                             refute_units=0)
    assert np.array_equal(out["split"][0], sel) and np.array_equal(out["split"][1], test)
    # the ranking is that of the selection half, not of all rows
    fit = _MeanDiff().fit(data.subset(sel), graph="topic_mediation")
    assert out["selected"] == sorted(data.units, key=lambda u: -abs(fit.effect(u, "nie", "treated").estimate))
    md = out["md"].read_text()
    assert f"random half of the rows (seed 5, n={len(sel)})" in md and "Selected units, estimated on the held-out half" in md


def test_a_failing_step_keeps_the_finished_work_and_names_the_step(tmp_path, monkeypatch):
    from deconfound import demo

    def broken(*args, **kwargs):
        raise ValueError("'yerr' must not contain negative values")

    monkeypatch.setattr(demo.rp, "plot_localization", broken)
    with pytest.raises(demo.ReportStepError, match="step 'localization' failed .*yerr"):
        demo.analyse_and_report(_sim(), out=tmp_path, estimators={"md": _MeanDiff()}, quick=True, refute_units=0)
    est = pd.read_csv(tmp_path / "estimates.csv")  # the estimation finished before the failure
    assert set(est.estimator) == {"md"} and np.isfinite(est.estimate).all()
    md = (tmp_path / "report.md").read_text()
    assert "Per-unit NIE curve: md" in md and "Step 'localization' failed" in md
    assert (tmp_path / "localization_difference.csv").exists()  # computed before the plot that failed


def test_balance_figure_lists_every_topic_and_uses_the_control_ess():
    """Issue 16: the balance plot missed the reference topic and printed the treated ESS in its title."""
    from deconfound import simulate
    from deconfound.demo import _balance, level_balance

    data, _ = simulate.topic_mediation(600, n_topics=5, seed=0)
    bal = _balance(data, ["topic"])
    table = level_balance(data, ["topic"], bal)
    assert table.covariate.tolist() == [f"topic[t{k}]" for k in range(5)]  # t0, the reference level, too
    assert (table.smd_after.abs() < 1e-6).all() and (table.smd_before.abs() > 0).any()  # EB balances the topics
    # by hand for t0
    t, ind = data.t == 1, (data.x["topic"].astype(str) == "t0").to_numpy().astype(float)
    sd = np.sqrt((ind[t].var() + ind[~t].var()) / 2)
    assert table.smd_before.iloc[0] == pytest.approx((ind[t].mean() - ind[~t].mean()) / sd, rel=1e-12)
    ess = bal.diagnostics.loc["control", "ess"]
    assert ess < bal.diagnostics.loc["treated", "ess"]  # the two differ: the title must show the control one


def test_a_comparison_already_computed_is_reported_without_refitting(tmp_path, monkeypatch):
    from deconfound import demo
    from deconfound.compare import compare_estimators

    data = _sim()
    comp = compare_estimators(data, estimators={"md": _MeanDiff()}, graphs=[demo.ADJUSTED, demo.UNADJUSTED],
                              sensitivity={}, random_state=0)
    monkeypatch.setattr(demo, "compare_estimators", lambda *a, **k: pytest.fail("refitted"))
    out = demo.analyse_and_report(data, out=tmp_path, estimators={"md": _MeanDiff()}, quick=True, refute_units=0,
                                  comparison=comp)
    assert out["comparison"] is comp
    est = pd.read_csv(tmp_path / "estimates.csv")
    assert np.allclose(np.sort(est.estimate), np.sort(comp.frame.estimate))
    with pytest.raises(ValueError, match="comparison: expected fits"):
        demo.analyse_and_report(data, out=tmp_path / "b", estimators={"other": _MeanDiff()}, quick=True,
                                refute_units=0, comparison=comp)


def test_the_estimators_warnings_are_in_the_report(tmp_path):
    """A NaN estimate must not reach the report without the reason its estimator gave."""
    from deconfound import demo
    from deconfound.compare import compare_estimators

    data = _sim()
    comp = compare_estimators(data, estimators={"md": _MeanDiff()}, graphs=[demo.ADJUSTED, demo.UNADJUSTED],
                              sensitivity={}, random_state=0)
    comp.results[("md", demo.ADJUSTED)].warnings.append("unit 'u0': no estimate: a reason the user must see")
    demo.analyse_and_report(data, out=tmp_path, estimators={"md": _MeanDiff()}, quick=True, refute_units=0,
                            comparison=comp)
    md = (tmp_path / "report.md").read_text()
    assert "Estimator warnings" in md and "a reason the user must see" in md and demo.ADJUSTED in md
    assert "a reason" not in md.split("Estimator warnings")[0]  # once, in its own section
