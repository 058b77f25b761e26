"""Every SQL statement of the backup package, composed with ``psycopg.sql``.

Grouped by purpose: the catalog lookups a backup needs (primary keys, foreign-key targets,
whether a table exists, the server and the vector extension), the table checksum and its pinned
settings, the exported snapshot pg_dump reads, and the statements that prepare a restore target
(schemas, the vector extension, the scratch database of verification). ``postgres`` and ``run``
execute these; ``restore_commands`` prints the same CREATE statements for the operator.

Identifiers are always ``sql.Identifier``; values are query parameters (``%s``, passed by the
caller). Nothing here writes to the backed-up tables.
"""

from __future__ import annotations

from psycopg import sql

# ---------------------------------------------------------------- catalog


def select_primary_key() -> sql.SQL:
    """Params: schema, table; the primary-key columns in key order (no row: no primary key)."""
    return sql.SQL(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord")


def select_foreign_key_targets() -> sql.SQL:
    """Params: schema, table; (schema, table) of every table its foreign keys reference."""
    return sql.SQL(
        "SELECT rn.nspname, rc.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_class rc ON rc.oid = k.confrelid "
        "JOIN pg_namespace rn ON rn.oid = rc.relnamespace "
        "WHERE k.contype = 'f' AND n.nspname = %s AND c.relname = %s")


def select_regclass() -> sql.SQL:
    """Params: the table's qualified name as text; NULL when it does not exist."""
    return sql.SQL("SELECT to_regclass(%s)")


def show_server_version() -> sql.SQL:
    return sql.SQL("SHOW server_version")


def select_vector_extension() -> sql.SQL:
    """(schema, version) of the vector extension; no row when it is not created."""
    return sql.SQL("SELECT n.nspname, e.extversion FROM pg_extension e "
                   "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'")


# ---------------------------------------------------------------- checksums and the snapshot


def set_local_config() -> sql.SQL:
    """Params: setting name, value; lasts until the transaction ends."""
    return sql.SQL("SELECT set_config(%s, %s, true)")


def table_checksum(schema: str, table: str, key: list[str]) -> sql.Composed:
    """(rows, md5 over the rows' md5s), ordered by ``key``'s text in the C collation, then the whole row's."""
    order = [sql.SQL('r.{}::text COLLATE "C"').format(sql.Identifier(c)) for c in key]
    order.append(sql.SQL('ROW(r.*)::text COLLATE "C"'))
    return sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(md5(ROW(r.*)::text), '' ORDER BY {}), '')) FROM {} AS r"
    ).format(sql.SQL(", ").join(order), sql.Identifier(schema, table))


def export_snapshot() -> sql.SQL:
    """In a REPEATABLE READ transaction: the snapshot id pg_dump --snapshot reads."""
    return sql.SQL("SELECT pg_export_snapshot()")


# ---------------------------------------------------------------- restore targets


def create_schema(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


def create_vector_extension(schema: str) -> sql.Composed:
    return sql.SQL("CREATE EXTENSION IF NOT EXISTS vector SCHEMA {}").format(sql.Identifier(schema))


def create_scratch_database(name: str) -> sql.Composed:
    """From template0: nothing a site added to template1 can collide with the restored tables."""
    return sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))


def drop_scratch_database(name: str) -> sql.Composed:
    """Disconnects whoever is still connected (WITH (FORCE))."""
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
