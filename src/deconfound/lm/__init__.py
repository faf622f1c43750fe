"""The language-model side: models, hook sites, capture/patch hooks and extraction.

Importing this package does not import torch or transformers; each function
imports them when called. See docs/lm_pipeline.md.
"""
from .extract import Treatment, extract, load_extraction, run_batch
from .hooks import Capture, capture, patch
from .models import LoadedModel, load_model, tiny_model
from .prompts import extract_prompts, read_prompts
from ._torch import set_threads
from .sites import ARCHITECTURES, SITE_KINDS, Site, expand_sites

__all__ = [
    "ARCHITECTURES", "SITE_KINDS", "Capture", "LoadedModel", "Site", "Treatment", "capture", "expand_sites",
    "extract", "extract_prompts", "load_extraction", "load_model", "patch", "read_prompts", "run_batch",
    "set_threads", "tiny_model",
]
