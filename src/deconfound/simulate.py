"""Topic-confounded mediation simulators whose true effects are known exactly.

The structural model, per prompt (topic k, K topics, units u = 0..U-1, each a d-vector):

    k ~ Categorical(pi)                          topic
    T ~ Bernoulli(sigmoid(s * a_k))              toxic prompt, more likely on some topics
    M_u = s * g_{u,k} + T * r * beta_u + e_u     e_u ~ N(0, I_d); r = mediator_strength
    idx = c + theta*T + (1 + kappa*T) * sum_u b_u . M_u + s * delta_k
    Y = idx + N(0, 1)  (linear),  Y = Phi(idx) + N(0, 0.1^2)  (probit),  Y ~ Bernoulli(Phi(idx))  (binary)

Spurious units have beta_u = 0 and b_u = 0 but load on the topic like T and Y do: no causal path to Y, yet
correlated with T and Y through the topic. Given the topic, idx is Gaussian, so every E[Y(t, M_u(t'))] is exact:
a topic-weighted sum of means (linear) or of Phi(mean / sqrt(1 + var)) (probit and binary: P(idx + N(0,1) > 0)
has the same mean as Phi(idx)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import norm

from .data import MediationData

PARAM_SEED = 20241203


@dataclass
class Truth:
    """True effects per unit, effect (nie/nde/te), arm (control/treated/average) and population (ate/att/atc)."""

    frame: pd.DataFrame
    spurious: list[str]
    causal: list[str]
    topic: np.ndarray
    params: dict

    def value(self, unit: str, effect: str = "nie", arm: str = "average", population: str = "ate") -> float:
        f = self.frame
        row = f[(f.unit == unit) & (f.effect == effect) & (f.arm == arm) & (f.population == population)]
        if len(row) != 1:
            raise KeyError(f"truth: expected one row for {(unit, effect, arm, population)}, got {len(row)}")
        return float(row.value.iloc[0])


OUTCOMES = ("linear", "probit", "binary")


def _params(n_topics, n_units, dim, n_spurious, topic_strength, interaction, param_seed, mediator_strength=1.0):
    rng = np.random.default_rng(param_seed)
    k = n_topics
    a = np.linspace(-1.2, 1.2, k)[rng.permutation(k)]
    pi = (1.0 + 0.5 * rng.random(k))
    pi /= pi.sum()
    delta = 0.8 * a / a.std() + 0.2 * rng.normal(size=k)
    n_sp = n_units // 2 if n_spurious is None else n_spurious
    spurious = list(range(n_units - n_sp, n_units))
    gamma = np.zeros((n_units, k, dim))
    beta = np.zeros((n_units, dim))
    b = np.zeros((n_units, dim))
    for u in range(n_units):
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        if u in spurious:  # pure topic tracker, aligned with the topic's pull on T and Y
            gamma[u] = (1.0 * a[:, None] + 0.3 * rng.normal(size=(k, 1))) * direction
        else:
            gamma[u] = 0.5 * rng.normal(size=(k, dim)) / np.sqrt(dim) + 0.5 * a[:, None] * direction
            beta[u] = mediator_strength * (0.6 + 0.2 * (u % 3)) * direction
            b[u] = 0.5 * rng.normal(size=dim) / np.sqrt(dim) + 0.4 * direction
    return dict(pi=pi, a=a * topic_strength, delta=delta * topic_strength, gamma=gamma * topic_strength,
                beta=beta, b=b, c=-0.3, theta=0.5, kappa=float(interaction), spurious=spurious)


def _truth_frame(p, nonlinear, names) -> pd.DataFrame:
    pi, a, delta, gamma, beta, b = p["pi"], p["a"], p["delta"], p["gamma"], p["beta"], p["b"]
    ps = expit(a)
    pops = {"ate": pi, "att": pi * ps / (pi * ps).sum(), "atc": pi * (1 - ps) / (pi * (1 - ps)).sum()}
    mean_bm = np.einsum("ukd,ud->uk", gamma, b)  # b_u . g_{u,k}
    slope = np.einsum("ud,ud->u", beta, b)  # b_u . beta_u
    total_var = float((b**2).sum())
    rows = []
    for u, name in enumerate(names):
        def q(t, tu, w):
            others = mean_bm.sum(0) - mean_bm[u] + t * (slope.sum() - slope[u])
            mine = mean_bm[u] + tu * slope[u]
            lin = 1.0 + p["kappa"] * t
            mean = p["c"] + p["theta"] * t + delta + lin * (others + mine)
            if nonlinear:
                return float(w @ norm.cdf(mean / np.sqrt(1.0 + lin**2 * total_var)))
            return float(w @ mean)
        for pop, w in pops.items():
            vals = {("nie", "control"): q(0, 1, w) - q(0, 0, w), ("nie", "treated"): q(1, 1, w) - q(1, 0, w),
                    ("nde", "control"): q(1, 0, w) - q(0, 0, w), ("nde", "treated"): q(1, 1, w) - q(0, 1, w)}
            te = q(1, 1, w) - q(0, 0, w)
            vals[("nie", "average")] = (vals[("nie", "control")] + vals[("nie", "treated")]) / 2
            vals[("nde", "average")] = (vals[("nde", "control")] + vals[("nde", "treated")]) / 2
            for arm in ("control", "treated", "average"):
                vals[("te", arm)] = te
            rows += [dict(unit=name, effect=e, arm=arm, population=pop, value=v) for (e, arm), v in vals.items()]
    return pd.DataFrame(rows)


def topic_mediation(n: int, *, n_topics: int = 8, n_units: int = 1, dim: int = 1, interaction: float = 0.0,
                    nonlinear: bool = False, topic_strength: float = 1.0, n_spurious: int | None = None,
                    coarsen: int | None = None, seed: int = 0, param_seed: int = PARAM_SEED,
                    mediator_strength: float = 1.0, outcome: str | None = None):
    """Simulate topic-confounded mediation with exact true effects.

    Parameters
    ----------
    n : rows (prompts).
    n_topics : K topic levels ``t0..t{K-1}`` in the confounder column ``topic``.
    n_units, dim : mediator units ``u0..`` of ``dim`` columns each; the last ``n_spurious`` (default
        ``n_units // 2``) are pure topic trackers with zero true NIE.
    interaction : kappa, the T x M interaction in the outcome.
    nonlinear : outcome mean Phi(idx) instead of idx (the same as ``outcome="probit"``).
    outcome : ``"linear"``, ``"probit"`` (Phi(idx) plus small noise) or ``"binary"`` (0/1 draws with
        P(Y=1) = Phi(idx)); the default follows ``nonlinear``.
    mediator_strength : scales the T -> M path (r above); 3 gives the strong T -> M case in which P(T=1 | M, X)
        is often outside [0.05, 0.95].
    topic_strength : scales how strongly the topic drives T, M and Y (0 = no confounding).
    coarsen : if set, only ``topic mod coarsen`` is observed (the topic is partly hidden).
    seed : the data draw; ``param_seed`` fixes the structural parameters (the truth), so replications with
        different ``seed`` share one truth.

    Returns
    -------
    (MediationData, Truth)

    Examples
    --------
    >>> data, truth = topic_mediation(500, n_units=2, seed=1)
    >>> data.units, truth.spurious
    (['u0', 'u1'], ['u1'])
    >>> truth.value("u1", "nie", "average")
    0.0
    """
    outcome = outcome or ("probit" if nonlinear else "linear")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: expected one of {OUTCOMES}, got {outcome!r}")
    if nonlinear and outcome == "linear":
        raise ValueError("outcome: expected 'probit' or 'binary' with nonlinear=True, got 'linear'")
    nonlinear = outcome != "linear"
    if n_units < 1 or dim < 1 or n_topics < 1:
        raise ValueError(f"n_units, dim, n_topics: expected >= 1, got {n_units}, {dim}, {n_topics}")
    if n_spurious is not None and not 0 <= n_spurious <= n_units:
        raise ValueError(f"n_spurious: expected a number in [0, n_units={n_units}], got {n_spurious}")
    if coarsen is not None and not 1 <= coarsen <= n_topics:
        raise ValueError(f"coarsen: expected None or a number in [1, n_topics={n_topics}], got {coarsen}")
    p = _params(n_topics, n_units, dim, n_spurious, topic_strength, interaction, param_seed, mediator_strength)
    names = [f"u{u}" for u in range(n_units)]
    rng = np.random.default_rng(seed)
    topic = rng.choice(n_topics, size=n, p=p["pi"])
    t = (rng.random(n) < expit(p["a"][topic])).astype(np.int8)
    mediators, idx = {}, p["c"] + p["theta"] * t + p["delta"][topic]
    for u, name in enumerate(names):
        m = p["gamma"][u][topic] + t[:, None] * p["beta"][u] + rng.normal(size=(n, dim))
        mediators[name] = m.astype(np.float32)
        idx = idx + (1.0 + p["kappa"] * t) * (m.astype(np.float32).astype(float) @ p["b"][u])
    if outcome == "binary":
        y = (rng.random(n) < norm.cdf(idx)).astype(float)
    else:
        y = norm.cdf(idx) + 0.1 * rng.normal(size=n) if nonlinear else idx + rng.normal(size=n)
    observed = topic % coarsen if coarsen else topic
    x = pd.DataFrame({"topic": pd.Categorical([f"t{k}" for k in observed],
                                              categories=[f"t{k}" for k in range(coarsen or n_topics)])})
    meta = {"simulator": "topic_mediation", "seed": seed, "param_seed": param_seed, "n_topics": n_topics,
            "interaction": interaction, "nonlinear": nonlinear, "outcome": outcome,
            "topic_strength": topic_strength, "mediator_strength": mediator_strength, "coarsen": coarsen}
    data = MediationData.from_arrays(t=t, y=y, mediators=mediators, x=x, meta=meta, dtype="float32")
    truth = Truth(_truth_frame(p, nonlinear, names), spurious=[names[u] for u in p["spurious"]],
                  causal=[nm for i, nm in enumerate(names) if i not in p["spurious"]], topic=topic, params=p)
    return data, truth


class ToyPatcher:
    """A stand-in for the language-model ``Patcher`` with a known outcome: g_i(m) = a_i + b.m + c |m|^2.

    It answers what :class:`~deconfound.estimators.patching.PatchingMediation` asks of a patcher (base scores,
    batched patched scores, gradients for first-order patching), so patching inference can be checked against
    exact truths without a model. Every unit shares the same g.
    """

    def __init__(self, m, a, b, c=0.0):
        self.m, self.a, self.b, self.c = (np.asarray(m, float), np.asarray(a, float), np.asarray(b, float),
                                          float(c))
        self.outcome = type("ToyOutcome", (), {"name": "toy"})()

    @property
    def n_prompts(self) -> int:
        return len(self.a)

    def unit(self, spec):
        return spec

    def dim(self, unit) -> int:
        return self.m.shape[1]

    def g(self, prompts, values) -> np.ndarray:
        values = np.asarray(values, float)
        return self.a[prompts] + values @ self.b + self.c * (values**2).sum(axis=1)

    def base_scores(self) -> np.ndarray:
        return self.g(np.arange(self.n_prompts), self.m)

    def evaluate(self, requests, grad: bool = False) -> list:
        from types import SimpleNamespace

        out = []
        for unit, prompts, values in requests:
            prompts = np.asarray(prompts)
            values = np.broadcast_to(np.asarray(values, float), (len(prompts), self.m.shape[1]))
            gr = self.b[None, :] + 2 * self.c * values if grad else None
            out.append(SimpleNamespace(unit=unit, scores=self.g(prompts, values), extras={}, grad=gr))
        return out

    def describe(self) -> dict:
        return {"outcome": "toy", "g": "a_i + b.m + c |m|^2", "c": self.c}


def toy_patching(n: int, *, n_topics: int = 6, dim: int = 3, c: float = 0.25, shift: float = 0.8,
                 seed: int = 0, param_seed: int = PARAM_SEED):
    """Topic-confounded data for patching, with a :class:`ToyPatcher` whose patched outcomes are exact.

    Topic k drives T (P(T=1) = sigmoid(a_k)), the unit's activation M = loc_k + shift * T * 1 + N(0, I_d) and
    the outcome's intercept a_i = alpha_k + N(0, 0.5^2). With g quadratic (c != 0) the mean patch differs from
    the exact natural indirect effect; ``truth`` holds both, on the treated (ATT):

    - ``nie_exact``: E[g(M(1)) - g(M(0)) | T=1] = b.s + c (|s|^2 + 2 s.L1), s = shift * 1, L1 = E[loc | T=1];
    - ``mean_patch``: E[g(M) | T=1] - g(E[M(0) | T=1]) = nie_exact + c (E[|loc|^2 | T=1] - |L1|^2 + d);
    - ``te``: E[Y(1) - Y(0) | T=1] = nie_exact (there is no direct path), ``nde`` = 0.

    Returns ``(MediationData, ToyPatcher, truth)``; the unit is ``"u"``.
    """
    p_rng = np.random.default_rng(param_seed)
    a_t = np.linspace(-1.2, 1.2, n_topics)[p_rng.permutation(n_topics)]
    loc = 1.0 * a_t[:, None] + 0.5 * p_rng.normal(size=(n_topics, dim))
    alpha = 1.5 * a_t
    b = p_rng.normal(size=dim) / np.sqrt(dim)
    pi = np.full(n_topics, 1.0 / n_topics)
    w1 = pi * expit(a_t) / (pi * expit(a_t)).sum()  # topic mix of the treated
    s = np.full(dim, shift)
    l1 = w1 @ loc
    nie = float(b @ s + c * (s @ s + 2 * s @ l1))
    gap = float(c * (w1 @ (loc**2).sum(1) - l1 @ l1 + dim))
    rng = np.random.default_rng(seed)
    topic = rng.choice(n_topics, size=n, p=pi)
    t = (rng.random(n) < expit(a_t[topic])).astype(np.int8)
    m = loc[topic] + t[:, None] * s + rng.normal(size=(n, dim))
    a = alpha[topic] + 0.5 * rng.normal(size=n)
    patcher = ToyPatcher(m, a, b, c)
    x = pd.DataFrame({"topic": pd.Categorical([f"t{k}" for k in topic], categories=[f"t{k}" for k in range(n_topics)])})
    data = MediationData.from_arrays(t=t, y=patcher.base_scores(), mediators={"u": m}, x=x,
                                     meta={"simulator": "toy_patching", "seed": seed, "c": c})
    patcher.m = data.mediator("u").astype(float)  # the values the estimator sees (the data may store float32)
    truth = {"nie_exact": nie, "mean_patch": nie + gap, "te": nie, "nde": 0.0, "population": "att"}
    return data, patcher, truth


def intermediate_confounding(n: int, *, n_topics: int = 3, zm: float = 0.5, seed: int = 0):
    """Two units in the order of a model's layers: ``z`` (an earlier unit, binary) is affected by T and affects
    both ``m`` and Y, a treatment-induced mediator-outcome confounder. With topic k:

        T ~ Bernoulli(sigmoid(a_k));  Z ~ Bernoulli(sigmoid(-0.5 + 1.2 T + c_k))
        M = 0.2 + 0.8 T + 1.0 Z + d_k + N(0, 1);  Y = 0.1 + 0.5 T + 0.7 Z + 0.6 M + zm Z M + f_k + N(0, 1)

    theta(a, a') is the mean outcome under A = a with the mediator drawn from its distribution under a' (given
    the topic, marginal over Z). ``truth`` holds, on the treated (and with suffix ``_ate`` on everyone):
    ``nie_treated`` = E[Y(1)] - theta(1, 0) (the patching analogue), ``nie_control`` = theta(0, 1) - E[Y(0)],
    ``nde_control`` = theta(1, 0) - E[Y(0)], ``te`` = E[Y(1)] - E[Y(0)]. With ``zm`` != 0 the natural and the
    interventional effects differ.
    """
    rng = np.random.default_rng(seed)
    a_k = np.linspace(-0.8, 0.8, n_topics)
    c_k = np.linspace(0.6, -0.6, n_topics)
    d_k = np.linspace(-0.5, 0.5, n_topics)
    f_k = np.linspace(0.4, -0.4, n_topics)
    pz = {t: expit(-0.5 + 1.2 * t + c_k) for t in (0, 1)}  # P(Z=1 | T=t, k)
    em = {t: 0.2 + 0.8 * t + pz[t] + d_k for t in (0, 1)}  # E[M | T=t, k]

    def theta(a, ap):  # Z from its law under a, M from its law under ap, independently
        return 0.1 + 0.5 * a + 0.7 * pz[a] + 0.6 * em[ap] + zm * pz[a] * em[ap] + f_k

    def natural(a):  # E[Z M | a, k] = P(Z=1 | a, k) E[M | Z=1, a, k]
        return 0.1 + 0.5 * a + 0.7 * pz[a] + 0.6 * em[a] + zm * pz[a] * (1.2 + 0.8 * a + d_k) + f_k

    w_ate = np.full(n_topics, 1.0 / n_topics)
    w_att = w_ate * expit(a_k) / (w_ate * expit(a_k)).sum()
    truth = {}
    for pop, wk in (("", w_att), ("_ate", w_ate)):
        truth["nie_treated" + pop] = float(wk @ (natural(1) - theta(1, 0)))
        truth["nie_control" + pop] = float(wk @ (theta(0, 1) - natural(0)))
        truth["nde_control" + pop] = float(wk @ (theta(1, 0) - natural(0)))
        truth["te" + pop] = float(wk @ (natural(1) - natural(0)))
    k = rng.integers(n_topics, size=n)
    t = (rng.random(n) < expit(a_k[k])).astype(np.int8)
    z = (rng.random(n) < expit(-0.5 + 1.2 * t + c_k[k])).astype(float)
    m = 0.2 + 0.8 * t + z + d_k[k] + rng.normal(size=n)
    y = 0.1 + 0.5 * t + 0.7 * z + 0.6 * m + zm * z * m + f_k[k] + rng.normal(size=n)
    x = pd.DataFrame({"topic": pd.Categorical([f"t{j}" for j in k], categories=[f"t{j}" for j in range(n_topics)])})
    data = MediationData.from_arrays(t=t, y=y, mediators={"z": z[:, None], "m": m[:, None]}, x=x,
                                     meta={"simulator": "intermediate_confounding", "seed": seed, "zm": zm})
    return data, truth


LOCALIZATION_CURVE = (1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05, 0.0)


def localization_curves(se: float, *, adjusted: str = "same", ratio: float = 1.5, rho: float = 0.9,
                        n_draws: int = 200, seed: int = 0) -> dict:
    """A pair of estimated per-unit effect curves (adjusted, unadjusted) with joint draws, for localization tests.

    The unadjusted truth is :data:`LOCALIZATION_CURVE` (10 units, one peak); the adjusted truth is the same curve
    (``adjusted="same"``: the null of equal localization) or flat with the same total ``sum |alpha|``
    (``"flat"``: less localized). Estimates are ``truth + noise`` with SE ``se`` (unadjusted) and ``ratio * se``
    (adjusted), the two curves' noise correlated ``rho`` per unit, as two fits on the same rows are; the
    ``n_draws`` joint draws (bootstrap-like: estimate plus an independent copy of the noise, shared across units
    and between the curves) give each curve's SEs and the paired differences.

    Returns a dict with ``"adjusted"`` and ``"unadjusted"``, each ``{"estimate": (units,), "draws": (n_draws,
    units), "truth": (units,), "concentration": sum alpha^4 / (sum alpha^2)^2 of the truth}``.

    Examples
    --------
    >>> c = localization_curves(0.07, adjusted="flat", seed=1)
    >>> c["adjusted"]["draws"].shape, round(c["adjusted"]["concentration"], 3)
    ((200, 10), 0.1)
    """
    if adjusted not in ("same", "flat"):
        raise ValueError(f"adjusted: expected 'same' or 'flat', got {adjusted!r}")
    rng = np.random.default_rng(seed)
    truth = np.array(LOCALIZATION_CURVE)
    truth_adj = truth if adjusted == "same" else np.full(len(truth), truth.sum() / len(truth))

    def noise(shape):  # (unadjusted, adjusted) noise with per-unit correlation rho
        z1, z2 = rng.standard_normal(shape), rng.standard_normal(shape)
        return se * z1, ratio * se * (rho * z1 + np.sqrt(1 - rho**2) * z2)

    eu, ea = noise(truth.shape)
    du, da = noise((n_draws, len(truth)))
    out = {}
    for name, alpha, e, d in (("adjusted", truth_adj, ea, da), ("unadjusted", truth, eu, du)):
        out[name] = {"estimate": alpha + e, "draws": alpha + e + d, "truth": alpha,
                     "concentration": float((alpha**4).sum() / (alpha**2).sum() ** 2)}
    return out
