"""Every registered estimator class imports by name from deconfound.estimators, without heavy imports."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import deconfound.estimators as estimators
from deconfound.estimators.base import _REGISTRY

EXPECTED = {"parametric": "ParametricMediation", "weighting": "WeightingMediation", "dml": "DMLMediation",
            "eb_total": "EntropyBalancedTotalEffect", "patching": "PatchingMediation",
            "econml_te": "EconMLTotalEffect", "econml_diff": "EconMLDifferenceMediation"}


def test_every_registered_class_imports_by_name():
    names = estimators.available_estimators()
    assert set(EXPECTED) <= set(names)
    for name in names:
        cls = _REGISTRY[name]
        namespace: dict = {}
        exec(f"from deconfound.estimators import {cls.__name__} as got", namespace)  # noqa: S102 - the import form
        assert namespace["got"] is cls is type(estimators.get_estimator(name))
        assert cls.__name__ in dir(estimators)
    for name, cls_name in EXPECTED.items():
        assert getattr(estimators, cls_name) is _REGISTRY[name]


def test_unknown_name_is_an_attribute_error_listing_the_classes():
    with pytest.raises(AttributeError, match="DMLMediation"):
        estimators.NoSuchMediation  # noqa: B018
    with pytest.raises(ImportError):
        exec("from deconfound.estimators import NoSuchMediation", {})  # noqa: S102
    assert estimators.dml.DMLMediation is estimators.DMLMediation  # submodules still resolve


def test_class_import_stays_light():
    """Importing the classes (EconML's included) loads neither econml nor torch until a fit needs them."""
    code = ("import json, sys\nimport deconfound\nfrom deconfound.estimators import DMLMediation, "
            "EconMLTotalEffect, PatchingMediation\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'econml', 'dowhy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
