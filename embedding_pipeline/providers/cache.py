"""The read path: per source, one view and one search function over the active space only.

``<project_schema>."<source>_active_embedding"`` (source_id, embedding, space, model_version)
selects either the adopted legacy column of the source table or a per-model table joined to the
source's eligible rows, so filtered, soft-deleted and blank rows never appear.
``<project_schema>."<source>_search"(query, k)`` orders that view by the space's distance.

A switch (cutover.py) replaces both in the same transaction that updates the bindings, under
the ``cutover:<source>`` advisory lock. The view is dropped and created rather than replaced
because its vector column changes type when dimensions differ; readers wait on the view's lock
and then see the old or the new definition, never a mix.

Python ``search()`` runs in a REPEATABLE READ transaction that first locks the view (LOCK takes
no snapshot, so the snapshot is taken after any switch in flight has committed) and then reads
the binding: binding and view always agree, and a query embedded for a space that stopped being
active before the lock was granted is embedded again with the active space's provider.
"""

from __future__ import annotations

import threading
from typing import Any

from embedding_pipeline.config import PipelineConfig

_providers: dict[tuple[str, str], Any] = {}


_providers_lock = threading.Lock()


def default_provider_for(config: PipelineConfig):
    """Providers built once per process per space identity."""
    from embedding_pipeline.providers import build_provider

    def provider_for(space: str):
        cfg = config.space(space)
        with _providers_lock:
            key = (space, cfg.fingerprint)
            if key not in _providers:
                _providers[key] = build_provider(space, cfg)
            return _providers[key]
    return provider_for
