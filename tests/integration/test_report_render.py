"""The report written by `deconfound report` on simulator data: its HTML parses, every image is a real PNG, the
tables hold numbers, and (where Chromium is installed) it renders headless to a non-blank screenshot."""
from __future__ import annotations

import base64
import io
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from deconfound.cli import main
from deconfound.simulate import topic_mediation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Doc(HTMLParser):
    """Headings, images and tables (rows of cell texts, filed under the last <h2>) of the report."""

    def __init__(self):
        super().__init__()
        self.headings, self.images, self.tables, self.paragraphs = [], [], {}, []
        self._tag, self._text, self._row, self._table = None, [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self._table = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("h2", "td", "th", "p"):
            self._tag, self._text = tag, []

    def handle_data(self, data):
        if self._tag is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        text = "".join(self._text).strip()
        if tag == "h2" and self._tag == "h2":
            self.headings.append(text)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "p" and self._tag == "p":
            self.paragraphs.append((self.headings[-1] if self.headings else "", text))
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables[self.headings[-1]] = self._table
            self._table = None
        if tag == self._tag:
            self._tag = None


def _png_pixels(raw: bytes) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(raw), format="png")


def _numbers(cells) -> list[float]:
    return [float(c) for c in cells if NUMBER.match(c.strip())]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """`deconfound report` with weighting and DML (cheap settings) on 300 simulated rows, 2 units, 4 topics."""
    root = tmp_path_factory.mktemp("render")
    data, _ = topic_mediation(300, n_units=2, n_topics=4, seed=1)
    data.save(root / "data")
    rc = main(["report", "--data", str(root / "data"), "--out", str(root / "report"), "--estimators", "weighting,dml",
               "--set", "n_folds=2", "--refute-units", "1", "--quick"])
    assert rc == 0
    return root / "report"


@pytest.fixture(scope="module")
def doc(report_dir):
    parser = _Doc()
    parser.feed((report_dir / "report.html").read_text(encoding="utf-8"))
    parser.close()
    return parser


def test_every_image_is_an_inline_png(doc, report_dir):
    assert len(doc.images) >= 5
    for img in doc.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == PNG_MAGIC
        px = _png_pixels(raw)
        assert px.ndim == 3 and px.shape[0] > 100 and px.shape[1] > 100
        assert float(px[..., :3].std()) > 0.01, img.get("alt")  # a plot, not a blank canvas
    md = (report_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(linked) == len(doc.images)
    for rel in linked:
        assert (report_dir / rel).read_bytes()[:8] == PNG_MAGIC


def test_sections_and_tables_hold_numbers(doc, report_dir):
    for needle in ("Summary", "Per-unit NIE curve: weighting", "Per-unit NIE curve: dml", "Localization indices",
                   "Balance of topic", "Estimators compared", "All estimates", "Sensitivity to an unobserved",
                   "Sensitivity contour", "Refutation tests", "Provenance"):
        assert any(h.startswith(needle) for h in doc.headings), (needle, doc.headings)
    # worded from the data's roles: the language-model question belongs to the LM demo only
    title = re.search(r"<h1>(.*?)</h1>", (report_dir / "report.html").read_text(encoding="utf-8")).group(1)
    assert "adjusting for topic change where the effect of &#x27;T&#x27; on &#x27;Y&#x27; is mediated" in title
    assert "toxicity" not in title.lower()
    summary = " ".join(t for h, t in doc.paragraphs if h == "Summary")
    assert re.search(r"Concentration .* adjusted \d\.\d{3}, unadjusted \d\.\d{3}", summary) or re.search(
        r"Concentration .* not estimated: .* adjusted \d\.\d{2}, unadjusted \d\.\d{2}", summary), summary
    assert "random half of the rows" in summary  # units singled out are selected on one half, tested on the other
    for heading, rows in doc.tables.items():
        assert len(rows) >= 2, heading  # a header and at least one row
        assert all(len(r) == len(rows[0]) for r in rows), heading
        if heading != "Provenance":
            assert _numbers(c for r in rows[1:] for c in r), heading

    def column(heading_start, name):
        rows = next(rows for h, rows in doc.tables.items() if h.startswith(heading_start))
        j = rows[0].index(name)
        return [r[j] for r in rows[1:]]

    est = _numbers(column("All estimates", "estimate"))
    assert len(est) == len(column("All estimates", "estimate")) >= 20 and all(math.isfinite(v) for v in est)
    assert set(column("All estimates", "estimator")) == {"weighting", "dml"}
    assert set(column("Refutation tests", "passed")) <= {"True", "False"}
    theta = _numbers(column("Sensitivity to an unobserved", "theta"))
    lower, upper = _numbers(column("Sensitivity to an unobserved", "theta_lower")), _numbers(
        column("Sensitivity to an unobserved", "theta_upper"))
    assert theta and all(lo < th < up for lo, th, up in zip(lower, theta, upper))
    diff = column("Localization: adjusted minus unadjusted", "index")
    assert "concentration" in diff and "renyi2_entropy" in diff


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_renders_headless_in_chromium(report_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (/usr/bin/chromium, or chromium/google-chrome on PATH): headless render not checked")
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
           (report_dir / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"no screenshot; chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    raw = shot.read_bytes()
    assert raw[:8] == PNG_MAGIC and len(raw) > 20_000
    px = _png_pixels(raw)[..., :3]
    assert px.shape[:2] == (3000, 1200) or px.shape[0] >= 1000
    colours = np.unique((px.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 50  # text, tables and plots, not a single-colour page
    assert float(px.std()) > 0.02
