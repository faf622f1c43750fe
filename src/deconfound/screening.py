"""Screen, then confirm: many units (every neuron) tested without selecting and testing on the same prompts.

1. The prompts are split in two halves at random (seeded, balanced by treatment and topic).
2. **Screen** every unit on the first half with a cheap patcher (e.g. first-order patching,
   :class:`deconfound.lm.attribution.LinearizedPatcher`), and select units by BH q-value or by |t| rank.
3. **Confirm** the selected units on the second half with exact patching: CIs and BH q-values there are not
   touched by the selection.
4. **Audit** a random sample of the units the screen did not select, patched exactly on the second half: how many
   real effects would the screen have missed (the missed-effect diagnostic of AtP*, Kramar et al. 2024)?

:func:`screen_and_confirm` runs the four steps with any patchers that follow the Patcher interface;
:class:`PromptSubset` restricts a patcher to some of its prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .errors import DataError
from .estimators import get_estimator
from .folds import fold_strata, make_folds
from .inference import bh_qvalues


class PromptSubset:
    """A patcher restricted to prompts ``rows``: prompt i here is prompt ``rows[i]`` of ``patcher``."""

    def __init__(self, patcher, rows):
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(int)
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= patcher.n_prompts:
            raise DataError(f"rows: expected prompt indices in [0, {patcher.n_prompts}), got {len(rows)} rows "
                            f"spanning [{rows.min() if len(rows) else '-'}, {rows.max() if len(rows) else '-'}]")
        self.patcher, self.rows = patcher, rows

    def __getattr__(self, name):  # unit, dim, describe, outcome, sites ...: the wrapped patcher's
        return getattr(self.patcher, name)

    @property
    def n_prompts(self) -> int:
        return len(self.rows)

    @property
    def ids(self):
        ids = getattr(self.patcher, "ids", None)
        return None if ids is None else np.asarray(ids)[self.rows]

    def base_scores(self) -> np.ndarray:
        return np.asarray(self.patcher.base_scores())[self.rows]

    def random_copy(self, seed: int = 0) -> "PromptSubset":
        """The null model (``patcher.random_copy(seed)``) restricted to the same prompts."""
        return PromptSubset(self.patcher.random_copy(seed), self.rows)

    def activations(self, units, prompts=None):
        prompts = np.arange(len(self.rows)) if prompts is None else np.asarray(prompts)
        return self.patcher.activations(units, self.rows[prompts])

    def evaluate(self, requests, grad: bool = False):
        mapped = []
        for r in requests:
            unit, prompts, values = (r.unit, r.prompts, r.values) if hasattr(r, "unit") else r
            mapped.append((unit, self.rows[np.asarray(prompts, dtype=int)], values))
        return self.patcher.evaluate(mapped, grad=grad)


@dataclass(eq=False)
class ScreenConfirm:
    """The outcome of :func:`screen_and_confirm`. ``table`` has one row per unit: the screen's estimate, t and
    q-value (first half), whether it was selected or audited, and the exact estimate, CI, p- and q-value on the
    second half where it was patched exactly. ``missed`` summarises the audit."""

    selected: list
    audited: list
    table: pd.DataFrame
    missed: dict
    halves: tuple
    screen: object = field(repr=False)
    confirm: object = field(repr=False)
    audit: object = field(repr=False)

    def summary(self) -> str:
        m = self.missed
        return (f"screened {len(self.table)} units on {len(self.halves[0])} prompts, selected {len(self.selected)}; "
                f"confirmed on {len(self.halves[1])} other prompts: {int(self.table.significant.sum())} significant "
                f"at FDR {m['fdr']}. Audit of {m['audited']} unselected units: {m['audit_significant']} with p < "
                f"{m['alpha']} (about {m['expected_false']:.1f} expected by chance); estimated missed effects "
                f"{m['missed_estimate']:.1f} of {m['unselected']} (95% CI {m['missed_ci'][0]:.1f} to "
                f"{m['missed_ci'][1]:.1f}).")


def _normal_p(est: float, se: float) -> float:
    return float(2 * stats.norm.sf(abs(est / se))) if se > 0 and np.isfinite(se) else float("nan")


def _effects(result, units, effect, arm) -> pd.DataFrame:
    rows = []
    for u in units:
        e = result.effect(u, effect, arm)
        rows.append({"unit": u, "estimate": e.estimate, "se": e.se, "ci_lower": e.ci[0], "ci_upper": e.ci[1],
                     "p_value": _normal_p(e.estimate, e.se)})
    return pd.DataFrame(rows)


def screen_and_confirm(data, *, patcher, screen_patcher=None, units=None, graph=None, select=0.1,
                       n_audit: int = 32, estimator=None, screen_estimator=None, effect: str = "nie",
                       arm: str = "treated", fdr: float = 0.05, alpha: float = 0.05, random_state=0) -> ScreenConfirm:
    """Screen every unit on one half of the prompts, confirm the selected ones exactly on the other half, and
    audit a random sample of the rest.

    Parameters
    ----------
    data : MediationData whose row i is prompt i of the patchers.
    patcher : the exact patcher (confirmation and audit).
    screen_patcher : the cheap one for the screen (default ``patcher``).
    units : data units (default all), or a dict data unit -> patch unit (e.g. ``neurons.patch_units(data)``).
    select : a float in (0, 1): keep units with screen BH q <= select; an int k: keep the k largest |t|. At least
        one unit is kept.
    n_audit : unselected units patched exactly at random (0 skips the audit).
    estimator : a patching estimator (default ``get_estimator("patching", random_state=random_state)``);
        ``screen_estimator`` (default the same) runs the screen.
    fdr, alpha : the FDR of the confirmation's significance, and the per-unit level of the audit.
    """
    est = estimator or get_estimator("patching", random_state=random_state)
    mapping = units if isinstance(units, dict) else {u: u for u in (units or data.units)}
    names = list(mapping)
    if isinstance(select, bool) or not ((isinstance(select, float) and 0 < select < 1)
                                        or (isinstance(select, (int, np.integer)) and select >= 1)):
        raise ValueError(f"select: expected a q-value threshold in (0, 1) or a number of units >= 1, got {select!r}")
    half = make_folds(data.n, 2, strata=fold_strata(data), random_state=random_state)
    first, second = np.flatnonzero(half == 0), np.flatnonzero(half == 1)
    screen = (screen_estimator or est).fit(data.subset(first), graph=graph, units=mapping,
                     patcher=PromptSubset(screen_patcher or patcher, first))
    table = _effects(screen, names, effect, arm).add_prefix("screen_").rename(columns={"screen_unit": "unit"})
    table["screen_t"] = table.screen_estimate / table.screen_se
    table["screen_q"] = bh_qvalues(table.screen_p_value.to_numpy())
    order = table.screen_t.abs().sort_values(ascending=False, na_position="last").index
    if isinstance(select, float):
        keep = (table.screen_q <= select).to_numpy()
        if not keep.any():
            keep = table.index == order[0]
    else:
        keep = table.index.isin(order[: int(select)])
    keep = np.asarray(keep)
    selected = table.unit[keep].tolist()
    rest = table.unit[~keep].tolist()
    rng = np.random.default_rng([int(random_state), 11])
    audited = sorted(rng.choice(rest, size=min(int(n_audit), len(rest)), replace=False).tolist()) if rest else []
    exact = PromptSubset(patcher, second)
    confirm_data = data.subset(second)
    confirm = est.fit(confirm_data, graph=graph, units={u: mapping[u] for u in selected}, patcher=exact)
    conf = _effects(confirm, selected, effect, arm)
    conf["q_value"] = bh_qvalues(conf.p_value.to_numpy())
    conf["significant"] = conf.q_value <= fdr
    audit, aud = None, pd.DataFrame(columns=["unit", "estimate", "se", "ci_lower", "ci_upper", "p_value"])
    if audited:
        audit = est.fit(confirm_data, graph=graph, units={u: mapping[u] for u in audited}, patcher=exact)
        aud = _effects(audit, audited, effect, arm)
    table["selected"], table["audited"] = np.asarray(keep), table.unit.isin(audited).to_numpy()
    exact_rows = pd.concat([conf, aud.assign(q_value=np.nan, significant=False)], ignore_index=True)
    table = table.merge(exact_rows.rename(columns={c: f"exact_{c}" for c in exact_rows.columns if c != "unit"}),
                        on="unit", how="left").rename(columns={"exact_q_value": "q_value",
                                                               "exact_significant": "significant"})
    table["significant"] = table.significant.astype("boolean").fillna(False).astype(bool)
    return ScreenConfirm(selected, audited, table, _missed(aud, len(rest), alpha, fdr), (first, second),
                         screen, confirm, audit)


def _missed(aud: pd.DataFrame, n_rest: int, alpha: float, fdr: float) -> dict:
    """Share of audited units with p < alpha, less the share expected by chance, scaled to the unselected units,
    with a Clopper-Pearson interval."""
    k, m = int((aud.p_value < alpha).sum()), len(aud)
    if m:
        lo = stats.beta.ppf(0.025, k, m - k + 1) if k > 0 else 0.0
        hi = stats.beta.ppf(0.975, k + 1, m - k) if k < m else 1.0
    else:
        lo = hi = float("nan")
    excess = lambda share: max(share - alpha, 0.0) * n_rest  # noqa: E731
    return {"audited": m, "unselected": n_rest, "audit_significant": k, "alpha": alpha, "fdr": fdr,
            "expected_false": alpha * m, "missed_estimate": excess(k / m) if m else float("nan"),
            "missed_ci": (excess(lo), excess(hi)) if m else (float("nan"), float("nan")),
            "largest_audited_abs": float(aud.estimate.abs().max()) if m else float("nan")}
