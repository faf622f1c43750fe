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
    applies: Callable[[int, int, int], bool]  # (n, n_treated, mediator width) -> resembles the failing cell
    cell: str
    measured: str
    advice: str


RULES = (
    Uncalibrated("weighting", lambda n, n1, d: n < 2000, "n < 2000 (4 topics)",
                 "NIE CIs covered 0.905 (control) and 0.915 (treated) at n = 800 over 200 data sets",
                 "use n_boot (bootstrap CIs) or dml at this size"),
    Uncalibrated("parametric-binary", lambda n, n1, d: True, "binary outcome, gaussian outcome model",
                 "TE and NDE CIs covered 0.87-0.90 at n = 300 and 2,000 (100 data sets each; SE/SD 0.80)",
                 "set outcome_family='probit' or 'logit' for a 0/1 outcome"),
)


def warn_uncalibrated(estimator: str, *, n: int, n_treated: int, width: int = 1, stacklevel: int = 3) -> str | None:
    """Warn (CalibrationWarning) when the data resemble a failing cell of ``estimator``; returns the message."""
    for rule in RULES:
        if rule.estimator == estimator and rule.applies(int(n), int(n_treated), int(width)):
            msg = (f"{estimator}: data like the calibration cell '{rule.cell}', where the default CIs are "
                   f"miscalibrated ({rule.measured}; see docs/coverage.md): {rule.advice}")
            warnings.warn(msg, CalibrationWarning, stacklevel=stacklevel)
            return msg
    return None
