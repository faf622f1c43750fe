"""Scores of DMLMediation for the ATE and ATT populations, and the aggregation of repeated cross-fitting.

For D = d, d' = 1 - d and the nuisances of :mod:`deconfound.estimators.dml`, E[Y(d, M(d')) | population] is
``mean(psi)`` with

    psi = g * b + sum_j a_j r_j,    centred score = psi - theta * g,

where b is omega(d,X) (d' != d) or mu(d,X) (d' = d), the residuals r_j are Y - mu(d,M,X) and
mu(d,M,X) - omega(d,X) (or Y - mu(d,X)), and the weights a_j are, for the ATE (g = 1),

    a_1 = 1{D=d} p_d'(M,X) / (p_d(M,X) p_d'(X)),   a_2 = 1{D=d'} / p_d'(X)   (a_1 = 1{D=d} / p_d(X) if d' = d)

For the ATT, E[Y(d, M(d')) | T=1] = E[D b(X) + p_1(X) A(O)] / P(T=1), where A is the ATE correction
sum_j a_j r_j; so g = D / P(T=1) and every weight is p_1(X) a_j / P(T=1). The term ``- theta * g`` of the
centred score is the estimation of P(T=1) (it has mean zero by construction). With ``normalize`` every weight
is divided by its mean (Hajek form; each has expectation 1 in both populations).
"""
from __future__ import annotations

import numpy as np

from ..errors import PositivityError
from ..inference import Effect
from ..results import add_derived
from ._glm import arm_reset

# potential-outcome keys (d, d') for E[Y(d, M(d'))]
TERMS = ((1, 1), (1, 0), (0, 1), (0, 0))
# effect, arm -> (minuend term, subtrahend term)
CONTRASTS = {("te", "average"): ((1, 1), (0, 0)), ("nie", "treated"): ((1, 1), (1, 0)),
             ("nie", "control"): ((0, 1), (0, 0)), ("nde", "treated"): ((1, 1), (0, 1)),
             ("nde", "control"): ((1, 0), (0, 0))}
EPS = 1e-12


def overlap_rows(p1x, trim: float) -> np.ndarray:
    """Rows kept by trimming on the pre-treatment propensity only: trim <= p_1(X) <= 1 - trim."""
    p1x = np.asarray(p1x, dtype=float)
    if trim <= 0:
        return np.ones(len(p1x), dtype=bool)
    return (p1x >= trim) & (p1x <= 1 - trim)


def weighted_mean_scores(psi, lead, sw):
    """``(theta, centred scores)`` of theta = mean(sw psi) with the sampling weights ``sw`` (mean 1): the scores
    are ``sw (psi - theta lead)``, ``lead`` the per-row normalizer of the population (1 for all rows; T / P(T=1)
    for the treated, so that ``- theta lead`` carries the estimation of P(T=1))."""
    theta = float(np.mean(sw * psi))
    return theta, sw * (psi - theta * lead)


def term_scores(t, y, p1x, mux, p1mx, mumx, omega, *, clip: float, normalize: bool, population: str, sw=None):
    """The four E[Y(d, M(d'))] on the given rows: ``{(d, d'): (theta, centred score, a_1)}`` and the count
    of rows whose p_1(M,X) was clipped to [clip, 1 - clip]. Sampling weights ``sw`` (mean 1 over the rows)
    weight every mean; the centred scores then carry them (``sw * (psi - theta * g)``)."""
    sw = np.ones(len(t)) if sw is None else np.asarray(sw, dtype=float) / np.mean(sw)
    p1 = np.clip(p1x, EPS, 1 - EPS)
    px = {1: p1, 0: 1 - p1}
    cap = max(float(clip), EPS)
    q1 = np.clip(p1mx, cap, 1 - cap)
    pmx = {1: q1, 0: 1 - q1}
    n_clipped = int(((p1mx < clip) | (p1mx > 1 - clip)).sum()) if clip > 0 else 0
    if population == "att":
        share = float(np.mean(sw * t))
        lead, tilt = t / share, p1 / share
    else:
        lead, tilt = np.ones(len(t)), np.ones(len(t))

    def weight(w):
        w = tilt * w
        return w / np.mean(sw * w) if (normalize and w.sum() > 0) else w

    out = {}
    for d in (0, 1):
        is_d, is_other = (t == d).astype(float), (t == 1 - d).astype(float)
        a1 = weight(is_d / px[d])
        theta, score = weighted_mean_scores(lead * mux[:, d] + a1 * (y - mux[:, d]), lead, sw)
        out[(d, d)] = (theta, score, a1, None)
        a1 = weight(is_d * pmx[1 - d] / (pmx[d] * px[1 - d]))
        a2 = weight(is_other / px[1 - d])
        theta, score = weighted_mean_scores(lead * omega[:, d] + a1 * (y - mumx[:, d]) + a2 * (mumx[:, d] - omega[:, d]),
                                            lead, sw)
        out[(d, 1 - d)] = (theta, score, a1, a2)
    return out, n_clipped


