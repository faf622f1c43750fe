"""The language-model side: models, hook sites, capture/patch hooks and extraction.

Importing this package does not import torch; each function imports it when
called. See docs/lm_pipeline.md.
"""
