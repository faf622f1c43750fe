"""The calibration study's bookkeeping, checked on hand-made rows (the statistics live in tests/statistical)."""
import numpy as np
import pandas as pd
import pytest

from deconfound import coverage as cv
from deconfound import coverage_report as cr


def _rows(estimates, ses, truth, p):
    return pd.DataFrame({"estimator": "e", "cell": "c", "n": 10, "seed": range(len(estimates)), "unit": "u",
                         "effect": "nie", "arm": "treated", "population": "ate", "estimate": estimates,
                         "se": ses, "ci_lower": np.array(estimates) - 1.96 * np.array(ses),
                         "ci_upper": np.array(estimates) + 1.96 * np.array(ses), "p_value": p, "truth": truth})


def test_summary_counts_coverage_bias_and_rejections_by_hand():
    rows = _rows([0.0, 1.0, 3.0, -0.5], [1.0, 1.0, 1.0, 1.0], 0.0, [0.9, 0.3, 0.001, 0.6])
    s = cv.summarize(rows).iloc[0]
    assert s.reps == 4
    assert s.coverage == pytest.approx(3 / 4)  # 3.0 +- 1.96 misses 0
    assert s.bias == pytest.approx(0.875) and s.bias_se == pytest.approx(0.875)
    assert s.test == "size" and s.reject == pytest.approx(1 / 4)
    assert s.se_sd == pytest.approx(1.0 / np.std([0.0, 1.0, 3.0, -0.5], ddof=1))
    assert s.ci_length == pytest.approx(2 * 1.96)
    assert not s.passes  # coverage 0.75 is outside [0.93, 0.97]


def test_power_rows_and_acceptance():
    rows = _rows([1.0] * 20, [0.5] * 20, 1.0, [0.04] * 20)
    s = cv.summarize(rows).iloc[0]
    assert s.test == "power" and s.reject == 1.0
    assert s.coverage == 1.0 and not s.passes  # over-coverage fails too
    rows.loc[0, ["ci_lower", "ci_upper"]] = [2.0, 3.0]  # 19/20 = 0.95
    assert cv.summarize(rows).iloc[0].passes


def test_failed_fits_are_counted_not_raised():
    rows = pd.DataFrame([{"estimator": "e", "cell": "c", "n": 5, "seed": 0, "error": "PositivityError: x"}])
    f = cv.failures(rows)
    assert f.failed.tolist() == [1] and "PositivityError" in f.message.iloc[0]


def test_run_uses_the_same_data_seed_for_every_estimator_and_writes_markdown(tmp_path):
    cell = [c for c in cv.grid("ci") if c.name == "linear-n300"]
    rows = cv.run(["parametric", "eb_total"], cell, reps=2, seed=7, progress=False)
    assert set(rows.seed) == {7, 8}
    assert set(rows.estimator) == {"parametric", "eb_total"}
    again = cv.run(["parametric"], cell, reps=2, seed=7, progress=False)
    first = rows[rows.estimator == "parametric"].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, again)  # same seed, same numbers
    md = cr.to_markdown(cv.summarize(rows), cv.failures(rows), commit="abc", reps=2, seconds=1.0, grid_name="ci")
    assert "commit `abc`" in md and "### parametric" in md and "[0.93, 0.97]" in md


def test_grid_names_and_bad_grid():
    names = {c.name for c in cv.grid("full")}
    assert {"linear-n300", "interaction-n10000", "dim50-n2000", "dim576-n2000", "patching-n300"} <= names
    assert "dim576-n300" not in names
    with pytest.raises(ValueError, match="expected 'full' or 'ci'"):
        cv.grid("huge")


def test_undefined_rows_count_as_no_rejection_and_leave_coverage_to_the_others():
    rows = _rows([0.1, 0.2, np.nan, np.nan], [1.0, 1.0, np.nan, np.nan], 0.0, [0.01, 0.5, np.nan, np.nan])
    s = cv.summarize(rows).iloc[0]
    assert s.undefined == pytest.approx(0.5)
    assert s.reject == pytest.approx(1 / 4)  # one rejection over all four data sets; NaN p-values do not reject
    assert s.coverage == 1.0 and s.bias == pytest.approx(0.15)  # over the two defined ones


