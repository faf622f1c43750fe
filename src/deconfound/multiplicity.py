"""Multiplicity across units: simultaneous max-|t| bands, and FDR counts before and after adjustment.

A per-unit 95% CI covers its unit's effect 95% of the time; over hundreds of units (every layer, every neuron)
some intervals miss by chance. Two controls are offered:

* :func:`simultaneous_bands`: bands ``estimate +- c * se`` with one critical value ``c`` for all units, the
  ``level`` quantile of ``max_u |draw_u - estimate_u| / se_u`` over joint draws of the units' effects
  (Chernozhukov, Chetverikov & Kato 2013; Montiel Olea & Plagborg-Moller 2019). All bands cover at once
  with probability ``level`` (family-wise error ``1 - level``). Adjusted p-values (single-step max-T,
  Westfall & Young 1993) come with them.
* :func:`significance_counts`: how many units are significant at FDR ``fdr`` (Benjamini-Hochberg q-values,
  as in ``MediationResult.to_frame``) with and without topic adjustment.

Joint draws: effects with influence scores (DML, weighting) get a multiplier bootstrap with one N(0, 1)
multiplier per row shared by all units, which keeps the units' correlation. Effects with bootstrap draws on
shared resamples are stacked. The parametric estimator draws each unit's coefficients separately, so its
draws are independent across units; the band is then the Sidak-type one, conservative when the units'
estimates are positively correlated (Sidak 1967).

Layer 3: imports ``_validation`` and ``inference`` only; the result is used through ``result.effect``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._validation import check_random_state
from .errors import DataError
from .inference import bh_qvalues

__all__ = ["SignificanceCounts", "SimultaneousBands", "joint_draws", "significance_counts", "simultaneous_bands"]


def joint_draws(result, units, effect="nie", arm="treated", *, n_draws=2000, random_state=0, xi=None):
    """``(draws, method)``: a (draws x units) matrix of joint draws of the units' effects.

    ``method`` is ``"draws"`` (stacked bootstrap/simulation draws of equal length) or ``"multiplier"``
    (``estimate + xi @ scores / n`` with ``xi`` an ``(n_draws, n)`` N(0, 1) matrix from ``random_state``,
    or the ``xi`` given). The same numbers as ``deconfound.compare.joint_draws``.
    """
    effs, method, xi = _joint_source(result, units, effect, arm, n_draws, random_state, xi)
    if method == "draws":
        return np.column_stack([e.draws for e in effs]), "draws"
    scores = np.column_stack([e.scores for e in effs])
    return np.array([e.estimate for e in effs])[None, :] + xi @ scores / xi.shape[1], "multiplier"


def _joint_source(result, units, effect, arm, n_draws, random_state, xi):
    """``(effects, method, xi)``: stacked draws of one length (``xi`` None), or scores of one length with the
    (n_draws, n) multiplier matrix ``xi`` (drawn from ``random_state`` unless given)."""
    effs = [result.effect(u, effect, arm) for u in units]
    if all(e.draws is not None for e in effs) and len({len(e.draws) for e in effs}) == 1:
        return effs, "draws", None
    if all(e.scores is not None for e in effs) and len({len(e.scores) for e in effs}) == 1:
        n = len(effs[0].scores)
        if xi is None:
            xi = check_random_state(random_state).standard_normal((int(n_draws), n))
        elif np.shape(xi)[1:] != (n,):
            raise DataError(f"xi: expected an (n_draws, {n}) matrix, got shape {np.shape(xi)}")
        return effs, "multiplier", np.asarray(xi)
    kinds = sorted({e.method for e in effs})
    raise DataError(f"{getattr(result, 'estimator', 'result')}: expected every unit's {effect}/{arm} effect to "
                    f"carry draws of one length or scores of one length, got methods {kinds}")


CHUNK = 1024  # units per block of joint draws: memory is draws x CHUNK, not draws x units


def _max_abs_t(result, units, effect, arm, est, se, *, n_draws, random_state, xi, chunk=CHUNK):
    """``(max_t, method)``: max over units of |draw - estimate| / se per joint draw, computed a block of units
    at a time (the same numbers as :func:`joint_draws` on all units at once, without its draws x units matrix).
    Joint draws with a non-finite value in any unit are dropped, as before."""
    effs, method, xi = _joint_source(result, units, effect, arm, n_draws, random_state, xi)
    n_rows = len(effs[0].draws) if method == "draws" else len(xi)
    max_t = np.zeros(n_rows)
    finite = np.ones(n_rows, dtype=bool)
    for start in range(0, len(effs), chunk):
        block = effs[start:start + chunk]
        if method == "draws":
            dev = np.column_stack([e.draws for e in block]) - est[start:start + chunk]
        else:
            dev = xi @ np.column_stack([e.scores for e in block]) / xi.shape[1]
        finite &= np.isfinite(dev).all(axis=1)
        with np.errstate(invalid="ignore"):
            max_t = np.fmax(max_t, np.max(np.abs(dev) / se[start:start + chunk], axis=1))
    return max_t[finite], method


@dataclass(eq=False)
class SimultaneousBands:
    """Max-|t| simultaneous bands for one effect and arm across units.

    ``frame`` has one row per unit: estimate, se, t, the pointwise CI and p-value of the estimator, the band
    ``band_lower``/``band_upper`` (``estimate -+ critical_value * se``), ``p_adjusted`` (single-step max-T)
    and ``significant`` (the band excludes 0). Units whose estimate or SE is not finite (or whose SE is 0)
    are left out of the family: listed in ``excluded``, NaN in the frame.
    """

    effect: str
    arm: str
    level: float
    critical_value: float
    pointwise_critical_value: float
    n_draws: int
    method: str
    frame: pd.DataFrame
    excluded: list = field(default_factory=list)
    max_t: np.ndarray = field(default=None, repr=False)

    @property
    def n_significant(self) -> int:
        return int(self.frame["significant"].sum())

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> str:
        head = (f"Simultaneous {self.level:.0%} bands, {self.effect}/{self.arm}, {len(self.frame) - len(self.excluded)}"
                f" units: critical value {self.critical_value:.3f} (pointwise {self.pointwise_critical_value:.3f}),"
                f" {self.n_draws} joint draws ({self.method}); {self.n_significant} bands exclude 0")
        if self.excluded:
            head += f"; left out (no finite SE): {self.excluded[:10]}{' ...' if len(self.excluded) > 10 else ''}"
        return head + "\n" + self.frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def __repr__(self) -> str:
        return (f"SimultaneousBands(effect={self.effect!r}, arm={self.arm!r}, units={len(self.frame)}, "
                f"critical_value={self.critical_value:.4g}, n_significant={self.n_significant})")


def _units(result, units) -> list:
    units = list(result.units if units is None else ([units] if isinstance(units, str) else units))
    if not units:
        raise DataError("units: expected at least one unit, got none")
    missing = [u for u in units if u not in result.units]
    if missing:
        raise DataError(f"units: expected names from {result.units[:10]}, got {missing[:10]}")
    return units


def simultaneous_bands(result, effect: str = "nie", arm: str = "treated", units=None, *, level: float = 0.95,
                       n_draws: int = 5000, random_state=0, xi=None) -> SimultaneousBands:
    """Simultaneous confidence bands across units by the max-|t| statistic over joint draws.

    Parameters
    ----------
    result : MediationResult (any estimator whose effects carry scores or draws).
    effect, arm : which effect, e.g. ``"nie"``, ``"treated"``.
    units : the family (default all units of the result): e.g. every unit of one layer, or all layers.
    level : simultaneous coverage.
    n_draws : multiplier draws for score-based effects (bootstrap draws are used as they are).
    random_state : seed of the multipliers.
    xi : an ``(n_draws, n)`` multiplier matrix to share with another call (paired comparisons).

    Returns
    -------
    SimultaneousBands

    Examples
    --------
    >>> import numpy as np
    >>> from deconfound.inference import Effect
    >>> from deconfound.results import MediationResult
    >>> s = np.random.default_rng(0).standard_normal((400, 3))
    >>> effs = {f"u{j}": {("nie", "treated"): Effect.from_scores(0.1 * j, s[:, j] - s[:, j].mean())}
    ...         for j in range(3)}
    >>> bands = simultaneous_bands(MediationResult("demo", effs, n=400, n_treated=200))
    >>> bool(bands.critical_value > 1.96)
    True
    """
    if not 0 < float(level) < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        raise ValueError(f"n_draws: expected an int >= 1, got {n_draws!r}")
    units = _units(result, units)
    effs = [result.effect(u, effect, arm) for u in units]
    est = np.array([e.estimate for e in effs], dtype=float)
    se = np.array([e.se for e in effs], dtype=float)
    ok = np.isfinite(est) & np.isfinite(se) & (se > 0)
    if not ok.any():
        raise DataError(f"{effect}/{arm}: expected at least one unit with a finite, positive SE, got none of "
                        f"{len(units)}")
    family = [u for u, keep in zip(units, ok) if keep]
    max_t, method = _max_abs_t(result, family, effect, arm, est[ok], se[ok], n_draws=n_draws,
                                random_state=random_state, xi=xi)
    need = int(np.ceil(1 / (1 - float(level))))
    if len(max_t) < need:
        raise DataError(f"{effect}/{arm}: expected at least {need} finite joint draws for a {level:.0%} band, got "
                        f"{len(max_t)}")
    crit = float(np.quantile(max_t, float(level)))
    z = float(stats.norm.ppf(0.5 + float(level) / 2))
    t = np.full(len(units), np.nan)
    t[ok] = est[ok] / se[ok]
    p_adj = np.full(len(units), np.nan)
    p_adj[ok] = (1 + (max_t[None, :] >= np.abs(t[ok])[:, None]).sum(axis=1)) / (1 + len(max_t))
    half = np.where(ok, crit * se, np.nan)
    lower, upper = est - half, est + half
    frame = pd.DataFrame({
        "unit": units, "estimate": est, "se": se, "t": t,
        "ci_lower": [e.ci[0] for e in effs], "ci_upper": [e.ci[1] for e in effs],
        "p_value": [e.p_value for e in effs], "band_lower": lower, "band_upper": upper,
        "p_adjusted": p_adj, "significant": ok & ((lower > 0) | (upper < 0))})
    return SimultaneousBands(effect, arm, float(level), crit, z, int(len(max_t)), method, frame,
                             [u for u, keep in zip(units, ok) if not keep], max_t)


@dataclass(eq=False)
class SignificanceCounts:
    """Units significant with (``adjusted``) and without (``unadjusted``) topic adjustment.

    ``frame`` has one row per unit; the suffixes ``_adjusted`` / ``_unadjusted`` mean with / without the topic:
    estimates, p-values, the multiplicity-corrected values (``q_value_*`` for BH, ``p_maxt_*`` for max-T)
    and the two significance flags.
    """

    effect: str
    arm: str
    fdr: float
    method: str
    n_units: int
    adjusted: int
    unadjusted: int
    both: int
    only_adjusted: int
    only_unadjusted: int
    frame: pd.DataFrame

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("effect", "arm", "fdr", "method", "n_units", "adjusted", "unadjusted",
                                              "both", "only_adjusted", "only_unadjusted")}

    def summary(self) -> str:
        rule = "BH q-value" if self.method == "bh" else "max-T adjusted p-value"
        return (f"{self.effect}/{self.arm}, {self.n_units} units, {rule} <= {self.fdr:g}: {self.unadjusted} "
                f"significant without topic adjustment, {self.adjusted} with it ({self.both} in both, "
                f"{self.only_unadjusted} lost and {self.only_adjusted} gained by adjusting)")

    def __repr__(self) -> str:
        return (f"SignificanceCounts(n_units={self.n_units}, unadjusted={self.unadjusted}, "
                f"adjusted={self.adjusted}, method={self.method!r})")


def _adjusted_p(result, units, effect, arm, method, n_draws, random_state) -> tuple[np.ndarray, np.ndarray]:
    p = np.array([result.effect(u, effect, arm).p_value for u in units], dtype=float)
    if method == "bh":
        return p, bh_qvalues(p)
    bands = simultaneous_bands(result, effect, arm, units, n_draws=n_draws, random_state=random_state)
    return p, bands.frame["p_adjusted"].to_numpy()


def significance_counts(adjusted, unadjusted, effect: str = "nie", arm: str = "treated", *, fdr: float = 0.05,
                        units=None, method: str = "bh", n_draws: int = 5000,
                        random_state=0) -> SignificanceCounts:
    """How many units are significant before and after topic adjustment.

    Parameters
    ----------
    adjusted, unadjusted : MediationResult of the same estimator on the same data, with and without the
        topic in the graph (e.g. ``graph="topic_mediation"`` and ``"unadjusted_mediation"``).
    effect, arm : which effect.
    fdr : the threshold on the BH q-value (``method="bh"``, false discovery rate across units) or on the
        max-T adjusted p-value (``method="max-t"``, family-wise error).
    units : the family (default: the units of ``adjusted``, all of which must be in ``unadjusted``).
    method : ``"bh"`` or ``"max-t"``.
    n_draws, random_state : joint draws for ``"max-t"``.

    Returns
    -------
    SignificanceCounts

    Examples
    --------
    >>> from deconfound.inference import Effect
    >>> from deconfound.results import MediationResult
    >>> def res(ps):
    ...     return MediationResult("x", {f"u{i}": {("nie", "treated"): Effect(0.1, 0.1, (0, 0.2), p)}
    ...                                  for i, p in enumerate(ps)}, n=100, n_treated=50)
    >>> significance_counts(res([0.01, 0.6]), res([0.001, 0.004])).summary()
    'nie/treated, 2 units, BH q-value <= 0.05: 2 significant without topic adjustment, 1 with it (1 in both, 1 lost and 0 gained by adjusting)'
    """
    if not 0 < float(fdr) < 1:
        raise ValueError(f"fdr: expected a number in (0, 1), got {fdr!r}")
    if method not in ("bh", "max-t"):
        raise ValueError(f"method: expected 'bh' or 'max-t', got {method!r}")
    units = _units(adjusted, units)
    missing = [u for u in units if u not in unadjusted.units]
    if missing:
        raise DataError(f"unadjusted: expected the units of the adjusted result, got none for {missing[:10]}")
    pa, qa = _adjusted_p(adjusted, units, effect, arm, method, n_draws, random_state)
    pu, qu = _adjusted_p(unadjusted, units, effect, arm, method, n_draws, random_state)
    sa, su = np.nan_to_num(qa, nan=1.0) <= fdr, np.nan_to_num(qu, nan=1.0) <= fdr
    col = "q_value" if method == "bh" else "p_maxt"  # suffixes _adjusted/_unadjusted: with/without the topic
    frame = pd.DataFrame({
        "unit": units,
        "estimate_adjusted": [adjusted.effect(u, effect, arm).estimate for u in units],
        "estimate_unadjusted": [unadjusted.effect(u, effect, arm).estimate for u in units],
        "p_value_adjusted": pa, "p_value_unadjusted": pu, f"{col}_adjusted": qa, f"{col}_unadjusted": qu,
        "significant_adjusted": sa, "significant_unadjusted": su})
    return SignificanceCounts(effect, arm, float(fdr), method, len(units), int(sa.sum()), int(su.sum()),
                              int((sa & su).sum()), int((sa & ~su).sum()), int((~sa & su).sum()), frame)
