"""The estimator protocol and the name registry.

Every estimator follows scikit-learn manners: ``__init__`` only stores settings; ``fit(data, *, graph=None,
units=None)`` returns a :class:`~deconfound.results.MediationResult`. The graph (default
``graphs/topic_mediation.gml``) decides what is adjusted for, through :func:`deconfound.graph.resolve`.

Contract for sensitivity analysis (``deconfound.sensitivity``): estimators whose effects are means of
scores store, per unit, ``result.diagnostics[unit]["ovb"][(effect, arm)] = {"sigma2", "nu2", "psi_sigma2",
"psi_nu2"}``, where sigma2 = E[(Y - g)^2] of the outcome nuisance, nu2 = E[alpha^2] with alpha the Riesz
representer (the weight multiplying the outcome residual in the score), and the psi_* arrays are their
per-row influence values (centred). A target built from several regressions (an NIE: g(D,X), mu(D,M,X) and
the nested omega) stores one value of sigma2 and nu2 per regression and n x J psi arrays.

Contract for ``summary()``: the result's ``population`` ("ate", "att", "atc" or "overlap", with
``settings["population_note"]``), one total effect ``("te", "average")``, and ``settings`` keys
``"method"``, ``"n_draws"``/``"n_sims"``, ``"n_boot"``, ``"n_folds"``, ``"n_rep"`` and ``"families"`` where they
apply (see :class:`deconfound.results.MediationResult`).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

from ..data import MediationData
from ..errors import DataError

_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: make an estimator available as ``get_estimator(name)``."""
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def get_estimator(name: str, **settings):
    """An estimator instance by registry name, e.g. ``get_estimator("parametric", n_sims=500)``.

    ``settings`` are the estimator's constructor arguments; an unknown name raises ValueError listing the
    registered ones (:func:`available_estimators`).

    Examples
    --------
    >>> from deconfound import simulate
    >>> data, truth = simulate.topic_mediation(500, seed=1)
    >>> est = get_estimator("parametric", n_sims=200, random_state=0)
    >>> est.get_params()["n_sims"]
    200
    >>> res = est.fit(data, graph="unadjusted_mediation")
    >>> print(res.estimator, res.graph, res.adjustment["first_stage"])
    parametric unadjusted_mediation []
    """
    from . import _load_all  # noqa: PLC0415 - import estimator modules on demand

    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"estimator: expected one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name](**settings)


def available_estimators() -> list[str]:
    """The registry names accepted by :func:`get_estimator`, sorted.

    Examples
    --------
    >>> {"parametric", "weighting", "dml", "patching"} <= set(available_estimators())
    True
    """
    from . import _load_all  # noqa: PLC0415

    _load_all()
    return sorted(_REGISTRY)


class MediationEstimator(ABC):
    """Base class: stores settings; ``fit`` returns a MediationResult."""

    name = "base"

    def get_params(self) -> dict:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def set_params(self, **params):
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"{type(self).__name__}: expected a parameter in {sorted(self.get_params())}, got {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @abstractmethod
    def fit(self, data, *, graph=None, units=None):
        """Estimate the effects of every unit in ``units`` (default all) and return a MediationResult."""


def check_units(data, units) -> list[str]:
    """The list of units to estimate, each checked against ``data`` (which must be a MediationData: a DataFrame
    gets a TypeError saying how to build one, not an AttributeError from inside the estimator)."""
    if not isinstance(data, MediationData):
        raise TypeError(f"fit: expected a MediationData, got {type(data).__name__} (build one with "
                        "MediationData.from_frame(df, treatment=..., outcome=..., mediators=..., confounders=...))")
    if units is None:
        return data.units
    if isinstance(units, str):
        units = [units]
    for u in units:
        if u not in data.mediators:
            raise DataError(f"units: expected names from {data.units[:10]}, got {u!r}")
    return list(units)


def sample_roles(data, cluster=None, weights=None):
    """The cluster labels and sampling weights of a fit: ``fit(..., cluster=, weights=)`` given as per-row
    arrays or confounder column names, else the data's own ``cluster`` / ``weights`` roles (None if absent).

    Returns ``(cluster, weights)``: labels (n,) or None, and positive weights scaled to mean 1, or None.
    """
    import numpy as np  # noqa: PLC0415 - keep this module's import light

    out = []
    for role, value in (("cluster", cluster), ("weights", weights)):
        if value is None:
            value = getattr(data, role, None)
        if isinstance(value, str):
            if value not in data.x.columns:
                raise DataError(f"{role}: expected a per-row array or a column of {data.confounder_names}, "
                                f"got {value!r}")
            value = data.x[value].to_numpy()
        if value is not None:
            value = np.asarray(value)
            if value.shape != (data.n,):
                raise DataError(f"{role}: expected one value per row ({data.n}), got shape {value.shape}")
        out.append(value)
    cluster, weights = out
    if cluster is not None and len(np.unique(cluster)) < 2:
        raise DataError(f"cluster: expected at least 2 clusters, got {len(np.unique(cluster))}")
    if weights is not None:
        try:
            weights = weights.astype(float)
        except (TypeError, ValueError):
            raise DataError(f"weights: expected numbers, got dtype {weights.dtype}") from None
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            bad = weights[~(np.isfinite(weights) & (weights > 0))][:3].tolist()
            raise DataError(f"weights: expected finite positive sampling weights, got {bad}")
        weights = weights / weights.mean()
    return cluster, weights


def attach_roles(data, cluster=None, weights=None):
    """``data`` carrying the fit's ``cluster`` and ``weights`` (as :func:`sample_roles` reads them) as its own
    roles, so that rows dropped later (positivity) drop their labels and weights with them; ``data`` itself
    when neither is given."""
    if cluster is None and weights is None:
        return data
    cluster, weights = sample_roles(data, cluster, weights)
    return data.replace(cluster=cluster, weights=weights)
