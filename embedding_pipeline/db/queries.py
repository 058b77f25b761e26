"""The SQL statements of the db package, composed with ``psycopg.sql``.

Grouped by purpose: the server (databases, the vector extension), the catalog (tables, column
types, declared dimensions), the project schema's DDL lock and the audit row, and the change
queue and capture state (mode, enqueueing, depth and lag, pending work).

The project's tables are defined where they are documented: ``schema._DDL`` (registry,
bindings, audit, eval reports, alerts, index builds) and ``queue._DDL`` (change queue, capture
state) stay lists of DDL templates formatted with the schema, run by ``ensure_schema`` and
``ensure_capture_tables`` under ``lock_schema``. This module imports nothing of ours, so the
queue builders take the queue's and state's identifiers (``queue.QUEUE``, ``queue.STATE``).

Identifiers are always ``sql.Identifier``; values are query parameters (``%s``, ``%(name)s``,
passed by the caller).
"""

from __future__ import annotations

from psycopg import sql

# ---------------------------------------------------------------- the server


def select_database() -> sql.SQL:
    """Params: database name; a row when it exists."""
    return sql.SQL("SELECT 1 FROM pg_database WHERE datname = %s")


def create_database(name: str) -> sql.Composed:
    return sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))


def select_vector_version() -> sql.SQL:
    """The created vector extension's version; no row when it is not created."""
    return sql.SQL("SELECT extversion FROM pg_extension WHERE extname = 'vector'")


def select_vector_available() -> sql.SQL:
    """A row when the server has the vector extension to create."""
    return sql.SQL("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")


def create_vector_extension() -> sql.SQL:
    return sql.SQL("CREATE EXTENSION IF NOT EXISTS vector")


# ---------------------------------------------------------------- the catalog


def select_table_exists() -> sql.SQL:
    """Params: schema, table; a row when it is a table, partitioned table, view or materialized view."""
    return sql.SQL(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm')")


def select_regclass_exists() -> sql.SQL:
    """Params: the relation's qualified name as text."""
    return sql.SQL("SELECT to_regclass(%s) IS NOT NULL")


def select_column_types() -> sql.SQL:
    """Params: schema, table; (column, formatted type) in column order."""
    return sql.SQL(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum")


def select_column_typmod() -> sql.SQL:
    """Params: schema, table, column; (atttypmod, type name)."""
    return sql.SQL(
        "SELECT a.atttypmod, t.typname FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped")


# ---------------------------------------------------------------- the project schema


def lock_schema() -> sql.SQL:
    """Params: the lock key (``schema.SCHEMA_LOCK``); held until the transaction ends."""
    return sql.SQL("SELECT pg_advisory_xact_lock(%s)")


def insert_audit(schema: str) -> sql.Composed:
    """Params: action, source, space, actor (NULL: current_user), forced, details (JSON text); returns the id."""
    return sql.SQL("INSERT INTO {}.audit (action, source, space, actor, forced, details) "
                   "VALUES (%s, %s, %s, coalesce(%s, current_user), %s, %s::jsonb) RETURNING id").format(
        sql.Identifier(schema))


# ---------------------------------------------------------------- change queue and capture state


def select_capture_mode(state: sql.Identifier, *, lock: bool = False) -> sql.Composed:
    """Params: source; (mode, high_water). ``lock``: FOR UPDATE."""
    return sql.SQL("SELECT mode, high_water FROM {} WHERE source = %s {}").format(
        state, sql.SQL("FOR UPDATE") if lock else sql.SQL(""))


def column_exists() -> sql.SQL:
    """Params: schema, table, column."""
    return sql.SQL("SELECT count(*) > 0 FROM information_schema.columns "
                   "WHERE table_schema = %s AND table_name = %s AND column_name = %s")


def enqueue(queue: sql.Identifier) -> sql.Composed:
    """Params: ``{"src", "op", "ids"}`` (ids as text); ids already queued for the source are skipped."""
    return sql.SQL(
        "INSERT INTO {q} (source, source_id, op) SELECT DISTINCT %(src)s, x, %(op)s FROM unnest(%(ids)s::text[]) x "
        "WHERE NOT EXISTS (SELECT 1 FROM {q} q WHERE q.source = %(src)s AND q.source_id = x)").format(q=queue)


def queue_depth_and_lag(queue: sql.Identifier) -> sql.Composed:
    """Params: source; (entries, seconds since the oldest entry; NULL when empty)."""
    return sql.SQL(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - min(at)) FROM {} WHERE source = %s").format(queue)


def max_queue_id(queue: sql.Identifier) -> sql.Composed:
    """Params: source."""
    return sql.SQL("SELECT max(id) FROM {} WHERE source = %s").format(queue)


def cursor_backlog(table: sql.Identifier, updated_at_column: str) -> sql.Composed:
    """Params: the high-water mark; (rows updated past it, seconds since the oldest of them)."""
    return sql.SQL(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - min({u})) FROM {t} WHERE {u} > %s").format(
            u=sql.Identifier(updated_at_column), t=table)


def max_updated_past(table: sql.Identifier, updated_at_column: str) -> sql.Composed:
    """Params: the high-water mark; the newest ``updated_at`` past it (NULL: none)."""
    return sql.SQL("SELECT max({u}) FROM {t} WHERE {u} > %s").format(u=sql.Identifier(updated_at_column), t=table)
