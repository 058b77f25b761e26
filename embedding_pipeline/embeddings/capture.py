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
from embedding_pipeline.embeddings.reembed import RunInProgress, delete_orphans, reembed
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.spaces.bindings import bindings
from embedding_pipeline.spaces.source import HAS_TEXT, SourceTable, inspect_source

log = logging.getLogger(__name__)


def function_name(source: str) -> str:
    return f"capture_{source}"


def trigger_name(source: str) -> str:
    return f"ep_capture_{source}"


def _function_ddl(conn, config: PipelineConfig, source: SourceTable) -> sql.Composed:
    c = source.cfg
    ins = sql.SQL("INSERT INTO {q} (source, source_id, op) VALUES ({src}, ").format(
        q=sql.Identifier(config.project_schema, QUEUE), src=sql.Literal(source.name))
    idc, txt = sql.Identifier(c.id_column), sql.Identifier(c.text_column)
    if c.row_filter:
        # The filter reads bare column names: evaluate it over OLD / NEW as one-row relations named
        # like the table, so `documents.deleted_at IS NULL` works too.
        alias = sql.Identifier(c.table)
        filt = sql.SQL(c.row_filter)
        verdict = sql.SQL(
            "SELECT coalesce(({f}), false) INTO _ep_was FROM (SELECT OLD.*) AS {a};\n"
            "      SELECT coalesce(({f}), false) INTO _ep_now FROM (SELECT NEW.*) AS {a};\n"
            "      IF _ep_was = _ep_now THEN RETURN NULL; END IF;").format(f=filt, a=alias)
    else:
        verdict = sql.SQL("RETURN NULL;")
    body = sql.SQL("""
#variable_conflict use_column
DECLARE
  _ep_was boolean;
  _ep_now boolean;
BEGIN
  IF TG_OP = 'DELETE' THEN
    {ins}OLD.{id}::text, 'D');
    RETURN NULL;
  END IF;
  IF TG_OP = 'UPDATE' THEN
    IF OLD.{id} IS DISTINCT FROM NEW.{id} THEN
      {ins}OLD.{id}::text, 'D');
    ELSIF OLD.{txt} IS NOT DISTINCT FROM NEW.{txt} THEN
      {verdict}
    END IF;
  END IF;
  {ins}NEW.{id}::text, left(TG_OP, 1));
  RETURN NULL;
END
""").format(ins=ins, id=idc, txt=txt, verdict=verdict)
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql SECURITY INVOKER AS {body}"
    ).format(fn=sql.Identifier(config.project_schema, function_name(source.name)),
             body=sql.Literal(body.as_string(conn)))


def _writer_roles(conn, source: SourceTable) -> list[str | None]:
    """Roles (None for PUBLIC) that may write the source, its owner excluded: the trigger runs as them."""
    rows = conn.execute(
        "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END "
        "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner "
        "AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE')", (source.ident.as_string(conn),)).fetchall()
    return [r[0] for r in rows]


def _grant_queue(conn, schema: str, roles: list[str | None]) -> None:
    for role in roles:
        who = sql.SQL("PUBLIC") if role is None else sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who))
        conn.execute(sql.SQL("GRANT INSERT ON {} TO {}").format(sql.Identifier(schema, QUEUE), who))
        conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
            sql.Identifier(schema, f"{QUEUE}_id_seq"), who))


def _has_trigger(conn, table: sql.Identifier, source: str) -> bool:
    return conn.execute("SELECT count(*) > 0 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
                        (table.as_string(conn), trigger_name(source))).fetchone()[0]


