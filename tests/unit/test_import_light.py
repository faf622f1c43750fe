"""`import deconfound` stays light: no torch, transformers, dowhy or econml (checked in a fresh interpreter)."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "dowhy", "econml")

PROBE = """
import json, sys
{body}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps(heavy))
"""


def _heavy_after(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=set(HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_deconfound_is_light():
    assert _heavy_after("import deconfound") == []


def test_core_use_is_light():
    """Simulating, building data, to_frame and printing a result touch none of the heavy packages."""
    body = """
import numpy as np
import deconfound as dc
data, truth = dc.simulate.topic_mediation(200, n_units=2, seed=0)
data.to_frame("u0"); data.x_design()
e = dc.Effect.from_scores(0.1, np.random.default_rng(0).normal(size=200))
r = dc.MediationResult("x", {"u0": {("nie", "average"): e}}, n=200, n_treated=data.n_treated)
r.summary(); r.to_frame()
"""
    assert _heavy_after(body) == []


def test_probe_detects_a_heavy_import():
    """The probe itself can fail: a (stand-in) torch module in sys.modules is reported."""
    assert _heavy_after("import deconfound, types; sys.modules['torch.nn'] = types.ModuleType('torch.nn')") == [
        "torch.nn"]
