"""Estimators of natural direct and indirect effects. Each returns a MediationResult.

Every registered estimator class can be imported from here by name (``from deconfound.estimators import
DMLMediation``); the module that defines it is imported on first access, so ``import deconfound`` stays light.
"""
from importlib import import_module

from .base import _REGISTRY, MediationEstimator, available_estimators, get_estimator, register

_MODULES = ("parametric", "weighting", "eb_total", "dml", "patching", "econml", "interventional")


def _load_all() -> None:
    """Import every estimator module that exists, so that it registers its names."""
    for mod in _MODULES:
        try:
            import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise


def _classes() -> dict[str, type]:
    _load_all()
    return {cls.__name__: cls for cls in _REGISTRY.values()}


def __getattr__(name: str):
    """A registered estimator class by its class name, imported on demand (PEP 562)."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    classes = _classes()
    if name in classes:
        return classes[name]
    if name in globals():  # a submodule that _load_all just imported
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; estimator classes: {sorted(classes)}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_classes()))


__all__ = ["MediationEstimator", "available_estimators", "get_estimator", "register"]