def test_refuter_rows_are_summarized_as_failure_rates():
    base = {"estimator": "e", "cell": "refute-c", "n": 10, "unit": "u0", "effect": "te", "arm": "average",
            "p_value": 0.5, "truth": np.nan, "warned": False}
    rows = pd.DataFrame([{**base, "seed": s, "refuter": r, "passed": s != 0 or r == "dummy_outcome"}
                         for s in range(10) for r in ("placebo_treatment", "dummy_outcome")])
    assert cv.summarize(rows).empty  # refuter rows have no truth: not an estimator's row
    t = cv.summarize_refuters(rows).set_index("refuter")
    assert t.loc["placebo_treatment", "fail"] == pytest.approx(0.1) and not t.loc["placebo_treatment", "passes"]
    assert t.loc["dummy_outcome", "fail"] == 0 and t.loc["dummy_outcome", "reps"] == 10


def test_main_keeps_earlier_rows_it_does_not_recompute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = _rows([0.0, 0.5], [1.0, 1.0], 0.0, [0.9, 0.6]).assign(estimator="old", cell="linear-n300", warned=False)
    earlier.to_csv("earlier.csv")
    (tmp_path / "cov.md").write_text("# x\n\n## What the table shows\n\n- hand-written.\n\n## Data-generating processes\n")
    cv.main(["--grid", "ci", "--reps", "2", "--estimators", "localization", "--cells", "localization-same-n2000",
             "--keep", "earlier.csv", "--keep-commit", "abc1234", "--rows", "rows.csv", "--out", "cov.md"])
    rows = pd.read_csv("rows.csv", index_col=0)
    assert set(rows.estimator) == {"old", "localization"}
    assert set(rows[rows.estimator == "old"].commit) == {"abc1234"}
    md = (tmp_path / "cov.md").read_text()
    assert "| old | 1 | 2 | abc1234 |" in md and "- hand-written." in md and "### localization" in md
    rows[rows.estimator == "localization"].to_csv("new.csv")
    cv.main(["--reps", "0", "--keep", "new.csv,earlier.csv", "--out", "cov.md", "--rows", "again.csv"])
    assert "Assembled by" in (tmp_path / "cov.md").read_text()  # --reps 0: no new fits, the rows kept as they were
    assert len(pd.read_csv("again.csv", index_col=0)) == len(rows)
    with pytest.raises(SystemExit):  # the same estimator x cell in two files: which one would be meant?
        cv.main(["--reps", "0", "--keep", "rows.csv,earlier.csv", "--out", "cov.md"])


def test_an_estimator_no_chosen_cell_runs_is_named():
    with pytest.raises(ValueError, match=r"expected names the chosen cells run .*got \['patching'\]"):
        cv.run(["patching"], [c for c in cv.grid("ci") if c.name == "linear-n300"], reps=1)


def test_main_writes_rows_per_pair_and_resumes_without_refitting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--grid", "ci", "--reps", "2", "--estimators", "localization,localization_abs",
            "--cells", "localization-same-n2000", "--rows", "rows.csv", "--out", "cov.md"]
    fitted = []
    real_run = cv.run

    def counting_run(estimators, cells, **kw):
        fitted.append(estimators[0])
        if estimators == ["localization_abs"] and len(fitted) == 2:
            raise KeyboardInterrupt  # interrupted after the first pair was written
        return real_run(estimators, cells, **kw)

    monkeypatch.setattr(cv, "run", counting_run)
    with pytest.raises(KeyboardInterrupt):
        cv.main(args)
    first = pd.read_csv("rows.csv", index_col=0)
    assert set(first.estimator) == {"localization"} and not (tmp_path / ".tmp-rows.csv").exists()
    cv.main(args + ["--resume"])
    assert fitted == ["localization", "localization_abs", "localization_abs"]  # the finished pair is not refitted
    rows = pd.read_csv("rows.csv", index_col=0)
    assert set(rows.estimator) == {"localization", "localization_abs"}
    pd.testing.assert_frame_equal(rows[rows.estimator == "localization"].reset_index(drop=True),
                                  first.reset_index(drop=True), check_dtype=False)
    md = (tmp_path / "cov.md").read_text()
    assert md.count("Acceptance: ") == 1 and "0.015 with 200" not in md and "0.154 with 2 data sets" in md
    (tmp_path / "cov.md").write_text(md.replace("Acceptance: ", "## What the table shows\n\n- hand.\n\nAcceptance: "))
    for _ in range(2):  # the notes are kept, the generated text after them is not kept twice
        cv.main(args + ["--resume"])
        md = (tmp_path / "cov.md").read_text()
        assert md.count("Acceptance: ") == 1 and md.count("- hand.") == 1
    with pytest.raises(SystemExit):
        cv.main(["--resume", "--rows", "missing.csv", "--reps", "1", "--cells", "localization-same-n2000"])


