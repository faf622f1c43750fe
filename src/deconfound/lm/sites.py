"""Hook sites: one declarative table per architecture.

A *site* is a place in a transformer where an activation can be read or
overwritten, e.g. the MLP output of layer 12. Its name, ``"mlp_out.L12"``, is
also the unit name used in :class:`~deconfound.data.MediationData`.

Site kinds (the same for every architecture):

``mlp_out``
    What the MLP block adds to the residual stream, ``(B, T, d_model)``.
``mlp_neurons``
    The post-activation MLP neurons: the input of the down projection,
    read with a forward *pre*-hook, ``(B, T, d_mlp)``.
``attn_out``
    What the attention block adds to the residual stream, ``(B, T, d_model)``.
``resid_post``
    The output of the whole block (the residual stream after layer L),
    ``(B, T, d_model)``.

Gemma-2, Gemma-3 and OLMo-2 normalise each block's output before adding it to
the residual stream, so there ``mlp_out`` and ``attn_out`` are read after
``post_feedforward_layernorm`` / ``post_attention_layernorm``: the value that
actually enters the residual stream.

Supported families (``config.model_type``): llama, mistral, qwen2 (table
``llama``), qwen3, phi3, gpt2, gpt_neox, gemma2, gemma3_text, olmo2.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ModelSiteError

SITE_KINDS = ("mlp_out", "mlp_neurons", "attn_out", "resid_post")


@dataclass(frozen=True)
class SiteTemplate:
    """Where one site kind lives: a module path with ``{layer}``, the hook type and the width."""

    module: str
    hook: str  # "output": forward hook on the module; "input": forward pre-hook (first argument)
    dim: str  # "d_model" or "d_mlp"


@dataclass(frozen=True)
class ArchTable:
    """The hook-site table of one architecture family."""

    name: str
    model_types: tuple[str, ...]
    layers: str
    d_model: tuple[str, ...]
    d_mlp: tuple[str, ...]
    sites: dict = field(default_factory=dict)


def _decoder(prefix, mlp_out, neurons, attn_out):
    return {
        "mlp_out": SiteTemplate(f"{prefix}.{{layer}}.{mlp_out}", "output", "d_model"),
        "mlp_neurons": SiteTemplate(f"{prefix}.{{layer}}.{neurons}", "input", "d_mlp"),
        "attn_out": SiteTemplate(f"{prefix}.{{layer}}.{attn_out}", "output", "d_model"),
        "resid_post": SiteTemplate(f"{prefix}.{{layer}}", "output", "d_model"),
    }


ARCHITECTURES: dict[str, ArchTable] = {
    "llama": ArchTable(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        layers="model.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder("model.layers", "mlp", "mlp.down_proj", "self_attn"),
    ),
    "gpt2": ArchTable(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        d_model=("n_embd",),
        d_mlp=("n_inner",),  # None in the config means 4 * n_embd
        sites=_decoder("transformer.h", "mlp", "mlp.c_proj", "attn"),
    ),
    "gpt_neox": ArchTable(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder("gpt_neox.layers", "mlp", "mlp.dense_4h_to_h", "attention"),
    ),
    "gemma3": ArchTable(
        name="gemma3",
        model_types=("gemma3_text",),
        layers="model.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder(
            "model.layers", "post_feedforward_layernorm", "mlp.down_proj", "post_attention_layernorm"
        ),
    ),
    "qwen3": ArchTable(  # Llama's paths; q/k norms inside attention do not move the sites
        name="qwen3",
        model_types=("qwen3",),
        layers="model.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder("model.layers", "mlp", "mlp.down_proj", "self_attn"),
    ),
    "phi3": ArchTable(  # fused gate_up_proj; the neurons are still the input of down_proj
        name="phi3",
        model_types=("phi3",),
        layers="model.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder("model.layers", "mlp", "mlp.down_proj", "self_attn"),
    ),
    "gemma2": ArchTable(
        name="gemma2",
        model_types=("gemma2",),
        layers="model.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder(
            "model.layers", "post_feedforward_layernorm", "mlp.down_proj", "post_attention_layernorm"
        ),
    ),
    "olmo2": ArchTable(  # no pre-norms: each sub-block's output is normalised before the residual add
        name="olmo2",
        model_types=("olmo2",),
        layers="model.layers",
        d_model=("hidden_size",),
        d_mlp=("intermediate_size",),
        sites=_decoder(
            "model.layers", "post_feedforward_layernorm", "mlp.down_proj", "post_attention_layernorm"
        ),
    ),
}

_BY_MODEL_TYPE = {mt: table for table in ARCHITECTURES.values() for mt in table.model_types}
_SPEC = re.compile(r"^(?P<kind>[a-z_]+)(?:\.L(?P<a>\d+)(?:-(?P<b>\d+))?)?$")


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values that have a site table."""
    return sorted(_BY_MODEL_TYPE)


