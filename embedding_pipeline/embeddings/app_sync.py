"""After an application's flip, keep its rollback target's column current for the rows it writes.

The app writes only the live space after a flip; the column of the space it would roll back to
(``embedding__<previous>``) would otherwise miss every row written since. Change capture calls
``keep_retired_current`` for the rows it consumed.
"""

from __future__ import annotations

import logging

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database
from embedding_pipeline.embeddings import queries
from embedding_pipeline.spaces.bindings import active_binding, binding
from embedding_pipeline.spaces.columns import (
    column_type,
    ensure_state,
    space_column,
    state_rows,
    write_vectors,
)
from embedding_pipeline.spaces.source import inspect_source

log = logging.getLogger(__name__)


def keep_retired_current(db: Database, config: PipelineConfig, source: str, ids: list, provider_for,
                         logger=log) -> dict | None:
    """Called by change capture for the rows it consumed: embed them into the rollback target's column.

    After a flip the app writes only the live space; the column of the space it would roll back
    to (``embedding__<previous>``) would miss every row written since. The retired space is
    often the legacy one, which has no per-model table, so its vectors are computed here with its
    own model, a short transaction per batch, and only where the text is still what was embedded.
    Returns what was written, or None when the source is not in a column app or nothing is retired.
    """
    app = config.app_of(source)
    if app is None or config.app(app).cutover != "column" or not ids:
        return None
    app_cfg = config.app(app)
    schema = config.project_schema
    with db.connect() as conn:
        ensure_state(conn, schema)
        conn.commit()
        live = next((r for r in state_rows(conn, schema, source) if r["role"] == "live"), None)
        current = active_binding(conn, schema, source)
        if live is None or current is None or current.space != live["space"] or not current.previous_space:
            return None
        prev = binding(conn, schema, source, current.previous_space)
        if prev is None or prev.status == "deleted" or prev.space not in config.spaces:
            return None
        src = inspect_source(conn, source, config.source(source))
        column = space_column(src.cfg.legacy_vector_column, prev.space)
        if column_type(conn, src.cfg.schema_, src.cfg.table, column) is None:
            return None
        rows = conn.execute(queries.select_eligible_by_ids(src.eligible_rows()), (list(ids),)).fetchall()
        conn.commit()
        written = 0
        c = src.cfg
        write = queries.update_app_column(src.ident, column, c.id_column, c.text_column)
        provider = provider_for(prev.space)
        for i in range(0, len(rows), app_cfg.fill_batch_size):
            chunk = rows[i:i + app_cfg.fill_batch_size]
            vecs = provider.embed_documents([r[1] for r in chunk])
            written += write_vectors(conn, write, chunk, vecs, app_cfg, f"keep {src.qualified}.{column} current")
    logger.info(f"{src.qualified}.{column}: {written} rows the app wrote since the flip embedded in {prev.space}")
    return {"app": app, "space": prev.space, "column": column, "rows": written}
