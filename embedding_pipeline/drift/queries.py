"""Every SQL statement of the drift package, composed with ``psycopg.sql``.

Grouped by purpose: the drift table's DDL (``drift_history``), the
per-space extras that only drift reads (catalog state of the vector column, NULL and
wrong-dimension counts), the history, and the alerts table.
The shared per-space counts (coverage, versions, stale, orphans) are not here: they belong
to ``embeddings.coverage``.

Identifiers are always ``sql.Identifier``; values are query parameters passed by the caller,
except the dimension compared in ``count_wrong_dims`` (a ``sql.Literal`` from the config).
"""

from __future__ import annotations

from psycopg import sql

# ---------------------------------------------------------------- DDL

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.drift_history (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        source text NOT NULL,
        space text NOT NULL,
        status text NOT NULL,
        eligible bigint NOT NULL,
        stored bigint NOT NULL,
        stale bigint NOT NULL,
        orphans bigint NOT NULL,
        null_vectors bigint NOT NULL,
        coverage double precision NOT NULL,
        version_share double precision NOT NULL,
        versions jsonb NOT NULL DEFAULT '{{}}',
        declared_dims integer,
        configured_dims integer NOT NULL,
        queue_depth integer,
        queue_lag_seconds double precision
    )""",
    "CREATE INDEX IF NOT EXISTS drift_history_source_at ON {s}.drift_history (source, at)",
    # Which check produced the row: 'full' (the proof an incremental check builds on) or 'incremental'.
    # Rows written before the split were all full checks.
    "ALTER TABLE {s}.drift_history ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'full'",
]


def create_drift_tables(schema: str) -> list[sql.Composed]:
    """The schema, drift_history and its index, each IF NOT EXISTS (the quality baseline lives in eval_reports)."""
    return [sql.SQL(stmt).format(s=sql.Identifier(schema)) for stmt in _DDL]


def lock_ddl() -> sql.SQL:
    """Params: the lock key (``stats.DRIFT_DDL_LOCK``); held until the transaction ends."""
    return sql.SQL("SELECT pg_advisory_xact_lock(%s)")


# ---------------------------------------------------------------- per-space extras


def select_vector_column_state() -> sql.SQL:
    """Params: expected model_version, the table's qualified name as text, vector column.

    (NOT NULL set, a validated CHECK naming the expected model_version exists); no row when the
    table or column does not exist.
    """
    return sql.SQL(
        "SELECT a.attnotnull, EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c' "
        "  AND k.convalidated AND position(quote_literal(%s::text) IN pg_get_constraintdef(k.oid)) > 0) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.oid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped")


def count_null_vectors(table: sql.Identifier, column: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(table, sql.Identifier(column))


def count_wrong_dims(table: sql.Identifier, column: str, dims: int) -> sql.Composed:
    """Vectors in ``column`` that are not ``dims``-dimensional."""
    return sql.SQL("SELECT count(*) FROM {} WHERE {c} IS NOT NULL AND vector_dims({c}) <> {d}").format(
        table, c=sql.Identifier(column), d=sql.Literal(dims))


# ---------------------------------------------------------------- history


def insert_history(schema: str) -> sql.Composed:
    """Params: at (NULL: now()), the 15 stats columns in order, mode; run with executemany."""
    return sql.SQL(
        "INSERT INTO {}.drift_history (at, source, space, status, eligible, stored, stale, orphans, "
        "null_vectors, coverage, version_share, versions, declared_dims, configured_dims, queue_depth, "
        "queue_lag_seconds, mode) VALUES (coalesce(%s, now()), %s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    ).format(sql.Identifier(schema))


def select_last_full(schema: str) -> sql.Composed:
    """Params: source, space; (at, eligible, stored, stale, orphans, coverage) of the latest full check."""
    return sql.SQL(
        "SELECT at, eligible, stored, stale, orphans, coverage FROM {}.drift_history "
        "WHERE source = %s AND space = %s AND mode = 'full' ORDER BY at DESC, id DESC LIMIT 1").format(
            sql.Identifier(schema))


def select_trigger_capture(state: sql.Identifier) -> sql.Composed:
    """Params: source, the source table's qualified name as text, trigger name.

    When the source is captured by an enabled trigger: (when capture was enabled, clock_timestamp()); else no row.
    """
    return sql.SQL(
        "SELECT st.enabled_at, clock_timestamp() FROM {} st WHERE st.source = %s AND st.mode = 'trigger' "
        "AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = to_regclass(%s) AND t.tgname = %s "
        "AND t.tgenabled <> 'D')").format(state)


def clock() -> sql.SQL:
    return sql.SQL("SELECT clock_timestamp()")


def select_history(schema: str) -> sql.Composed:
    """Params: source, limit; the latest ``limit`` rows, returned oldest first."""
    return sql.SQL(
        "SELECT * FROM (SELECT * FROM {}.drift_history WHERE source = %s ORDER BY at DESC, id DESC LIMIT %s) h "
        "ORDER BY at, id").format(sql.Identifier(schema))


# ---------------------------------------------------------------- alerts


def insert_alert(schema: str) -> sql.Composed:
    """Params: source, space, check_name, severity, message, details (JSON text); returns the id."""
    return sql.SQL(
        "INSERT INTO {}.alerts (source, space, check_name, severity, message, details) "
        "VALUES (%s,%s,%s,%s,%s,%s) RETURNING id").format(sql.Identifier(schema))


def select_pending_alerts(schema: str, *, lock: bool = False) -> sql.Composed:
    """Params: limit; oldest first. ``lock``: rows another deliverer holds are skipped, not waited for."""
    query = "SELECT * FROM {}.alerts WHERE NOT delivered ORDER BY id LIMIT %s"
    if lock:
        query += " FOR UPDATE SKIP LOCKED"
    return sql.SQL(query).format(sql.Identifier(schema))


def mark_delivered(schema: str) -> sql.Composed:
    """Params: a list of alert ids."""
    return sql.SQL("UPDATE {}.alerts SET delivered = true WHERE id = ANY(%s)").format(sql.Identifier(schema))


def count_pending_alerts(schema: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}.alerts WHERE NOT delivered").format(sql.Identifier(schema))
