"""docs/api.md is what docs/make_api.py generates, and docs/tutorial.md runs and prints what it shows.

The tutorial's ``python`` blocks run in order in one namespace (in a temporary folder); a ``bash`` block whose
lines start with ``deconfound`` runs through ``deconfound.cli.main``. A ``text`` block right after a code
block is that block's output: each of its lines must appear, in order, among the printed lines (a line
``...`` skips any number of lines; ``...`` inside a line matches anything). Numbers match within a small
tolerance (1% relative, or 2 units of the last shown decimal), so that a rerun on another BLAS does not fail
while a changed estimate does.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_BLOCK = re.compile(r"```(python|bash|text)\n(.*?)```", re.S)


def _make_api():
    spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs" / "make_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------
# the tutorial runner and output matcher


def blocks(text: str) -> list[tuple[str, str, str | None]]:
    """``(kind, code, expected_output)`` for every python/bash block; the output is the text block after it."""
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in _BLOCK.finditer(text)]
    out = []
    for i, (kind, body, _, end) in enumerate(found):
        if kind == "text":
            continue
        expected = None
        if i + 1 < len(found) and found[i + 1][0] == "text" and not text[end:found[i + 1][2]].strip():
            expected = found[i + 1][1]
        out.append((kind, body, expected))
    return out


def _numbers_close(expected: str, actual: str) -> bool:
    a, b = float(expected), float(actual)
    if "." not in expected and "e" not in expected.lower():
        return a == b
    decimals = len(expected.split(".")[1].split("e")[0].split("E")[0]) if "." in expected else 0
    return abs(a - b) <= max(0.01 * max(abs(a), abs(b)), 2 * 10.0 ** -decimals)


def _piece(piece: str) -> tuple[str, list[str]]:
    """A regex for one literal piece of an expected line, with a capturing group per number in it."""
    parts, numbers, pos = [], [], 0
    for m in _NUMBER.finditer(piece):
        parts += [re.escape(piece[pos:m.start()]), f"({_NUMBER.pattern})"]
        numbers.append(m.group())
        pos = m.end()
    parts.append(re.escape(piece[pos:]))
    return "".join(parts), numbers


def line_matches(expected: str, actual: str) -> bool:
    """Same words and punctuation (whitespace runs collapsed), numbers within tolerance, ``...`` = anything."""
    pieces = [_piece(p) for p in " ".join(expected.split()).split("...")]
    m = re.match("^" + ".*?".join(rx for rx, _ in pieces) + "$", " ".join(actual.split()))
    if not m:
        return False
    shown = [n for _, nums in pieces for n in nums]
    return all(_numbers_close(e, a) for e, a in zip(shown, m.groups()))


def output_mismatch(expected: str, printed: list[str]) -> str | None:
    """None if every expected line appears in order in ``printed``; else the first line that does not."""
    pos, skip = 0, False
    for line in expected.splitlines():
        if not line.strip():
            continue
        if line.strip() == "...":
            skip = True
            continue
        if skip:
            hits = [j for j in range(pos, len(printed)) if line_matches(line, printed[j])]
            if not hits:
                return line
            pos, skip = hits[0] + 1, False
        else:
            while pos < len(printed) and not printed[pos].strip():
                pos += 1
            if pos >= len(printed) or not line_matches(line, printed[pos]):
                return line
            pos += 1
    return None


def run_tutorial(text: str, check: bool = True) -> list[list[str]]:
    """Run the tutorial's blocks in one namespace (in the current directory); the printed lines per block."""
    from deconfound import cli

    namespace: dict = {"__name__": "__tutorial__"}
    outputs = []
    for i, (kind, code, expected) in enumerate(blocks(text)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            if kind == "python":
                exec(compile(code, f"tutorial.md[block {i}]", "exec"), namespace)  # noqa: S102 - our own docs
            else:
                for line in code.strip().splitlines():
                    args = shlex.split(line)
                    assert args[0] == "deconfound", f"tutorial.md block {i}: only `deconfound` commands run here"
                    assert cli.main(args[1:]) == 0, f"tutorial.md block {i}: {line!r} failed"
        printed = buf.getvalue().splitlines()
        outputs.append(printed)
        if check and expected is not None:
            bad = output_mismatch(expected, printed)
            assert bad is None, (f"tutorial.md block {i}: the shown output line {bad!r} was not printed; "
                                 f"printed:\n" + "\n".join(printed[:60]))
    return outputs


# ---------------------------------------------------------------------------------------------------------
# tests


def test_api_md_is_up_to_date():
    expected = _make_api().render()
    current = (ROOT / "docs" / "api.md").read_text()
    if current != expected:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                                 "docs/api.md", "generated"))[:60])
        pytest.fail("docs/api.md is out of date: run `.venv/bin/python docs/make_api.py`\n" + diff)


