"""Every SQL statement of the cutover package, composed with ``psycopg.sql``.

Grouped by purpose: the switch (the source's lock, the shadow evaluation a gate reads, the flip
of the bindings), delayed deletion, and an application's column cutover: its ``app_columns``
rows, staging a column (add, fill in keyed batches, refresh since a watermark, index), the flip
(lock, renames, bindings) and what it reports (the app's sessions, lock holders, table size).

Not here: the per-model table DDL and the HNSW DDL (``spaces.model``: ``SpaceTable.ddl``,
``Space.hnsw_ddl``), the ``app_columns`` DDL and the catalog reads stage and flip share
(``spaces.queries``, run by ``spaces.columns``), and the read path's view and search function
(``read_path.queries``). The locks and the existence check this package shares with those are
re-exported from them.

Identifiers are always ``sql.Identifier``; values are query parameters passed by the caller,
except where PostgreSQL takes none (``SET``) or the value sits in a LIMIT or interval built once
(``sql.Literal``), and the vector and id types from the config and catalog (``sql.SQL``).
"""

from __future__ import annotations

from psycopg import sql

from embedding_pipeline.read_path.queries import try_lock_source  # noqa: F401 (re-exported)
from embedding_pipeline.spaces.queries import (  # noqa: F401 (re-exported)
    drop_column,
    lock_source,
    select_regclass_exists,
)


def select_now() -> sql.SQL:
    return sql.SQL("SELECT now()")


# ---------------------------------------------------------------- switch


def select_latest_shadow_eval(schema: str) -> sql.Composed:
    """Params: source, candidate space; rows measuring a space alone (candidate = active) are skipped."""
    return sql.SQL(
        "SELECT id, at, eval_set, kind, active_space, gate_passed, tolerance, metrics, report_path FROM {}.eval_reports "
        "WHERE source = %s AND candidate_space = %s AND active_space <> candidate_space "
        "ORDER BY at DESC, id DESC LIMIT 1").format(sql.Identifier(schema))


def retire_active(schema: str) -> sql.Composed:
    """Params: retention in seconds, source, space; returns retired_at, delete_after (no row if not active)."""
    return sql.SQL(
        "UPDATE {}.bindings SET status = 'retired', retired_at = now(), "
        "delete_after = now() + make_interval(secs => %s) "
        "WHERE source = %s AND space = %s AND status = 'active' RETURNING retired_at, delete_after"
    ).format(sql.Identifier(schema))


def activate(schema: str) -> sql.Composed:
    """Params: previous space (or None), source, space; returns activated_at."""
    return sql.SQL(
        "UPDATE {}.bindings SET status = 'active', previous_space = %s, activated_at = now(), retired_at = NULL, "
        "delete_after = NULL WHERE source = %s AND space = %s RETURNING activated_at").format(sql.Identifier(schema))


# ---------------------------------------------------------------- deletion


def select_retired(schema: str) -> sql.Composed:
    return sql.SQL("SELECT source, space FROM {}.bindings WHERE status = 'retired' "
                   "ORDER BY source, space").format(sql.Identifier(schema))