def test_refuters_draw_from_a_stream_other_than_the_data(monkeypatch):
    seen = []

    def fake(est, data, *, random_state, original):
        seen.append(random_state)
        return type("R", (), {"to_frame": lambda self: pd.DataFrame(columns=["unit", "effect", "arm"])})()

    monkeypatch.setattr(cv, "REFUTERS", {r: fake for r in cv.REFUTER_SIZE})
    cell = next(c for c in cv.grid("ci") if c.kind == "refute")
    cv._rows_refute("parametric", cell, 7, {})
    assert seen == [cv.REFUTER_SEED + 7] * len(cv.REFUTER_SIZE) and cv.REFUTER_SEED + 7 != 7


def test_overview_gives_the_coverage_range_per_estimator_process_and_n():
    base = dict(estimator="e", unit="u", arm="average", population="ate", reps=10, bias=0.0, bias_se=0.0,
                ci_length=1.0, se_sd=1.0, passes=True)
    table = pd.DataFrame([
        {**base, "cell": "lin-n300", "n": 300, "effect": "te", "coverage": 0.91, "test": "power", "reject": 0.9,
         "warned": 0.0, "undefined": 0.0},
        {**base, "cell": "lin-n300", "n": 300, "effect": "nie", "coverage": 0.97, "test": "size", "reject": 0.08,
         "warned": 0.0, "undefined": 0.0},
        {**base, "cell": "lin-n2000", "n": 2000, "effect": "te", "coverage": 0.95, "test": "power", "reject": 1.0,
         "warned": 0.9, "undefined": 0.25}])
    o = cr.overview(table).set_index(["estimator", "process"])
    assert o.loc[("e", "lin"), "n = 300"] == "0.91*"  # the range over nonzero truths; a size above 0.07 is starred
    assert o.loc[("e", "lin"), "n = 2,000"] == "0.95 w (25% none)"


def _fake_run(estimators, cells, *, reps, **kw):
    """run() without fits: one null row per data set."""
    (name,), (cell,) = estimators, cells
    return _rows([0.0] * reps, [1.0] * reps, 0.0, [0.5] * reps).assign(
        estimator=name, cell=cell.name, n=cell.n, warned=False, warning="")


def test_rows_round_trip_through_gzip_and_keep_the_commit_a_string(tmp_path):
    rows = _rows([0.0, 1.0], [1.0, 1.0], 0.0, [0.5, 0.5]).assign(commit=["0123456", "1234e56"])
    for name in ("rows.csv.gz", "rows.csv", "rows.parquet"):
        cv._write_rows(rows, tmp_path / name)
        back = cv._read_rows(tmp_path / name)  # a gzip name gets gzip bytes, not plain text
        assert back.commit.tolist() == ["0123456", "1234e56"]  # a hash of digits is not read as a number
        assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_resume_refuses_rows_of_another_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cv, "run", _fake_run)
    args = ["--grid", "ci", "--estimators", "localization,localization_abs", "--cells",
            "localization-same-n300,localization-same-n2000", "--rows", "rows.csv", "--out", "cov.md"]
    cv.main(args + ["--reps", "5"])
    rows = pd.read_csv("rows.csv", index_col=0)
    rows[~((rows.estimator == "localization_abs") & (rows.cell == "localization-same-n2000"))].to_csv("rows.csv")
    with pytest.raises(SystemExit):  # 5 data sets held per pair, 3 asked: the table would mix them
        cv.main(args + ["--reps", "3", "--resume"])
    with pytest.raises(SystemExit):  # a pair this run does not fit (another --cells, --grid or --estimators)
        cv.main(args[:5] + ["localization-same-n2000"] + args[6:] + ["--reps", "5", "--resume"])
    cv.main(args + ["--reps", "5", "--resume"])
    rows = pd.read_csv("rows.csv", index_col=0)
    assert rows.groupby(["estimator", "cell"]).seed.nunique().tolist() == [5] * 4


