"""Change capture: which source rows changed while (and after) their vectors were built.

A backfill reads the source in one snapshot; every insert, edit, delete or soft delete
committed after that snapshot is invisible to it. Capture records those rows in
``<project_schema>.change_queue`` and ``consume`` re-embeds exactly them, so a per-model
table converges to 100% coverage with no stale vectors while the application keeps writing.

Two modes per source, kept in ``<project_schema>.capture_state``:

- ``trigger``: an AFTER INSERT/UPDATE/DELETE row trigger on the source table, calling a
  per-source SECURITY INVOKER function in the project schema. An UPDATE is queued when the
  text or the id changed, or when the row filter's verdict flipped (a soft delete or an
  undelete); updates of other columns (the application writing its legacy vector,
  ``updated_at`` bumps) are not. Roles that write the source then need INSERT on the queue:
  ``enable_capture`` grants it to every role holding a write privilege on the source.
- ``cursor``: without the privilege to create a trigger, a poll (run by ``consume``) queues
  rows whose ``updated_at_column`` is past the high-water mark minus an overlap, keeping only
  rows out of date in some target table, so late commits within the overlap are caught
  without requeuing rows already done. Hard deletes leave no row to see: they are removed
  by the orphan deletion of the next re-embed pass.

Start capture BEFORE the backfill: the backfill's snapshot plus the queue then cover every
change. The lazy strategy (lazy.py) writes op 'L' entries into the same queue.
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.audit import record_audit
from embedding_pipeline.db.connection import table_exists
from embedding_pipeline.db.queue import (
    MODES,
    QUEUE,
    STATE,
    capture_mode,
    ensure_capture_tables,
    queue_stats,
)
from embedding_pipeline.embeddings import queries
from embedding_pipeline.embeddings.reembed import RunInProgress, delete_orphans, reembed
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.source import SourceTable, inspect_source

log = logging.getLogger(__name__)


def function_name(source: str) -> str:
    return f"capture_{source}"


def trigger_name(source: str) -> str:
    return f"ep_capture_{source}"


def _function_ddl(conn, config: PipelineConfig, source: SourceTable) -> sql.Composed:
    c = source.cfg
    body = queries.trigger_function_body(sql.Identifier(config.project_schema, QUEUE), source.name, c.id_column,
                                         c.text_column, c.row_filter, c.table)
    return queries.create_trigger_function(sql.Identifier(config.project_schema, function_name(source.name)),
                                           body.as_string(conn))


def _writer_roles(conn, source: SourceTable) -> list[str | None]:
    """Roles (None for PUBLIC) that may write the source, its owner excluded: the trigger runs as them."""
    rows = conn.execute(queries.select_writer_roles(), (source.ident.as_string(conn),)).fetchall()
    return [r[0] for r in rows]


def _grant_queue(conn, schema: str, roles: list[str | None]) -> None:
    for role in roles:
        for stmt in queries.grant_queue(schema, QUEUE, role):
            conn.execute(stmt)


def _has_trigger(conn, table: sql.Identifier, source: str) -> bool:
    return conn.execute(queries.has_trigger(), (table.as_string(conn), trigger_name(source))).fetchone()[0]


def _drop_trigger(conn, config: PipelineConfig, source: SourceTable | None, name: str) -> None:
    # Checked first: DROP TRIGGER IF EXISTS still needs ownership of the table, which cursor mode lacks.
    if source is not None and _has_trigger(conn, source.ident, name):
        conn.execute(queries.drop_trigger(trigger_name(name), source.ident))
    conn.execute(queries.drop_function(sql.Identifier(config.project_schema, function_name(name))))


def enable_capture(conn, config: PipelineConfig, source: str, *, mode: str = "auto",
                   lock_timeout: str = "5s") -> dict:
    """Install the trigger (mode 'trigger'), fall back to the cursor on InsufficientPrivilege ('auto'),
    or use the cursor on ``updated_at_column`` ('cursor'). Idempotent; returns ``capture_status``."""
    if mode not in MODES:
        raise ConfigError(f"capture mode {mode!r} is not one of {list(MODES)}")
    schema = config.project_schema
    src = inspect_source(conn, source, config.source(source))
    conn.commit()
    ensure_capture_tables(conn, schema)
    conn.commit()
    state = sql.Identifier(schema, STATE)
    if mode != "cursor":
        try:
            with conn.transaction():
                # CREATE TRIGGER locks the table against writes: never queue the application behind us for long.
                conn.execute(queries.set_lock_timeout(lock_timeout))
                conn.execute(_function_ddl(conn, config, src))
                conn.execute(queries.drop_trigger(trigger_name(source), src.ident))
                conn.execute(queries.create_trigger(trigger_name(source), src.ident,
                                                    sql.Identifier(schema, function_name(source))))
                roles = _writer_roles(conn, src)
                _grant_queue(conn, schema, roles)
                conn.execute(queries.upsert_state_trigger(state), (source,))
                record_audit(conn, schema, "capture_enable", source, details={"mode": "trigger", "granted_to": roles})
            return capture_status(conn, config, source)
        except psycopg.errors.InsufficientPrivilege as e:
            if mode == "trigger":
                raise DatabaseError(
                    f"may not create a trigger on {src.qualified} (or a function in schema {schema}): "
                    f"{e.diag.message_primary}. Grant TRIGGER on the table, or use --mode cursor") from None
            log.warning(f"capture for {source}: no privilege to create a trigger on {src.qualified}; "
                        "falling back to the updated_at cursor")
        except psycopg.errors.LockNotAvailable:
            raise DatabaseError(f"could not lock {src.qualified} within {lock_timeout} to install the capture trigger "
                                "(long transactions hold it); retry when they finish") from None
    if not src.cfg.updated_at_column:
        raise ConfigError(f"sources.{source}.updated_at_column is not set, and capture without a trigger needs it: "
                          "name a timestamptz column the application bumps on every write, or grant TRIGGER")
    with conn.transaction():
        conn.execute(queries.set_lock_timeout(lock_timeout))
        _drop_trigger(conn, config, src, source)  # switching from trigger to cursor
        conn.execute(queries.upsert_state_cursor(state), (source,))
        record_audit(conn, schema, "capture_enable", source, details={"mode": "cursor"})
    return capture_status(conn, config, source)


def disable_capture(conn, config: PipelineConfig, source: str, *, lock_timeout: str = "5s") -> dict:
    """Remove the trigger, its function and the state row. Queued entries stay: they are still work to do."""
    schema = config.project_schema
    cfg = config.source(source)
    ensure_capture_tables(conn, schema)
    conn.commit()
    src = inspect_source(conn, source, cfg) if table_exists(conn, cfg.schema_, cfg.table) else None
    conn.commit()
    with conn.transaction():
        conn.execute(queries.set_lock_timeout(lock_timeout))
        _drop_trigger(conn, config, src, source)
        row = conn.execute(queries.delete_state(sql.Identifier(schema, STATE)), (source,)).fetchone()
        record_audit(conn, schema, "capture_disable", source, details={"was": row[0] if row else None})
    return {"source": source, "disabled": row is not None, "was": row[0] if row else None,
            **queue_stats(conn, schema, source)}


def capture_status(conn, config: PipelineConfig, source: str) -> dict:
    schema = config.project_schema
    cfg = config.source(source)
    ensure_capture_tables(conn, schema)
    row = conn.execute(queries.select_state(sql.Identifier(schema, STATE)), (source,)).fetchone()
    trig = _has_trigger(conn, sql.Identifier(cfg.schema_, cfg.table), source)
    fn = conn.execute(queries.count_functions(), (schema, function_name(source))).fetchone()[0]
    conn.commit()
    return {"source": source, "enabled": row is not None, "mode": row[0] if row else None,
            "high_water": row[1] if row else None, "enabled_at": row[2] if row else None,
            "trigger_installed": bool(trig), "function_installed": bool(fn), **queue_stats(conn, schema, source)}


# ---------------------------------------------------------------- the cursor


def target_spaces(conn, config: PipelineConfig, source: str) -> list[str]:
    """Per-model tables kept fresh for a source: its shadow and active table bindings still configured."""
    configured = set(config.spaces_for(source))
    return [b.space for b in bindings(conn, config.project_schema, source)
            if b.status in ("shadow", "active") and not b.is_legacy and b.space in configured]


def poll_cursor(conn, config: PipelineConfig, source: str, *, overlap_seconds: float = 60.0) -> int:
    """Queue rows updated past the high-water mark (minus ``overlap_seconds``) that are out of date in a target."""
    schema = config.project_schema
    with conn.transaction():
        mode, high_water = capture_mode(conn, schema, source, lock=True)
        if mode != "cursor":
            return 0
        src = inspect_source(conn, source, config.source(source))
        c = src.cfg
        out_of_date = [queries.out_of_date(config.space(s).on(source).ident,
                                           config.space(s).content_hash(sql.SQL("c.content")))
                       for s in target_spaces(conn, config, source)]
        queued, newest = conn.execute(
            queries.poll_cursor(src.ident, c.id_column, c.text_column, c.row_filter, c.updated_at_column,
                                sql.Identifier(schema, QUEUE), out_of_date),
            {"since": high_water or "-infinity", "overlap": overlap_seconds, "src": source}).fetchone()
        conn.execute(queries.advance_high_water(sql.Identifier(schema, STATE)), (newest, source))
    return queued


# ---------------------------------------------------------------- the consumer


def _reembed_waiting(db, config, source, space, provider, ids, wait_s, logger):
    """reembed() of some ids; another run on the same (source, space) is waited for, up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return reembed(db, config, source, space, provider, ids=ids, build_hnsw=False, logger=logger)
        except RunInProgress:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def consume(db, config: PipelineConfig, source: str, provider_for, *, limit: int = 1000,
            lock_wait_s: float = 120.0, logger=log) -> dict:
    """Claim up to ``limit`` queue entries, re-embed their rows into every target table, then delete them.

    Entries are claimed with FOR UPDATE SKIP LOCKED, so concurrent consumers take disjoint
    entries; the claiming transaction deletes them only after every target's vectors were
    committed (reembed writes on its own connections) and rolls back on any failure, so an
    entry is never lost. ``deferred`` is set when another run held a target past ``lock_wait_s``.
    """
    schema = config.project_schema
    result = {"source": source, "polled": 0, "claimed": 0, "rows": 0, "entry_ids": [], "spaces": {}, "deferred": None}
    with db.connect() as conn:
        ensure_capture_tables(conn, schema)
        conn.commit()
        result["polled"] = poll_cursor(conn, config, source)
        spaces = target_spaces(conn, config, source)
        src = inspect_source(conn, source, config.source(source))
        conn.commit()
        try:
            with conn.transaction():
                entries = conn.execute(queries.claim_entries(sql.Identifier(schema, QUEUE)), (source, limit)).fetchall()
                if not entries:
                    return result
                # Typed by the database so reembed's `id = ANY(...)` compares like with like (int, uuid, text).
                ids = [r[0] for r in conn.execute(queries.cast_ids(src.id_type), ([e[1] for e in entries],)).fetchall()]
                cursor_mode = capture_mode(conn, schema, source)[0] == "cursor"
                for space in spaces:
                    stats = _reembed_waiting(db, config, source, space, provider_for(space), ids, lock_wait_s, logger)
                    deleted = stats.deleted
                    if cursor_mode:
                        # The cursor cannot see hard deletes: sweep the whole table for orphans.
                        with db.connect() as sweep, sweep.transaction():
                            deleted += delete_orphans(sweep, src, config.space(space).on(src))
                    result["spaces"][space] = {"embedded": stats.embedded, "deleted": deleted}
                # An app whose columns were flipped: its rollback target's column follows the same rows.
                from embedding_pipeline.embeddings.app_sync import keep_retired_current

                result["app_column"] = keep_retired_current(db, config, source, ids, provider_for, logger=logger)
                entry_ids = [e[0] for e in entries]
                conn.execute(queries.delete_entries(sql.Identifier(schema, QUEUE)), (entry_ids,))
                result.update(claimed=len(entries), rows=len(ids), entry_ids=entry_ids)
        except RunInProgress as e:
            result["deferred"] = str(e)
            logger.warning(f"capture consumer for {source}: entries left queued: {e}")
    return result
