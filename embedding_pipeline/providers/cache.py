"""One provider cache for the process: models are loaded once per space configuration.

The CLI, the Dagster resources and the read path all ask here. The key is the space's whole
configuration, not only its identity: two configs of one model that differ in endpoint, timeout
or batch size get their own provider.
"""

from __future__ import annotations

import threading
from typing import Any

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.providers.factory import build_provider

_providers: dict[tuple[str, str], Any] = {}
_providers_lock = threading.Lock()


def cached_provider(space) -> Any:
    """The provider of a resolved ``Space``, built on first use."""
    key = (space.name, space.cfg.model_dump_json())
    with _providers_lock:
        if key not in _providers:
            _providers[key] = build_provider(space.name, space.cfg)
        return _providers[key]


def default_provider_for(config: PipelineConfig):
    """``provider_for(space_name)`` over the process cache, for code that is handed a callable."""
    return lambda space: cached_provider(config.space(space))
