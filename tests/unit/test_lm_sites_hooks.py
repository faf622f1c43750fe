"""Hook sites and capture/patch hooks on tiny random models.

Oracles: ``output_hidden_states`` (resid_post), a hand-written MLP forward
(mlp_out, mlp_neurons), the residual identity h[l+1] = h[l] + attn_out + mlp_out,
and single-prompt runs without padding.
"""
from contextlib import ExitStack
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.errors import ModelSiteError  # noqa: E402
from deconfound.lm.hooks import _main_tensor, capture, patch  # noqa: E402
from deconfound.lm.models import tiny_model  # noqa: E402
from deconfound.lm.sites import ARCHITECTURES, Site, bind, expand_sites, parse_spec  # noqa: E402

pytestmark = pytest.mark.lm

PROMPTS = ["the game was great", "you are a stupid idiot and i hate you", "the doctor said"]
FINAL_NORM = {"llama": "model.norm", "gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm",
              "gemma3": "model.norm", "mistral": "model.norm", "qwen2": "model.norm"}


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_model(arch, seed=1, n_layers=3) for arch in FINAL_NORM}


def _batch(lm, prompts=PROMPTS):
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "position_ids": pos}


def _module(model, path):
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _hook_count(model):
    """Hooks installed by deconfound (transformers installs its own output-capturing hooks)."""
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    return sum(getattr(h, "__module__", "") == "deconfound.lm.hooks" for h in hooks)


@pytest.mark.parametrize("arch", list(FINAL_NORM))
def test_resid_post_equals_hidden_states(models, arch):
    lm = models[arch]
    batch = _batch(lm)
    with torch.no_grad(), capture(lm, "resid_post", positions="all") as cap:
        out = lm.model(**batch, output_hidden_states=True)
    hs = out.hidden_states
    for layer in range(lm.n_layers - 1):
        torch.testing.assert_close(cap[f"resid_post.L{layer}"], hs[layer + 1], rtol=0, atol=0)
    # the last entry of hidden_states is after the final norm
    last = cap[f"resid_post.L{lm.n_layers - 1}"]
    with torch.no_grad():
        normed = _module(lm.model, FINAL_NORM[arch])(last)
    torch.testing.assert_close(normed, hs[-1], rtol=1e-6, atol=1e-6)
    assert _hook_count(lm.model) == 0


