"""The import layers of ARCHITECTURE.md, checked on the source with ast (every import, including lazy ones).

The rule, precisely:

1. A module may import a module of a strictly LOWER layer.
2. Within one layer, a module may import another only if the pair is listed in SAME_LAYER (the list is acyclic),
   or both are in the same subpackage (``estimators/*`` among themselves, ``lm/*`` among themselves; a
   subpackage's ``__init__`` counts as part of it).
3. ``lm/*`` (the side layer) may import layers 0 and 1 and ``lm/*`` only. Outside ``lm``, only
   ``estimators/patching.py`` (inside a function: lazily) and layer 7 (``cli``, ``demo``) may import ``lm``.
4. The package ``__init__`` may import layers 0-6, never ``lm`` or layer 7; no module imports the package
   ``__init__`` itself (``from .. import x`` where x is not a module).

Every module under src/deconfound must have a layer here; the same table is in ARCHITECTURE.md (checked below).
Modules of the table that do not exist yet are skipped.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "deconfound"
PKG = "deconfound"

LAYERS = {
    "errors": 0, "_validation": 0, "_ebsolver": 0, "_calibration": 0,
    "data": 1, "_store": 1, "positivity": 1, "simulate": 1, "parallel": 1, "neurons": 1,
    "graph": 2, "weights": 2, "balance": 2, "inference": 2, "folds": 2, "bootstrap": 2,
    "results": 3, "multiplicity": 3, "identification": 3,
    "estimators": 4,  # the subpackage estimators/*
    "sensitivity": 5, "refute": 5, "medsens": 5, "joint": 5,
    "compare": 6, "report": 6, "coverage": 6, "coverage_report": 6, "screening": 6,
    "cli": 7, "_cli_io": 7, "cli_lm": 7, "demo": 7, "demo_neurons": 7, "study": 7, "study_checks": 7, "__main__": 7,
    "lm": "side",  # the subpackage lm/*
}
SAME_LAYER = {
    ("_validation", "errors"), ("_calibration", "errors"),
    ("data", "_store"), ("data", "positivity"), ("simulate", "data"), ("neurons", "data"),
    ("bootstrap", "inference"), ("bootstrap", "weights"), ("weights", "balance"), ("bootstrap", "folds"),
    ("sensitivity", "medsens"), ("coverage", "compare"), ("coverage", "coverage_report"),
    ("cli", "demo"), ("cli", "_cli_io"), ("demo", "demo_neurons"), ("demo", "study"), ("__main__", "cli"),
    ("cli", "cli_lm"), ("cli_lm", "demo"), ("study", "study_checks"), ("demo", "study_checks"),
}
SUBPACKAGES = {"estimators", "lm"}
LM_IMPORTERS = {"estimators.patching"}  # lazily only; layer 7 may import lm anywhere


def _module_files() -> dict[str, Path]:
    """'data' -> data.py, 'estimators.dml' -> estimators/dml.py, 'estimators' -> estimators/__init__.py."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or PKG] = path
    return out


MODULES = _module_files()


def _key(module: str) -> str:
    """The LAYERS key of a module name relative to the package ('estimators.dml' -> 'estimators')."""
    head = module.split(".")[0]
    return head if head in SUBPACKAGES else module


