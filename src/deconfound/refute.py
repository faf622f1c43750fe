"""Refuters that perturb the data and re-run the WHOLE mediation estimator.

DoWhy's refuters do not work on mediation estimands (they raise or return the estimate unchanged), so each
refuter here builds a modified :class:`~deconfound.data.MediationData` with ``MediationData.replace`` and calls
``estimator.fit`` again. Every refuter has the signature
``refuter(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05, ...)`` and
returns a :class:`RefutationResult` whose ``to_frame()`` has the columns
``refuter, unit, effect, arm, estimate, new_estimate, new_se, p_value, passed``.

Three rules decide ``passed`` (each result states its rule):

- expect zero (placebo treatment, dummy outcome): p_value is the new effect's own test of 0; passed when
  p_value >= alpha.
- stable (random common cause, data subset, topic granularity): p_value = 2 Phi(-|new - original| / s), with s
  the original SE (for B random subsets of a fraction f: s = SE sqrt((1/f - 1) / B), the spread of a subset
  mean around the full-sample estimate); passed when p_value >= alpha.
- conclusion unchanged (unobserved confounder): same sign, and significant at alpha in both fits or in neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._validation import check_probability, check_random_state
from .errors import DataError
from .results import MediationResult

COLUMNS = ["refuter", "unit", "effect", "arm", "estimate", "new_estimate", "new_se", "p_value", "passed"]
ROW_KEYS = (("te", "average"), ("nie", "control"), ("nie", "treated"), ("nie", "average"), ("nde", "control"),
            ("nde", "treated"), ("nde", "average"))
RULES = {
    "zero": "expect 0: passed when the new effect's p-value for 0 is >= alpha",
    "stable": "stable: passed when p = 2 Phi(-|new - original| / SE_original) >= alpha",
    "subset": "stable: passed when p = 2 Phi(-|mean(new) - original| / (SE_original sqrt((1/f - 1)/B))) >= alpha",
    "conclusion": "conclusion unchanged: same sign, and significant at alpha in both fits or in neither",
}


@dataclass(eq=False)
class RefutationResult:
    """Original and new estimates of one refuter, with a p-value and passed/failed per unit x effect x arm."""

    refuter: str
    rule: str
    frame: pd.DataFrame
    original: MediationResult = field(repr=False)
    new: list = field(default_factory=list, repr=False)
    options: dict = field(default_factory=dict)
    details: pd.DataFrame | None = field(default=None, repr=False)
    alpha: float = 0.05

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    @property
    def passed(self) -> bool:
        """True when every row passed. Rows are tested one by one at ``alpha``, so with the seven rows of a unit
        a sound pipeline fails some row more often than ``alpha``: judge the rows you report (TE, NIE)."""
        return bool(self.frame.passed.all())

    def summary(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        head = [f"Refuter: {self.refuter}" + (f" ({opts})" if opts else ""), f"Rule: {self.rule} (alpha={self.alpha})",
                f"Passed: {self.passed} ({int(self.frame.passed.sum())} of {len(self.frame)} rows)"]
        body = self.frame.drop(columns="refuter").to_string(index=False, float_format=lambda v: f"{v:.4f}")
        return "\n".join(head + [body])

    def __str__(self) -> str:
        return self.summary()


# ---- shared plumbing ------------------------------------------------------------------------------------
def _fit(estimator, data, graph, units) -> MediationResult:
    return estimator.fit(data, graph=graph, units=units)


def _original(estimator, data, graph, units, original):
    if original is None:
        return _fit(estimator, data, graph, units)
    if not isinstance(original, MediationResult):
        raise TypeError(f"original: expected a MediationResult or None, got {type(original).__name__}")
    return original


def _keys(original: MediationResult, unit: str, new_results) -> list:
    return [k for k in ROW_KEYS if k in original.effects[unit] and all(k in r.effects.get(unit, {}) for r in new_results)]


def _two_sided(z: float) -> float:
    return float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else float("nan")


def _build(name, rule_key, original, news, alpha, options, *, ref_scale=1.0, details=None) -> RefutationResult:
    """Rows for every unit x (effect, arm) shared by the original and all new results."""
    rows = []
    for unit in original.units:
        for key in _keys(original, unit, news):
            e0 = original.effects[unit][key]
            new_eff = [r.effects[unit][key] for r in news]
            est = float(np.mean([e.estimate for e in new_eff]))
            se = float(np.mean([e.se for e in new_eff]))
            if rule_key == "zero":
                p = float(new_eff[0].p_value) if len(new_eff) == 1 else _two_sided(est / (se / np.sqrt(len(new_eff))))
                ok = p >= alpha
            elif rule_key in ("stable", "subset"):
                ref = e0.se * ref_scale
                p = _two_sided((est - e0.estimate) / ref) if ref > 0 else float(est == e0.estimate)
                ok = p >= alpha
            else:  # conclusion
                p = float(new_eff[0].p_value)
                ok = (np.sign(est) == np.sign(e0.estimate)) and ((p < alpha) == (e0.p_value < alpha))
            rows.append(dict(refuter=name, unit=unit, effect=key[0], arm=key[1], estimate=float(e0.estimate),
                             new_estimate=est, new_se=se, p_value=p, passed=bool(ok)))
    if not rows:
        raise ValueError(f"{name}: expected the new fits to report the original's effects {list(ROW_KEYS)}, "
                         "got none in common")
    return RefutationResult(name, RULES[rule_key], pd.DataFrame(rows, columns=COLUMNS), original, list(news),
                            options, details, alpha)


def strata_labels(data, strata=None) -> np.ndarray:
    """Row labels for within-stratum permutation: every categorical confounder combined (default), the named
    columns, or a given length-n array. A single stratum when there is no categorical confounder."""
    if strata is None:
        strata = data.categorical_confounders()
    if isinstance(strata, str):
        strata = [strata]
    if isinstance(strata, (list, tuple)) and all(isinstance(s, str) for s in strata):
        for s in strata:
            if s not in data.confounder_names:
                raise DataError(f"strata: expected confounder columns from {data.confounder_names}, got {s!r}")
        if not strata:
            return np.zeros(data.n, dtype=int)
        labels = data.x[list(strata)].astype(str).agg("|".join, axis=1).to_numpy()
        return np.unique(labels, return_inverse=True)[1]
    arr = np.asarray(strata)
    if arr.shape != (data.n,):
        raise DataError(f"strata: expected column names or an array of {data.n} labels, got shape {arr.shape}")
    return np.unique(arr.astype(str), return_inverse=True)[1]


def _graph_nodes_replaced(graph, old: str | None, new: list[str]):
    """The graph to use after confounder columns change.

    A graph with the node ``X`` (the whole confounder set) needs no change. In a graph that names confounders
    one by one, ``old`` (if it is a node) is replaced by the nodes ``new`` with its edges; with ``old=None`` the
    ``new`` nodes are added as common causes of T, M and Y. A column that was not a node stays unadjusted.
    """
    from .graph import DEFAULT_GRAPH, CausalGraph, load_graph  # noqa: PLC0415 - lazy, layer 2

    g = load_graph(DEFAULT_GRAPH if graph is None else graph)
    if "X" in g.nx or (old is not None and old not in g.nx):
        return g
    h = g.nx.copy()
    targets = ["T", "M", "Y"] if old is None else list(h.successors(old))
    if old is not None:
        h.remove_node(old)
    for node in new:
        h.add_edges_from((node, t) for t in targets)
    return CausalGraph(h, name=f"{g.name}+{'+'.join(new)}")


# ---- refuters ---------------------------------------------------------------------------------------------
def placebo_treatment(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                      strata=None) -> RefutationResult:
    """Permute T within topic strata and re-run: every NIE, NDE and TE must vanish (rule: expect 0).

    ``strata`` defaults to all categorical confounders combined, so the placebo keeps P(T | topic).

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(800, seed=1)
    >>> ref = placebo_treatment(get_estimator("parametric", n_sims=200), data, random_state=0)
    >>> row = ref.to_frame().set_index(["effect", "arm"]).loc[("te", "average")]
    >>> bool(row.estimate > 0.5 and abs(row.new_estimate) < 3 * row.new_se and row.passed)
    True
    """
    rng = check_random_state(random_state)
    orig = _original(estimator, data, graph, units, original)
    labels = strata_labels(data, strata)
    t = data.t.copy()
    for s in np.unique(labels):
        idx = np.flatnonzero(labels == s)
        t[idx] = t[rng.permutation(idx)]
    new = _fit(estimator, data.replace(t=t), graph, units)
    return _build("placebo_treatment", "zero", orig, [new], alpha, {"strata": strata or "categorical confounders"})


def dummy_outcome(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                  kind="permute") -> RefutationResult:
    """Replace Y by noise independent of everything and re-run: the effects must vanish (rule: expect 0).

    ``kind="permute"`` shuffles Y (keeps its marginal, e.g. scores in [0, 1]); ``"normal"`` draws
    N(mean Y, sd Y).
    """
    rng = check_random_state(random_state)
    if kind not in ("permute", "normal"):
        raise ValueError(f"kind: expected 'permute' or 'normal', got {kind!r}")
    orig = _original(estimator, data, graph, units, original)
    y = rng.permutation(data.y) if kind == "permute" else rng.normal(data.y.mean(), data.y.std(), size=data.n)
    new = _fit(estimator, data.replace(y=y), graph, units)
    return _build("dummy_outcome", "zero", orig, [new], alpha, {"kind": kind})


def random_common_cause(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                        name="random_common_cause") -> RefutationResult:
    """Add an N(0, 1) noise column as one more confounder and re-run: the estimate must stay (rule: stable)."""
    rng = check_random_state(random_state)
    if name in data.confounder_names or name in (data.treatment_name, data.outcome_name):
        raise DataError(f"name: expected a new column name, got {name!r}, which the data already uses")
    orig = _original(estimator, data, graph, units, original)
    x = data.x.copy()
    x[name] = rng.normal(size=data.n)
    new = _fit(estimator, data.replace(x=x), _graph_nodes_replaced(graph, None, [name]), units)
    return _build("random_common_cause", "stable", orig, [new], alpha, {})


def data_subset(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                fraction=0.8, n_subsets=3, strata=None) -> RefutationResult:
    """Re-run on ``n_subsets`` random subsets of ``fraction`` of the rows, drawn within T x topic strata.

    new_estimate is the mean over subsets and new_se the mean of their SEs. Rule: stable, against the spread
    of a subset mean, SE sqrt((1/f - 1) / B) (subsets drawn without replacement, asymptotically linear
    estimator).
    """
    fraction = check_probability(fraction, "fraction")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    if int(n_subsets) < 1:
        raise ValueError(f"n_subsets: expected an int >= 1, got {n_subsets}")
    rng = check_random_state(random_state)
    orig = _original(estimator, data, graph, units, original)
    labels = strata_labels(data, strata) * 2 + data.t
    news, sizes = [], []
    for _ in range(int(n_subsets)):
        keep = np.concatenate([rng.choice(idx, size=max(2, int(round(fraction * len(idx)))), replace=False)
                               for idx in (np.flatnonzero(labels == s) for s in np.unique(labels))
                               if len(idx) >= 2])
        news.append(_fit(estimator, data.subset(np.sort(keep)), graph, units))
        sizes.append(len(keep))
    f = float(np.mean(sizes)) / data.n
    scale = np.sqrt((1 / f - 1) / len(news))
    details = pd.DataFrame([dict(subset=i, unit=u, effect=k[0], arm=k[1], estimate=r.effects[u][k].estimate,
                                 se=r.effects[u][k].se)
                            for i, r in enumerate(news) for u in orig.units for k in _keys(orig, u, [r])])
    return _build("data_subset", "subset", orig, news, alpha, {"fraction": fraction, "n_subsets": int(n_subsets)},
                  ref_scale=scale, details=details)


def unobserved_confounder(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                          effect_on_t=0.5, effect_on_y=0.2, effect_on_m=0.0) -> RefutationResult:
    """Simulate a latent confounder U of chosen strength and re-run without it (direct simulation).

    U = effect_on_t (T - mean T) + Z with Z ~ N(0, 1): the treated have U higher by ``effect_on_t`` (in SDs
    of Z) on average, as if U drove T. Then Y -> Y + effect_on_y sd(Y) U, and, if ``effect_on_m`` is set,
    every mediator column m -> m + effect_on_m sd(m) U (U then also confounds M -> Y). U is never shown to the
    estimator. Without the mediator term the shift is known exactly: TE and every NDE move by
    ``effect_on_y * sd(Y) * effect_on_t`` and every NIE by 0; ``details`` has this expected shift (NaN when
    ``effect_on_m`` is set) beside the observed one. Rule: conclusion unchanged.
    """
    rng = check_random_state(random_state)
    orig = _original(estimator, data, graph, units, original)
    t = data.t.astype(float)
    u = effect_on_t * (t - t.mean()) + rng.normal(size=data.n)
    y = data.y + effect_on_y * data.y.std() * u
    changes = {"y": y}
    if effect_on_m:
        changes["mediators"] = {k: m + (effect_on_m * m.std(axis=0, dtype=float) * u[:, None]).astype(np.float32)
                                for k, m in data.mediators.items()}
        changes["mediator_columns"] = data.mediator_columns
    new = _fit(estimator, data.replace(**changes), graph, units)
    shift = effect_on_y * data.y.std() * effect_on_t
    expected = {"te": shift, "nde": shift, "nie": 0.0}
    details = pd.DataFrame([dict(unit=un, effect=k[0], arm=k[1],
                                 expected_shift=float("nan") if effect_on_m else expected[k[0]],
                                 observed_shift=new.effects[un][k].estimate - orig.effects[un][k].estimate)
                            for un in orig.units for k in _keys(orig, un, [new])])
    opts = {"effect_on_t": effect_on_t, "effect_on_y": effect_on_y, "effect_on_m": effect_on_m}
    return _build("unobserved_confounder", "conclusion", orig, [new], alpha, opts, details=details)


def _merge_levels(data, column, n_groups, mapping) -> tuple[pd.Series, dict]:
    col = data.x[column]
    levels = [str(c) for c in col.cat.categories]
    if mapping is None:
        k = len(levels)
        n_groups = int(np.ceil(k / 2)) if n_groups is None else int(n_groups)
        if not 1 <= n_groups < k:
            raise ValueError(f"n_groups: expected an int in [1, {k - 1}] for {k} levels of {column!r}, got {n_groups}")
        codes = col.cat.codes.to_numpy()
        share = np.array([data.t[codes == j].mean() if np.any(codes == j) else 0.0 for j in range(k)])
        order = np.argsort(share, kind="stable")  # neighbours in P(T | topic) are merged first
        mapping = {levels[j]: f"g{rank * n_groups // k}" for rank, j in enumerate(order)}
    missing = [lv for lv in levels if lv not in mapping]
    if missing:
        raise ValueError(f"mapping: expected a group for every level of {column!r}, got none for {missing[:5]}")
    merged = col.astype(str).map(lambda v: str(mapping[v]))
    return pd.Series(pd.Categorical(merged), index=data.x.index), dict(mapping)


def topic_granularity(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                      column=None, mode="merge", n_groups=None, mapping=None, noise=1.0,
                      sharpness=3.0) -> RefutationResult:
    """Re-run with a coarser or a soft topic: the estimate should be stable, and the shift is reported.

    ``mode="merge"``: levels of ``column`` (default the first categorical confounder) are merged by ``mapping``
    (level -> group) or into ``n_groups`` (default half as many) blocks of neighbours in P(T | topic).
    ``mode="soft"``: the label is replaced by noisy topic probabilities softmax(sharpness one-hot + noise
    N(0, 1)), as a topic classifier would give (reference level dropped). Rule: stable.
    """
    rng = check_random_state(random_state)
    cats = data.categorical_confounders()
    column = column if column is not None else (cats[0] if cats else None)
    if column is None or column not in cats:
        raise DataError(f"column: expected a categorical confounder from {cats}, got {column!r}")
    if mode not in ("merge", "soft"):
        raise ValueError(f"mode: expected 'merge' or 'soft', got {mode!r}")
    orig = _original(estimator, data, graph, units, original)
    x = data.x.copy()
    if mode == "merge":
        x[column], mapping = _merge_levels(data, column, n_groups, mapping)
        new_graph, opts = graph, {"column": column, "mode": mode, "mapping": mapping}
    else:
        codes = data.x[column].cat.codes.to_numpy()
        k = len(data.x[column].cat.categories)
        logits = sharpness * np.eye(k)[codes] + noise * rng.normal(size=(data.n, k))
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        names = [f"{column}_p{lv}" for lv in data.x[column].cat.categories[1:]]
        x = x.drop(columns=column)
        for j, nm in enumerate(names, start=1):
            x[nm] = prob[:, j]
        new_graph = _graph_nodes_replaced(graph, column, names)
        opts = {"column": column, "mode": mode, "noise": noise, "sharpness": sharpness}
    new = _fit(estimator, data.replace(x=x), new_graph, units)
    return _build("topic_granularity", "stable", orig, [new], alpha, opts)


REFUTERS = {"placebo_treatment": placebo_treatment, "random_common_cause": random_common_cause,
            "data_subset": data_subset, "dummy_outcome": dummy_outcome,
            "unobserved_confounder": unobserved_confounder, "topic_granularity": topic_granularity}


def refute_all(estimator, data, graph=None, *, random_state=0, units=None, alpha=0.05, refuters=None,
               options=None, original=None, progress: bool | None = False) -> pd.DataFrame:
    """Run several refuters (default all of :data:`REFUTERS`; ``topic_granularity`` only when the data has a
    categorical confounder) on one original fit and stack their tables.

    ``options`` maps a refuter name to its keyword options. ``original`` is a fit of ``estimator`` on
    ``data`` already at hand (it may hold more units; only those refitted are compared); without it the
    original is fitted once here. ``progress``: a tqdm bar over the refuters (True), none (False), or one only
    on a terminal (None). Returns a DataFrame with the columns
    ``refuter, unit, effect, arm, estimate, new_estimate, new_se, p_value, passed``.

    Examples
    --------
    >>> from deconfound import get_estimator, simulate
    >>> data, truth = simulate.topic_mediation(800, seed=1)
    >>> table = refute_all(get_estimator("parametric", n_sims=200), data, random_state=0)
    >>> print(table.refuter.unique().tolist())  # doctest: +NORMALIZE_WHITESPACE
    ['placebo_treatment', 'random_common_cause', 'data_subset', 'dummy_outcome', 'unobserved_confounder',
     'topic_granularity']
    >>> print(table.columns.tolist()[-3:])
    ['new_se', 'p_value', 'passed']
    """
    names = list(REFUTERS) if refuters is None else list(refuters)
    unknown = [n for n in names if n not in REFUTERS]
    if unknown:
        raise ValueError(f"refuters: expected names from {list(REFUTERS)}, got {unknown}")
    if refuters is None and not data.categorical_confounders():
        names.remove("topic_granularity")
    options = options or {}
    orig = _original(estimator, data, graph, units, original)
    from tqdm.auto import tqdm  # noqa: PLC0415

    frames = [REFUTERS[n](estimator, data, graph=graph, random_state=random_state, units=units, original=orig,
                          alpha=alpha, **options.get(n, {})).to_frame()
              for n in tqdm(names, desc="refuters", disable=None if progress is None else not progress)]
    return pd.concat(frames, ignore_index=True)


__all__ = ["RefutationResult", "placebo_treatment", "dummy_outcome", "random_common_cause", "data_subset",
           "unobserved_confounder", "topic_granularity", "refute_all", "strata_labels", "REFUTERS"]