def _rms(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mlp_sites_equal_a_manual_mlp_forward(models, arch):
    lm = models[arch]
    batch = _batch(lm)
    with torch.no_grad(), capture(lm, ["mlp_out", "mlp_neurons", "attn_out"], positions="all") as cap:
        out = lm.model(**batch, output_hidden_states=True)
    hs = out.hidden_states
    for layer in range(lm.n_layers):
        mid = hs[layer] + cap[f"attn_out.L{layer}"]
        if arch == "llama":
            block = lm.model.model.layers[layer]
            z = _rms(mid, block.post_attention_layernorm.weight, lm.model.config.rms_norm_eps)
            neurons = torch.nn.functional.silu(z @ block.mlp.gate_proj.weight.T) * (z @ block.mlp.up_proj.weight.T)
            mlp = neurons @ block.mlp.down_proj.weight.T
        else:
            block = lm.model.transformer.h[layer]
            z = torch.nn.functional.layer_norm(mid, (lm.d_model,), block.ln_2.weight, block.ln_2.bias,
                                               lm.model.config.layer_norm_epsilon)
            pre = z @ block.mlp.c_fc.weight + block.mlp.c_fc.bias
            neurons = 0.5 * pre * (1 + torch.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))
            mlp = neurons @ block.mlp.c_proj.weight + block.mlp.c_proj.bias
        assert cap[f"mlp_neurons.L{layer}"].shape[-1] == lm.d_mlp
        torch.testing.assert_close(cap[f"mlp_neurons.L{layer}"], neurons, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cap[f"mlp_out.L{layer}"], mlp, rtol=1e-5, atol=1e-5)
        if layer < lm.n_layers - 1:  # residual identity: block output = input + attn_out + mlp_out
            torch.testing.assert_close(hs[layer + 1], mid + cap[f"mlp_out.L{layer}"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_last_position_respects_padding(models, arch, side):
    lm = models[arch]
    lm.tokenizer.padding_side = side
    try:
        batch = _batch(lm)
        with torch.no_grad(), capture(lm, ["mlp_out.L1", "resid_post.L2"]) as cap:
            lm.model(**batch)
    finally:
        lm.tokenizer.padding_side = "left"
    for i, prompt in enumerate(PROMPTS):
        single = _batch(lm, [prompt])
        with torch.no_grad(), capture(lm, ["mlp_out.L1", "resid_post.L2"]) as one:
            lm.model(**single)
        for name in ("mlp_out.L1", "resid_post.L2"):
            torch.testing.assert_close(cap[name][i], one[name][0], rtol=1e-5, atol=1e-5)


def test_explicit_positions(models):
    lm = models["llama"]
    batch = _batch(lm)
    with torch.no_grad(), capture(lm, "mlp_out.L0", positions="all") as full:
        lm.model(**batch)
    rows = np.array([2, 5, -1])
    with torch.no_grad(), capture(lm, "mlp_out.L0", positions=rows) as per_row, \
            capture(lm, "mlp_out.L0", positions=3) as same:
        lm.model(**batch)
    all_ = full["mlp_out.L0"]
    t = all_.shape[1]
    for i, p in enumerate(rows):
        torch.testing.assert_close(per_row["mlp_out.L0"][i], all_[i, p % t], rtol=0, atol=0)
        torch.testing.assert_close(same["mlp_out.L0"][i], all_[i, 3], rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected an index in"):
        with capture(lm, "mlp_out.L0", positions=99):
            lm.model(**batch)
    assert _hook_count(lm.model) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("site", ["mlp_out.L1", "mlp_neurons.L0", "attn_out.L2", "resid_post.L1"])
def test_patching_with_own_activation_changes_nothing(models, arch, site):
    lm = models[arch]
    batch = _batch(lm)
    with torch.no_grad(), capture(lm, site) as cap:
        base = lm.model(**batch).logits
    with torch.no_grad(), patch(lm, site, cap[site]):
        again = lm.model(**batch).logits
    torch.testing.assert_close(again, base, rtol=0, atol=1e-6)
    assert _hook_count(lm.model) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patch_touches_only_masked_rows_and_the_last_position(models, arch):
    lm = models[arch]
    batch = _batch(lm)
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(len(PROMPTS), lm.d_model, generator=gen) * 3
    rows = np.array([True, False, True])
    with torch.no_grad():
        base = lm.model(**batch).logits
        with patch(lm, "mlp_out.L0", values, rows=rows):
            patched = lm.model(**batch).logits
    torch.testing.assert_close(patched[1], base[1], rtol=0, atol=0)  # untouched row
    torch.testing.assert_close(patched[:, :-1], base[:, :-1], rtol=0, atol=0)  # causal: earlier positions
    assert (patched[[0, 2], -1] - base[[0, 2], -1]).abs().max() > 1e-3
    # each patched row equals patching that prompt alone, without padding
    for i in (0, 2):
        single = _batch(lm, [PROMPTS[i]])
        with torch.no_grad(), patch(lm, "mlp_out.L0", values[i]):
            alone = lm.model(**single).logits
        torch.testing.assert_close(patched[i, -1], alone[0, -1], rtol=1e-5, atol=1e-5)


def test_nested_patches_on_different_rows_and_layers(models):
    lm = models["llama"]
    batch = _batch(lm)
    v0 = torch.ones(lm.d_model)
    v2 = -torch.ones(lm.d_model)
    with torch.no_grad():
        with ExitStack() as stack:
            stack.enter_context(patch(lm, "mlp_out.L0", v0, rows=np.array([True, False, False])))
            stack.enter_context(patch(lm, "mlp_out.L2", v2, rows=np.array([False, True, False])))
            both = lm.model(**batch).logits
        with patch(lm, "mlp_out.L0", v0):
            only0 = lm.model(**batch).logits
        with patch(lm, "mlp_out.L2", v2):
            only2 = lm.model(**batch).logits
        base = lm.model(**batch).logits
    torch.testing.assert_close(both[0], only0[0], rtol=0, atol=0)
    torch.testing.assert_close(both[1], only2[1], rtol=0, atol=0)
    torch.testing.assert_close(both[2], base[2], rtol=0, atol=0)


def test_zeroing_the_neurons_zeroes_a_bias_free_mlp(models):
    lm = models["llama"]  # Llama MLPs have no bias: mlp_out = down_proj(neurons)
    batch = _batch(lm)
    with torch.no_grad(), patch(lm, "mlp_neurons.L1", torch.zeros(lm.d_mlp)), \
            capture(lm, ["mlp_out.L1", "mlp_out.L0"]) as cap:
        lm.model(**batch)
    assert cap["mlp_out.L1"].abs().max() == 0
    assert cap["mlp_out.L0"].abs().max() > 0


def test_hooks_are_removed_after_an_error(models):
    lm = models["gpt2"]
    batch = _batch(lm)
    before = _hook_count(lm.model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(lm, "mlp_out"), patch(lm, "mlp_out.L0", torch.zeros(lm.d_model)):
            assert _hook_count(lm.model) == before + 2 + lm.n_layers + 1  # 2 trackers, 3 + 1 sites
            lm.model(**batch)
            raise RuntimeError("boom")
    assert _hook_count(lm.model) == before == 0
    with pytest.raises(ValueError, match=r"expected shape \(3, 64\)"):  # raised inside the hook
        with torch.no_grad(), patch(lm, "mlp_out.L0", torch.zeros(2, lm.d_model)):
            lm.model(**batch)
    with pytest.raises(ValueError, match="boolean mask of length 3"):
        with torch.no_grad(), patch(lm, "mlp_out.L0", torch.zeros(lm.d_model), rows=[1, 0, 1]):
            lm.model(**batch)
    assert _hook_count(lm.model) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_captures_only_the_prefill(models, arch):
    lm = models[arch]
    batch = _batch(lm)
    with torch.no_grad(), capture(lm, "mlp_out.L1") as plain:
        lm.model(**batch)
    with torch.no_grad(), capture(lm, "mlp_out.L1") as first, capture(lm, "mlp_out.L1", calls="all") as every:
        out = lm.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4
    assert first["mlp_out.L1"].shape == (3, lm.d_model)
    torch.testing.assert_close(first["mlp_out.L1"], plain["mlp_out.L1"], rtol=1e-5, atol=1e-5)
    assert every["mlp_out.L1"].shape == (3 * 4, lm.d_model)  # prefill + 3 decode steps
    torch.testing.assert_close(every["mlp_out.L1"][:3], first["mlp_out.L1"], rtol=0, atol=0)


def test_patch_under_generate_applies_to_the_prefill_only(models):
    lm = models["llama"]
    batch = _batch(lm)
    with torch.no_grad(), capture(lm, "mlp_out.L0", calls="all") as cap, \
            patch(lm, "mlp_out.L0", torch.zeros(lm.d_model)):
        lm.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          max_new_tokens=3, min_new_tokens=3, do_sample=False,
                          pad_token_id=lm.tokenizer.pad_token_id)
    values = cap["mlp_out.L0"]  # capture registered first, so it sees the unpatched output
    assert values.shape[0] == 9
    with torch.no_grad(), capture(lm, "mlp_out.L0", calls="all") as after, \
            patch(lm, "mlp_out.L0", torch.zeros(lm.d_model)):
        lm.model(**batch)
        lm.model(**batch)
    assert after["mlp_out.L0"].shape[0] == 6


def test_outputs_as_tuple_or_bare_tensor():
    x = torch.arange(6.0).reshape(1, 2, 3)
    t, put = _main_tensor(x)
    assert t is x and put(x + 1).equal(x + 1)
    extra = object()
    t, put = _main_tensor((x, extra))
    new = put(x * 2)
    assert isinstance(new, tuple) and new[0].equal(x * 2) and new[1] is extra
    with pytest.raises(ModelSiteError, match="expected a tensor or a tuple"):
        _main_tensor({"a": x})


def test_site_names_and_errors(models):
    lm = models["llama"]
    assert Site.parse("mlp_out.L2") == Site("mlp_out", 2)
    assert str(Site("attn_out", 0)) == "attn_out.L0"
    assert parse_spec("mlp_out.L1-2") == ("mlp_out", 1, 2)
    names = [s.name for s in expand_sites(lm, ["mlp_out", "resid_post.L1-2", "mlp_out.L0"])]
    assert names == ["mlp_out.L0", "mlp_out.L1", "mlp_out.L2", "resid_post.L1", "resid_post.L2"]
    with pytest.raises(ModelSiteError, match=r"expected 0\.\.2 \(3 layers in llama\), got 7"):
        bind(lm.model, "mlp_out.L7")
    with pytest.raises(ModelSiteError, match=r"expected 0\.\.2 .* got 5"):
        expand_sites(lm, "mlp_out.L1-5")
    with pytest.raises(ModelSiteError, match="site kind: expected one of"):
        expand_sites(lm, "mlp_in.L1")
    with pytest.raises(ModelSiteError, match="expected one site like"):
        Site.parse("mlp_out")
    with pytest.raises(ModelSiteError, match="expected 'kind'"):
        parse_spec("mlp_out.layer3")
    fake = SimpleNamespace(config=SimpleNamespace(model_type="bert"))
    with pytest.raises(ModelSiteError, match=r"expected a model_type in \[.*'gpt2'.*'llama'.*\], got 'bert'"):
        bind(fake, "mlp_out.L0")
    with pytest.raises(ModelSiteError, match="expected exactly one|expected one site"):
        with patch(lm, "mlp_out", torch.zeros(lm.d_model)):
            pass


def test_every_table_row_resolves_on_a_tiny_model(models):
    for arch, lm in models.items():
        table = ARCHITECTURES[lm.arch]
        for kind in table.sites:
            bound = bind(lm, f"{kind}.L{lm.n_layers - 1}")
            assert bound.dim == (lm.d_mlp if kind == "mlp_neurons" else lm.d_model), (arch, kind)
