"""Cells of the calibration study where a default cannot pass, and the warning a fit on similar data raises.

The rules come from measured coverage (``make coverage``, docs/coverage.md, and the estimators' own statistical
tests). Each rule names the estimator, the condition on the data (n, treated count, mediator width) that
resembles the failing cell, what was measured, and what to do instead.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from .errors import CalibrationWarning


@dataclass(frozen=True)
class Uncalibrated:
    estimator: str
    applies: Callable[[dict], bool]  # the fit's features (n, n_treated, width, ...) -> resembles the failing cell
    cell: str
    measured: str
    advice: str
    problem: str = "the default CIs are miscalibrated"


# share of rows with p(M,X) outside [0.01, 0.99] above which weighting's analytic CIs under-cover: the interaction
# cells had 7.9-11.6% at n = 2,000 (12 data sets), the linear and probit cells 0
SEPARATION_SHARE = 0.02

# Kish ESS (rows) of the interventional estimator's residual-term weights in an arm, below which its NIE is not
# worth reading: over 180 simulated arms (n = 100-300; 1- and 20-dimensional mediators) the median NIE error was
# 0.28-5.4 SD(Y) below 10 effective rows and 0.06-0.31 SD(Y) from 10 up (a threshold of 5 left 1.2 SD unflagged)
MIN_WEIGHT_ESS = 10.0

# parametric's quasi-Bayesian draws of a sum of d coefficient products are wider than the estimate's spread where
# most products are near 0: from 20 columns with fewer than 100 rows per column its CIs over-covered (0.975-1.00
# with 20 columns at n = 300 and 50 at n = 300 and 2,000; 0.955-0.965 with 20 at n = 2,000; 200 data sets a cell)
WIDE_BLOCK, ROWS_PER_COLUMN = 20, 100


# an outcome regression whose RESET has p below CURVATURE_ALPHA, with the squared and cubed predictions explaining
# at least CURVATURE_SHARE of its residual sum of squares, misses a curve (dml-curved, interventional-curved). The
# share of the causal unit was 0.12-0.25 on the probit process at n = 300 and 2,000 (dml's NIE(treated) covered
# 0.85-0.91, interventional's 0.915), 0.006-0.06 on the binary one and at most 0.052 on the linear one
CURVATURE_ALPHA, CURVATURE_SHARE = 0.001, 0.05


def is_curved(diag: dict) -> bool:
    """A unit whose diagnostics' ``curvature_p`` and ``curvature_share`` say its outcome regressions miss a curve."""
    return bool(diag["curvature_p"] < CURVATURE_ALPHA and diag["curvature_share"] >= CURVATURE_SHARE)


def is_conservative_width(width: int, n: int) -> bool:
    """A block wide enough for its rows that parametric's CIs are too wide (the parametric-conservative rule)."""
    return width >= WIDE_BLOCK and n < ROWS_PER_COLUMN * width


