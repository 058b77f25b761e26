"""Preparing a source: register its spaces, create their tables and bindings, set the active one.

The legacy in-place column (e.g. ``documents.embedding``) is adopted as a read-only binding and
never altered.
"""

from __future__ import annotations

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.read_path.install import ensure_read_path
from embedding_pipeline.spaces.bindings import ensure_binding, initialise_active
from embedding_pipeline.spaces.registry import (
    check_identity,
    register_space,
    registered_identity,
)
from embedding_pipeline.spaces.source import SourceTable, inspect_source


def prepare_source(conn, config: PipelineConfig, source_name: str, provider_for, spaces: list[str] | None = None) -> SourceTable:
    """Register the source's spaces, create their tables/bindings and set the first active space.

    ``provider_for(name)`` supplies providers for the canary vectors of spaces not yet registered.
    """
    source = inspect_source(conn, source_name, config.source(source_name))
    conn.commit()
    wanted = spaces if spaces is not None else [s for s in [source.cfg.legacy_space, *config.spaces_for(source_name)] if s]
    for space in wanted:
        if registered_identity(conn, config.project_schema, space) is None:
            register_space(conn, config, space, provider_for(space))
        else:
            check_identity(conn, config.project_schema, space, config.space(space))
        ensure_binding(conn, source, config.space(space))
    if source.cfg.active_space in wanted:
        initialise_active(conn, config, source_name)
        conn.commit()
        ensure_read_path(conn, config, source_name)
    conn.commit()
    return source
