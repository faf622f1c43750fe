"""A self-contained HTML report (plus markdown) with matplotlib PNG figures."""
from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use)."""
    import matplotlib  # noqa: PLC0415 - keep import deconfound light

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


# ---------------------------------------------------------------------------------------------------------
# Figures


def plot_effect_curves(curves: dict[str, pd.DataFrame], path, *, title="NIE per unit", ylabel="NIE") -> Path:
    """One line per curve (label -> frame with columns unit, estimate, ci_lower, ci_upper), with CI bands."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for label, f in curves.items():
        x = np.arange(len(f))
        ax.plot(x, f.estimate, marker="o", ms=3, label=label)
        ax.fill_between(x, f.ci_lower, f.ci_upper, alpha=0.2)
    first = next(iter(curves.values()))
    ticks = np.arange(len(first))
    step = max(1, len(ticks) // 15)
    ax.set_xticks(ticks[::step], [str(u) for u in first.unit][::step], rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="k", lw=0.7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_forest(frame: pd.DataFrame, path, *, title="Estimators compared") -> Path:
    """Forest plot: one row per label with estimate and CI (columns label, estimate, ci_lower, ci_upper)."""
    plt = pyplot()
    f = frame.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(f) + 1.2))
    y = np.arange(len(f))[::-1]
    ax.hlines(y, f.ci_lower, f.ci_upper, lw=1.2)  # the interval as it is: it need not contain the estimate
    ax.plot(f.estimate, y, "o")
    ax.set_yticks(y, f.label, fontsize=8)
    ax.axvline(0, color="k", lw=0.7)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_balance(table: pd.DataFrame, path, *, ess: float | None = None, title="Covariate balance") -> Path:
    """Absolute SMD before and after weighting per covariate (columns covariate, smd_before, smd_after)."""
    plt = pyplot()
    f = table.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(f) + 1.4))
    y = np.arange(len(f))[::-1]
    ax.scatter(np.abs(f.smd_before), y, label="before", marker="o")
    ax.scatter(np.abs(f.smd_after), y, label="after", marker="x")
    ax.axvline(0.1, color="grey", ls="--", lw=0.8)
    ax.set_yticks(y, f.covariate, fontsize=8)
    ax.set_xlabel("|standardized mean difference|")
    ax.set_title(title + (f" (ESS {ess:.0f})" if ess is not None else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_localization(frame: pd.DataFrame, path, *, title="Localization indices") -> Path:
    """Indices with CIs for each curve (columns index, estimate, ci_lower, ci_upper, curve)."""
    plt = pyplot()
    indices = list(dict.fromkeys(frame["index"]))
    curves = list(dict.fromkeys(frame["curve"]))
    fig, axes = plt.subplots(1, len(indices), figsize=(2.6 * len(indices), 3.2))
    axes = np.atleast_1d(axes)
    for ax, idx in zip(axes, indices):
        sub = frame[frame["index"] == idx].set_index("curve").reindex(curves)
        x = np.arange(len(curves))
        ax.vlines(x, sub.ci_lower, sub.ci_upper, lw=1.2)  # a percentile CI need not contain its estimate
        ax.plot(x, sub.estimate, "o")
        ax.set_xticks(x, curves, rotation=30, ha="right", fontsize=7)
        ax.set_title(idx, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG atomically (temporary file, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------
# The document


@dataclass
class Report:
    """Sections of text, tables and figures, written as ``report.html`` (images inlined) and ``report.md``.

    Examples
    --------
    >>> import tempfile
    >>> import pandas as pd
    >>> out = tempfile.mkdtemp()
    >>> curve = pd.DataFrame({"unit": ["u0", "u1"], "estimate": [0.3, 0.0], "ci_lower": [0.2, -0.1],
    ...                       "ci_upper": [0.4, 0.1]})
    >>> fig = plot_effect_curves({"adjusted": curve}, f"{out}/figures/curve.png")
    >>> rep = Report("My report").text("Summary", "One paragraph.").table("Estimates", curve)
    >>> paths = rep.figure("NIE per unit", fig, "with 95% CIs").write(out)
    >>> print(sorted(paths), "data:image/png;base64" in paths["html"].read_text())
    ['html', 'md'] True
    >>> import shutil; shutil.rmtree(out)
    """

    title: str
    sections: list = field(default_factory=list)

    def text(self, heading: str, body: str) -> "Report":
        self.sections.append(("text", heading, body))
        return self

    def table(self, heading: str, frame: pd.DataFrame, *, floatfmt: str = "{:.4g}") -> "Report":
        self.sections.append(("table", heading, (frame, floatfmt)))
        return self

    def figure(self, heading: str, path, caption: str = "") -> "Report":
        self.sections.append(("figure", heading, (Path(path), caption)))
        return self

    def write(self, out_dir) -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        parts_html = [f"<h1>{html.escape(self.title)}</h1>"]
        parts_md = [f"# {self.title}\n"]
        for kind, heading, body in self.sections:
            parts_html.append(f"<h2>{html.escape(heading)}</h2>")
            parts_md.append(f"\n## {heading}\n")
            if kind == "text":
                parts_html.append("".join(f"<p>{html.escape(p)}</p>" for p in body.split("\n\n")))
                parts_md.append(body + "\n")
            elif kind == "table":
                frame, fmt = body
                fmt_fn = (lambda v, f=fmt: f.format(v)) if fmt else None
                parts_html.append(frame.to_html(index=False, float_format=fmt_fn, na_rep="-", border=0,
                                                classes="tbl"))
                parts_md.append(_markdown_table(frame, fmt))
            else:
                path, caption = body
                if not path.exists():
                    raise FileNotFoundError(f"report figure {heading!r}: expected {path} to exist, got no file")
                data = base64.b64encode(path.read_bytes()).decode()
                parts_html.append(f"<figure><img alt='{html.escape(heading)}' src='data:image/png;base64,{data}'/>"
                                  f"<figcaption>{html.escape(caption)}</figcaption></figure>")
                rel = os.path.relpath(path, out)
                parts_md.append(f"![{heading}]({rel})\n\n{caption}\n")
        style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
                 "table.tbl{border-collapse:collapse;font-size:12px}.tbl td,.tbl th{padding:2px 8px;"
                 "border-bottom:1px solid #ddd}img{max-width:100%}figcaption{color:#555;font-size:12px}")
        doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
               f"<style>{style}</style></head><body>{''.join(parts_html)}</body></html>")
        paths = {"html": out / "report.html", "md": out / "report.md"}
        for key, text in (("html", doc), ("md", "\n".join(parts_md))):
            tmp = paths[key].with_name(paths[key].name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, paths[key])
        return paths


def _markdown_table(frame: pd.DataFrame, fmt: str | None) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        cells = [(fmt.format(v) if fmt and isinstance(v, (float, np.floating)) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def provenance_table(meta: dict) -> pd.DataFrame:
    """A two-column table of provenance (nested dicts flattened with dots)."""
    rows = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append({"field": prefix, "value": value if isinstance(value, str) else json.dumps(value, default=str)})

    walk("", meta)
    return pd.DataFrame(rows, columns=["field", "value"])