def _full(values, keep):
    """Values over the kept rows -> a length-n vector (zeros on trimmed rows, scaled by n / n_kept), so that
    ``Effect.from_scores`` on it gives var / n_kept."""
    n = len(keep)
    out = np.zeros(n)
    out[keep] = values * (n / keep.sum())
    return out


def _ovb(keep, stages):
    """The OVB pieces {sigma2, nu2, psi_sigma2, psi_nu2} of one target, one value (column) per regression of
    ``stages`` = [(Riesz weight, residual)] (see :func:`ovb_stages`)."""
    sigma2 = np.array([np.mean(r**2) for _, r in stages])
    nu2 = np.array([np.mean(a**2) for a, _ in stages])
    return {"sigma2": sigma2, "nu2": nu2,
            "psi_sigma2": np.column_stack([_full(r**2 - s2, keep) for (_, r), s2 in zip(stages, sigma2)]),
            "psi_nu2": np.column_stack([_full(a**2 - v2, keep) for (a, _), v2 in zip(stages, nu2)])}


def ovb_stages(terms, coef, residuals):
    """[(Riesz weight, residual)] of the regressions a contrast ``sum_k coef[k] E[Y(d_k, M(d'_k))]`` rests on.

    E[Y(d, M(d))] uses the regression g(D, X) with weight a_1; E[Y(d, M(d'))], d' != d, uses the outcome
    regression mu(D, M, X) with weight a_1 and the nested regression omega(d, X) (residual mu(d, M, X) -
    omega(d, X) on the rows with D = d') with weight a_2. A latent confounder biases each regression; by the
    triangle inequality and Cauchy-Schwarz (Chernozhukov et al. 2022, per regression) the bias of the contrast is
    at most the common strength times sum_j sqrt(sigma2_j nu2_j). Regressions with zero weight are left out."""
    g = sum(c * terms[k][2] for k, c in coef.items() if k[0] == k[1])
    mu = sum(c * terms[k][2] for k, c in coef.items() if k[0] != k[1])
    om = sum(c * terms[k][3] for k, c in coef.items() if k[0] != k[1])
    pairs = zip((g, mu, om), (residuals["g"], residuals["mu"], residuals["omega"]))
    return [(a, r) for a, r in pairs if np.ndim(a) and np.any(a != 0)]


def curvature(t, y, mumx, x=None) -> tuple[float, float]:
    """Ramsey's RESET on the out-of-fold outcome regressions: ``(p, share)`` of :func:`._glm.arm_reset` with,
    within each arm d, the residual Y - mu(d,M,X) regressed on [1, mu(d,M,X), x] and the squared and cubed
    standardized mu(d,M,X) (1, mu and the covariates ``x`` absorb the ridge's shrinkage)."""
    x = np.zeros((len(t), 0)) if x is None else np.asarray(x, dtype=float).reshape(len(t), -1)
    own = np.where(t == 1, mumx[:, 1], mumx[:, 0])
    return arm_reset(t, y - own, np.column_stack([np.ones_like(own), own, x]), own)


