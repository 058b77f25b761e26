"""What a source's backup holds, and the one call the asset and the CLI share.

With ``backup.scope: database`` (the default) a backup is the whole database; the tables listed
here are the ones checksummed before and after the verifying restore. With ``scope: tables`` they
are also what is dumped: the source, every embedding table built for it (bindings not yet
deleted) and every table their foreign keys reach, so any state a cutover, rollback or deletion
can reach is restorable from it.
"""

from __future__ import annotations

import os

from embedding_pipeline.backup.catalog import apply_retention
from embedding_pipeline.backup.postgres import TableRef, referenced_closure
from embedding_pipeline.backup.run import BackupReport, backup_root, take_backup
from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database, table_exists
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.spaces.bindings import bindings

REDIS_URL_ENV = "REDIS_URL"


def tables_for_source(conn, config: PipelineConfig, source: str) -> list[TableRef]:
    src = config.source(source)
    tables = [TableRef(src.schema_, src.table, [src.id_column])]
    for b in bindings(conn, config.project_schema, source):
        if not b.is_legacy and b.status != "deleted" and table_exists(conn, b.table_schema, b.table_name):
            tables.append(TableRef(b.table_schema, b.table_name, ["source_id"]))
    return referenced_closure(conn, tables) if config.backup.scope == "tables" else tables


def backup_source(db: Database, config: PipelineConfig, source: str, *, redis_url: str | None = None) -> tuple[BackupReport, list]:
    """Take and verify a backup of one source, then apply retention; return (report, removed)."""
    with db.connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        tables = tables_for_source(conn, config, source)
    redis_url = redis_url if redis_url is not None else os.environ.get(REDIS_URL_ENV) or None
    report = take_backup(db, source=source, tables=tables, cfg=config.backup, redis_url=redis_url)
    removed = apply_retention(backup_root(db, config.backup), source, config.backup.keep) if report.verified else []
    return report, removed