def _layer(module: str):
    return LAYERS.get(_key(module))


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Package-relative names of the deconfound modules this import statement loads."""
    is_pkg = MODULES.get(importer, Path()).name == "__init__.py"
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name == PKG or a.name.startswith(PKG + ".")]
        return [n[len(PKG) + 1:] if n != PKG else PKG for n in names]
    if node.level == 0:
        if node.module != PKG and not (node.module or "").startswith(PKG + "."):
            return []
        base = node.module[len(PKG) + 1:] if node.module != PKG else ""
    else:
        here = importer.split(".") if importer != PKG else []
        package = here if is_pkg else here[:-1]
        up = node.level - 1
        if up > len(package):
            raise AssertionError(f"{importer}: relative import beyond the package")
        package = package[: len(package) - up]
        base = ".".join(package + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        is_module = sub in MODULES or _key(sub) in LAYERS  # a module of the table that is not written yet
        out.append(sub if is_module else (base or PKG))
    return out


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, lazy) for every deconfound import in ``module``; lazy = inside a function."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, child.lineno, lazy) for target in _resolve(module, child))
            visit(child, inner)

    visit(tree, False)
    return found


def _violation(importer: str, target: str, lazy: bool) -> str | None:
    if target == importer:
        return None
    if target == PKG:
        return "imports the package __init__ (import the defining module instead)"
    src_key, dst_key = _key(importer), _key(target)
    src, dst = _layer(importer), _layer(target)
    if dst is None:
        return f"imports {target}, which has no layer in the table"
    if importer == PKG:
        return None if dst != "side" and dst < 7 else f"the package __init__ imports {target} (layer {dst})"
    if src_key == dst_key and src_key in SUBPACKAGES:
        return None
    if dst == "side":
        if src == 7 or (importer in LM_IMPORTERS and lazy):
            return None
        return f"imports {target} (lm); only lm/*, layer 7 and estimators/patching (lazily) may"
    if src == "side":
        return None if dst <= 1 else f"lm imports {target} (layer {dst}); lm may import layers 0-1 only"
    if dst < src:
        return None
    if dst == src and (importer, target) in SAME_LAYER:
        return None
    if dst == src:
        return f"imports {target} of its own layer {src}; add the pair to SAME_LAYER (and ARCHITECTURE.md) if sensible"
    return f"imports {target} of the higher layer {dst} (its own layer is {src})"


ALL = sorted(set(MODULES) | {m for m in LAYERS if m not in SUBPACKAGES} | {"estimators.patching"})


@pytest.mark.parametrize("module", ALL)
def test_module_imports_follow_layers(module):
    if module not in MODULES:
        pytest.skip(f"{module} does not exist yet")
    if module != PKG:
        assert _layer(module) is not None, (
            f"src/deconfound/{module.replace('.', '/')}.py has no layer: add it to LAYERS in "
            f"tests/unit/test_layers.py and to the table of ARCHITECTURE.md")
    bad = [f"line {line}: {why}" for target, line, lazy in _imports(module)
           if (why := _violation(module, target, lazy)) is not None]
    assert not bad, f"{module}: " + "; ".join(bad)


def test_same_layer_pairs_are_same_layer_and_acyclic():
    import networkx as nx

    for a, b in SAME_LAYER:
        assert LAYERS[a] == LAYERS[b], (a, b)
    assert nx.is_directed_acyclic_graph(nx.DiGraph(list(SAME_LAYER)))


# ---- the checker itself can fail ------------------------------------------------------------------------------
@pytest.mark.parametrize("importer,target,lazy,ok", [
    ("data", "errors", False, True),
    ("errors", "data", False, False),
    ("graph", "inference", False, False),  # same layer, not listed
    ("simulate", "data", False, True),
    ("data", "simulate", False, False),
    ("results", "estimators.base", True, False),  # lazy imports count too
    ("estimators.dml", "estimators.base", False, True),
    ("estimators.patching", "lm.patch", True, True),
    ("estimators.patching", "lm.patch", False, False),
    ("lm.extract", "data", False, True),
    ("lm.extract", "graph", False, False),
    ("weights", "lm.models", True, False),
    ("cli", "lm.extract", False, True),
    ("sensitivity", PKG, False, False),
])
def test_violation_rule(importer, target, lazy, ok):
    assert (_violation(importer, target, lazy) is None) == ok


def test_resolver_on_source(tmp_path, monkeypatch):
    src = ("from ..errors import DataError\nfrom . import base\nfrom .. import simulate\nimport deconfound.graph\n"
           "def f():\n    from ..results import MediationResult\n    from .. import __version__\n")
    fake = tmp_path / "fake.py"
    fake.write_text(src)
    monkeypatch.setitem(MODULES, "estimators.fake", fake)
    got = _imports("estimators.fake")
    assert got == [("errors", 1, False), ("estimators.base", 2, False), ("simulate", 3, False),
                   ("graph", 4, False), ("results", 6, True), (PKG, 7, True)]
    bad = [_violation("estimators.fake", t, lazy) for t, _, lazy in got]
    assert [b is None for b in bad] == [True] * 5 + [False]


# ---- ARCHITECTURE.md states the same table --------------------------------------------------------------------
def _architecture_table() -> dict[str, object]:
    path = ROOT / "ARCHITECTURE.md"
    if not path.exists():
        pytest.skip("no ARCHITECTURE.md")
    table = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"\d+|side", cells[0]):
            continue
        layer = int(cells[0]) if cells[0].isdigit() else "side"
        for name in re.findall(r"`([^`]+)`", cells[1]):
            name = name.rstrip("/").removesuffix(".py")
            table[name] = layer
    return table


def test_architecture_md_agrees():
    documented = _architecture_table()
    wrong = {m: (LAYERS[m], documented[m]) for m in documented if m in LAYERS and documented[m] != LAYERS[m]}
    assert not wrong, f"layer in test_layers.py vs ARCHITECTURE.md differs: {wrong}"
    unknown = sorted(set(documented) - set(LAYERS))
    assert not unknown, f"ARCHITECTURE.md lists modules without a layer in test_layers.py: {unknown}"
    existing = {_key(m) for m in MODULES if m != PKG}
    missing = sorted(existing - set(documented))
    assert not missing, f"modules that exist but are not in the layer table of ARCHITECTURE.md: {missing}"
