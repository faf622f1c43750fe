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
- stable (random common cause, topic granularity): p_value = 2 Phi(-|new - original| / SE_original); for
  data subset, the mean of B subset estimates against a null spread measured from the replicates themselves
  (see :func:`data_subset`); passed when p_value >= alpha.
- conclusion unchanged (unobserved confounder): same sign, and significant at alpha in both fits or in neither.
- beats the null (patching only: random model, random directions): the original effect must be larger than
  what the same analysis gives on a randomly initialised copy of the model, or than patches of random
  directions of the same norm; passed when that p-value is < alpha.

The patching estimator runs under every refuter that applies when ``patcher=`` is given (placebo treatment,
random common cause, data subset, topic granularity, and the two null-model refuters). Dummy outcome and
unobserved confounder do not apply to it (see :data:`NOT_FOR_PATCHING`) and are skipped with that reason.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._validation import check_probability, check_random_state
from .errors import DataError
from .graph import confounders_replaced
from .results import MediationResult

COLUMNS = ["refuter", "unit", "effect", "arm", "estimate", "new_estimate", "new_se", "p_value", "passed"]
ROW_KEYS = (("te", "average"), ("nie", "control"), ("nie", "treated"), ("nie", "average"), ("nde", "control"),
            ("nde", "treated"), ("nde", "average"))