def test_api_md_covers_every_estimator_and_module():
    text = (ROOT / "docs" / "api.md").read_text()
    from deconfound.estimators import available_estimators, get_estimator

    for name in available_estimators():
        assert f"### `{type(get_estimator(name)).__name__}`" in text, name
    for mod, _ in _make_api().MODULES:
        assert f"## `{mod}`" in text
    assert "GENERATED by docs/make_api.py" in text.splitlines()[2]


def test_generator_parses_numpydoc():
    api = _make_api()
    doc = ("Do a thing.\n\nMore words.\n\nParameters\n----------\nn : int\n    Rows.\n"
           "k : the number of cross-fitting folds, shared by every unit,\n    wrapped.\nflag\n    A bare name.\n\n"
           "Returns\n-------\nint\n")
    assert api.first_paragraph(doc) == "Do a thing."
    assert api.parameters(doc) == ["- `n` (int): Rows.", "- `k`: the number of cross-fitting folds, shared by every unit, wrapped.",
                                   "- `flag`: A bare name."]
    assert api.clean(":func:`deconfound.x` and ``y``") == "`deconfound.x` and `y`"

    def f(a, b: "int" = 2, *args, c=None, **kw) -> "str":
        return ""

    assert api.signature(f, "f") == "f(a, b: int = 2, *args, c=None, **kw) -> str"


def test_output_matcher_can_fail():
    assert line_matches("u0   0.273  0.299", "u0 0.2731 0.30")
    assert not line_matches("u0 0.273", "u0 0.31")
    assert not line_matches("n=1000", "n=1001")
    assert line_matches("MediationData(n=1000, n_treated=...)", "MediationData(n=1000, n_treated=515)")
    assert not line_matches("entropy 0.5", "gini 0.5")
    assert output_mismatch("a 1\n...\nc 3", ["a 1", "b 2", "c 3"]) is None
    assert output_mismatch("a 1\nc 3", ["a 1", "b 2", "c 3"]) == "c 3"
    assert blocks("```python\nx=1\n```\n\n```text\n1\n```\n```python\ny\n```\n") == [
        ("python", "x=1\n", "1\n"), ("python", "y\n", None)]


def test_tutorial_links_resolve():
    text = TUTORIAL.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (TUTORIAL.parent / target).exists(), f"tutorial.md: broken link {target}"
    assert "estimands.md" in text


@pytest.mark.slow
def test_tutorial_runs_and_prints_what_it_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    text = TUTORIAL.read_text()
    assert sum(kind == "python" for kind, _, _ in blocks(text)) >= 10
    run_tutorial(text)
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "report_cli" / "report.html").exists()
    assert (tmp_path / "contour_u0.png").exists()


def test_docs_cite_no_file_the_user_lacks():
    """docs/ speak to users: no design notes (METHODS.md, PEERS.md, ...) and nothing outside the repository."""
    banned = re.compile(r"\bMETHODS\b|PEERS\.md|SOURCES\.md|STYLE\.md|\.\./shared|[Dd]esign notes")
    for page in sorted((ROOT / "docs").glob("*.md")):
        for n, line in enumerate(page.read_text().splitlines(), 1):
            assert not banned.search(line), f"{page.name}:{n} cites a file users do not have: {line.strip()}"
    assert banned.search("see METHODS.md 5.1") and banned.search("(../shared/design)")  # the check can fail
    assert not banned.search("checked by its methods")


def test_estimator_table_lists_every_registered_estimator():
    from deconfound.estimators import available_estimators

    text = (ROOT / "docs" / "choosing_an_estimator.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| `")]
    for name in available_estimators():
        assert any(line.startswith(f"| `{name}` |") for line in table), name