def unit_effects(t, y, keep, shared, unit_nuis, *, clip, normalize, population, level, cluster=None, weights=None,
                 x=None):
    """Effects, OVB pieces and diagnostics of one unit on one sample split (``x``: the outcome models'
    covariates, for the RESET of :func:`curvature`)."""
    p1x, mux = shared
    p1mx, mumx, omega = unit_nuis
    tk, yk = t[keep], y[keep]
    for arm, name in ((1, "treated"), (0, "control")):
        if int((tk == arm).sum()) < 2:
            raise PositivityError(f"expected at least 2 {name} rows (T={arm}) with overlap, got "
                                  f"{int((tk == arm).sum())} of {int((t == arm).sum())}")
    terms, n_clipped = term_scores(tk, yk, p1x[keep], mux[keep], p1mx[keep], mumx[keep], omega[keep], clip=clip,
                                   normalize=normalize, population=population,
                                   sw=None if weights is None else weights[keep])
    pos = {key: Effect.from_scores(terms[key][0], _full(terms[key][1], keep), level=level, clusters=cluster)
           for key in TERMS}
    effects = add_derived({key: pos[a] - pos[b] for key, (a, b) in CONTRASTS.items()})
    # OVB pieces per regression: g(D,X) (residual Y - mu(D,X)), mu(D,M,X) (Y - mu(D,M,X)) and the nested
    # omega(1-D,X) (mu(1-D,M,X) - omega(1-D,X) on each row, the regression whose rows have that D)
    m_k, o_k = mumx[keep], omega[keep]
    residuals = {"g": yk - np.where(tk == 1, mux[keep, 1], mux[keep, 0]),
                 "mu": yk - np.where(tk == 1, m_k[:, 1], m_k[:, 0]),
                 "omega": np.where(tk == 1, m_k[:, 0] - o_k[:, 0], m_k[:, 1] - o_k[:, 1])}
    coefs = {key: {a: 1.0, b: -1.0} for key, (a, b) in CONTRASTS.items()}
    for kind in ("nie", "nde"):
        (a1, b1), (a0, b0) = CONTRASTS[(kind, "treated")], CONTRASTS[(kind, "control")]
        coefs[(kind, "average")] = {}
        for k, c in ((a1, 0.5), (b1, -0.5), (a0, 0.5), (b0, -0.5)):
            coefs[(kind, "average")][k] = coefs[(kind, "average")].get(k, 0.0) + c
    ovb = {key: _ovb(keep, ovb_stages(terms, coef, residuals)) for key, coef in coefs.items()}
    curve_p, curve_share = curvature(tk, yk, m_k, None if x is None else x[keep])
    diag = {"n_clipped": n_clipped, "curvature_p": curve_p, "curvature_share": curve_share,
            "pmx_range": (float(p1mx.min()), float(p1mx.max())),
            "px_range": (float(p1x.min()), float(p1x.max())),
            "potential_outcomes": {f"Y({a},M({b}))": pos[(a, b)] for a, b in TERMS}, "ovb": ovb}
    return effects, diag


# ---- repeated cross-fitting -----------------------------------------------------------------------------
def aggregate(reps: list, level: float) -> Effect:
    """One Effect from the same effect on ``R`` sample splits (Chernozhukov et al. 2018, as DoubleML):

        theta = median_r theta_r,    se = sqrt(median_r(se_r^2 + (theta_r - theta)^2)).

    Its per-row scores are the mean of the splits' scores, rescaled so that ``Effect.from_scores`` (with the
    splits' cluster labels, when they have them) returns exactly this SE; sums and differences with other
    Effects then carry the split variance approximately.
    """
    est = np.array([e.estimate for e in reps])
    se = np.array([e.se for e in reps])
    theta = float(np.median(est))
    agg_se = float(np.sqrt(np.median(se**2 + (est - theta) ** 2)))
    scores = np.mean([e.scores for e in reps], axis=0)
    clusters = reps[0].clusters  # the rescaling targets the SE the scores give under the same clustering
    base = Effect.from_scores(0.0, scores, clusters=clusters).se
    if base > 0:
        scores = scores * (agg_se / base)
    eff = Effect._normal(theta, agg_se, level, scores=scores,
                         method="influence" if clusters is None else "influence-cluster")
    eff.clusters = clusters
    return eff


def aggregate_unit(per_rep: list, level: float):
    """Effects and diagnostics of one unit from its per-split ``(effects, diag)``; the split spread is in
    ``diag["split"]``: per (effect, arm) the per-split estimates and SEs and their min / max / sd."""
    if len(per_rep) == 1:
        return per_rep[0]
    effects = {key: aggregate([eff[key] for eff, _ in per_rep], level) for key in per_rep[0][0]}
    first = per_rep[0][1]
    diag = dict(first)
    diag["potential_outcomes"] = {k: aggregate([d["potential_outcomes"][k] for _, d in per_rep], level)
                                  for k in first["potential_outcomes"]}
    diag["ovb"] = {key: {"sigma2": np.median([d["ovb"][key]["sigma2"] for _, d in per_rep], axis=0),
                         "nu2": np.median([d["ovb"][key]["nu2"] for _, d in per_rep], axis=0),
                         "psi_sigma2": np.mean([d["ovb"][key]["psi_sigma2"] for _, d in per_rep], axis=0),
                         "psi_nu2": np.mean([d["ovb"][key]["psi_nu2"] for _, d in per_rep], axis=0)}
                   for key in first["ovb"]}
    diag["n_clipped"] = int(np.median([d["n_clipped"] for _, d in per_rep]))
    for key in ("curvature_p", "curvature_share"):
        diag[key] = float(np.median([d[key] for _, d in per_rep]))
    split = {}
    for key in effects:
        est = np.array([eff[key].estimate for eff, _ in per_rep])
        split[key] = {"estimates": est, "ses": np.array([eff[key].se for eff, _ in per_rep]),
                      "min": float(est.min()), "max": float(est.max()), "sd": float(est.std(ddof=1))}
    diag["split"] = split
    diag["n_clipped_per_split"] = [d["n_clipped"] for _, d in per_rep]
    return effects, diag
