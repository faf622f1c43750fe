"""Estimators of natural direct and indirect effects. Each returns a MediationResult."""
from importlib import import_module

from .base import MediationEstimator, available_estimators, get_estimator, register

_MODULES = ("parametric", "weighting", "dml", "patching", "econml", "interventional")


def _load_all() -> None:
    """Import every estimator module that exists, so that it registers its names."""
    for mod in _MODULES:
        try:
            import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise


__all__ = ["MediationEstimator", "available_estimators", "get_estimator", "register"]
