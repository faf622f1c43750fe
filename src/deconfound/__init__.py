"""deconfound: causal mediation analysis of neural-network internals, with confounder (topic) adjustment.

``import deconfound`` is light: it never imports torch, transformers, dowhy or econml.
"""
from .data import MediationData
from .errors import (ConvergenceError, DataError, GraphError, MissingDependencyError, ModelSiteError,
                     PositivityError)
from .graph import CausalGraph, load_graph
from .inference import Effect
from .results import MediationResult
from .estimators import available_estimators, get_estimator
from . import simulate

__version__ = "0.1.0"

__all__ = ["MediationData", "CausalGraph", "load_graph", "Effect", "MediationResult", "get_estimator",
           "available_estimators", "simulate", "DataError", "GraphError", "PositivityError", "ConvergenceError",
           "ModelSiteError", "MissingDependencyError"]
