"""Inference objects: an Effect with arithmetic on its scores or draws, and multiplicity helpers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats


@dataclass(eq=False)
class Effect:
    """A point estimate with its uncertainty.

    Exactly one of ``scores`` (centred influence values, one per row: ``se = sqrt(mean(s**2) / n)``) or
    ``draws`` (bootstrap or simulation draws: ``se = sd(draws)``, percentile CI) backs the SE, or neither
    (then ``se`` and ``ci`` must be given). ``a - b`` and ``a + b`` combine scores or draws row by row, so
    NDE = TE - NIE keeps a valid SE.

    Examples
    --------
    >>> import numpy as np
    >>> a = Effect.from_scores(1.0, np.array([1.0, -1.0, 1.0, -1.0]))
    >>> round(a.se, 6)
    0.5
    >>> round((a - a).se, 6)
    0.0
    """

    estimate: float
    se: float
    ci: tuple[float, float]
    p_value: float
    level: float = 0.95
    scores: np.ndarray | None = field(default=None, repr=False)
    draws: np.ndarray | None = field(default=None, repr=False)
    method: str = "normal"
    clusters: np.ndarray | None = field(default=None, repr=False)

    # ---- constructors ----------------------------------------------------------------------
    @classmethod
    def from_scores(cls, estimate: float, scores, *, level: float = 0.95, clusters=None) -> "Effect":
        """Influence-function inference; ``scores`` are centred per-row contributions.

        With ``clusters`` (one label per row) the SE is cluster-robust: the scores are summed within each
        of the G clusters, ``se = sqrt(G / (G - 1) * sum_g S_g**2) / n`` (the CR1 small-sample factor), and
        the labels travel with the Effect through ``+``, ``-``, ``scale`` and ``ratio``.
        """
        s = np.asarray(scores, dtype=float)
        n = len(s)
        if clusters is None:
            se = float(np.sqrt(np.mean(s**2) / n)) if n else float("nan")
            return cls._normal(float(estimate), se, level, scores=s, method="influence")
        clusters = np.asarray(clusters)
        if clusters.shape != (n,):
            raise ValueError(f"clusters: expected one label per score ({n}), got shape {clusters.shape}")
        _, codes = np.unique(clusters, return_inverse=True)
        sums = np.bincount(codes.reshape(-1), weights=s)
        g = len(sums)
        se = float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / n) if g > 1 else float("nan")
        eff = cls._normal(float(estimate), se, level, scores=s, method="influence-cluster")
        eff.clusters = clusters
        return eff

    @classmethod
    def from_draws(cls, estimate: float, draws, *, level: float = 0.95, ci: str = "percentile") -> "Effect":
        """Bootstrap / simulation inference: SE = sd of draws; percentile (default) or normal CI.

        Percentiles are median-unbiased (Hyndman and Fan's type 8): numpy's default linear interpolation puts the
        2.5% and 97.5% points of B = 200 draws about 2.5% too close together (0.92 coverage instead of 0.94 for
        patching at n = 300 in the calibration study). With the percentile CI the p-value is :func:`draw_p_value`
        (add-one, two-sided, never 0)."""
        d = np.asarray(draws, dtype=float)
        se = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
        if ci == "normal":
            eff = cls._normal(float(estimate), se, level, method="bootstrap-normal")
            eff.draws = d
            return eff
        a = (1 - level) / 2
        lo, hi = np.quantile(d, [a, 1 - a], method="median_unbiased")
        p = draw_p_value(d)
        return cls(float(estimate), se, (float(lo), float(hi)), p, level, draws=d, method="percentile")

    @classmethod
    def from_se(cls, estimate: float, se: float, *, level: float = 0.95) -> "Effect":
        """Normal inference from an analytic standard error."""
        return cls._normal(float(estimate), float(se), level, method="analytic")

    @classmethod
    def _normal(cls, est, se, level, *, scores=None, method="normal") -> "Effect":
        z = stats.norm.ppf(0.5 + level / 2)
        if not np.isfinite(se):  # a missing SE must never read as significant
            p = float("nan")
        else:
            p = float(2 * stats.norm.sf(abs(est / se))) if se > 0 else (0.0 if est != 0 else 1.0)
        return cls(est, se, (est - z * se, est + z * se), p, level, scores=scores, method=method)

    # ---- arithmetic --------------------------------------------------------------------------
    def _combine(self, other: "Effect", sign: float) -> "Effect":
        if not isinstance(other, Effect):
            return NotImplemented
        est = self.estimate + sign * other.estimate
        if self.scores is not None and other.scores is not None:
            if len(self.scores) != len(other.scores):
                raise ValueError(f"Effect scores: expected equal lengths, got {len(self.scores)} and {len(other.scores)}")
            return Effect.from_scores(est, self.scores + sign * other.scores, level=self.level,
                                      clusters=self.clusters)
        if self.draws is not None and other.draws is not None:
            if len(self.draws) != len(other.draws):
                raise ValueError(f"Effect draws: expected equal lengths, got {len(self.draws)} and {len(other.draws)}")
            kind = "normal" if self.method == "bootstrap-normal" else "percentile"
            return Effect.from_draws(est, self.draws + sign * other.draws, level=self.level, ci=kind)
        raise ValueError("Effect arithmetic: expected both effects to carry scores or both draws (paired), "
                         f"got {self.method} and {other.method}")

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __add__(self, other):
        return self._combine(other, 1.0)

    def scale(self, factor: float) -> "Effect":
        """``factor * self`` with consistent scores or draws."""
        if self.scores is not None:
            return Effect.from_scores(factor * self.estimate, factor * self.scores, level=self.level,
                                      clusters=self.clusters)
        if self.draws is not None:
            return Effect.from_draws(factor * self.estimate, factor * self.draws, level=self.level)
        return Effect.from_se(factor * self.estimate, abs(factor) * self.se, level=self.level)

    def ratio(self, other: "Effect") -> "Effect":
        """``self / other`` (e.g. proportion mediated = NIE / TE), by the delta method or by draws."""
        est = self.estimate / other.estimate if other.estimate != 0 else float("nan")
        if self.draws is not None and other.draws is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                d = self.draws / other.draws
            d = d[np.isfinite(d)]
            return Effect.from_draws(est, d, level=self.level)
        if self.scores is not None and other.scores is not None and other.estimate != 0:
            s = (self.scores - est * other.scores) / other.estimate
            return Effect.from_scores(est, s, level=self.level, clusters=self.clusters)
        return Effect(est, float("nan"), (float("nan"), float("nan")), float("nan"), self.level, method="none")

    def __repr__(self) -> str:
        return (f"Effect(estimate={self.estimate:.4g}, se={self.se:.4g}, "
                f"ci=({self.ci[0]:.4g}, {self.ci[1]:.4g}), p={self.p_value:.3g})")


def draw_p_value(draws) -> float:
    """Two-sided p-value of H0: effect = 0 from bootstrap or simulation draws, never exactly 0.

    ``p = min(1, 2 (1 + k) / (B + 1))`` with ``k = min(#{draws <= 0}, #{draws >= 0})`` the count in the
    smaller tail beyond zero and ``B`` the number of finite draws (the add-one rule of Davison and Hinkley,
    1997, eq. 4.11, doubled for two sides). R `mediation` reports ``2 k / B``, which is 0 whenever no draw
    crosses zero; here the smallest p-value is ``2 / (B + 1)``. NaN draws are ignored; no finite draw: NaN.

    Examples
    --------
    >>> draw_p_value([0.5, 1.0, 2.0, -0.1])   # k = 1, B = 4: 2 * 2 / 5
    0.8
    >>> round(draw_p_value([1.0, 2.0, 3.0]), 4)   # no draw crosses 0: 2 / 4, not 0
    0.5
    """
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    k = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    return float(min(1.0, 2 * (1 + k) / (len(d) + 1)))


def bh_qvalues(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (monotone, capped at 1); NaNs stay NaN."""
    p = np.asarray(p_values, dtype=float)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    pv = p[ok]
    m = len(pv)
    if m == 0:
        return q
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def cluster_counts(clusters, n_boot: int, rng: np.random.Generator, strata=None) -> np.ndarray:
    """An (n_boot, n) count matrix that resamples whole clusters (within ``strata``, which must be constant
    within each cluster); every row of a cluster gets its cluster's count."""
    _, codes = np.unique(np.asarray(clusters), return_inverse=True)
    codes = codes.reshape(-1)
    n_cl = codes.max() + 1
    if strata is None:
        cl_strata = np.zeros(n_cl, dtype=np.int64)
    else:
        _, s_codes = np.unique(np.asarray(strata), return_inverse=True)
        s_codes = s_codes.reshape(-1)
        lo = np.full(n_cl, np.iinfo(np.int64).max)
        hi = np.full(n_cl, -1)
        np.minimum.at(lo, codes, s_codes)
        np.maximum.at(hi, codes, s_codes)
        if np.any(lo != hi):
            bad = np.unique(np.asarray(clusters))[np.flatnonzero(lo != hi)[0]]
            raise ValueError(f"cluster {bad!r}: expected one stratum per cluster for a stratified cluster "
                             "bootstrap, got rows in several strata (resample without strata)")
        cl_strata = lo
    per_cluster = stratified_counts(cl_strata, n_boot, rng)
    return per_cluster[:, codes]


def stratified_counts(strata, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """An (n_boot, n) matrix of multinomial resample counts, drawn within each stratum at once."""
    strata = np.asarray(strata)
    n = len(strata)
    counts = np.zeros((n_boot, n), dtype=np.int32)
    for level in np.unique(strata):
        idx = np.flatnonzero(strata == level)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
    return counts
