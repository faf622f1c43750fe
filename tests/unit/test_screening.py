"""screen_and_confirm on a toy with many units: the screen misses some effects on purpose (as first-order
patching misses neurons with rare large activations), and the audit must find them."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from deconfound import DataError, MediationData
from deconfound.screening import PromptSubset, screen_and_confirm

N_UNITS, MISSED = 40, list(range(3, 9))


class LinearToy:
    """Unit u_j (1-dim): patching it to v moves the score by beta_j (v - m_ij)."""

    def __init__(self, m, base, beta):
        self.m, self.base, self.beta = m, base, beta
        self.outcome = SimpleNamespace(name="toy")

    @property
    def n_prompts(self):
        return len(self.base)

    def unit(self, spec):
        return spec

    def dim(self, unit):
        return 1

    def base_scores(self):
        return self.base

    def evaluate(self, requests, grad=False):
        out = []
        for unit, prompts, values in requests:
            j = int(unit[1:])
            prompts = np.asarray(prompts)
            v = np.broadcast_to(np.asarray(values, float).reshape(-1, 1), (len(prompts), 1))[:, 0]
            out.append(SimpleNamespace(unit=unit, scores=self.base[prompts] + self.beta[j] * (v - self.m[prompts, j]),
                                       extras={}, grad=None))
        return out

    def describe(self):
        return {"outcome": "toy"}


def _setup(n=600, seed=0):
    rng = np.random.default_rng(seed)
    topic = rng.integers(3, size=n)
    t = (rng.random(n) < np.array([0.3, 0.5, 0.7])[topic]).astype(int)
    m = topic[:, None] * 0.5 + 1.0 * t[:, None] + rng.normal(size=(n, N_UNITS))
    beta = np.zeros(N_UNITS)
    beta[:3] = 1.0
    beta[MISSED] = 0.6
    base = topic * 0.3 + m @ beta + rng.normal(size=n)
    data = MediationData.from_arrays(t=t, y=base, mediators={f"u{j}": m[:, [j]] for j in range(N_UNITS)},
                                     x=pd.DataFrame({"topic": [f"t{k}" for k in topic]}))
    stored = np.column_stack([data.mediator(f"u{j}")[:, 0] for j in range(N_UNITS)]).astype(float)
    exact = LinearToy(stored, base, beta)  # the activations the estimator sees
    screen_beta = beta.copy()
    screen_beta[MISSED] = 0.0  # the cheap screen is blind to these units
    return data, exact, LinearToy(exact.m, base, screen_beta)


def test_selection_confirmation_and_audit():
    data, exact, screen = _setup()
    res = screen_and_confirm(data, patcher=exact, screen_patcher=screen, select=3, n_audit=100, random_state=0)
    first, second = res.halves
    assert len(np.intersect1d(first, second)) == 0 and len(first) + len(second) == data.n
    assert sorted(res.selected) == ["u0", "u1", "u2"]
    tab = res.table.set_index("unit")
    assert tab.loc[["u0", "u1", "u2"], "significant"].all()
    # the confirmation half's exact estimates: beta * (mean treated activation shift) = 1.0 * 1.0, within 4 SE
    for u in ("u0", "u1", "u2"):
        assert abs(tab.loc[u, "exact_estimate"] - 1.0) <= 4 * tab.loc[u, "exact_se"]
    assert len(res.audited) == N_UNITS - 3  # n_audit exceeds the rest: all audited
    found = set(tab.index[tab.audited & (tab.exact_p_value < 0.05)])
    assert {f"u{j}" for j in MISSED} <= found
    m = res.missed
    assert m["audit_significant"] >= len(MISSED) and m["missed_ci"][0] <= len(MISSED) <= m["missed_ci"][1] + 1e-9
    assert m["missed_estimate"] > 0
    assert "estimated missed effects" in res.summary()


def test_same_seed_same_split_and_q_selection():
    data, exact, screen = _setup(n=300, seed=1)
    a = screen_and_confirm(data, patcher=exact, select=0.05, n_audit=5, random_state=4)
    b = screen_and_confirm(data, patcher=exact, select=0.05, n_audit=5, random_state=4)
    np.testing.assert_array_equal(a.halves[0], b.halves[0])
    pd.testing.assert_frame_equal(a.table, b.table)
    assert set(a.selected) >= {"u0", "u1", "u2"} and (a.table.screen_q[a.table.selected] <= 0.05).all()


def test_prompt_subset_maps_rows_and_bad_input():
    data, exact, _ = _setup(n=100)
    rows = np.array([5, 9, 42])
    sub = PromptSubset(exact, rows)
    assert sub.n_prompts == 3
    np.testing.assert_array_equal(sub.base_scores(), exact.base[rows])
    got = sub.evaluate([("u0", [0, 2], np.array([[1.0], [2.0]]))])[0].scores
    want = exact.evaluate([("u0", rows[[0, 2]], np.array([[1.0], [2.0]]))])[0].scores
    np.testing.assert_array_equal(got, want)
    with pytest.raises(DataError, match="expected prompt indices"):
        PromptSubset(exact, [0, 100])
    with pytest.raises(ValueError, match="select: expected"):
        screen_and_confirm(data, patcher=exact, select=0)


def test_prompt_subset_random_copy_keeps_the_subset():
    """The null model of a subset is the random copy of the whole patcher, restricted to the same prompts."""

    class Fake:
        def __init__(self, seed=None):
            self.seed, self.n_prompts = seed, 10

        def base_scores(self):
            return np.arange(10.0) + (0 if self.seed is None else 100 * (self.seed + 1))

        def random_copy(self, seed=0):
            return Fake(seed)

    sub = PromptSubset(Fake(), [1, 4, 7])
    null = sub.random_copy(3)
    assert isinstance(null, PromptSubset) and null.n_prompts == 3 and null.patcher.seed == 3
    assert np.array_equal(null.base_scores(), [401.0, 404.0, 407.0])
