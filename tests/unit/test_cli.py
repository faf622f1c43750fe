"""cli.py: every subcommand over a saved MediationData folder, in process (deconfound.cli.main), plus one
subprocess smoke test. Numbers are checked against closed forms (entropy balancing on one-hot topics is
post-stratification), the simulator's truth, and the library called directly with the same settings.
"""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from deconfound import cli, refute
from deconfound.cli import main
from deconfound.data import MediationData
from deconfound.errors import DataError
from deconfound.estimators import available_estimators, get_estimator
from deconfound.simulate import topic_mediation

SUBCOMMANDS = ["demo", "extract", "estimate", "compare", "sensitivity", "medsens", "refute", "report"]
CHEAP = {"parametric": ["--set", "n_sims=50"], "weighting": [], "dml": ["--set", "n_folds=2"], "eb_total": [],
         "econml_te": ["--set", "n_folds=2"], "econml_diff": ["--set", "n_folds=2"]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, data, truth): 300 rows, 4 topics, u0 causal and u1 a pure topic tracker."""
    data, truth = topic_mediation(300, n_units=2, n_topics=4, seed=1)
    folder = tmp_path_factory.mktemp("cli") / "data"
    data.save(folder)
    return folder, MediationData.load(folder), truth


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def post_stratified_att(data, t=None):
    """Closed form of entropy balancing ATT on one-hot topics: treated-share-weighted within-topic differences."""
    t = data.t if t is None else t
    topic = data.x["topic"].astype(str).to_numpy()
    est = 0.0
    for k in np.unique(topic):
        rows = topic == k
        est += (t[rows] == 1).sum() / t.sum() * (data.y[rows & (t == 1)].mean() - data.y[rows & (t == 0)].mean())
    return est


def row(frame, **keys):
    sel = frame
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, keys
    return sel.iloc[0]


# ---- help and names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [[], *[[c] for c in SUBCOMMANDS]])
def test_help_everywhere(capsys, cmd):
    rc, out, err = run(capsys, *cmd, "--help")
    assert rc == 0 and err == ""
    assert out.startswith(f"usage: deconfound {cmd[0]}" if cmd else "usage: deconfound")
    if cmd and cmd[0] in ("estimate", "compare", "sensitivity", "medsens", "refute", "report"):
        assert "--set" in out and "--data" in out


def test_help_names_match_the_registries():
    assert sorted(cli.ESTIMATORS) == sorted(set(available_estimators()) - set(cli.MODEL_ESTIMATORS))
    # the null-model refuters need a language model's patcher: `deconfound patch`/`demo` run them, not `refute`
    assert list(cli.REFUTERS) == [n for n in refute.REFUTERS if n not in refute.PATCHER_ONLY]


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.startswith("deconfound ")


def test_python_dash_m_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "deconfound", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: deconfound") and "estimate" in proc.stdout and "Traceback" not in proc.stderr


# ---- estimate -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CHEAP))
def test_estimate_every_estimator(capsys, saved, tmp_path, name):
    folder, data, truth = saved
    out = tmp_path / "sub" / "est.csv"
    rc, text, err = run(capsys, "estimate", "--data", folder, "--estimator", name, "--units", "u0", *CHEAP[name],
                        "--out", out)
    assert rc == 0, err
    assert "Causal mediation analysis" in text and f"wrote {out}" in text
    frame = pd.read_csv(out)
    assert list(frame.columns[:4]) == ["estimator", "graph", "population", "unit"]
    assert set(frame.estimator) == {name} and set(frame.graph) == {"topic_mediation"} and set(frame.unit) == {"u0"}
    assert np.isfinite(frame[["estimate", "ci_lower", "ci_upper"]].to_numpy()).all()
    assert np.isfinite(frame.se[frame.effect != "prop_mediated"]).all()  # Prop. Mediated: a CI and no SE
    pop = frame.population.iloc[0]
    # the simulator's exact truth, with the estimator's own SE (n = 300; the seed is fixed)
    for effect in ("te", "nie"):
        sel = frame[(frame.effect == effect) & (frame.arm == "average")]
        if len(sel):
            r = sel.iloc[0]
            assert abs(r.estimate - truth.value("u0", effect, "average", pop)) < 3 * r.se, (effect, r.estimate)
    if name == "eb_total":  # closed form: post-stratification on the four topics, ATT
        assert pop == "att" and set(frame.effect) == {"te"}
        np.testing.assert_allclose(row(frame, effect="te", arm="average").estimate, post_stratified_att(data),
                                   rtol=1e-9)
    if name == "parametric":  # the CLI passed n_sims=50 and the seed: same numbers as the library call
        lib = get_estimator("parametric", n_sims=50, random_state=0).fit(data, units=["u0"]).to_frame()
        np.testing.assert_allclose(frame[["estimate", "se", "ci_lower", "ci_upper"]].to_numpy(),
                                   lib[["estimate", "se", "ci_lower", "ci_upper"]].to_numpy(), rtol=1e-12)


def test_estimate_seed_and_settings_reach_the_estimator(capsys, saved, tmp_path):
    folder, data, _ = saved
    frames = []
    cases = [["--seed", "0"], ["--seed", "1"], ["--seed", "1", "--set", "parametric.n_sims=60"],
             ["--set", "random_state=1", "--seed", "0"]]
    for i, extra in enumerate(cases):
        out = tmp_path / f"p{i}.csv"
        rc, _, err = run(capsys, "estimate", "--data", folder, "--estimator", "parametric", "--units", "u1",
                         "--set", "n_sims=40", *extra, "--out", out)
        assert rc == 0, err
        frames.append(pd.read_csv(out))
    lib = get_estimator("parametric", n_sims=60, random_state=1).fit(data, units=["u1"]).to_frame()
    np.testing.assert_allclose(frames[2].ci_lower, lib.ci_lower, rtol=1e-12)  # the later --set wins
    np.testing.assert_allclose(frames[0].estimate, frames[1].estimate, rtol=1e-12)  # point estimate: no draws
    assert not np.allclose(frames[0].ci_lower, frames[1].ci_lower)  # CIs from seeded draws
    np.testing.assert_allclose(frames[3].ci_lower, frames[1].ci_lower, rtol=1e-12)  # --set random_state beats --seed


def test_estimate_unadjusted_graph_by_path(capsys, saved, tmp_path):
    folder, data, _ = saved
    from deconfound.graph import graph_path

    out = tmp_path / "u.csv"
    rc, _, err = run(capsys, "estimate", "--data", folder, "--estimator", "eb_total", "--graph",
                     graph_path("unadjusted_mediation"), "--out", out)
    assert rc == 0, err
    frame = pd.read_csv(out)
    raw = data.y[data.t == 1].mean() - data.y[data.t == 0].mean()  # no confounder: plain difference of means
    for unit in ("u0", "u1"):
        np.testing.assert_allclose(row(frame, unit=unit, effect="te", arm="average").estimate, raw, rtol=1e-9)


# ---- compare --------------------------------------------------------------------------------------------
def test_compare_writes_the_tidy_table(capsys, saved, tmp_path):
    folder, data, _ = saved
    out = tmp_path / "cmp.csv"
    rc, text, err = run(capsys, "compare", "--data", folder, "--estimators", "weighting,eb_total,parametric",
                        "--set", "n_sims=50", "--units", "u0,u1", "--out", out)
    assert rc == 0, err
    frame = pd.read_csv(out)
    tidy = ["estimator", "graph", "unit", "effect", "arm", "estimate", "se", "ci_lower", "ci_upper", "p_value",
            "runtime_s", "rv", "rva", "refutation_passed"]
    assert list(frame.columns[:len(tidy)]) == tidy
    assert set(zip(frame.estimator, frame.graph)) == {(e, g) for e in ("weighting", "eb_total", "parametric")
                                                      for g in ("topic_mediation", "unadjusted_mediation")}
    assert set(frame.unit) == {"u0", "u1"}
    assert not frame.duplicated(["estimator", "graph", "unit", "effect", "arm"]).any()
    assert set(frame[frame.estimator == "eb_total"].effect) == {"te"}
    eb = frame[(frame.estimator == "eb_total") & (frame.effect == "te") & (frame.arm == "average")]
    adj, unadj = (eb[eb.graph == g].estimate.to_numpy() for g in ("topic_mediation", "unadjusted_mediation"))
    np.testing.assert_allclose(adj, post_stratified_att(data), rtol=1e-9)
    np.testing.assert_allclose(unadj, data.y[data.t == 1].mean() - data.y[data.t == 0].mean(), rtol=1e-9)
    # u1 tracks the topic only: its unadjusted NIE is spurious, the topic-adjusted one is not significant
    w = frame[(frame.estimator == "weighting") & (frame.unit == "u1") & (frame.effect == "nie")
              & (frame.arm == "average")].set_index("graph")
    assert w.loc["unadjusted_mediation"].ci_lower > 0
    assert w.loc["topic_mediation"].ci_lower < 0 < w.loc["topic_mediation"].ci_upper
    assert "weighting" in text and f"wrote {out}" in text


# ---- sensitivity ----------------------------------------------------------------------------------------
def test_sensitivity_prints_the_doubleml_layout(capsys, saved, tmp_path):
    folder, _, _ = saved
    base = ["sensitivity", "--data", folder, "--estimator", "dml", "--units", "u0", "--set", "n_folds=2"]
    rc, text, err = run(capsys, *base, "--cf-y", "0.04", "--cf-d", "0.02", "--out", tmp_path / "s.csv")
    assert rc == 0, err
    lines = text.splitlines()
    assert lines[0].startswith("=" * 18 + " Sensitivity Analysis")
    for head in ("Scenario", "Bounds with CI", "Robustness Values"):
        assert any(line.startswith("-" * 18 + f" {head}") for line in lines)
    assert "Sensitivity parameters: cf_y=0.04; cf_d=0.02, rho=1.0" in text
    assert any(line.startswith("u0 NIE (treated)") for line in lines)
    wide = pd.read_csv(tmp_path / "s.csv")
    assert (wide.ci_lower <= wide.theta_lower).all() and (wide.theta_lower < wide.theta).all()
    assert (wide.theta < wide.theta_upper).all() and (wide.theta_upper <= wide.ci_upper).all()
    # rho = 0 collapses the bounds onto theta; theta and the robustness values do not depend on rho
    rc, text, err = run(capsys, *base, "--rho", "0", "--out", tmp_path / "s0.csv")
    assert rc == 0, err
    flat = pd.read_csv(tmp_path / "s0.csv")
    np.testing.assert_allclose(flat.theta_lower, flat.theta, rtol=1e-12)
    np.testing.assert_allclose(flat.theta_upper, flat.theta, rtol=1e-12)
    np.testing.assert_allclose(flat[["theta", "rv", "rva"]], wide[["theta", "rv", "rva"]], rtol=1e-12)


# ---- refute ---------------------------------------------------------------------------------------------
def test_refute_subset_matches_the_library(capsys, saved, tmp_path):
    folder, data, _ = saved
    out = tmp_path / "ref.csv"
    rc, text, err = run(capsys, "refute", "--data", folder, "--estimator", "weighting", "--units", "u0",
                        "--refuters", "placebo_treatment,data_subset", "--seed", "3", "--out", out)
    assert rc == 0, err
    frame = pd.read_csv(out)
    assert list(frame.columns) == refute.COLUMNS
    assert set(frame.refuter) == {"placebo_treatment", "data_subset"}
    lib = refute.refute_all(get_estimator("weighting", random_state=3), data, graph="topic_mediation", units=["u0"],
                            random_state=3, refuters=["placebo_treatment", "data_subset"])
    np.testing.assert_allclose(frame.new_estimate, lib.new_estimate, rtol=1e-10)
    assert frame.passed.tolist() == lib.passed.tolist()
    assert f"passed {int(lib.passed.sum())} of {len(lib)} rows" in text


# ---- report ---------------------------------------------------------------------------------------------
def test_report_writes_html_and_markdown_with_existing_images(capsys, saved, tmp_path):
    folder, _, _ = saved
    out = tmp_path / "rep"
    rc, text, err = run(capsys, "report", "--data", folder, "--out", out, "--quick", "--units", "u1,u0",
                        "--estimators", "eb_total,weighting,parametric", "--set", "n_sims=50")
    assert rc == 0, err
    html_path, md_path = out / "report.html", out / "report.md"
    assert f"report: {html_path}" in text and html_path.stat().st_size > 10_000
    md = md_path.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) >= 5
    for rel in images:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html_path.read_text().count("data:image/png;base64,") == len(images)
    est = pd.read_csv(out / "estimates.csv")
    assert set(est.estimator) == {"weighting", "parametric", "eb_total"} and np.isfinite(est.estimate).all()
    assert "Estimator: weighting; effect NIE (treated)" in text  # the first per-arm NIE estimator leads


# ---- bad arguments: exit 2, one line "deconfound: error: ... expected ..., got ..." --------------------
BAD = [
    (["estimate", "--data", "{missing}"], ["missing_folder", "expected"]),
    (["estimate", "--data", "{data}", "--estimator", "nope"], ["'nope'", "expected one of"]),
    (["estimate", "--data", "{data}", "--estimator", "patching"], ["'patching'", "language model"]),
    (["compare", "--data", "{data}", "--estimators", "weighting,nope"], ["'nope'", "expected one of"]),
    (["report", "--data", "{data}", "--out", "{tmp}", "--estimators", "nope"], ["'nope'", "expected one of"]),
    (["report", "--data", "{data}", "--out", "{tmp}", "--estimators", "eb_total,econml_te"],
     ["['eb_total', 'econml_te']", "expected at least one of ['weighting', 'dml', 'parametric']"]),
    (["estimate", "--data", "{data}", "--graph", "nograph"], ["'nograph'", "expected"]),
    (["estimate", "--data", "{data}", "--graph", "{tmp}/gone.gml"], ["gone.gml", "expected"]),
    (["compare", "--data", "{data}", "--graphs", "topic_mediation,nograph"], ["'nograph'", "expected"]),
    (["estimate", "--data", "{data}", "--units", "u0,u9"], ["'u9'", "expected names from ['u0', 'u1']"]),
    (["refute", "--data", "{data}", "--units", "zz"], ["'zz'", "expected names"]),
    (["sensitivity", "--data", "{data}", "--cf-y", "abc"], ["--cf-y", "'abc'", "expected a number in [0, 1)"]),
    (["sensitivity", "--data", "{data}", "--cf-d", "1"], ["--cf-d", "'1'", "expected a number in [0, 1)"]),
    (["sensitivity", "--data", "{data}", "--rho", "-2"], ["--rho", "'-2'", "expected a number in [-1, 1]"]),
    (["refute", "--data", "{data}", "--refuters", "placebo_treatment,nope"], ["'nope'", "expected names from"]),
    (["compare", "--data", "{data}", "--refuters", "strata_labels"], ["'strata_labels'", "expected names from"]),
    (["estimate", "--data", "{data}", "--set", "n_folds"], ["'n_folds'", "expected KEY=VALUE"]),
    (["estimate", "--data", "{data}", "--estimator", "weighting", "--set", "bogus=1"],
     ["'bogus'", "expected a setting"]),
    (["compare", "--data", "{data}", "--estimators", "weighting", "--set", "dml.n_folds=2"], ["'dml'", "expected"]),
    (["estimate", "--data", "{data}", "--seed", "-1"], ["--seed", "-1", "expected an integer >= 0"]),
    (["estimate", "--data", "{data}", "--units", ","], ["','", "expected a comma-separated list"]),
    (["demo", "--n-prompts", "0"], ["--n-prompts", "got 0", "expected an integer >= 10"]),
    (["demo", "--n-prompts", "-5"], ["--n-prompts", "got -5", "expected an integer >= 10"]),
    (["demo", "--n-prompts", "many"], ["--n-prompts", "'many'", "expected an integer"]),
    (["demo", "--simulated", "--neurons"], ["--neurons", "expected no --neurons"]),
    (["extract", "--out", "{tmp}", "--n-prompts", "0"], ["--n-prompts", "got 0", "expected"]),
    (["extract", "--out", "{tmp}", "--site", "mlp_in"], ["'mlp_in'", "expected one of"]),
    (["extract", "--out", "{tmp}", "--model", "gpt-5"], ["'gpt-5'", "expected one of"]),
    (["extract", "--out", "{tmp}", "--max-new-tokens", "0"], ["--max-new-tokens", "expected an integer >= 1"]),
    (["extract"], ["--out", "required"]),
    ([], ["required"]),
    (["estimate", "--data", "{data}", "--estimator", "dml", "--set", "n_folds=-1"], ["n_folds", "got -1"]),
]


@pytest.mark.parametrize("argv, needles", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_arguments_are_one_line_errors(capsys, saved, tmp_path, argv, needles):
    folder = saved[0]
    fill = {"{data}": str(folder), "{missing}": str(tmp_path / "missing_folder"), "{tmp}": str(tmp_path)}
    args = []
    for a in argv:
        for key, value in fill.items():
            a = a.replace(key, value)
        args.append(a)
    rc, out, err = run(capsys, *args)
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("deconfound: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err


def test_debug_env_reraises(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DECONFOUND_DEBUG", "1")
    with pytest.raises(cli.CliError, match="missing"):
        main(["estimate", "--data", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="table.parquet"):  # a library error, raised as is
        main(["estimate", "--data", str(tmp_path / "empty")])


def test_not_a_mediationdata_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "estimate", "--data", tmp_path / "empty")
    assert rc == 2 and len(err.splitlines()) == 1 and "expected a MediationData folder with table.parquet" in err


def test_unexpected_failure_is_one_line_exit_1(capsys, saved, monkeypatch):
    def boom(args):
        raise RuntimeError("solver\nexploded")

    monkeypatch.setattr(cli, "cmd_estimate", boom)
    rc, _, err = run(capsys, "estimate", "--data", saved[0], "--estimator", "eb_total")
    assert rc == 1 and err == ("deconfound: error: RuntimeError: solver exploded (set DECONFOUND_DEBUG=1 for the "
                               "traceback)\n")


@pytest.mark.parametrize("argv, bad", [
    (["demo", "--layers", "3"], "--layers"),
    (["demo", "--neurons", "--exact", "-2"], "-2"),
    (["demo", "--neurons", "--layers", "a,b"], "a,b"),
    (["demo", "--n-boot", "1", "--neurons"], "1"),
])
def test_neuron_flags_are_checked_before_any_model_loads(argv, bad, capsys):
    from deconfound import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deconfound: error:") and bad in err[0]


# ---- a CSV or parquet table with role flags -------------------------------------------------------------
@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """(csv path, frame): 300 rows; topic (text) confounds; emo mediates; h0..h2 a 3-column block."""
    r = np.random.default_rng(5)
    n = 300
    topic = r.choice(["arts", "news", "sport"], n)
    shift = pd.Series(topic).map({"arts": -0.8, "news": 0.0, "sport": 0.8}).to_numpy()
    age = r.integers(20, 70, n)
    t = (r.random(n) < 1 / (1 + np.exp(-shift))).astype(int)
    emo = 0.6 * t + 0.4 * shift + 0.01 * age + r.normal(size=n)
    y = 0.5 * emo + 0.2 * t + 0.5 * shift + r.normal(size=n)
    h = emo[:, None] * [1.0, 0.5, -0.3] + r.normal(size=(n, 3))
    df = pd.DataFrame({"treat": t, "y": y, "emo": emo, "h0": h[:, 0], "h1": h[:, 1], "h2": h[:, 2], "age": age,
                       "topic": topic, "school": np.repeat(np.arange(30), 10), "w": r.uniform(0.5, 2.0, n)})
    path = tmp_path_factory.mktemp("table") / "study.csv"
    df.to_csv(path, index=False)
    return path, df


ROLES = ["--treatment", "treat", "--outcome", "y", "--confounders", "age,topic"]


def python_data(df, **kw):
    args = dict(treatment="treat", outcome="y", confounders=["age", "topic"], mediators="emo")
    args.update(kw)
    return MediationData.from_frame(df, **args)


def test_estimate_from_csv_and_parquet_equals_the_python_api(capsys, table, tmp_path):
    path, df = table
    pq = tmp_path / "study.parquet"
    df.to_parquet(pq, index=False)
    lib = get_estimator("parametric", n_sims=50, random_state=0).fit(python_data(df)).to_frame()
    for source in (path, pq):
        out = tmp_path / f"{source.suffix[1:]}.csv"
        rc, text, err = run(capsys, "estimate", "--data", source, *ROLES, "--mediators", "emo",
                            "--estimator", "parametric", "--set", "n_sims=50", "--out", out)
        assert rc == 0, err
        frame = pd.read_csv(out)
        cols = ["estimate", "se", "ci_lower", "ci_upper"]
        np.testing.assert_allclose(frame[cols].to_numpy(), lib[cols].to_numpy(), rtol=1e-12)
        assert "Unit: emo" in text


def test_mediator_specs_names_patterns_and_vector_units(table):
    from deconfound._cli_io import load_data

    path, df = table
    parse = cli.build_parser().parse_args
    base = ["estimate", "--data", str(path), *ROLES]
    cases = [("emo", {"emo": ["emo"]}), ("h*", {"h0": ["h0"], "h1": ["h1"], "h2": ["h2"]}),
             ("emo,block=h[01]+h2", {"emo": ["emo"], "block": ["h0", "h1", "h2"]})]
    for spec, units in cases:
        data = load_data(parse([*base, "--mediators", spec]))
        assert data.mediator_columns == units
        for unit, cols in units.items():
            np.testing.assert_array_equal(data.mediator(unit), df[cols].to_numpy())
    data = load_data(parse([*base, "--mediators", "emo", "--cluster", "school", "--weights", "w"]))
    np.testing.assert_array_equal(data.cluster, df.school)
    np.testing.assert_array_equal(data.weights, df.w)
    assert data.dtype == "float64" and data.categorical_confounders() == ["topic"]
    coded = load_data(parse([*base, "--mediators", "emo", "--confounders", "age,school", "--categorical", "school"]))
    assert coded.categorical_confounders() == ["school"] and len(coded.x["school"].cat.categories) == 30


def test_medsens_equals_rho_sensitivity(capsys, table, tmp_path):
    from deconfound.medsens import rho_sensitivity

    path, df = table
    out, png = tmp_path / "ms.csv", tmp_path / "ms.png"
    rc, text, err = run(capsys, "medsens", "--data", path, *ROLES, "--mediators", "emo", "--set", "n_sims=50",
                        "--rho-by", "0.1", "--out", out, "--plot", png)
    assert rc == 0, err
    lib = rho_sensitivity(get_estimator("parametric", n_sims=50, random_state=0).fit(python_data(df)), "emo",
                          rho_grid=np.round(np.arange(-0.9, 0.95, 0.1), 12))
    frame = pd.read_csv(out)
    assert len(frame) == 19 * 3 and set(frame.unit) == {"emo"}
    np.testing.assert_allclose(frame.rho.unique(), np.round(np.arange(-0.9, 0.95, 0.1), 12), atol=1e-12)
    np.testing.assert_allclose(frame[["acme", "se", "ci_lower", "ci_upper"]].to_numpy(),
                               lib.frame[["acme", "se", "ci_lower", "ci_upper"]].to_numpy(), rtol=1e-10)
    assert lib.arms == ["control", "treated"]  # the default model has the T x M column: one root per arm
    for arm in lib.arms:
        assert f"Rho at which ACME ({arm}) = 0: {lib.rho_zero[arm]:.4f}" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_and_refute_from_csv_quiet_when_piped(capsys, table, tmp_path):
    path, df = table
    out = tmp_path / "cmp.csv"
    rc, _, err = run(capsys, "compare", "--data", path, *ROLES, "--mediators", "emo", "--estimators",
                     "weighting,eb_total", "--out", out)
    assert rc == 0 and "estimators x graphs" not in err  # not a terminal: no progress bar
    frame = pd.read_csv(out)
    lib = get_estimator("weighting", random_state=0).fit(python_data(df)).to_frame()
    sel = frame[(frame.estimator == "weighting") & (frame.graph == "topic_mediation")]
    np.testing.assert_allclose(sel.estimate.to_numpy(), lib.estimate.to_numpy(), rtol=1e-10)
    rc, text, err = run(capsys, "refute", "--data", path, *ROLES, "--mediators", "emo", "--estimator", "weighting",
                        "--refuters", "placebo_treatment", "--out", tmp_path / "ref.csv")
    assert rc == 0 and "refuters" not in err and "passed" in text


def test_progress_bars_follow_the_flag(capsys, table):
    _, df = table
    data = python_data(df)
    refute.refute_all(get_estimator("eb_total"), data, refuters=["placebo_treatment"], progress=True)
    assert "refuters" in capsys.readouterr().err
    refute.refute_all(get_estimator("eb_total"), data, refuters=["placebo_treatment"], progress=None)
    assert "refuters" not in capsys.readouterr().err  # None: a bar only on a terminal; pytest captures


TABLE_BAD = [
    (["--treatment", "treat"], ["--treatment", "expected role flags only with a CSV or parquet --data"]),
    ([], ["--treatment", "a table needs --treatment, --outcome and --mediators"]),
    ([*ROLES, "--mediators", "nope"], ["--mediators", "'nope'", "expected a column (or pattern)"]),
    ([*ROLES, "--mediators", "z*"], ["--mediators", "'z*'", "expected a column (or pattern)"]),
    ([*ROLES, "--mediators", "=emo"], ["--mediators", "expected NAME=COLUMNS", "'=emo'"]),
    ([*ROLES, "--mediators", "h0,h*"], ["--mediators", "expected each unit once", "'h0'"]),
    ([*ROLES, "--mediators", "emo", "--categorical", "school"], ["--categorical", "['school']", "--confounders"]),
    ([*ROLES, "--mediators", "emo", "--cluster", "nope"], ["--cluster", "'nope'"]),
    ([*ROLES, "--mediators", "emo", "--weights", "age"], ["column 'age'", "expected one role"]),
    (["--treatment", "treat", "--outcome", "y", "--mediators", "emo", "--confounders", "age,age"],
     ["--confounders", "['age'] more than once"]),
    (["--treatment", "topic", "--outcome", "y", "--mediators", "emo"], ["treatment 'topic'", "expected a binary"]),
]


@pytest.mark.parametrize("extra, needles", TABLE_BAD, ids=[" ".join(e[-2:]) or "none" for e, _ in TABLE_BAD])
def test_bad_role_flags_are_one_line_errors(capsys, saved, table, extra, needles):
    source = saved[0] if extra == ["--treatment", "treat"] else table[0]
    rc, out, err = run(capsys, "estimate", "--data", source, "--estimator", "eb_total", *extra)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_unreadable_tables_and_suffixes(capsys, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for path, needle in ((bad, "expected a readable parquet file"), (odd, "expected a saved MediationData folder or a "
                                                                     "file ending in .csv"),
                         (empty, "expected a readable CSV file, got EmptyDataError")):
        rc, _, err = run(capsys, "estimate", "--data", path, *ROLES, "--mediators", "emo")
        assert rc == 2 and needle in err and str(path.name) in err, err


def test_sensitivity_with_parametric_points_to_medsens(capsys, table):
    rc, _, err = run(capsys, "sensitivity", "--data", table[0], *ROLES, "--mediators", "emo", "--estimator",
                     "parametric")
    assert rc == 2 and "deconfound medsens" in err


def test_medsens_needs_a_unit_when_there_are_several(capsys, table):
    rc, _, err = run(capsys, "medsens", "--data", table[0], *ROLES, "--mediators", "h*")
    assert rc == 2 and "--unit: expected one of ['h0', 'h1', 'h2']" in err


# ---- docs/getting_started.md: the command-line section runs and agrees with the Python section ----------
def test_getting_started_cli_commands_run_and_match_python(capsys, tmp_path, monkeypatch):
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "getting_started.md").read_text()
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [shlex.split(c) for c in "\n".join(bash).replace("\\\n", " ").splitlines() if c.strip()]
    assert [c[:2] for c in commands] == [["deconfound", "estimate"], ["deconfound", "compare"],
                                         ["deconfound", "medsens"], ["deconfound", "report"]]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python[:2]:  # section 1 writes study.csv; section 2 builds `data` from the same frame
        exec(compile(block, "getting_started", "exec"), namespace)  # noqa: S102 - our own docs
    capsys.readouterr()
    for argv in commands:
        rc, out, err = run(capsys, *argv[1:])
        assert rc == 0, (argv, err)
    cli_frame = pd.read_csv(tmp_path / "estimates.csv")
    lib = get_estimator("parametric", n_sims=1000, random_state=0).fit(namespace["data"]).to_frame()
    cols = ["estimate", "se", "ci_lower", "ci_upper"]
    np.testing.assert_allclose(cli_frame[cols].to_numpy(), lib[cols].to_numpy(), rtol=1e-10)
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "medsens.png").read_bytes()[:4] == b"\x89PNG"
    assert set(pd.read_csv(tmp_path / "compare.csv").estimator) == {"parametric", "weighting"}


def test_a_repeated_library_warning_is_printed_once(capsys):
    import warnings as _w

    from deconfound import cli

    show = cli._warning_printer()
    for text in ("dml: data like the calibration cell", "dml: data like the calibration cell", "other"):
        show(_w.WarningMessage(text, UserWarning, "f.py", 1).message, UserWarning, "f.py", 1)
    err = capsys.readouterr().err.splitlines()
    assert err == ["deconfound: warning: dml: data like the calibration cell", "deconfound: warning: other"]