def test_overview_counts_fits_that_raised_as_no_estimate_and_marks_a_zero_truth_cell():
    base = dict(estimator="e", unit="u", arm="average", population="ate", bias=0.0, bias_se=0.0, ci_length=1.0,
                se_sd=1.0, passes=True, warned=0.0, reject=0.0)
    table = pd.DataFrame([
        {**base, "cell": "lin-n300", "n": 300, "effect": "te", "coverage": 0.95, "test": "power", "reps": 60,
         "undefined": 0.0},
        {**base, "cell": "lin-n300", "n": 300, "effect": "nie", "coverage": 0.95, "test": "power", "reps": 60,
         "undefined": 0.5},
        {**base, "cell": "same-n300", "n": 300, "effect": "nie", "coverage": 0.97, "test": "size", "reps": 100,
         "undefined": 0.0}])
    fails = pd.DataFrame({"estimator": ["e"], "cell": ["lin-n300"], "failed": [40], "message": ["PositivityError"]})
    o = cr.overview(table, fails).set_index(["estimator", "process"])["n = 300"]
    assert o[("e", "lin")] == "0.95 (70% none)"  # (40 raised + 30 undefined) of 100 data sets
    assert o[("e", "same")] == "0.97 (truth 0)"  # no nonzero truth: the coverage shown is of zero truths
    assert cr.overview(table).set_index(["estimator", "process"])["n = 300"][("e", "lin")] == "0.95 (50% none)"
    table.loc[2, "reject"] = 0.08
    assert cr.overview(table, fails).set_index(["estimator", "process"])["n = 300"][("e", "same")] == "0.97* (truth 0)"


def test_sources_give_the_range_of_data_sets_when_cells_differ():
    rows = pd.concat([_rows([0.0] * k, [1.0] * k, 0.0, [0.5] * k).assign(cell=c, commit="abc")
                      for c, k in (("a", 5), ("b", 3), ("c", 5))], ignore_index=True)
    s = cr.sources(rows).iloc[0]
    assert (s.cells, str(s.reps)) == (3, "3-5")  # not 5: one cell has 3 data sets
    assert str(cr.sources(rows[rows.cell != "b"]).iloc[0].reps) == "5"


def test_overview_lists_a_pair_whose_every_fit_raised():
    ok = _rows([0.0] * 4, [1.0] * 4, 1.0, [0.5] * 4).assign(cell="lin-n300", n=300)
    bad = pd.DataFrame([{"estimator": "f", "cell": "lin-n2000", "n": 2000, "seed": s, "error": "PositivityError: x"}
                        for s in range(4)])
    rows = pd.concat([ok, bad], ignore_index=True)
    o = cr.overview(cv.summarize(rows), cv.failures(rows)).set_index(["estimator", "process"])
    assert o.loc[("f", "lin"), "n = 2,000"] == "(100% none)" and o.loc[("e", "lin"), "n = 300"] == "1.00"


def test_an_estimator_with_one_nie_per_unit_is_measured_on_its_average_arm():
    cell = [c for c in cv.grid("ci") if c.name == "linear-n300"]
    rows = cv.run(["econml_diff"], cell, reps=1, progress=False)
    got = set(zip(rows.unit, rows.effect, rows.arm))
    assert {("u0", "nie", "average"), ("u0", "nde", "average"), ("u0", "te", "average")} <= got
    assert rows.truth.notna().all()
    par = cv.run(["parametric"], cell, reps=1, progress=False)
    assert "average" not in set(par[par.effect == "nie"].arm)  # arm rows only where the arms are reported


