"""The Dagster layer: one package per domain (backup, cutover, drift, embeddings, evaluation).

Each domain package's ``__init__`` exposes ``build(config) -> dg.Definitions``;
``definitions.py`` finds the packages here and merges what they build with the shared
resources (``resources.py``). Assets are thin: they read resources and call the core library.
"""

import importlib
import pkgutil
from types import ModuleType


def domains() -> list[ModuleType]:
    """Every domain package under ``defs/``, in name order (a new folder with ``build`` is picked up)."""
    return [importlib.import_module(f"{__name__}.{m.name}") for m in sorted(pkgutil.iter_modules(__path__),
                                                                           key=lambda m: m.name) if m.ispkg]