def drop_table(table: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(table)


def mark_deleted(schema: str) -> sql.Composed:
    """Params: source, space."""
    return sql.SQL("UPDATE {}.bindings SET status = 'deleted', deleted_at = now() "
                   "WHERE source = %s AND space = %s").format(sql.Identifier(schema))


# ---------------------------------------------------------------- app columns: state rows


def insert_live_column(schema: str) -> sql.Composed:
    """Params: app, source, space, column_name; first use only (the app's column holds the legacy space)."""
    return sql.SQL(
        "INSERT INTO {}.app_columns (app, source, space, column_name, role) VALUES (%s,%s,%s,%s,'live') "
        "ON CONFLICT (source, space) DO NOTHING").format(sql.Identifier(schema))


def upsert_column(schema: str) -> sql.Composed:
    """Params: app, source, space, column_name, role; an existing row only takes the new column name."""
    return sql.SQL(
        "INSERT INTO {}.app_columns (app, source, space, column_name, role) VALUES (%s,%s,%s,%s,%s) "
        "ON CONFLICT (source, space) DO UPDATE SET column_name = EXCLUDED.column_name").format(sql.Identifier(schema))


def start_fill(schema: str) -> sql.Composed:
    """Params: source, space."""
    return sql.SQL("UPDATE {}.app_columns SET fill_started_at = now(), updated_at = now() "
                   "WHERE source = %s AND space = %s").format(sql.Identifier(schema))


def save_fill_cursor(schema: str) -> sql.Composed:
    """Params: the batch's last key (text), source, space."""
    return sql.SQL("UPDATE {}.app_columns SET fill_cursor = %s, updated_at = now() "
                   "WHERE source = %s AND space = %s").format(sql.Identifier(schema))


def finish_fill(schema: str) -> sql.Composed:
    """Params: source, space; the full pass is done: its start becomes the watermark."""
    return sql.SQL("UPDATE {}.app_columns SET fill_cursor = NULL, filled_watermark = fill_started_at, "
                   "updated_at = now() WHERE source = %s AND space = %s").format(sql.Identifier(schema))


def set_watermark(schema: str) -> sql.Composed:
    """Params: watermark, source, space."""
    return sql.SQL("UPDATE {}.app_columns SET filled_watermark = %s, updated_at = now() "
                   "WHERE source = %s AND space = %s").format(sql.Identifier(schema))


def set_column_role(schema: str, role: str) -> sql.Composed:
    """Params: column_name, source, space."""
    return sql.SQL("UPDATE {}.app_columns SET role = {}, column_name = %s, updated_at = now() "
                   "WHERE source = %s AND space = %s").format(sql.Identifier(schema), sql.Literal(role))


# ---------------------------------------------------------------- app columns: staging


def clear_stat_snapshot() -> sql.SQL:
    return sql.SQL("SELECT pg_stat_clear_snapshot()")


def flush_stats() -> sql.SQL:
    return sql.SQL("SELECT pg_stat_force_next_flush()")


def select_table_stats() -> sql.SQL:
    """Params: the table's qualified name as text; total size, dead and live tuples."""
    return sql.SQL(
        "SELECT pg_total_relation_size(c.oid), coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0) "
        "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(%s)")


def add_column(table: sql.Identifier, column: str, vector_type: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        table, sql.Identifier(column), sql.SQL(vector_type))


def fill_batch(per_model: sql.Identifier, table: sql.Identifier, column: str, id_column: str,
               id_type: str) -> sql.Composed:
    """Params: ``{"cur": last key or None, "n": batch size}``; copies the next batch of the per-model table.

    Returns the batch's last key (text), rows read, rows written.
    """
    return sql.SQL(
        "WITH batch AS (SELECT e.source_id, e.embedding FROM {pm} e "
        "  WHERE %(cur)s::text IS NULL OR e.source_id > %(cur)s::text::{idt} ORDER BY e.source_id LIMIT %(n)s), "
        "upd AS (UPDATE {tbl} t SET {col} = b.embedding FROM batch b "
        "  WHERE t.{id} = b.source_id AND t.{col} IS DISTINCT FROM b.embedding RETURNING 1) "
        "SELECT (SELECT max(source_id)::text FROM batch), (SELECT count(*) FROM batch), (SELECT count(*) FROM upd)"
    ).format(pm=per_model, idt=sql.SQL(id_type), tbl=table, col=sql.Identifier(column), id=sql.Identifier(id_column))


_SINCE = "e.embedded_at >= %(wm)s::timestamptz - make_interval(secs => {overlap})"


def _since_args(per_model, table, column, id_column, overlap_s) -> dict:
    return dict(pm=per_model, tbl=table, col=sql.Identifier(column), id=sql.Identifier(id_column),
                overlap=sql.Literal(overlap_s))


def count_unrefreshed(per_model: sql.Identifier, table: sql.Identifier, column: str, id_column: str,
                      overlap_s: int, limit: int | None) -> sql.Composed:
    """Params: ``{"wm": watermark}``; per-model rows embedded since it (less the overlap) that the column
    lacks, counted up to ``limit``."""
    return sql.SQL(
        "SELECT count(*) FROM (SELECT 1 FROM {pm} e JOIN {tbl} t ON t.{id} = e.source_id WHERE " + _SINCE
        + " AND t.{col} IS DISTINCT FROM e.embedding LIMIT {lim}) x").format(
            lim=sql.Literal(limit), **_since_args(per_model, table, column, id_column, overlap_s))


def refresh_column(per_model: sql.Identifier, table: sql.Identifier, column: str, id_column: str,
                   overlap_s: int) -> sql.Composed:
    """Params: ``{"wm": watermark}``; copies what ``count_unrefreshed`` counts."""
    return sql.SQL(
        "UPDATE {tbl} t SET {col} = e.embedding FROM {pm} e WHERE t.{id} = e.source_id AND " + _SINCE
        + " AND t.{col} IS DISTINCT FROM e.embedding").format(
            **_since_args(per_model, table, column, id_column, overlap_s))


def select_ids_since(per_model: sql.Identifier) -> sql.Composed:
    """Params: watermark, overlap in seconds."""
    return sql.SQL("SELECT source_id FROM {} WHERE embedded_at >= %s::timestamptz - make_interval(secs => %s) "
                   "ORDER BY source_id").format(per_model)


def fill_ids(table: sql.Identifier, column: str, per_model: sql.Identifier, id_column: str) -> sql.Composed:
    """Params: a list of source ids."""
    return sql.SQL("UPDATE {tbl} t SET {col} = e.embedding FROM {pm} e WHERE e.source_id = ANY(%s) "
                   "AND t.{id} = e.source_id AND t.{col} IS DISTINCT FROM e.embedding").format(
        tbl=table, col=sql.Identifier(column), pm=per_model, id=sql.Identifier(id_column))


def select_unfilled(eligible: sql.Composable, table: sql.Identifier, id_column: str, column: str,
                    id_type: str) -> sql.Composed:
    """Params: ``{"cur": last id or None, "n": batch size}``; eligible rows (id, content) whose column is NULL."""
    return sql.SQL(
        "SELECT s.id, s.content FROM ({eligible}) s WHERE EXISTS (SELECT 1 FROM {tbl} x WHERE x.{id} = s.id "
        "AND x.{col} IS NULL) AND (%(cur)s::text IS NULL OR s.id > %(cur)s::text::{idt}) "
        "ORDER BY s.id LIMIT %(n)s").format(eligible=eligible, tbl=table, id=sql.Identifier(id_column),
                                           col=sql.Identifier(column), idt=sql.SQL(id_type))


def write_vector(table: sql.Identifier, column: str, id_column: str, text_column: str) -> sql.Composed:
    """Params: vector, id, the text it was embedded from (a row still NULL whose text has not changed)."""
    return sql.SQL("UPDATE {tbl} SET {col} = %s WHERE {id} = %s AND {col} IS NULL AND {txt} = %s").format(
        tbl=table, col=sql.Identifier(column), id=sql.Identifier(id_column), txt=sql.Identifier(text_column))


def drop_index_concurrently(index: sql.Identifier) -> sql.Composed:
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index)