RULES = (
    Uncalibrated("weighting", lambda f: f["n"] < 2000, "n < 2000 (4 topics)",
                 "NIE(treated) CIs covered 0.855 at n = 300 and 0.915 at n = 800, NIE(control) 0.905 at n = 800; "
                 "bootstrap CIs (n_boot=999) covered NIE(treated) 0.905 and 0.90 (SE/SD 0.86), 200 data sets each",
                 "use parametric or dml, whose CIs covered 0.94-0.96 and 0.94-0.97 on the same process at n = 300",
                 problem="the NIE CIs are too narrow, with or without the bootstrap"),
    Uncalibrated("dml-wide", lambda f: f.get("wide", False),
                 "a mediator too wide for its rows (fewer than 5 rows of the smaller arm per feature of [M, X])",
                 "with 50 mediator columns at n = 300 the NIE was 1.5-1.6 SE too small (coverage 0.55-0.625, 200 "
                 "data sets) and with 576 at n = 2,000 7.8-8.4 SE (coverage 0, 50 data sets)",
                 "reduce the block (pca=k), add rows, or use parametric, whose CIs covered 0.97-1.00 in both "
                 "cells (too wide, not biased)",
                 problem="the cross-validated penalties shrink the mediator's coefficients and the NIE toward 0"),
    Uncalibrated("dml-conservative", lambda f: f.get("conservative", False),
                 "a mediator of 50 or more columns (after pca) with 10-30 rows of the smaller arm per feature",
                 "with 50 columns at n = 2,000 (19 rows per feature) the NIE covered 0.985-0.99 (SE/SD 1.10-1.15, "
                 "200 data sets), with 200 columns at n = 9,000 (22) 0.95-1.00; at 33, 47 and 93 rows per feature "
                 "0.935-0.95 (no warning)",
                 "a significant NIE stands, but a non-significant one may only lack power: reduce the block "
                 "(pca=k) or compare with parametric",
                 problem="the NIE CIs are too wide"),
    Uncalibrated("dml-thin", lambda f: f.get("thin", False),
                 "a mediator of 50 or more columns (after pca) with 5-10 rows of the smaller arm per feature of "
                 "[M, X], or with features of at least 3.5 sqrt(rows of the smaller arm) (the propensity models "
                 "unpenalized, but barely identified)",
                 "with 576 columns NIE(treated) was 1.6, 0.97 and 0.82 SE too large at n = 10,000, 15,000 and "
                 "20,000 (features / sqrt(rows) 8.2, 6.7 and 5.8; coverage 0.66, 0.925 and 0.95) and NDE(control) "
                 "1.25, 1.0 and 0.7 SE too small (coverage 0.86, 0.875 and 0.90), 50, 40 and 40 data sets; at "
                 "n = 9,000 with 300 columns (ratio 4.5) NIE(treated) 0.59 SE too large (coverage 0.90), with 250 "
                 "(ratio 3.8) 0.38 SE and NDE(control) 0.53 SE too small (coverage 0.90), with 200 (ratio 3.0) "
                 "0.27 SE and every effect 0.95-1.00 (40 data sets each)",
                 "reduce the block (pca=k, with k + the confounder columns below 3 sqrt(rows of the smaller arm)) "
                 "or add rows",
                 problem="the NIE is biased up and the NDE down"),
    Uncalibrated("dml-curved", lambda f: f.get("curved", False),
                 "an outcome curved in the mediator (RESET of the out-of-fold ridge outcome regressions: p < "
                 "0.001, the curve at least 5% of the residual sum of squares)",
                 "on the probit process at n = 2,000 (Y = Phi(index) + noise) the NIE(treated) covered 0.885 with "
                 "SE/SD 0.85 (200 data sets); dml stays consistent through its propensity models, but the linear "
                 "ridge leaves their estimation error out of the SE",
                 "pass an outcome_learner that fits the curve, e.g. make_pipeline(StandardScaler(), "
                 "SplineTransformer(), RidgeCV()), which covered 0.91-0.98 there; where the mediator nearly "
                 "separates the arms its extrapolation can bias the NIE (0.81-0.88 on the interaction process), so "
                 "compare both fits",
                 problem="the SEs are too small"),
    Uncalibrated("econml_diff", lambda f: True, "any data (NIE = TE - CDE from two DRLearners)",
                 "TE - CDE is the NIE only when the direct effect of T does not depend on M: on the probit process "
                 "at n = 2,000 the NIE was 0.75 SE off (coverage 0.81), with a T x M interaction 0.91-0.92; on "
                 "the linear process it covered 0.89-0.97 and its test of a zero NIE rejected 0.02-0.04 (100 data "
                 "sets a cell)",
                 "read its NIE as a point of comparison and take CIs and tests from dml or parametric",
                 problem="the NIE is biased unless the outcome is linear in T and M"),
    Uncalibrated("weighting-separation", lambda f: f.get("share_extreme", 0.0) > SEPARATION_SHARE,
                 f"p(M,X) near 0 or 1 for more than {SEPARATION_SHARE:.0%} of rows (strong T -> M path, T x M "
                 "interaction)",
                 "NIE and NDE CIs covered 0.71-0.82 at n = 2,000 over 100 data sets (SE/SD 0.68-0.79)",
                 "read these CIs as too narrow; dml's defaults recovered every effect within 3 SE on such data at n = 5,000"),
    Uncalibrated("weighting-penalized", lambda f: f.get("penalized", False),
                 "a mediator too wide for its rows (p(M,X) penalized: fewer than 5 rows of the smaller arm per "
                 "feature)",
                 "with 50 mediator columns at n = 300 the NIE was 5.9-6.1 SE too small (coverage 0.01-0.02, 200 "
                 "data sets), and 576 columns at n = 2,000 13 SE (30 data sets); 30-50 columns at n = 300-400 gave "
                 "2.7-6.2 SE (coverage 0-0.23), while 50 columns at n = 600, unpenalized, gave 0.24 SE (coverage "
                 "0.97)",
                 "reduce the mediator (pca=k, k well below the smaller arm / 5) or use parametric, whose CIs "
                 "covered 0.97-1.00 at 50 columns and n = 300 (too wide, not biased)",
                 problem="the cross-validated penalty shrinks p(M,X) toward p(X) and the NIE toward 0"),
    Uncalibrated("parametric-conservative", lambda f: f.get("conservative", False),
                 f"a mediator block of {WIDE_BLOCK} or more columns with fewer than {ROWS_PER_COLUMN} rows per column",
                 "NIE CIs covered 0.985-0.99 with 20 columns at n = 300 (SE/SD 1.17) and 0.98-1.00 with 50 at "
                 "n = 300 and 2,000 (SE/SD 1.15-1.33), 200 data sets each, with TE and NDE up to 0.99; with 576 "
                 "at n = 10,000 the NIE covered 0.965-0.985 and the NDE 0.92-0.94 (200 data sets)",
                 "a significant NIE stands, but a non-significant one may only lack power: fit fewer columns "
                 "(a few principal components of the block) or compare with interventional",
                 problem="the NIE CIs are too wide"),
    Uncalibrated("parametric-binary", lambda f: True, "binary outcome, gaussian outcome model",
                 "TE and NDE CIs covered 0.82-0.90 at n = 300 and 2,000 (SE/SD 0.81-0.91, 200 data sets each) "
                 "and 0.18-0.83 at n = 10,000",
                 "set outcome_family='probit' or 'logit' for a 0/1 outcome"),
    Uncalibrated("interventional-reduced", lambda f: f.get("reduced", False),
                 "a mediator reduced to fewer principal components than its columns",
                 "576 columns reduced to 177 components at n = 2,000: NIE 0.55-0.67 SE too small (coverage "
                 "0.90-0.96, 50 data sets); 50 columns reduced to a fixed 5: 1.1-1.4 SE (coverage 0.63-0.75), "
                 "and kept whole at n = 2,000 within 0.05 SE",
                 "more rows keep more components (n_components='auto'); patching measures the unit whole",
                 problem="the NIE through the directions left out is counted in the NDE, so the NIE is shrunk "
                         "toward 0"),
    Uncalibrated("interventional-curved", lambda f: f.get("curved", False),
                 "an outcome curved in the mediator, or with an interaction the linear outcome regressions b_a "
                 "miss (their RESET: p < 0.001, the squared and cubed fits at least 5% of the residual sum of "
                 "squares)",
                 "on the probit process (Y = Phi(index) + noise) NIE(treated) covered 0.915 at n = 300 and 2,000 "
                 "(SE/SD 0.86 and 0.89, 200 data sets each) and 0.92 at n = 10,000 (100); the estimator stays "
                 "consistent through its density ratios, but the SE leaves out the regressions' misfit",
                 "read the CIs as about 10% too narrow; with no earlier units (intermediate=None) the effects are "
                 "the natural ones, and dml with a spline outcome_learner covered 0.91-0.98 on that process",
                 problem="the SEs are too small"),
    Uncalibrated("interventional-binary", lambda f: f.get("binary", False) and f["n"] < 2000,
                 "a 0/1 outcome and n < 2000",
                 "on the binary process at n = 300 NIE(treated) covered 0.9225 and NIE(control) 0.92 (SE/SD "
                 "0.93-0.95, 400 data sets), the NDE and TE 0.94-0.96; at n = 2,000 every effect covered 0.94-0.96 "
                 "(200 data sets)",
                 "read the NIE CIs as slightly too narrow; with no earlier units (intermediate=None) the effects "
                 "are the natural ones, and dml covered 0.94-0.96 on that process at n = 300",
                 problem="the NIE CIs are too narrow"),
    Uncalibrated("interventional-weights", lambda f: f.get("weight_ess", float("inf")) < MIN_WEIGHT_ESS,
                 f"density-ratio weights with a Kish ESS below {MIN_WEIGHT_ESS:g} rows in an arm (the mediator "
                 "nearly separates the arms)",
                 "median NIE error 0.28-5.4 SD of Y below 10 effective rows, 0.06-0.31 SD from 10 up, over 180 "
                 "simulated arms at n = 100-300; the CIs widened but the estimates were meaningless",
                 "do not read the estimate; reduce n_components or z_bins, add rows, or rely on patching",
                 problem="the estimate rests on a few rows' extreme weights"),
)