def _drop_trigger(conn, config: PipelineConfig, source: SourceTable | None, name: str) -> None:
    # Checked first: DROP TRIGGER IF EXISTS still needs ownership of the table, which cursor mode lacks.
    if source is not None and _has_trigger(conn, source.ident, name):
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            sql.Identifier(trigger_name(name)), source.ident))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(
        sql.Identifier(config.project_schema, function_name(name))))


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
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
                conn.execute(_function_ddl(conn, config, src))
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    sql.Identifier(trigger_name(source)), src.ident))
                conn.execute(sql.SQL(
                    "CREATE TRIGGER {tg} AFTER INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW EXECUTE FUNCTION {fn}()"
                ).format(tg=sql.Identifier(trigger_name(source)), tbl=src.ident,
                         fn=sql.Identifier(schema, function_name(source))))
                roles = _writer_roles(conn, src)
                _grant_queue(conn, schema, roles)
                conn.execute(sql.SQL(
                    "INSERT INTO {} AS st (source, mode, high_water) VALUES (%s, 'trigger', NULL) ON CONFLICT (source) "
                    "DO UPDATE SET mode = 'trigger', high_water = NULL, enabled_at = now() WHERE st.mode <> 'trigger'"
                ).format(state), (source,))
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
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        _drop_trigger(conn, config, src, source)  # switching from trigger to cursor
        conn.execute(sql.SQL(
            "INSERT INTO {} AS st (source, mode, high_water) VALUES (%s, 'cursor', clock_timestamp()) "
            "ON CONFLICT (source) DO UPDATE SET mode = 'cursor', high_water = clock_timestamp(), enabled_at = now() "
            "WHERE st.mode <> 'cursor'"
        ).format(state), (source,))
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
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout)))
        _drop_trigger(conn, config, src, source)
        row = conn.execute(sql.SQL("DELETE FROM {} WHERE source = %s RETURNING mode").format(
            sql.Identifier(schema, STATE)), (source,)).fetchone()
        record_audit(conn, schema, "capture_disable", source, details={"was": row[0] if row else None})
    return {"source": source, "disabled": row is not None, "was": row[0] if row else None,
            **queue_stats(conn, schema, source)}


def capture_status(conn, config: PipelineConfig, source: str) -> dict:
    schema = config.project_schema
    cfg = config.source(source)
    ensure_capture_tables(conn, schema)
    row = conn.execute(sql.SQL("SELECT mode, high_water, enabled_at FROM {} WHERE source = %s").format(
        sql.Identifier(schema, STATE)), (source,)).fetchone()
    trig = _has_trigger(conn, sql.Identifier(cfg.schema_, cfg.table), source)
    fn = conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                      "WHERE n.nspname = %s AND p.proname = %s", (schema, function_name(source))).fetchone()[0]
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
        out_of_date = [sql.SQL(
            "(c.ok AND NOT EXISTS (SELECT 1 FROM {t} e WHERE e.source_id = c.id AND e.content_sha256 = {h})) "
            "OR (NOT c.ok AND EXISTS (SELECT 1 FROM {t} e WHERE e.source_id = c.id))").format(
                t=config.space(s).on(source).ident, h=config.space(s).content_hash(sql.SQL("c.content")))
            for s in target_spaces(conn, config, source)] or [sql.SQL("false")]
        filt = sql.SQL(c.row_filter) if c.row_filter else sql.SQL("true")
        queued, newest = conn.execute(sql.SQL(
            "WITH c AS (SELECT {id} AS id, {txt} AS content, coalesce(({filt}) AND {txt} " + HAS_TEXT + ", false) AS ok, "
            "{upd} AS upd FROM {tbl} WHERE {upd} > %(since)s::timestamptz - make_interval(secs => %(overlap)s)), "
            "ins AS (INSERT INTO {q} (source, source_id, op) SELECT %(src)s, c.id::text, 'C' FROM c "
            "WHERE NOT EXISTS (SELECT 1 FROM {q} q WHERE q.source = %(src)s AND q.source_id = c.id::text) "
            "AND ({ood}) RETURNING 1) "
            "SELECT (SELECT count(*) FROM ins), (SELECT max(upd) FROM c)").format(
                id=sql.Identifier(c.id_column), txt=sql.Identifier(c.text_column), filt=filt,
                upd=sql.Identifier(c.updated_at_column), tbl=src.ident, q=sql.Identifier(schema, QUEUE),
                ood=sql.SQL(" OR ").join(out_of_date)),
            {"since": high_water or "-infinity", "overlap": overlap_seconds, "src": source}).fetchone()
        conn.execute(sql.SQL("UPDATE {} SET high_water = greatest(high_water, %s) WHERE source = %s").format(
            sql.Identifier(schema, STATE)), (newest, source))
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
                entries = conn.execute(sql.SQL(
                    "SELECT id, source_id FROM {} WHERE source = %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
                ).format(sql.Identifier(schema, QUEUE)), (source, limit)).fetchall()
                if not entries:
                    return result
                # Typed by the database so reembed's `id = ANY(...)` compares like with like (int, uuid, text).
                ids = [r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT x::{} FROM unnest(%s::text[]) x").format(
                    sql.SQL(src.id_type)), ([e[1] for e in entries],)).fetchall()]
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
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, QUEUE)),
                             (entry_ids,))
                result.update(claimed=len(entries), rows=len(ids), entry_ids=entry_ids)
        except RunInProgress as e:
            result["deferred"] = str(e)
            logger.warning(f"capture consumer for {source}: entries left queued: {e}")
    return result
