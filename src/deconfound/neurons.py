"""Neuron-level units: one coordinate of a site's block (``mlp_neurons.L12[5]``) or a named group of them.

A site such as ``mlp_neurons.L12`` is extracted as one ``(n, 1536)`` block. :func:`neuron_units` turns blocks into
units of single coordinates (``n x 1``) and named groups (``mlp_neurons.L12[top16]``, ``n x k``), and records
every unit's site and coordinates in ``data.meta["neuron_units"]``. :func:`patch_units` reads that record back
as the mapping ``data unit -> patch unit`` that the patching estimator takes, so the model is patched on exactly
those coordinates (``PatchingMediation().fit(data, patcher=p, units=patch_units(data))``).

Layer 1: numpy and :mod:`deconfound.data` only; blocks are read one site at a time, so a lazily loaded
``MediationData`` (``load(path, mmap=True)``) never has more than one site's block in memory here.
"""
from __future__ import annotations

import re

import numpy as np

from .data import MediationData
from .errors import DataError

__all__ = ["NEURON_META", "group_name", "neuron_name", "neuron_units", "parse_unit", "patch_units", "top_coords"]

NEURON_META = "neuron_units"
_NAME = re.compile(r"^(?P<site>[^\[\]]+)\[(?P<label>[^\[\]]+)\]$")


def neuron_name(site: str, coord: int) -> str:
    """``"mlp_neurons.L12[5]"``: the unit of coordinate ``coord`` of ``site``."""
    return f"{site}[{int(coord)}]"


def group_name(site: str, label: str) -> str:
    """``"mlp_neurons.L12[top16]"``: a named group of coordinates of ``site``.

    The label must not be a list of integers (that spelling names the coordinates themselves).
    """
    label = str(label)
    if not label or re.fullmatch(r"[\d,\s]+", label) or re.search(r"[\[\]]", label):
        raise DataError(f"group label: expected a name such as 'top16' (not a list of integers, no brackets), "
                        f"got {label!r}")
    return f"{site}[{label}]"


def parse_unit(name: str) -> tuple[str, str | None]:
    """``("mlp_neurons.L12", "5")`` for ``"mlp_neurons.L12[5]"``; ``(name, None)`` for a whole site."""
    m = _NAME.match(str(name))
    return (m.group("site"), m.group("label")) if m else (str(name), None)


def top_coords(scores, k: int) -> np.ndarray:
    """The ``k`` coordinates with the largest ``|scores|`` (ties: lower index first; NaN ranks last).

    Examples
    --------
    >>> top_coords([0.1, -3.0, np.nan, 2.0, 0.5], 3).tolist()
    [1, 3, 4]
    """
    s = np.abs(np.asarray(scores, dtype=float).reshape(-1))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(s):
        raise ValueError(f"k: expected an int in [1, {len(s)}], got {k!r}")
    key = np.where(np.isfinite(s), -s, np.inf)
    return np.lexsort((np.arange(len(s)), key))[: int(k)]


def _coords_for(site, coords, width):
    if coords is None:
        return np.arange(width)
    chosen = coords.get(site) if isinstance(coords, dict) else coords
    if chosen is None:
        return np.zeros(0, np.int64)
    c = np.asarray(chosen).reshape(-1)
    if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0 or c.max() >= width
                   or len(np.unique(c)) != c.size):
        raise DataError(f"coords for {site!r}: expected distinct integers in [0, {width}), got {c[:10].tolist()}"
                        + (" ..." if c.size > 10 else ""))
    return c.astype(np.int64)


