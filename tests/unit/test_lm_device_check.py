"""benchmarks/device_check.sh: exits 0 without a GPU; its comparison logic, run with the "device" on the CPU
(float32 against float32 must agree to float rounding; bfloat16 within its tolerance)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.lm


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run the real check")
def test_without_a_gpu_it_says_so_and_exits_0():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "no GPU" in out.stdout


@pytest.fixture
def registry_as_found():
    from deconfound.lm.scorers import SCORERS

    before = dict(SCORERS)
    yield
    SCORERS.clear()
    SCORERS.update(before)


def test_the_comparison_on_a_tiny_model(tmp_path, registry_as_found):
    from deconfound.lm.models import tiny_model

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.pop(0)
    lm = tiny_model("llama", seed=1, n_layers=3)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "w.txt").write_text("stupid\nidiot\nhate\nfool\n")
    common = ["--model", str(tmp_path / "m"), "--words", str(tmp_path / "w.txt"), "--device", "cpu", "--n-prompts", "24", "--units",
              "mlp_out.L0,mlp_out.L2", "--n-boot", "10"]
    assert device_check.main([*common, "--dtype", "float32", "--out", str(tmp_path / "f.json")]) == 0
    same = json.loads((tmp_path / "f.json").read_text())
    assert same["pass"] and same["checks"]["activations"]["max_relative_error"] < 1e-5
    assert same["runs"]["device"]["prompts_per_s"] > 0 and same["runs"]["device"]["patched_evals_per_s"] > 0
    device_check.main([*common, "--dtype", "bfloat16", "--out", str(tmp_path / "b.json")])
    half = json.loads((tmp_path / "b.json").read_text())
    err = half["checks"]["activations"]["max_relative_error"]
    assert 1e-4 < err < 0.05  # bfloat16 differs, within its tolerance
