"""What the patching engine patches: units, sets of units patched at once, requests and their scores.

A :class:`PatchUnit` is a site (kind and layer) or a subset of its coordinates. A :class:`PatchSet` is several
units patched together in the same rows (a joint mediator): its values are the units' vectors side by side,
in the set's order, as in a stacked mediator block. :func:`as_unit` resolves every spelling of either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import ModelSiteError
from .sites import Site

__all__ = ["PatchUnit", "PatchSet", "PatchRequest", "PatchScores", "as_unit"]

_UNIT = re.compile(r"^(?P<site>[^\[\]]+?)\s*(?:\[(?P<coords>[\d,\s]*)\])?$")
_LAYER = re.compile(r"^L?(?P<layer>\d+)$")


@dataclass(frozen=True)
class PatchUnit:
    """A patchable unit: a site (kind and layer) and optionally a subset of its coordinates.

    Attributes
    ----------
    site : Site
    coords : tuple of int or None
        Coordinates (e.g. neurons of ``mlp_neurons``) patched; None means the whole vector.
    label : str or None
        Name used in results; default ``"mlp_out.L3"`` or ``"mlp_neurons.L3[1,5,9]"``.
    """

    site: Site
    coords: tuple | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.coords is None:
            return self.site.name
        return f"{self.site.name}[{','.join(str(c) for c in self.coords)}]"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class PatchSet:
    """Several units patched at once in the same rows (a joint mediator).

    A request for a set takes, per row, the units' values side by side in the set's order (width: the sum of
    the units' widths), or a list with one (R, d_u) array per unit. Two units may not write the same
    coordinates of one site (``mlp_out.L2`` and ``mlp_out.L2[0,5]`` overlap).

    Attributes
    ----------
    units : tuple of PatchUnit
    label : str or None
        Name used in results; default the unit names joined by ``"+"``.
    """

    units: tuple
    label: str | None = None

    def __post_init__(self):
        if not self.units or not all(isinstance(u, PatchUnit) for u in self.units):
            raise ModelSiteError(f"unit set: expected one or more PatchUnits, got {self.units!r}")
        for i, a in enumerate(self.units):
            for b in self.units[:i]:
                if a.site == b.site and (a.coords is None or b.coords is None or set(a.coords) & set(b.coords)):
                    raise ModelSiteError(f"unit set {self.name}: expected units that patch disjoint coordinates, "
                                         f"got {b.name} and {a.name} overlapping on {a.site.name}")

    @property
    def name(self) -> str:
        return self.label or "+".join(u.name for u in self.units)

    def __str__(self) -> str:
        return self.name


def members(unit) -> tuple:
    """The PatchUnits that ``unit`` (a PatchUnit or a PatchSet) patches."""
    return unit.units if isinstance(unit, PatchSet) else (unit,)


def start_layer(unit) -> int:
    """The lowest layer a unit or set patches: a patched row need not run the layers below it."""
    return min(u.site.layer for u in members(unit))


def as_unit(spec, kind: str = "mlp_out"):
    """A :class:`PatchUnit` from a unit, a Site, a layer number, a name or a ``(site, coords)`` pair; a
    :class:`PatchSet` from a list of such specs or from names joined by ``"+"``.

    Examples
    --------
    >>> as_unit("mlp_out.L3").name
    'mlp_out.L3'
    >>> as_unit(2, kind="attn_out").name
    'attn_out.L2'
    >>> as_unit("mlp_neurons.L1[4, 7]").coords
    (4, 7)
    >>> as_unit(["mlp_out.L1", "attn_out.L2"]).name
    'mlp_out.L1+attn_out.L2'
    """
    if isinstance(spec, (PatchUnit, PatchSet)):
        return spec
    if isinstance(spec, list):
        parts = [as_unit(s, kind) for s in spec]
        if any(isinstance(p, PatchSet) for p in parts):
            raise ModelSiteError(f"unit set: expected units, got a set inside a set in {spec!r}")
        return PatchSet(tuple(parts))
    if isinstance(spec, str) and "+" in spec:
        return as_unit([s for s in spec.split("+")], kind)
    if isinstance(spec, Site):
        return PatchUnit(spec)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return PatchUnit(Site(kind, int(spec)))
    if isinstance(spec, tuple) and len(spec) == 2:
        base = as_unit(spec[0], kind)
        coords = np.asarray(spec[1]).reshape(-1)
        if coords.size == 0 or not np.issubdtype(coords.dtype, np.integer):
            raise ModelSiteError(f"unit coords for {base.site.name}: expected a non-empty list of integers, "
                                 f"got {spec[1]!r}")
        return PatchUnit(base.site, tuple(int(c) for c in coords))
    if isinstance(spec, str):
        m = _UNIT.match(spec.strip())
        if m is None:
            raise ModelSiteError(f"unit: expected a name like 'mlp_out.L3' or 'mlp_neurons.L3[1,5]', got {spec!r}")
        site_text = m.group("site").strip()
        layer = _LAYER.match(site_text)
        site = Site(kind, int(layer.group("layer"))) if layer else Site.parse(site_text)
        if m.group("coords") is None:
            return PatchUnit(site)
        coords = [c for c in m.group("coords").replace(" ", "").split(",") if c]
        if not coords:
            raise ModelSiteError(f"unit coords in {spec!r}: expected at least one index, got none")
        return PatchUnit(site, tuple(int(c) for c in coords))
    raise ModelSiteError(f"unit: expected a PatchUnit, PatchSet, Site, layer number, name or list of units, got "
                         f"{type(spec).__name__}")


@dataclass
class PatchRequest:
    """Patch ``unit`` in prompts ``prompts`` (R,) with ``values`` (R, d_unit) or one vector (d_unit,).

    For a :class:`PatchSet` (or a list of units), ``values`` holds the units' values side by side, or is a
    list with one array per unit."""

    unit: object
    prompts: object
    values: object


@dataclass
class PatchScores:
    """Scores of one request and per-row extras (e.g. ``ess`` for ``"reweight"``)."""

    unit: PatchUnit | PatchSet
    scores: np.ndarray
    extras: dict
    grad: np.ndarray | None = None
