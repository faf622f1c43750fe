"""Every architecture with a site table, on a tiny random model built from its transformers config.

Oracles: ``output_hidden_states`` (resid_post), the residual identity h[l+1] = h[l] + attn_out + mlp_out, the
input of the down projection recomputed from the MLP's own weights (mlp_neurons), and a naive full forward with
one patch hook per variant for the batched KV-cache patching engine, also on prompts longer than a sliding
attention window.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.errors import ModelSiteError  # noqa: E402
from deconfound.lm.hooks import capture, patch  # noqa: E402
from deconfound.lm.models import TINY_ARCHS, tiny_model  # noqa: E402
from deconfound.lm.outcomes import NextTokenMass  # noqa: E402
from deconfound.lm.patch import Patcher  # noqa: E402
from deconfound.lm.sites import arch_table, bind  # noqa: E402

pytestmark = pytest.mark.lm

PROMPTS = ["the game was great", "you are a stupid idiot and i hate you", "the doctor said"]
LONG = ["the government passed a new law about taxes and schools and the president spoke to the people",
        "shut up you dumb fool nobody likes you what a ugly useless and pathetic person"]  # > 8 tokens
NEW = ["qwen3", "phi3", "gemma2", "olmo2"]


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_model(arch, seed=1, n_layers=3) for arch in TINY_ARCHS}


def _batch(lm, prompts):
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "position_ids": pos}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_capture_equals_hidden_states_and_the_residual_identity(models, arch):
    lm = models[arch]
    assert arch_table(lm.model).name == {"mistral": "llama", "qwen2": "llama"}.get(arch, arch)
    with torch.no_grad(), capture(lm, ["resid_post", "mlp_out", "attn_out", "mlp_neurons"], positions="all") as cap:
        out = lm.model(**_batch(lm, PROMPTS), output_hidden_states=True)
    hs = out.hidden_states
    for layer in range(lm.n_layers):
        if layer < lm.n_layers - 1:  # the last entry of hidden_states is after the final norm
            torch.testing.assert_close(cap[f"resid_post.L{layer}"], hs[layer + 1], rtol=0, atol=0)
        total = hs[layer] + cap[f"attn_out.L{layer}"] + cap[f"mlp_out.L{layer}"]
        torch.testing.assert_close(cap[f"resid_post.L{layer}"], total, rtol=1e-5, atol=1e-5)
        # the neurons are what the down projection reads: applying it gives the MLP output
        mlp = bind(lm, f"mlp_neurons.L{layer}").module(cap[f"mlp_neurons.L{layer}"])
        if arch_table(lm.model).name in ("gemma2", "gemma3", "olmo2"):
            mlp = lm.model.model.layers[layer].post_feedforward_layernorm(mlp)
        torch.testing.assert_close(cap[f"mlp_out.L{layer}"], mlp, rtol=1e-5, atol=1e-5)
        assert cap[f"mlp_neurons.L{layer}"].shape[-1] == lm.d_mlp


def _naive(lm, prompt, site, value, ids):
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad(), patch(lm, site, torch.as_tensor(value, dtype=torch.float32)[None]):
        logits = lm.model(**enc).logits[0, -1]
    return logits.double().softmax(-1)[ids].sum().item()


@pytest.mark.parametrize("arch", NEW + ["gemma3", "mistral"])
def test_patching_equals_a_naive_recompute_also_past_a_sliding_window(arch):
    lm = tiny_model(arch, seed=2, n_layers=3, **({"sliding_window": 4} if arch == "mistral" else {}))
    prompts = PROMPTS + LONG
    window = getattr(lm.model.config, "sliding_window", None)
    if window is not None:  # the long prompts do not fit in the window
        assert max(len(lm.tokenizer(p)["input_ids"]) for p in prompts) > window
    ids = lm.tokenizer.convert_tokens_to_ids(["stupid", "idiot", "hate", "fool"])
    p = Patcher(lm, prompts, outcome=NextTokenMass(ids), batch_size=4, cache_prompts=3)
    rng = np.random.default_rng(0)
    for site in ("mlp_out.L1", "attn_out.L0", "resid_post.L2", "mlp_neurons.L1"):
        vals = rng.normal(scale=2.0, size=(len(prompts), p.dim(site)))
        got = p.scores(site, np.arange(len(prompts)), vals)
        want = [_naive(lm, q, site, vals[i], ids) for i, q in enumerate(prompts)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    base = [_naive_base(lm, q, ids) for q in prompts]
    np.testing.assert_allclose(p.base_scores(), base, rtol=1e-5, atol=1e-7)


def _naive_base(lm, prompt, ids):
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        return lm.model(**enc).logits[0, -1].double().softmax(-1)[ids].sum().item()


def test_an_architecture_without_a_site_table_is_named():
    import transformers

    config = transformers.BloomConfig(vocab_size=32, hidden_size=16, n_layer=1, n_head=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ModelSiteError, match=r"got 'bloom' \(BloomForCausalLM\) without a site table") as err:
        bind(model, "mlp_out.L0")
    for name in ("gemma2", "olmo2", "phi3", "qwen3", "llama", "gpt2"):
        assert f"'{name}'" in str(err.value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_prefix_caches_keep_the_model_dtype_and_a_byte_budget(dtype, tmp_path):
    from deconfound.lm.models import load_model
    from deconfound.lm.patch import prefix_cache_bytes

    tiny = tiny_model("llama", seed=3, n_layers=2)
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"), dtype=dtype)
    ids = lm.tokenizer.convert_tokens_to_ids(["stupid", "idiot"])
    p = Patcher(lm, PROMPTS + LONG, outcome=NextTokenMass(ids))
    p.base_scores()
    for _, kv, *_ in p._groups.values():
        assert all(k.dtype == lm.dtype and v.dtype == lm.dtype for k, v in kv)
    # the budget counts 2 (K, V) x layers x kv heads x head dim x bytes per token
    cfg = lm.model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert prefix_cache_bytes(lm.model, 1) == per_token * (2 if dtype == "bfloat16" else 4)
    mean = np.mean([len(lm.tokenizer(q)["input_ids"]) - 1 for q in PROMPTS + LONG])
    budget = int(3.5 * prefix_cache_bytes(lm.model, mean))
    assert Patcher(lm, PROMPTS + LONG, outcome=NextTokenMass(ids), cache_bytes=budget).cache_prompts == 3