def test_seed_offsets_the_data_sets_and_keep_pools_disjoint_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--grid", "ci", "--estimators", "localization", "--cells", "localization-same-n2000", "--out", "cov.md"]
    cv.main(args + ["--reps", "2", "--rows", "first.csv"])
    cv.main(args + ["--reps", "2", "--seed", "2", "--rows", "second.csv"])
    first, second = (pd.read_csv(f, index_col=0) for f in ("first.csv", "second.csv"))
    assert set(first.seed) == {0, 1} and set(second.seed) == {2, 3}
    # seed s is the same data set in any run: seed 2 of a 4-set run equals seed 2 of the offset run
    cv.main(args + ["--reps", "4", "--rows", "all.csv"])
    every = pd.read_csv("all.csv", index_col=0)
    cols = ["seed", "unit", "effect", "arm", "estimate", "se"]
    pd.testing.assert_frame_equal(every[every.seed >= 2][cols].reset_index(drop=True),
                                  second[cols].reset_index(drop=True))
    cv.main(["--reps", "0", "--keep", "first.csv,second.csv", "--rows", "pooled.csv", "--out", "cov.md"])
    pooled = pd.read_csv("pooled.csv", index_col=0)
    assert sorted(set(pooled.seed)) == [0, 1, 2, 3]
    assert "| localization | 1 | 4 |" in (tmp_path / "cov.md").read_text()
    with pytest.raises(SystemExit):  # seeds 0-1 twice: which rows would be meant?
        cv.main(["--reps", "0", "--keep", "first.csv,all.csv", "--out", "cov.md"])
    with pytest.raises(SystemExit):  # resuming with another offset than the rows were made with
        cv.main(args + ["--reps", "2", "--seed", "5", "--rows", "second.csv", "--resume"])


def test_cells_outside_the_acceptance_say_why():
    table = pd.DataFrame({
        "estimator": ["dml", "dml", "weighting", "parametric", "econml_diff", "econml_diff", "localization_abs"],
        "effect": ["nie", "nie", "nie", "nie", "nie", "nie", "entropy"],
        "test": ["power", "power", "power", "size", "size", "size", "power"],
        "coverage": [0.80, 0.925, 0.90, 1.0, 1.0, 0.96, 0.2],
        "reject": [1.0, 1.0, 1.0, 0.0, 0.0, 0.10, 0.2], "warned": [0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "reps": [200, 200, 200, 200, 200, 200, 200]})
    why = cr.reasons(table).why.tolist()
    # 0.925 is within 2 x 0.0154 of 0.95, 0.90 is not; a zero NIE over-covered by parametric is the null-paths
    # case, by econml_diff (no such warning) it is not; an oversized test is never noise
    assert why == ["warns", "Monte Carlo", "", "zero NIE, paths 0", "", "", "not the default"]


def test_band_p_is_the_one_sided_binomial_test_at_the_nearer_edge_of_the_band():
    from scipy import stats
    got = cr.band_p([0.90, 0.985, 0.95, 0.92, np.nan], [200, 200, 200, 100, 50], [0.0, 0.0, 0.0, 0.5, 0.0])
    assert got[0] == pytest.approx(stats.binomtest(180, 200, cr.LOW, alternative="less").pvalue, rel=1e-12)
    assert got[1] == pytest.approx(stats.binomtest(197, 200, cr.HIGH, alternative="greater").pvalue, rel=1e-12)
    assert got[2] == 1.0  # inside the band
    assert got[3] == pytest.approx(stats.binomtest(46, 50, cr.LOW, alternative="less").pvalue, rel=1e-12)
    assert np.isnan(got[4])


def test_overview_columns_go_by_n_whatever_the_row_order():
    rows = pd.concat([_rows([0.0, 0.1], [1.0, 1.0], 0.5, [0.5, 0.5]).assign(cell="lin-n2000", n=2000),
                      _rows([0.0, 0.1], [1.0, 1.0], 0.5, [0.5, 0.5]).assign(cell="lin-n300", n=300)])
    assert list(cr.overview(cv.summarize(rows)).columns) == ["estimator", "process", "n = 300", "n = 2,000"]


def test_overview_marks_w_from_the_rows_it_shows():
    """A warning about a zero NIE (a size row) does not mark the cell, whose range is over the nonzero truths."""
    power = _rows([0.5, 0.6], [1.0, 1.0], 0.5, [0.5, 0.5]).assign(cell="lin-n300", n=300, warned=False)
    size = _rows([0.0, 0.1], [1.0, 1.0], 0.0, [0.5, 0.5]).assign(cell="lin-n300", n=300, unit="v", warned=True)
    o = cr.overview(cv.summarize(pd.concat([power, size])))
    assert o["n = 300"].iloc[0] == "1.00"
    o = cr.overview(cv.summarize(pd.concat([power.assign(warned=True), size])))
    assert o["n = 300"].iloc[0] == "1.00 w"
