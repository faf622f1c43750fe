"""MediationData.load(path, mmap=True): mediators read from the memory-mapped safetensors file one unit at a time.

Oracle: the eager load of the same folder (every block, every derived view and every estimate must be equal),
and, for memory, the peak resident size of a subprocess measured around a per-unit estimator loop.
"""
import json
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from deconfound.data import LazyMediators, MediationData
from deconfound.errors import DataError


def _data(n=60, units=4, d=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.tile([0, 1], n // 2)
    topic = np.array(["a", "b", "c"])[np.arange(n) % 3]
    meds = {f"mlp_out.L{k}": rng.normal(size=(n, d + k)).astype(np.float32) + t[:, None] for k in range(units)}
    y = rng.normal(size=n) + t
    x = pd.DataFrame({"topic": topic, "len": rng.normal(size=n)})
    return MediationData.from_arrays(t=t, y=y, mediators=meds, x=x, meta={"source": "test"},
                                     ids=[f"p{i}" for i in range(n)], dtype="float32")


@pytest.fixture
def saved(tmp_path):
    data = _data()
    data.save(tmp_path / "d")
    return data, tmp_path / "d"


def _same(a: MediationData, b: MediationData):
    assert a.units == b.units and a.n == b.n
    np.testing.assert_array_equal(a.t, b.t)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.ids.astype(str), b.ids.astype(str))
    assert a.x.equals(b.x)
    for u in a.units:
        np.testing.assert_array_equal(a.mediator(u), b.mediator(u))
        assert a.mediator(u).dtype == b.mediator(u).dtype == np.dtype(a.dtype)


def test_lazy_load_equals_eager(saved):
    data, path = saved
    eager, lazy = MediationData.load(path), MediationData.load(path, mmap=True)
    assert isinstance(lazy.mediators, LazyMediators) and lazy.lazy and not eager.lazy
    _same(lazy, eager)
    _same(lazy, data)
    assert repr(lazy) == repr(eager)
    assert lazy.meta == eager.meta and lazy.confounder_names == eager.confounder_names
    assert [lazy.width(u) for u in lazy.units] == [3, 4, 5, 6]
    assert lazy.columns_of("mlp_out.L1") == eager.columns_of("mlp_out.L1")
    assert lazy.to_frame("mlp_out.L2").equals(eager.to_frame("mlp_out.L2"))
    assert lazy.mediators.nbytes() == sum(m.nbytes for m in eager.mediators.values())
    # each access reads anew: the returned arrays are fresh, not shared
    a, b = lazy.mediator("mlp_out.L0"), lazy.mediator("mlp_out.L0")
    assert a is not b and not np.shares_memory(a, b)


def test_views_subset_select_replace_and_save(saved, tmp_path):
    _, path = saved
    eager, lazy = MediationData.load(path), MediationData.load(path, mmap=True)
    rows = np.array([5, 1, 2, 40, 33, 8, 9, 10])
    _same(lazy.subset(rows), eager.subset(rows))
    mask = np.arange(eager.n) % 4 != 0
    sub_l, sub_e = lazy.subset(mask), eager.subset(mask)
    _same(sub_l, sub_e)
    _same(sub_l.subset([0, 3, 4, 7]), sub_e.subset([0, 3, 4, 7]))  # rows compose
    assert sub_l.lazy and lazy.select_units(["mlp_out.L2", "mlp_out.L0"]).lazy
    _same(lazy.select_units(["mlp_out.L2", "mlp_out.L0"]), eager.select_units(["mlp_out.L2", "mlp_out.L0"]))
    _same(lazy.replace(y=lazy.y + 1), eager.replace(y=eager.y + 1))
    with pytest.raises(DataError, match="mlp_out.L9"):
        lazy.select_units(["mlp_out.L9"])
    with pytest.raises(DataError, match="mlp_out.L9"):
        lazy.mediator("mlp_out.L9")
    # saving a lazy view streams it unit by unit; the file reads back with safetensors and eagerly
    sub_l.select_units(["mlp_out.L3", "mlp_out.L1"]).save(tmp_path / "streamed")
    back = MediationData.load(tmp_path / "streamed")
    _same(back, sub_e.select_units(["mlp_out.L3", "mlp_out.L1"]))
    from safetensors.numpy import load_file

    raw = load_file(str(tmp_path / "streamed" / "mediators.safetensors"))
    np.testing.assert_array_equal(raw["mlp_out.L3"], sub_e.mediator("mlp_out.L3"))


def test_pickles_without_an_open_handle(saved):
    _, path = saved
    lazy = MediationData.load(path, mmap=True, max_mapped_bytes=1)
    for u in lazy.units:  # reopens the map after every read (budget 1 byte)
        lazy.mediator(u)
    assert lazy.mediators._source._handle is not None
    back = pickle.loads(pickle.dumps(lazy.subset(np.arange(10))))
    assert back.mediators._source._handle is None
    _same(back, MediationData.load(path).subset(np.arange(10)))


def _overwrite_tensors(path, tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(path / "mediators.safetensors"))


def test_nan_is_caught_on_access_and_names_the_unit(saved):
    data, path = saved
    bad = {u: data.mediator(u).copy() for u in data.units}
    bad["mlp_out.L2"][7, 1] = np.nan
    _overwrite_tensors(path, bad)
    with pytest.raises(DataError, match="mlp_out.L2"):
        MediationData.load(path)  # the eager load checks every block now
    lazy = MediationData.load(path, mmap=True)  # the lazy load checks shapes only
    np.testing.assert_array_equal(lazy.mediator("mlp_out.L1"), data.mediator("mlp_out.L1"))
    with pytest.raises(DataError, match=r"mediator unit 'mlp_out.L2'.*finite"):
        lazy.mediator("mlp_out.L2")
    bad["mlp_out.L2"][7, 1] = np.inf
    _overwrite_tensors(path, bad)
    with pytest.raises(DataError, match="mlp_out.L2"):
        MediationData.load(path, mmap=True).mediator("mlp_out.L2")


def test_shape_and_missing_tensor_errors_name_the_unit(saved):
    data, path = saved
    blocks = {u: data.mediator(u) for u in data.units}
    blocks["mlp_out.L1"] = blocks["mlp_out.L1"][:-1]
    _overwrite_tensors(path, blocks)
    with pytest.raises(DataError, match=r"mediator unit 'mlp_out.L1': expected an \(n, d\) array with n=60"):
        MediationData.load(path, mmap=True)
    blocks["mlp_out.L1"] = np.zeros((60, 2, 2), np.float32)
    _overwrite_tensors(path, blocks)
    with pytest.raises(DataError, match="mlp_out.L1"):
        MediationData.load(path, mmap=True)
    del blocks["mlp_out.L1"]
    _overwrite_tensors(path, blocks)
    with pytest.raises(DataError, match="expected a tensor for mediator unit 'mlp_out.L1'"):
        MediationData.load(path, mmap=True)


@pytest.mark.filterwarnings("ignore:unit .* trimmed:RuntimeWarning")
def test_estimators_give_identical_numbers_lazy_and_eager(tmp_path):
    from deconfound.simulate import topic_mediation
    from deconfound.estimators.dml import DMLMediation
    from deconfound.estimators.weighting import WeightingMediation
    from sklearn.linear_model import LogisticRegression, Ridge

    data, _ = topic_mediation(400, n_units=3, dim=2, seed=1)
    data.save(tmp_path / "sim")
    eager, lazy = MediationData.load(tmp_path / "sim"), MediationData.load(tmp_path / "sim", mmap=True)
    for est in (WeightingMediation(mediator_learner=LogisticRegression(C=1.0, max_iter=500)),
                DMLMediation(n_folds=2, outcome_learner=Ridge(alpha=1.0),
                             propensity_learner=LogisticRegression(C=1.0, max_iter=500))):
        a, b = est.fit(eager).to_frame(), est.fit(lazy).to_frame()
        np.testing.assert_array_equal(a.estimate.to_numpy(), b.estimate.to_numpy())
        np.testing.assert_array_equal(a.se.to_numpy(), b.se.to_numpy())


# ---- memory: activations larger than the budget --------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from deconfound.data import MediationData
    from deconfound.estimators.weighting import WeightingMediation

    path, mmap = sys.argv[1], sys.argv[2] == "1"
    est = WeightingMediation(pca=2, mediator_learner=LogisticRegression(C=1.0, max_iter=200))
    small = MediationData.load(path, mmap=True)
    est.fit(small.subset(np.arange(400)), units=small.units[:1])  # warm-up: imports and first allocations
    del small
    def status(key):  # bytes, from /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    try:  # reset the peak (VmHWM) to the current resident size, so the warm-up's peak does not count
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        peak = lambda: status("VmHWM")
    except OSError:  # conservative: the peak since start, which includes the warm-up
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = status("VmRSS")
    data = MediationData.load(path, mmap=mmap, max_mapped_bytes=16 << 20)
    res = est.fit(data)
    nie = [res.effect(u, "nie", "treated").estimate for u in data.units]
    print(json.dumps({"peak_delta": peak() - before, "nie": nie}))
""")


def _child(path, mmap: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), "1" if mmap else "0"], capture_output=True,
                         text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                                      "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_per_unit_estimation_stays_under_a_memory_budget(tmp_path):
    """56 units of 2500 x 512 float32 (287 MB) on disk; budget 96 MB above the warmed-up process.

    The budget covers the map (16 MB before it is reopened), one block (5 MB) and the estimator's work on it
    (float64 copies, the PCA's SVD: about 45 MB); an eager load holds all 287 MB.
    """
    n, d, units = 2500, 512, 56
    rng = np.random.default_rng(0)
    t = np.tile([0, 1], n // 2)
    blocks = {}
    for k in range(units):
        m = rng.standard_normal((n, d), dtype=np.float32)
        m[:, 0] += 0.5 * t
        blocks[f"mlp_neurons.L{k}"] = m
    total = sum(b.nbytes for b in blocks.values())
    folder = tmp_path / "big"
    try:
        MediationData.from_arrays(t=t, y=rng.normal(size=n) + 0.3 * t, mediators=blocks,
                                  x=np.array(["a", "b"])[rng.integers(0, 2, n)].astype(object),
                                  dtype="float32").save(folder)
        del blocks
        budget = 96 << 20
        lazy = _child(folder, True)
        eager = _child(folder, False)
        assert total > 2.8 * budget
        assert lazy["peak_delta"] < budget, (lazy["peak_delta"] / 2**20, total / 2**20)
        assert eager["peak_delta"] > 0.9 * total  # the measurement sees an eager load: this test can fail
        assert lazy["nie"] == eager["nie"]  # same numbers, bit for bit
    finally:
        shutil.rmtree(folder, ignore_errors=True)
