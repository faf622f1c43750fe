"""A damaged saved folder raises a DataError that names the file and what is wrong with it, eager and lazy."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from deconfound import DataError, MediationData


@pytest.fixture
def folder(tmp_path):
    r = np.random.default_rng(0)
    n = 40
    data = MediationData.from_arrays(t=np.tile([0, 1], n // 2), y=r.normal(size=n),
                                     mediators={"u0": r.normal(size=(n, 3)), "u1": r.normal(size=n)},
                                     x=pd.DataFrame({"topic": np.array(["a", "b"])[np.arange(n) % 2]}))
    return data.save(tmp_path / "d")


def _truncate(path, keep):
    raw = path.read_bytes()
    path.write_bytes(raw[:keep(len(raw))])


def _edit_meta(path, fn):
    info = json.loads(path.read_text())
    fn(info)
    path.write_text(json.dumps(info))


def _rewrite_table(path, fn):
    fn(pd.read_parquet(path)).to_parquet(path, index=False)


DAMAGE = [
    ("truncated safetensors", "mediators.safetensors", lambda p: _truncate(p, lambda n: n - 50),
     r"mediators.safetensors: expected a readable safetensors file, got SafetensorError"),
    ("safetensors header cut", "mediators.safetensors", lambda p: _truncate(p, lambda n: 20),
     r"mediators.safetensors: expected a readable safetensors file"),
    ("not safetensors", "mediators.safetensors", lambda p: p.write_bytes(b"hello world"),
     r"mediators.safetensors: expected a readable safetensors file"),
    ("invalid JSON", "meta.json", lambda p: p.write_text(p.read_text()[:-20]),
     r"meta.json: expected the JSON that MediationData.save writes, got invalid JSON"),
    ("JSON list", "meta.json", lambda p: p.write_text("[1, 2]"), r"meta.json: expected a JSON object, got a list"),
    ("missing key", "meta.json", lambda p: _edit_meta(p, lambda i: i.pop("units")),
     r"meta.json: expected the keys \['units'\], got none"),
    ("wrong type", "meta.json", lambda p: _edit_meta(p, lambda i: i.update(units="u0")),
     r"meta.json: expected 'units' to be a list, got str"),
    ("newer format", "meta.json", lambda p: _edit_meta(p, lambda i: i.update(format_version=99)),
     r"meta.json: expected format_version 1 to 2, got 99"),
    ("unknown unit", "meta.json", lambda p: _edit_meta(p, lambda i: i["units"].append("u9")),
     r"mediators.safetensors: expected a tensor for mediator unit 'u9', got none"),
    ("bad dtype", "meta.json", lambda p: _edit_meta(p, lambda i: i.update(dtype="int8")),
     r"meta.json: dtype: expected 'float64' or 'float32', got 'int8'"),
    ("missing category column", "meta.json", lambda p: _edit_meta(p, lambda i: i["categories"].update(lang=["x"])),
     r"table.parquet: expected the columns \['lang'\]"),
    ("missing table", "table.parquet", lambda p: p.unlink(), r"expected a MediationData folder with table.parquet"),
    ("corrupted parquet", "table.parquet", lambda p: _truncate(p, lambda n: n // 2),
     r"table.parquet: expected a readable parquet table, got Arrow"),
    ("not parquet", "table.parquet", lambda p: p.write_text("a,b\n1,2\n"),
     r"table.parquet: expected a readable parquet table"),
    ("missing treatment column", "table.parquet", lambda p: _rewrite_table(p, lambda t: t.drop(columns="__t")),
     r"table.parquet: expected the columns \['__t'\]"),
    ("edited treatment", "table.parquet", lambda p: _rewrite_table(p, lambda t: t.assign(__t=t["__t"] * 2)),
     r"d: treatment 'T': expected a binary 0/1 treatment, got values \['0', '2'\]"),
    ("short table", "table.parquet", lambda p: _rewrite_table(p, lambda t: t.iloc[:30]),
     r"mediator unit 'u0': expected (30 rows, got 40|an \(n, d\) array with n=30)"),
]


@pytest.mark.parametrize("mmap", [False, True], ids=["eager", "mmap"])
@pytest.mark.parametrize("what, name, damage, message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_folder_is_a_named_data_error(folder, mmap, what, name, damage, message):
    damage(folder / name)
    with pytest.raises(DataError, match=message):
        MediationData.load(folder, mmap=mmap)


def test_version_1_folders_load_as_float32(folder):
    """Folders written before format 2 have no dtype, cluster or weights in meta.json: float32 blocks."""
    meta = folder / "meta.json"
    _edit_meta(meta, lambda i: [i.update(format_version=1)] + [i.pop(k) for k in ("dtype", "cluster_name",
                                                                               "weights_name")])
    blocks = {"u0": np.ones((40, 3), np.float32), "u1": np.zeros(40, np.float32)}
    from safetensors.numpy import save_file

    save_file(blocks, str(folder / "mediators.safetensors"))
    for mmap in (False, True):
        back = MediationData.load(folder, mmap=mmap)
        assert back.dtype == "float32" and back.mediator("u0").dtype == np.float32
        assert back.cluster is None and back.weights is None