def set_session_maintenance_work_mem(value: str) -> sql.Composed:
    """For the session: CREATE INDEX CONCURRENTLY runs outside a transaction (the LOCAL form is ``spaces.queries``')."""
    return sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(value))


# ---------------------------------------------------------------- app columns: the flip


def select_app_sessions() -> sql.SQL:
    """Params: the app's roles, its application names (lists); other client sessions on this database."""
    return sql.SQL(
        "SELECT pid, usename, application_name, state, backend_start FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND (usename = ANY(%s) OR application_name = ANY(%s)) ORDER BY pid")


def lock_tables(tables: list[sql.Identifier]) -> sql.Composed:
    return sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.SQL(", ").join(tables))


def count_missing(eligible: sql.Composable, table: sql.Identifier, id_column: str, column: str) -> sql.Composed:
    """Eligible rows whose ``column`` is NULL."""
    return sql.SQL("SELECT count(*) FROM ({eligible}) s JOIN {tbl} t ON t.{id} = s.id WHERE t.{col} IS NULL").format(
        eligible=eligible, tbl=table, id=sql.Identifier(id_column), col=sql.Identifier(column))


def rename_column(table: sql.Identifier, old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(table, sql.Identifier(old), sql.Identifier(new))


def rename_index(index: sql.Identifier, new: str) -> sql.Composed:
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(index, sql.Identifier(new))


def set_legacy_column(schema: str) -> sql.Composed:
    """Params: vector_column, source, space; only a ``legacy_column`` binding follows its column."""
    return sql.SQL("UPDATE {}.bindings SET vector_column = %s WHERE source = %s AND space = %s "
                   "AND storage = 'legacy_column'").format(sql.Identifier(schema))


def select_lock_holders() -> sql.SQL:
    """Params: the tables' qualified names as text; other sessions holding a lock on them, and for how long."""
    return sql.SQL(
        "SELECT DISTINCT a.pid, now() - a.xact_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.relation = ANY(%s::regclass[]) AND a.pid <> pg_backend_pid()")