@dataclass(frozen=True, order=True)
class Site:
    """One hook site: a kind and a layer. ``str(site)`` is the unit name, e.g. ``"mlp_out.L12"``."""

    kind: str
    layer: int

    def __post_init__(self):
        if self.kind not in SITE_KINDS:
            raise ModelSiteError(f"site kind: expected one of {list(SITE_KINDS)}, got {self.kind!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ModelSiteError(f"site layer: expected a non-negative integer, got {self.layer!r}")

    @property
    def name(self) -> str:
        return f"{self.kind}.L{self.layer}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, spec: str) -> "Site":
        """Parse one site name such as ``"mlp_out.L12"``.

        Examples
        --------
        >>> Site.parse("mlp_out.L12")
        Site(kind='mlp_out', layer=12)
        """
        sites = parse_spec(spec)
        if sites[1] is None or sites[1] != sites[2]:
            raise ModelSiteError(f"site: expected one site like 'mlp_out.L12', got {spec!r}")
        return cls(sites[0], sites[1])


def parse_spec(spec: str) -> tuple[str, int | None, int | None]:
    """Split ``"kind"``, ``"kind.L3"`` or ``"kind.L2-5"`` into (kind, first, last); layers None = all."""
    if not isinstance(spec, str):
        raise ModelSiteError(f"site: expected a string like 'mlp_out.L12', got {type(spec).__name__}")
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ModelSiteError(
            f"site: expected 'kind', 'kind.L<layer>' or 'kind.L<a>-<b>' with kind in {list(SITE_KINDS)}, "
            f"got {spec!r}"
        )
    kind = m.group("kind")
    if kind not in SITE_KINDS:
        raise ModelSiteError(f"site kind: expected one of {list(SITE_KINDS)}, got {kind!r} (in {spec!r})")
    if m.group("a") is None:
        return kind, None, None
    a = int(m.group("a"))
    b = int(m.group("b")) if m.group("b") is not None else a
    if b < a:
        raise ModelSiteError(f"site layer range: expected first <= last, got {spec!r}")
    return kind, a, b


def _unwrap(model):
    return getattr(model, "model", model) if hasattr(model, "tokenizer") else model


def arch_table(model) -> ArchTable:
    """The site table for a model, chosen by ``model.config.model_type``."""
    model = _unwrap(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    table = _BY_MODEL_TYPE.get(model_type)
    if table is None:
        raise ModelSiteError(
            f"architecture: expected a model_type in {supported_model_types()}, got {model_type!r} "
            f"({type(model).__name__}) without a site table; add a row to deconfound.lm.sites.ARCHITECTURES"
        )
    return table


def get_module(model, path: str):
    """The submodule at a dotted path (integers index ModuleLists)."""
    module = _unwrap(model)
    for part in path.split("."):
        try:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        except (AttributeError, IndexError, TypeError):
            raise ModelSiteError(
                f"module path: expected {path!r} to exist in {type(_unwrap(model)).__name__}, "
                f"got no {part!r}"
            ) from None
    return module


def n_layers(model) -> int:
    """Number of transformer blocks."""
    return len(get_module(model, arch_table(model).layers))


def _text_config(model):
    config = _unwrap(model).config
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def dims(model) -> dict[str, int]:
    """``{"d_model": ..., "d_mlp": ...}`` read from the config."""
    table = arch_table(model)
    config = _text_config(model)
    out = {}
    for key in ("d_model", "d_mlp"):
        value = None
        for attr in getattr(table, key):
            value = getattr(config, attr, None)
            if value is not None:
                break
        out[key] = value
    if out["d_mlp"] is None and table.name == "gpt2":
        out["d_mlp"] = 4 * out["d_model"]
    return out


@dataclass(frozen=True)
class BoundSite:
    """A site resolved on a particular model: the module to hook, the hook type and the width."""

    site: Site
    module: object
    hook: str
    dim: int

    @property
    def name(self) -> str:
        return self.site.name


def _check_layer(model, layer: int, spec) -> None:
    total = n_layers(model)
    if not 0 <= layer < total:
        raise ModelSiteError(
            f"layer in {str(spec)!r}: expected 0..{total - 1} ({total} layers in "
            f"{arch_table(model).name}), got {layer}"
        )


def bind(model, site) -> BoundSite:
    """Resolve a site (a :class:`Site` or a name like ``"mlp_out.L3"``) on a model."""
    if not isinstance(site, Site):
        site = Site.parse(site)
    table = arch_table(model)
    _check_layer(model, site.layer, site)
    template = table.sites[site.kind]
    module = get_module(model, template.module.format(layer=site.layer))
    return BoundSite(site, module, template.hook, dims(model)[template.dim])


def expand_sites(model, specs) -> list[Site]:
    """Expand site specs into a sorted-as-given, de-duplicated list of sites.

    Parameters
    ----------
    model : torch.nn.Module or LoadedModel
    specs : str, Site or a sequence of them
        ``"mlp_out"`` means every layer, ``"mlp_out.L3"`` one layer and
        ``"mlp_out.L2-5"`` layers 2 to 5 inclusive.

    Returns
    -------
    list of Site
    """
    if isinstance(specs, (str, Site)):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise ModelSiteError("sites: expected at least one site, got none")
    total = n_layers(model)
    out: list[Site] = []
    for spec in specs:
        if isinstance(spec, Site):
            _check_layer(model, spec.layer, spec)
            items = [spec]
        else:
            kind, a, b = parse_spec(spec)
            if a is None:
                a, b = 0, total - 1
            _check_layer(model, a, spec)
            _check_layer(model, b, spec)
            items = [Site(kind, layer) for layer in range(a, b + 1)]
        for item in items:
            if item not in out:
                out.append(item)
    return out
