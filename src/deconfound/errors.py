"""Exception types. Every message says what was expected and what was found."""


class DeconfoundError(Exception):
    """Base class of all deconfound errors."""


class DataError(DeconfoundError, ValueError):
    """Bad data: NaN, wrong dtype, a role that is missing or used twice, mismatched lengths."""


class GraphError(DeconfoundError, ValueError):
    """A causal graph that is cyclic, or whose nodes do not match the data's roles."""


class PositivityError(DeconfoundError, ValueError):
    """A stratum (topic) present in one arm has no rows in the other."""


class ConvergenceError(DeconfoundError, RuntimeError):
    """An optimiser (e.g. entropy balancing) did not reach its tolerance."""


class ModelSiteError(DeconfoundError, ValueError):
    """An unknown architecture, site or layer for hooking a model."""


class MissingDependencyError(DeconfoundError, ImportError):
    """An optional package is not installed; the message gives the pip command."""


class CalibrationWarning(UserWarning):
    """The data resemble a cell of the calibration study (docs/coverage.md) where this estimator's default
    confidence intervals were measured outside [0.93, 0.97]."""


class NullPathsWarning(CalibrationWarning):
    """Some units' paths T -> M and M -> Y are both indistinguishable from 0, where the NIE's CIs are too wide
    (``deconfound.estimators.paths``). ``units`` names them."""

    def __init__(self, message: str, units=()):
        super().__init__(message)
        self.units = list(units)