def neuron_units(data: MediationData, sites, *, coords=None, groups=None) -> MediationData:
    """A MediationData whose units are single coordinates and named groups of coordinates of ``sites``.

    Parameters
    ----------
    data : MediationData with whole-site units (e.g. ``mlp_neurons.L12``, ``n x 1536``); may be lazy.
    sites : str or list of str
        Site units of ``data`` to split.
    coords : None, list of int, or dict site -> list of int
        Coordinates that become ``n x 1`` units named ``site[j]``: None means every coordinate of every
        site; a list applies to every site; a dict chooses per site (sites it leaves out give no singles).
    groups : dict name -> (site, list of int), optional
        Extra ``n x k`` units, e.g. ``{group_name("mlp_neurons.L12", "top16"): ("mlp_neurons.L12", top)}``.
        ``site`` must be one of ``sites``.

    Returns
    -------
    MediationData
        Same T, Y, X, ids; ``meta["neuron_units"][unit] = {"site": ..., "coords": [...]}`` for every unit,
        and ``meta["neuron_sites"]`` the split sites with their widths.

    Examples
    --------
    >>> d = MediationData.from_arrays(t=[0, 1, 0, 1], y=[0., 1., 0., 1.],
    ...                               mediators={"mlp_neurons.L2": np.arange(12.).reshape(4, 3)})
    >>> top = {group_name("mlp_neurons.L2", "top2"): ("mlp_neurons.L2", [2, 1])}
    >>> nd = neuron_units(d, "mlp_neurons.L2", coords=[0, 2], groups=top)
    >>> nd.units
    ['mlp_neurons.L2[0]', 'mlp_neurons.L2[2]', 'mlp_neurons.L2[top2]']
    >>> nd.mediator("mlp_neurons.L2[top2]")[0].tolist(), patch_units(nd)["mlp_neurons.L2[top2]"]
    ([2.0, 1.0], 'mlp_neurons.L2[2,1]')
    """
    sites = [sites] if isinstance(sites, str) else list(sites)
    if not sites:
        raise DataError("sites: expected at least one site unit, got none")
    groups = dict(groups or {})
    for name, spec in groups.items():
        if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and spec[0] in sites):
            raise DataError(f"group {name!r}: expected (site, coords) with site in {sites}, got {spec!r}")
    blocks, record, widths = {}, {}, {}
    for site in sites:
        block = data.mediator(site)  # DataError naming an unknown site; one site's block in memory at a time
        widths[site] = int(block.shape[1])
        for j in _coords_for(site, coords, block.shape[1]):
            name = neuron_name(site, j)
            blocks[name] = block[:, j:j + 1].copy()
            record[name] = {"site": site, "coords": [int(j)]}
        for name, (gsite, gcoords) in groups.items():
            if gsite != site:
                continue
            c = _coords_for(site, list(gcoords), block.shape[1])
            if not c.size:
                raise DataError(f"group {name!r}: expected at least one coordinate, got none")
            if name in blocks:
                raise DataError(f"group {name!r}: expected a name distinct from the single-coordinate units, got a "
                                "duplicate")
            blocks[name] = np.ascontiguousarray(block[:, c])
            record[name] = {"site": site, "coords": c.tolist()}
        del block
    if not blocks:
        raise DataError("neuron_units: expected at least one coordinate or group, got none")
    meta = {**data.meta, NEURON_META: record, "neuron_sites": widths}
    return data.replace(mediators=blocks, meta=meta, mediator_columns={})


def patch_units(data: MediationData, units=None) -> dict[str, str]:
    """``{data unit: patch unit}`` for the patching estimator: ``"mlp_neurons.L12[top16]"`` ->
    ``"mlp_neurons.L12[3,41,...]"``. Units without a record in ``meta["neuron_units"]`` map to themselves."""
    record = data.meta.get(NEURON_META, {})
    out = {}
    for u in (data.units if units is None else ([units] if isinstance(units, str) else list(units))):
        if u not in data.mediators:
            raise DataError(f"units: expected names from {data.units[:10]}, got {u!r}")
        rec = record.get(u)
        out[u] = u if rec is None else f"{rec['site']}[{','.join(str(int(c)) for c in rec['coords'])}]"
    return out
