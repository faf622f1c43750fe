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
