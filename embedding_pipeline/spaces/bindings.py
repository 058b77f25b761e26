"""Bindings: where each space's vectors of each source live, and which one is active.

A binding is either one of our per-model tables (``storage = 'table'``) or the application's own
column adopted read-only (``'legacy_column'``). At most one binding per source is active (a unique
index says so); switches take the ``cutover:<source>`` advisory lock (``lock_key``).
"""

from __future__ import annotations

import logging
import threading

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.errors import DatabaseError
from embedding_pipeline.spaces import queries
from embedding_pipeline.spaces.model import (
    HNSW_MAX_DIM,
    STORAGE_LEGACY,
    STORAGE_TABLE,
    Binding,
    Space,
    SpaceTable,
)
from embedding_pipeline.spaces.source import SourceTable


def ensure_binding(conn, source: SourceTable, space: Space) -> Binding:
    """Create the space's table for a source (or adopt the legacy column) and its binding row."""
    legacy = source.cfg.legacy_space == space.name
    with conn.transaction():
        if legacy:
            row = (source.name, space.name, STORAGE_LEGACY, source.cfg.schema_, source.cfg.table,
                   source.cfg.legacy_vector_column)
        else:
            table = space.on(source)
            conn.execute(table.ddl(source.id_type))
            row = (source.name, space.name, STORAGE_TABLE, table.schema, table.name, "embedding")
        conn.execute(queries.insert_binding(space.schema), row)
    return binding(conn, space.schema, source.name, space.name)


def _rows(conn, query: sql.Composable, params) -> list[Binding]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return [Binding.from_row(r) for r in cur.execute(query, params).fetchall()]


def binding(conn, schema: str, source: str, space: str) -> Binding | None:
    found = _rows(conn, queries.select_binding(schema), (source, space))
    return found[0] if found else None


def bindings(conn, schema: str, source: str | None = None) -> list[Binding]:
    return _rows(conn, queries.select_bindings(schema), {"src": source})


def active_binding(conn, schema: str, source: str) -> Binding | None:
    found = _rows(conn, queries.select_active_binding(schema), (source,))
    return found[0] if found else None


def active_space(conn, schema: str, source: str) -> str | None:
    b = active_binding(conn, schema, source)
    return b.space if b else None


def initialise_active(conn, config: PipelineConfig, source: str) -> None:
    """At first start, mark the configured active space (the legacy column's model) active."""
    with conn.transaction():
        conn.execute(queries.lock_source(), (lock_key(source),))
        if active_space(conn, config.project_schema, source) is None:
            conn.execute(queries.activate_shadow(config.project_schema), (source, config.source(source).active_space))


def has_index(conn, table: SpaceTable) -> bool:
    return conn.execute(queries.select_index(), (table.schema, table.name, table.index_name)).fetchone() is not None


def build_index(conn, table: SpaceTable, *, progress_db=None, logger=None, interval: float = 10.0) -> bool:
    """Build the HNSW index after the bulk load (much faster than maintaining it row by row).

    ``maintenance_work_mem`` and ``max_parallel_maintenance_workers`` (the space's ``index``
    config) are raised for this transaction only: measured here, 100k x 384 took 350 s at the
    default 64 MB and 75 s at 1 GB. With ``progress_db`` (a ``Database``), a second connection
    reads ``pg_stat_progress_create_index`` every ``interval`` seconds and logs the phase and
    tuples done to ``logger``. Returns False when the index already exists.
    """
    space = table.space
    if has_index(conn, table):
        return False
    if space.dimensions > HNSW_MAX_DIM:
        raise DatabaseError(f"space {space.name!r}: {space.dimensions} dimensions is past HNSW's limit; "
                            "no index built")
    logger = logger or logging.getLogger(__name__)
    poller = _IndexProgress(progress_db, conn.info.backend_pid, table.qualified, logger, interval) \
        if progress_db is not None else None
    with conn.transaction():
        conn.execute(queries.set_maintenance_work_mem(space.index.maintenance_work_mem))
        conn.execute(queries.set_parallel_maintenance_workers(space.index.parallel_workers))
        if poller:
            poller.start()
        try:
            conn.execute(table.index_ddl())
        finally:
            if poller:
                poller.stop()
    return True


class _IndexProgress(threading.Thread):
    """Logs the build's row of ``pg_stat_progress_create_index`` from its own connection while it runs."""

    def __init__(self, db, pid: int, label: str, logger, interval: float):
        super().__init__(name=f"index progress {label}", daemon=True)
        self.db, self.pid, self.label, self.logger, self.interval = db, pid, label, logger, interval
        self._done = threading.Event()
        self.lines: list[str] = []

    def run(self) -> None:
        try:
            with self.db.connect(autocommit=True) as conn:
                while not self._done.wait(self.interval):
                    row = conn.execute(queries.select_index_progress(), (self.pid,)).fetchone()
                    if row is None:
                        continue
                    phase, done, total, bdone, btotal = row
                    pct = f" ({100.0 * done / total:.1f}%)" if total else ""
                    line = (f"HNSW build on {self.label}: {phase}, {done:,}/{total:,} tuples{pct}, "
                            f"{bdone:,}/{btotal:,} blocks")
                    self.lines.append(line)
                    self.logger.info(line)
        except (psycopg.Error, DatabaseError) as e:  # progress is a courtesy: the build itself goes on
            self.logger.warning(f"HNSW build on {self.label}: progress not readable ({e})")

    def stop(self) -> None:
        self._done.set()
        self.join()


def lock_key(source: str) -> str:
    """The advisory-lock key of every switch of a source (spaces.initialise_active uses it too)."""
    return f"cutover:{source}"