def curve_what(curved, diag: dict) -> str:
    """The detail of a *-curved warning: the curved units and the first one's RESET p-value and curve share."""
    return (f" (units {few(curved)}: RESET p = {diag['curvature_p']:.2g}, the curve {diag['curvature_share']:.0%} "
            f"of the residual sum of squares for {curved[0]!r})")


def few(units, limit: int = 5) -> str:
    """The first ``limit`` unit names as a list, with " ..." when there are more (for warning texts)."""
    units = list(units)
    return f"{units[:limit]}{' ...' if len(units) > limit else ''}"


def warn_uncalibrated(estimator: str, *, n: int, n_treated: int, width: int = 1, stacklevel: int = 3,
                      what: str = "", **features) -> str | None:
    """Warn (CalibrationWarning) when the data resemble a failing cell of ``estimator``; returns the message.

    ``features`` add what a rule may need besides the sizes (e.g. ``share_extreme``); ``what`` names the part
    of the fit the warning is about (e.g. the units)."""
    feats = {"n": int(n), "n_treated": int(n_treated), "width": int(width), **features}
    for rule in RULES:
        if rule.estimator == estimator and rule.applies(feats):
            msg = (f"{estimator.split('-')[0]}{what}: data like the calibration cell '{rule.cell}', where "
                   f"{rule.problem} ({rule.measured}; see docs/coverage.md): {rule.advice}")
            warnings.warn(msg, CalibrationWarning, stacklevel=stacklevel)
            return msg
    return None
