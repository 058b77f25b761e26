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
  rows whose ``updated_at_column`` is past a mark, keeping only rows out of date in some
  target table (so re-reading is cheap and nothing is queued twice). The mark is the earlier
  of the newest ``updated_at`` seen minus ``capture.overlap_seconds`` and the previous poll's
  safe point (the start of the oldest transaction then open, from pg_stat_activity: a row
  that poll could not see was written by a transaction that started after it), both minus
  ``capture.clock_skew_seconds`` for clients stamping ``updated_at`` from their own clock.
  Every ``capture.reconcile_every_seconds`` a reconcile compares every row's content hash with
  the stored vectors (the full pass's ``pending_rows``) and queues what differs, so a row whose
  ``updated_at`` was not bumped or lies further back is still found, and sweeps orphans.
  Hard deletes leave no row to see: in cursor mode they are found only by the orphan sweep
  (each consume that re-embeds, each reconcile); the trigger queues them as they happen.
  The cursor is refused where it cannot be complete: no ``updated_at_column`` (Honcho's
  ``documents`` has none), a column that is not a timestamp, or rows where it is NULL.

Start capture BEFORE the backfill: the backfill's snapshot plus the queue then cover every
change. The lazy strategy (lazy.py) writes op 'L' entries into the same queue.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import queries as db_queries
from embedding_pipeline.db.audit import record_audit
from embedding_pipeline.db.connection import column_types, table_exists
from embedding_pipeline.db.queue import (
    MODES,
    QUEUE,
    STATE,
    capture_mode,
    enqueue,
    ensure_capture_tables,
    queue_stats,
)
from embedding_pipeline.db.schema import SCHEMA_LOCK
from embedding_pipeline.embeddings import queries
from embedding_pipeline.embeddings.reembed import (
    RunInProgress,
    delete_orphans,
    pending_rows,
    reembed,
    run_lock_key,
)
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
    # The digests cover the spaces configured now; a space added later is read from the source by the
    # incremental drift check until the next consume (refresh_digests) or `capture enable` rewrites this.
    fingerprints = [config.space(name).fingerprint for name in config.spaces_for(source.name)]
    body = queries.trigger_function_body(sql.Identifier(config.project_schema, QUEUE), source.name, c.id_column,
                                         c.text_column, c.row_filter, c.table, fingerprints)
    return queries.create_trigger_function(sql.Identifier(config.project_schema, function_name(source.name)),
                                           body.as_string(conn))


def digest_gaps(conn, config: PipelineConfig, source: str) -> list[str]:
    """Spaces of the source whose content hash the installed trigger does not write into the queue (a space
    configured after capture was enabled); empty without a trigger."""
    row = conn.execute(queries.select_function_source(), (config.project_schema, function_name(source))).fetchone()
    if row is None:
        return []
    return [n for n in config.spaces_for(source) if config.space(n).fingerprint not in row[0]]


def refresh_digests(conn, config: PipelineConfig, src: SourceTable, logger) -> None:
    """Replace the trigger's function when a configured space has no digests in it (consume calls this)."""
    # Without its digests a new space's rows are read from the source by the incremental drift check:
    # correct, only slower. Replacing the function locks nothing the application's writes wait on.
    gaps = digest_gaps(conn, config, src.name)
    if not gaps:
        return
    try:
        with conn.transaction():
            # Concurrent consumers would both replace it ("tuple concurrently updated"): one does, under the lock.
            conn.execute(db_queries.lock_schema(), (SCHEMA_LOCK,))
            missing = digest_gaps(conn, config, src.name)
            if missing:
                conn.execute(_function_ddl(conn, config, src))
                logger.info(f"capture trigger of {src.qualified}: now also hashes for {', '.join(missing)}")
    except psycopg.errors.InsufficientPrivilege:
        # Another role installed the trigger: nothing is lost, the drift check only reads more.
        logger.warning(f"capture trigger of {src.qualified} hashes none of {', '.join(gaps)} and this role may not replace "
                       f"its function: run `embedding-pipeline capture enable --source {src.name}` as the role "
                       "that enabled capture")


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
    refusal = cursor_refusal(conn, src)
    conn.commit()
    if refusal:
        raise ConfigError(f"cursor capture of {src.qualified} cannot be complete: {refusal}. Use the trigger: "
                          f"GRANT TRIGGER ON {src.qualified} to this role and run `embedding-pipeline capture enable "
                          f"--source {source} --mode trigger` (it also queues hard deletes as they happen)")
    with conn.transaction():
        conn.execute(queries.set_lock_timeout(lock_timeout))
        _drop_trigger(conn, config, src, source)  # switching from trigger to cursor
        floor, _ = conn.execute(queries.transaction_floor()).fetchone()
        conn.execute(queries.upsert_state_cursor(state), (source, floor))
        record_audit(conn, schema, "capture_enable", source, details={"mode": "cursor"})
    return capture_status(conn, config, source)


def cursor_refusal(conn, src: SourceTable) -> str | None:
    """Why an ``updated_at`` cursor would miss rows of this source for good (None: it can be complete)."""
    c = src.cfg
    if not c.updated_at_column:
        return (f"sources.{src.name}.updated_at_column is not set (a cursor needs a timestamp column the "
                "application bumps on every write)")
    typ = column_types(conn, c.schema_, c.table)[c.updated_at_column]
    if not typ.startswith("timestamp"):
        return f"column {c.updated_at_column!r} is {typ}, not a timestamp"
    nulls = conn.execute(queries.count_null_updated_at(src.ident, c.updated_at_column)).fetchone()[0]
    if nulls:
        return f"{nulls} row(s) have {c.updated_at_column} NULL, which no cursor ever reaches"
    return None


CURSOR_WARNING = ("cursor mode: hard deletes are found only by the orphan sweep (each consume that re-embeds, "
                  "each reconcile), and a write that does not bump {col} is found only by the reconcile every "
                  "{every:.0f}s; the trigger captures both as they happen (GRANT TRIGGER ON {table}, then "
                  "`embedding-pipeline capture enable --source {source} --mode trigger`)")


def cursor_warning(config: PipelineConfig, source: str) -> str:
    c = config.source(source)
    return CURSOR_WARNING.format(col=c.updated_at_column, every=config.capture.reconcile_every_seconds,
                                 table=f"{c.schema_}.{c.table}", source=source)


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
    mode = row[0] if row else None
    return {"source": source, "enabled": row is not None, "mode": mode,
            "high_water": row[1] if row else None, "enabled_at": row[2] if row else None,
            "scan_from": row[3] if row else None, "reconciled_at": row[4] if row else None,
            "warnings": [cursor_warning(config, source)] if mode == "cursor" else [],
            "trigger_installed": bool(trig), "function_installed": bool(fn),
            "digests_missing": digest_gaps(conn, config, source), **queue_stats(conn, schema, source)}


# ---------------------------------------------------------------- the cursor


def target_spaces(conn, config: PipelineConfig, source: str) -> list[str]:
    """Per-model tables kept fresh for a source: its shadow and active table bindings still configured."""
    configured = set(config.spaces_for(source))
    return [b.space for b in bindings(conn, config.project_schema, source)
            if b.status in ("shadow", "active") and not b.is_legacy and b.space in configured]


def poll_cursor(conn, config: PipelineConfig, source: str) -> dict:
    """Queue rows updated past the mark (see the module docstring) that are out of date in a target.

    Returns ``{"queued", "reconcile_due", "hidden_sessions"}``; all zero/False outside cursor mode.
    """
    schema = config.project_schema
    cap = config.capture
    result = {"queued": 0, "reconcile_due": False, "hidden_sessions": 0}
    with conn.transaction():
        state = sql.Identifier(schema, STATE)
        row = conn.execute(queries.select_cursor_state(state), (source,)).fetchone()
        if row is None or row[0] != "cursor":
            return result
        _, high_water, scan_from, since_reconcile = row
        # Before the poll statement: under READ COMMITTED the poll's snapshot is taken after this
        # one, so every transaction it cannot see started after the floor (or is counted as hidden).
        floor, hidden = conn.execute(queries.transaction_floor()).fetchone()
        marks = [m for m in (high_water and high_water - timedelta(seconds=cap.overlap_seconds),
                             scan_from) if m]
        since = min(marks) - timedelta(seconds=cap.clock_skew_seconds) if marks else "-infinity"
        src = inspect_source(conn, source, config.source(source))
        c = src.cfg
        out_of_date = [queries.out_of_date(config.space(s).on(source).ident,
                                           config.space(s).content_hash(sql.SQL("c.content")))
                       for s in target_spaces(conn, config, source)]
        queued, newest = conn.execute(
            queries.poll_cursor(src.ident, c.id_column, c.text_column, c.row_filter, c.updated_at_column,
                                sql.Identifier(schema, QUEUE), out_of_date),
            {"since": since, "src": source}).fetchone()
        conn.execute(queries.advance_high_water(state), (newest, floor, source))
    if hidden:
        log.warning(f"capture cursor for {source}: {hidden} session(s) of other roles hide their transactions' "
                    "start from this role, so the cursor cannot wait for them; grant pg_read_all_stats, or rely "
                    "on the reconcile")
    result.update(queued=queued, hidden_sessions=hidden,
                  reconcile_due=since_reconcile is None or since_reconcile >= cap.reconcile_every_seconds)
    return result


def reconcile(db, config: PipelineConfig, source: str, *, logger=log) -> dict:
    """Queue every row whose stored vector is missing or of another content in some target, and sweep orphans.

    The cursor's safety net: a full read of the source and the target tables (hashing, no
    embedding), the same rows a full re-embed pass would pick. A target another run is writing
    is skipped this time (that run brings it up to date). Returns ``{"queued", "orphans_deleted",
    "skipped_spaces"}``; ``queued`` counts rows the cursor had not queued.
    """
    schema = config.project_schema
    found: set[str] = set()
    swept, skipped = 0, []
    with db.connect() as conn:
        src = inspect_source(conn, source, config.source(source))
        spaces = target_spaces(conn, config, source)
        conn.commit()
        for space in spaces:
            table = config.space(space).on(src)
            key = run_lock_key(source, space)
            locked = conn.execute(queries.try_lock_run(), (key,)).fetchone()[0]
            conn.commit()  # the advisory lock is the session's: it outlives this commit
            if not locked:
                skipped.append(space)
                continue
            try:
                found.update(r[0] for r in conn.execute(queries.pending_ids(pending_rows(src, table))).fetchall())
                conn.commit()
                with conn.transaction():
                    swept += delete_orphans(conn, src, table)
            finally:
                conn.rollback()
                conn.execute(queries.unlock_run(), (key,))
                conn.commit()
        with conn.transaction():
            queued = enqueue(conn, schema, source, sorted(found), "C")
            conn.execute(queries.mark_reconciled(sql.Identifier(schema, STATE)), (source,))
    if queued or swept:
        logger.warning(f"capture reconcile of {source}: {queued} changed row(s) the cursor had not queued (their "
                       f"{config.source(source).updated_at_column} was not bumped, is older than the cursor, or "
                       f"comes from a skewed clock) and {swept} orphan vector(s) of deleted rows. "
                       + cursor_warning(config, source))
    return {"queued": queued, "orphans_deleted": swept, "skipped_spaces": skipped}


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
    result = {"source": source, "polled": 0, "reconciled": None, "claimed": 0, "rows": 0, "entry_ids": [],
              "spaces": {}, "deferred": None}
    with db.connect() as conn:
        ensure_capture_tables(conn, schema)
        conn.commit()
        poll = poll_cursor(conn, config, source)
        result["polled"] = poll["queued"]
        if poll["reconcile_due"]:
            result["reconciled"] = reconcile(db, config, source, logger=logger)
        spaces = target_spaces(conn, config, source)
        src = inspect_source(conn, source, config.source(source))
        refresh_digests(conn, config, src, logger)
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