FIDUCIAL_POINTS = 400  # quantiles of chi^2_{B-1} over which the subset p-value averages
RULES = {
    "zero": "expect 0: passed when the new effect's p-value for 0 is >= alpha",
    "stable": "stable: passed when p = 2 Phi(-|new - original| / SE_original) >= alpha",
    "subset": "stable: passed when p >= alpha, p = 2 Phi(-|mean(new) - original| / s) averaged over sigma^2's "
              "fiducial law given S^2 (B subset estimates), s^2 = sigma^2 / B + f max(sigma^2 - SE^2 (1/f - 1), 0)",
    "conclusion": "conclusion unchanged: same sign, and significant at alpha in both fits or in neither",
    "null_model": "beats the null: passed when p = Phi(-(|original| - |random model|) / sqrt(SE^2 + SE_random^2)) "
                  "< alpha",
    "null_directions": "beats the null: passed when p = (1 + #{|null NIE| >= |NIE|}) / (K + 1) < alpha over K "
                       "patches of random directions with the donor shift's norm",
}
NOT_FOR_PATCHING = {
    "dummy_outcome": "patching's outcome is the model's own score g(q), not the data's Y column, so a dummy Y "
                     "never enters it",
    "unobserved_confounder": "the simulated confounder acts on the data's Y (and M columns), but patching "
                             "intervenes on the model itself, whose M -> Y mechanism has no confounding to simulate",
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
def _fit(estimator, data, graph, units, patcher=None, *, refit: str | None = None) -> MediationResult:
    """Fit on the user's data, or (``refit`` = the refuter's name) on a refuter's modified data: a refit's
    warnings are re-raised with that name in front, since they describe data the user never had (a permuted
    treatment leaves the outcome curved in the mediator, for example)."""
    if patcher is None:
        param = inspect.signature(estimator.fit).parameters.get("patcher")  # a required patcher
        if param is not None and param.default is inspect.Parameter.empty:
            raise TypeError(f"patcher: expected the Patcher the {type(estimator).__name__} estimator runs on "
                            "(refute_all(..., patcher=patcher) or refuter(..., patcher=patcher)), got None")
    kw = {} if patcher is None else {"patcher": patcher}
    if refit is None:
        return estimator.fit(data, graph=graph, units=units, **kw)
    with warnings.catch_warnings(record=True) as caught:  # the caller's filters stay: only what would show
        new = estimator.fit(data, graph=graph, units=units, **kw)
    for w in caught:
        warnings.warn(f"{refit} refit (on the refuter's modified data): {w.message}", w.category, stacklevel=3)
    return new


def _original(estimator, data, graph, units, original, patcher=None):
    if original is None:
        return _fit(estimator, data, graph, units, patcher)
    if not isinstance(original, MediationResult):
        raise TypeError(f"original: expected a MediationResult or None, got {type(original).__name__}")
    return original


def _not_for_patching(name, patcher):
    if patcher is not None:
        raise ValueError(f"{name}: does not apply to the patching estimator: {NOT_FOR_PATCHING[name]}")


class PatcherRows:
    """A patcher restricted to the prompts ``rows``: row i of the view is prompt ``rows[i]`` of ``parent``
    (prompt-keyed state such as sampling streams stays the parent's)."""

    def __init__(self, parent, rows):
        self.parent, self.rows = parent, np.asarray(rows, dtype=np.int64)
        ids = getattr(parent, "ids", None)
        self.ids = None if ids is None else np.asarray(ids)[self.rows]
        self.outcome = parent.outcome

    @property
    def n_prompts(self) -> int:
        return len(self.rows)

    def unit(self, spec):
        return self.parent.unit(spec)

    def dim(self, spec):
        return self.parent.dim(spec)

    def describe(self) -> dict:
        return {**self.parent.describe(), "n_prompts": self.n_prompts}

    def base_scores(self):
        return np.asarray(self.parent.base_scores())[self.rows]

    def activations(self, units, prompts=None):
        return self.parent.activations(units, self.rows if prompts is None else self.rows[np.asarray(prompts)])

    def _values(self, unit, prompts, values):  # the values patched into the parent's prompts
        return values

    def evaluate(self, requests, grad=False):
        reqs = [(r.unit, r.prompts, r.values) if hasattr(r, "values") else r for r in requests]
        reqs = [(u, self.rows[np.asarray(p, dtype=np.int64)], v) for u, p, v in reqs]
        return self.parent.evaluate([(u, p, self._values(u, p, v)) for u, p, v in reqs], grad=grad)


def _keys(original: MediationResult, unit: str, new_results) -> list:
    return [k for k in ROW_KEYS if k in original.effects[unit] and all(k in r.effects.get(unit, {}) for r in new_results)]


def _two_sided(z: float) -> float:
    return float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else float("nan")


def _subset_p(estimates, e0, fraction) -> float:
    """p-value of the mean of B subset estimates against the full-sample one (see :func:`data_subset`)."""
    b, diff = len(estimates), float(np.mean(estimates)) - e0.estimate
    spread = e0.se**2 * (1 / fraction - 1)  # Var(subset - full) of an asymptotically linear estimator
    if b < 2:
        return float(2 * stats.norm.sf(abs(diff) / np.sqrt(spread))) if spread > 0 else float(diff == 0)
    s2 = float(np.var(estimates, ddof=1))
    if not s2 > 0:
        return float(diff == 0)
    # sigma^2 at evenly spaced quantiles of its fiducial law; the p-value averages over them
    chi = stats.chi2.ppf((np.arange(FIDUCIAL_POINTS) + 0.5) / FIDUCIAL_POINTS, b - 1)
    sigma2 = (b - 1) * s2 / chi
    var = sigma2 / b + fraction * np.maximum(sigma2 - spread, 0.0)
    return float(np.mean(2 * stats.norm.sf(abs(diff) / np.sqrt(var))))


def _build(name, rule_key, original, news, alpha, options, *, fraction=None, details=None) -> RefutationResult:
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
            elif rule_key == "stable":
                p = _two_sided((est - e0.estimate) / e0.se) if e0.se > 0 else float(est == e0.estimate)
                ok = p >= alpha
            elif rule_key == "subset":
                p = _subset_p([e.estimate for e in new_eff], e0, fraction)
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


# ---- refuters ---------------------------------------------------------------------------------------------
def placebo_treatment(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                      patcher=None, strata=None) -> RefutationResult:
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
    orig = _original(estimator, data, graph, units, original, patcher)
    labels = strata_labels(data, strata)
    t = data.t.copy()
    for s in np.unique(labels):
        idx = np.flatnonzero(labels == s)
        t[idx] = t[rng.permutation(idx)]
    new = _fit(estimator, data.replace(t=t), graph, units, patcher, refit="placebo_treatment")
    return _build("placebo_treatment", "zero", orig, [new], alpha, {"strata": strata or "categorical confounders"})


def dummy_outcome(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                  patcher=None, kind="permute") -> RefutationResult:
    """Replace Y by noise independent of everything and re-run: the effects must vanish (rule: expect 0).

    ``kind="permute"`` shuffles Y (keeps its marginal, e.g. scores in [0, 1]); ``"normal"`` draws
    N(mean Y, sd Y).
    """
    _not_for_patching("dummy_outcome", patcher)
    rng = check_random_state(random_state)
    if kind not in ("permute", "normal"):
        raise ValueError(f"kind: expected 'permute' or 'normal', got {kind!r}")
    orig = _original(estimator, data, graph, units, original, patcher)
    y = rng.permutation(data.y) if kind == "permute" else rng.normal(data.y.mean(), data.y.std(), size=data.n)
    new = _fit(estimator, data.replace(y=y), graph, units, refit="dummy_outcome")
    return _build("dummy_outcome", "zero", orig, [new], alpha, {"kind": kind})


def random_common_cause(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                        patcher=None, name="random_common_cause") -> RefutationResult:
    """Add an N(0, 1) noise column as one more confounder and re-run: the estimate must stay (rule: stable)."""
    rng = check_random_state(random_state)
    if name in data.confounder_names or name in (data.treatment_name, data.outcome_name):
        raise DataError(f"name: expected a new column name, got {name!r}, which the data already uses")
    orig = _original(estimator, data, graph, units, original, patcher)
    x = data.x.copy()
    x[name] = rng.normal(size=data.n)
    new = _fit(estimator, data.replace(x=x), confounders_replaced(graph, None, [name]), units, patcher,
               refit="random_common_cause")
    return _build("random_common_cause", "stable", orig, [new], alpha, {})


def data_subset(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                patcher=None, fraction=0.8, n_subsets=3, strata=None) -> RefutationResult:
    """Re-run on ``n_subsets`` random subsets of ``fraction`` of the rows, drawn within T x topic strata.

    new_estimate is the mean over subsets and new_se the mean of their SEs. Rule: stable. Given the data the
    B refits (own folds, tuning, PCA) are independent, with variance sigma^2, so mean - original has variance
    sigma^2 / B + f max(sigma^2 - SE^2 (1/f - 1), 0), the second term the full fit's own algorithmic noise.
    sigma^2 is known through S^2 only (B - 1 df); plugging S^2 into both terms under t_{B-1} rejected 0.10 of
    null data sets when the refits' noise matched the sampling part, so the p-value is the normal one averaged
    over sigma^2's fiducial law (B - 1) S^2 / chi^2_{B-1} (t_{B-1}'s when the second term is 0); B = 1: SE^2 (1/f - 1).
    """
    fraction = check_probability(fraction, "fraction")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    if int(n_subsets) < 1:
        raise ValueError(f"n_subsets: expected an int >= 1, got {n_subsets}")
    rng = check_random_state(random_state)
    orig = _original(estimator, data, graph, units, original, patcher)
    labels = strata_labels(data, strata) * 2 + data.t
    news, sizes = [], []
    for _ in range(int(n_subsets)):
        keep = np.concatenate([rng.choice(idx, size=max(2, int(round(fraction * len(idx)))), replace=False)
                               for idx in (np.flatnonzero(labels == s) for s in np.unique(labels))
                               if len(idx) >= 2])
        keep = np.sort(keep)
        news.append(_fit(estimator, data.subset(keep), graph, units, None if patcher is None else PatcherRows(patcher, keep),
                         refit="data_subset"))
        sizes.append(len(keep))
    f = float(np.mean(sizes)) / data.n
    details = pd.DataFrame([dict(subset=i, unit=u, effect=k[0], arm=k[1], estimate=r.effects[u][k].estimate,
                                 se=r.effects[u][k].se)
                            for i, r in enumerate(news) for u in orig.units for k in _keys(orig, u, [r])])
    opts = {"fraction": fraction, "n_subsets": int(n_subsets), "fraction_used": f}
    return _build("data_subset", "subset", orig, news, alpha, opts,
                  fraction=f, details=details)


def unobserved_confounder(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                          patcher=None, effect_on_t=0.5, effect_on_y=0.2, effect_on_m=0.0) -> RefutationResult:
    """Simulate a latent confounder U of chosen strength and re-run without it (direct simulation).

    U = effect_on_t (T - mean T) + Z with Z ~ N(0, 1): the treated have U higher by ``effect_on_t`` (in SDs
    of Z) on average, as if U drove T. Then Y -> Y + effect_on_y sd(Y) U, and, if ``effect_on_m`` is set,
    every mediator column m -> m + effect_on_m sd(m) U (U then also confounds M -> Y). U is never shown to the
    estimator. Without the mediator term the shift is known exactly: TE and every NDE move by
    ``effect_on_y * sd(Y) * effect_on_t`` and every NIE by 0; ``details`` has this expected shift (NaN when
    ``effect_on_m`` is set) beside the observed one. Rule: conclusion unchanged.
    """
    _not_for_patching("unobserved_confounder", patcher)
    rng = check_random_state(random_state)
    orig = _original(estimator, data, graph, units, original, patcher)
    t = data.t.astype(float)
    u = effect_on_t * (t - t.mean()) + rng.normal(size=data.n)
    y = data.y + effect_on_y * data.y.std() * u
    changes = {"y": y}
    if effect_on_m:
        changes["mediators"] = {k: m + (effect_on_m * m.std(axis=0, dtype=float) * u[:, None]).astype(np.float32)
                                for k, m in data.mediators.items()}
        changes["mediator_columns"] = data.mediator_columns
    new = _fit(estimator, data.replace(**changes), graph, units, refit="unobserved_confounder")
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
                      patcher=None, column=None, mode="merge", n_groups=None, mapping=None, noise=1.0,
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
    orig = _original(estimator, data, graph, units, original, patcher)
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
        new_graph = confounders_replaced(graph, column, names)
        opts = {"column": column, "mode": mode, "noise": noise, "sharpness": sharpness}
    new = _fit(estimator, data.replace(x=x), new_graph, units, patcher, refit="topic_granularity")
    return _build("topic_granularity", "stable", orig, [new], alpha, opts)


def _point_estimator(estimator):
    """A copy that skips what only the CI needs (the null refuters use point estimates)."""
    est = copy.copy(estimator)
    params = est.get_params() if hasattr(est, "get_params") else {}
    cheap = {k: v for k, v in (("n_boot", 2), ("donor_bootstrap", "fixed")) if k in params}
    return est.set_params(**cheap) if cheap else est


def _unit_specs(data, units) -> dict:
    from .neurons import patch_units  # noqa: PLC0415 - layer 1

    return dict(units) if isinstance(units, dict) else patch_units(data, units)


def random_model(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                 patcher=None) -> RefutationResult:
    """Rerun the patching analysis on a randomly initialised copy of the model (a null model).

    ``patcher.random_copy(random_state)`` gives the same prompts and outcome on a model of the same architecture
    and config with seeded random weights; the mediators and base scores are extracted again from it, and the
    estimator is fitted there. A localisation claim of the trained model must not appear on the random one:
    per row, the one-sided p = Phi(-(|original| - |random|) / sqrt(SE^2 + SE_random^2)) of "the trained model's
    effect is larger"; passed when p < alpha.
    """
    if patcher is None or not hasattr(patcher, "random_copy"):
        raise TypeError("patcher: expected a Patcher with random_copy(seed) (deconfound.lm.patch.Patcher), got "
                        f"{type(patcher).__name__}")
    orig = _original(estimator, data, graph, units, original, patcher)
    specs = _unit_specs(data, units)
    null = patcher.random_copy(random_state)
    acts = null.activations(list(specs.values()))
    mediators = {name: np.asarray(a, dtype=np.float32) for name, a in zip(specs, acts.values())}
    new_data = data.select_units(list(specs)).replace(mediators=mediators, y=np.asarray(null.base_scores()))
    new = _fit(estimator, new_data, graph, specs, null, refit="random_model")
    rows = []
    for unit in orig.units:
        for key in _keys(orig, unit, [new]):
            e0, e1 = orig.effects[unit][key], new.effects[unit][key]
            z = (abs(e0.estimate) - abs(e1.estimate)) / np.hypot(e0.se, e1.se)
            p = float(stats.norm.sf(z)) if np.isfinite(z) else float("nan")
            rows.append(dict(refuter="random_model", unit=unit, effect=key[0], arm=key[1], estimate=e0.estimate,
                             new_estimate=e1.estimate, new_se=e1.se, p_value=p, passed=bool(p < alpha)))
    return RefutationResult("random_model", RULES["null_model"], pd.DataFrame(rows, columns=COLUMNS), orig, [new],
                            {"seed": random_state, "model": null.describe().get("model_id")}, None, alpha)


class _RandomShifts(PatcherRows):
    """Patcher view: every patched value v for prompt i becomes h_i + |v - h_i| r with r a random unit vector
    (h_i the prompt's own activation), so a patch moves the unit as far as the donor would, in a random
    direction."""

    def __init__(self, parent, own: dict, rng):
        super().__init__(parent, np.arange(parent.n_prompts))
        self.own, self.rng = own, rng

    def _values(self, unit, prompts, values):
        h = self.own[str(getattr(unit, "name", unit))][prompts]
        shift = np.linalg.norm(np.broadcast_to(values, h.shape) - h, axis=1, keepdims=True)
        r = self.rng.normal(size=h.shape)
        return h + shift * r / np.linalg.norm(r, axis=1, keepdims=True)


def random_directions(estimator, data, *, graph=None, random_state=0, units=None, original=None, alpha=0.05,
                      patcher=None, n_draws=39) -> RefutationResult:
    """A per-unit null for patching's NIE: patches of random directions with the donor shift's norm.

    Each of ``n_draws`` refits replaces every patched value v of prompt i by h_i + |v - h_i| r (r uniform on
    the unit sphere, h_i the prompt's own activation), so the null patch is as large as the real one but
    points nowhere in particular. Per unit and NIE row, new_estimate is the null draws' mean, new_se their
    SD, and p = (1 + #{|null| >= |NIE|}) / (n_draws + 1); passed when p < alpha. ``details`` has every draw
    and the NIE's percentile among them.
    """
    if patcher is None:
        raise TypeError("patcher: expected the Patcher of the patching estimator, got None")
    if int(n_draws) < 1:
        raise ValueError(f"n_draws: expected an int >= 1, got {n_draws}")
    rng = check_random_state(random_state)
    orig = _original(estimator, data, graph, units, original, patcher)
    specs = _unit_specs(data, units)
    own = {str(getattr(patcher.unit(spec), "name", spec)): data.mediator(name).astype(float)
           for name, spec in specs.items()}
    est = _point_estimator(estimator)
    news = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(int(n_draws)):
            news.append(_fit(est, data, graph, specs, _RandomShifts(patcher, own, rng), refit="random_directions"))
    rows, details = [], []
    for unit in orig.units:
        for key in [k for k in _keys(orig, unit, news) if k[0] == "nie"]:
            e0 = orig.effects[unit][key]
            null = np.array([r.effects[unit][key].estimate for r in news])
            p = (1 + np.sum(np.abs(null) >= abs(e0.estimate))) / (len(null) + 1)
            rows.append(dict(refuter="random_directions", unit=unit, effect=key[0], arm=key[1],
                             estimate=e0.estimate, new_estimate=float(null.mean()),
                             new_se=float(null.std(ddof=1)) if len(null) > 1 else float("nan"), p_value=float(p),
                             passed=bool(p < alpha)))
            details.append(dict(unit=unit, effect=key[0], arm=key[1], percentile=float(np.mean(np.abs(null) <
                                                                                             abs(e0.estimate))),
                                null=null.tolist()))
    return RefutationResult("random_directions", RULES["null_directions"], pd.DataFrame(rows, columns=COLUMNS),
                            orig, news, {"n_draws": int(n_draws)}, pd.DataFrame(details), alpha)


REFUTERS = {"placebo_treatment": placebo_treatment, "random_common_cause": random_common_cause,
            "data_subset": data_subset, "dummy_outcome": dummy_outcome,
            "unobserved_confounder": unobserved_confounder, "topic_granularity": topic_granularity,
            "random_model": random_model, "random_directions": random_directions}
PATCHER_ONLY = ("random_model", "random_directions")


def refute_all(estimator, data, graph=None, *, random_state=0, units=None, alpha=0.05, refuters=None,
               options=None, original=None, patcher=None, progress: bool | None = False) -> pd.DataFrame:
    """Run several refuters on one original fit and stack their tables.

    The default set is every refuter of :data:`REFUTERS` that applies: ``topic_granularity`` only when the data
    has a categorical confounder; the null-model refuters (:data:`PATCHER_ONLY`) only with a ``patcher``; with a
    ``patcher`` (the patching estimator) those of :data:`NOT_FOR_PATCHING` are skipped, also when named, and
    ``table.attrs["skipped"]`` says why. ``options`` maps a refuter name to its keyword options. ``original``
    is a fit of ``estimator`` on ``data`` already at hand (it may hold more units; only those refitted are
    compared); without it the original is fitted once here. ``progress``: a tqdm bar over the refuters (True),
    none (False), or one only on a terminal (None). Returns a DataFrame with the columns
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
    if refuters is None and patcher is None:
        names = [n for n in names if n not in PATCHER_ONLY]
    skipped = {n: NOT_FOR_PATCHING[n] for n in names if patcher is not None and n in NOT_FOR_PATCHING}
    if refuters is None and patcher is not None and not hasattr(patcher, "random_copy"):
        skipped["random_model"] = f"the patcher ({type(patcher).__name__}) has no random_copy(seed)"
    options = options or {}
    orig = _original(estimator, data, graph, units, original, patcher)
    from tqdm.auto import tqdm  # noqa: PLC0415

    run = [n for n in names if n not in skipped]
    frames = [REFUTERS[n](estimator, data, graph=graph, random_state=random_state, units=units, original=orig,
                          alpha=alpha, patcher=patcher, **options.get(n, {})).to_frame()
              for n in tqdm(run, desc="refuters", disable=None if progress is None else not progress)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    table.attrs["skipped"] = skipped
    return table


__all__ = ["RefutationResult", "placebo_treatment", "dummy_outcome", "random_common_cause", "data_subset",
           "unobserved_confounder", "topic_granularity", "random_model", "random_directions", "refute_all",
           "strata_labels", "PatcherRows", "REFUTERS", "PATCHER_ONLY", "NOT_FOR_PATCHING"]
