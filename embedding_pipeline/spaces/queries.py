"""The SQL statements of the spaces package, composed with ``psycopg.sql``.

Grouped by purpose: the registry (``spaces``, ``space_canaries``), the bindings (``bindings``,
the per-source switch lock, HNSW builds), a source table's rows, and an application's columns
(``app_columns``, the catalog reads and ``SET LOCAL lock_timeout`` of stage and flip).
``bindings``, ``registry``, ``source`` and ``columns`` execute these (``SourceTable`` delegates
its row queries here).

A space's own SQL stays with the space in ``model``: its per-model table DDL, the HNSW DDL, its
row query and its content hash (``SpaceTable.ddl``, ``Space.hnsw_ddl``, ``SpaceTable.rows``,
``hash_expr``). ``model`` is the bottom layer that ``config`` builds on and imports nothing of
ours (``test_layers``), so it cannot compose through this module.

Identifiers are always ``sql.Identifier``; values are query parameters (``%s``, ``%(name)s``,
passed by the caller), except where PostgreSQL takes no parameter (DDL, ``SET``), where they
are ``sql.Literal``. The operator's ``row_filter`` is the one piece of raw SQL: it is config,
checked against the catalog by ``source.inspect_source`` before any other use.
"""

from __future__ import annotations

from psycopg import sql

# A row "has text" when some character is neither ASCII whitespace nor a Unicode space
# (NBSP, zero-width space, BOM, ...): the C locale's \\S would count those as content.
HAS_TEXT = "~ '[^[:space:]\\u00a0\\u1680\\u2000-\\u200b\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]'"


# ---------------------------------------------------------------- registry


def select_identity(schema: str) -> sql.Composed:
    """Params: name."""
    return sql.SQL("SELECT identity FROM {}.spaces WHERE name = %s").format(sql.Identifier(schema))


def insert_space(schema: str) -> sql.Composed:
    """Params: the 13 columns in order; returns the name, or no row when already registered."""
    return sql.SQL(
        "INSERT INTO {}.spaces (name, model, revision, transport, dimensions, storage_type, query_prompt, "
        "document_prompt, normalize, identity, fingerprint, model_version, retention_days) "
        "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (name) DO NOTHING RETURNING name"
    ).format(sql.Identifier(schema))


def insert_canary(schema: str) -> sql.Composed:
    """Params: space, idx, text_sha256, vector (one row; run with executemany)."""
    return sql.SQL("INSERT INTO {}.space_canaries (space, idx, text_sha256, vector) VALUES (%s,%s,%s,%s)").format(
        sql.Identifier(schema))


def select_canaries(schema: str) -> sql.Composed:
    """Params: space."""
    return sql.SQL("SELECT vector FROM {}.space_canaries WHERE space = %s ORDER BY idx").format(sql.Identifier(schema))


# ---------------------------------------------------------------- bindings


def insert_binding(schema: str) -> sql.Composed:
    """Params: source, space, storage, table_schema, table_name, vector_column."""
    return sql.SQL(
        "INSERT INTO {}.bindings (source, space, storage, table_schema, table_name, vector_column) "
        "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (source, space) DO NOTHING"
    ).format(sql.Identifier(schema))


def select_binding(schema: str) -> sql.Composed:
    """Params: source, space."""
    return sql.SQL("SELECT * FROM {}.bindings WHERE source = %s AND space = %s").format(sql.Identifier(schema))


def select_bindings(schema: str) -> sql.Composed:
    """Params: ``{"src": source or None}``; None lists every source's bindings."""
    return sql.SQL(
        "SELECT * FROM {}.bindings WHERE (%(src)s::text IS NULL OR source = %(src)s) ORDER BY source, space"
    ).format(sql.Identifier(schema))


def select_active_binding(schema: str) -> sql.Composed:
    """Params: source."""
    return sql.SQL("SELECT * FROM {}.bindings WHERE source = %s AND status = 'active'").format(sql.Identifier(schema))


def activate_shadow(schema: str) -> sql.Composed:
    """Params: source, space. Only a shadow is activated: a retired or deleted space never comes back this way."""
    return sql.SQL(
        "UPDATE {}.bindings SET status = 'active', activated_at = now() "
        "WHERE source = %s AND space = %s AND status = 'shadow'"
    ).format(sql.Identifier(schema))


def lock_source() -> sql.SQL:
    """Params: the lock key (``bindings.lock_key``); held until the transaction ends."""
    return sql.SQL("SELECT pg_advisory_xact_lock(hashtext(%s))")


def select_index() -> sql.SQL:
    """Params: schema, table, index name."""
    return sql.SQL("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND tablename = %s AND indexname = %s")


def set_maintenance_work_mem(value: str) -> sql.Composed:
    return sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(value))


def set_parallel_maintenance_workers(n: int) -> sql.Composed:
    """For the build's transaction only; the server's max_parallel_workers still caps it."""
    return sql.SQL("SET LOCAL max_parallel_maintenance_workers = {}").format(sql.Literal(int(n)))


def select_index_progress() -> sql.SQL:
    """Params: the building backend's pid. pgvector's HNSW build reports its phase and tuples here."""
    return sql.SQL("SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                   "FROM pg_stat_progress_create_index WHERE pid = %s")


# ---------------------------------------------------------------- source rows


def row_filter_sql(row_filter: str | None) -> sql.SQL:
    """The operator's row filter as SQL (``true`` when none is configured)."""
    return sql.SQL(row_filter) if row_filter else sql.SQL("true")


def explain_row_filter(table: sql.Identifier, row_filter: str) -> sql.Composed:
    """Plans (never runs) the operator's filter against the table, to reject it before any real use."""
    return sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(table, sql.SQL(row_filter))


def eligible_rows(table: sql.Identifier, id_column: str, text_column: str, row_filter: str | None) -> sql.Composed:
    """SELECT id, content of rows that should have a vector: filter passes, text not blank.

    The operator's filter is evaluated against the source alone, in a subquery, so its
    column names can never collide with the embedding table's.
    """
    return sql.SQL(
        "SELECT {id} AS id, {text} AS content FROM {tbl} WHERE ({filt}) AND {text} " + HAS_TEXT
    ).format(id=sql.Identifier(id_column), text=sql.Identifier(text_column), tbl=table,
             filt=row_filter_sql(row_filter))


def legacy_rows(table: sql.Identifier, id_column: str, text_column: str, row_filter: str | None, column: str,
                space: str, model_version: str) -> sql.Composed:
    """SELECT source_id, embedding, space, model_version of an adopted column's eligible rows.

    No table alias: the operator's filter may name the table itself.
    """
    return sql.SQL(
        "SELECT {id} AS source_id, {vec} AS embedding, {space}::text AS space, {mv}::text AS model_version "
        "FROM {tbl} WHERE ({filt}) AND {text} " + HAS_TEXT + " AND {vec} IS NOT NULL"
    ).format(id=sql.Identifier(id_column), vec=sql.Identifier(column), tbl=table, filt=row_filter_sql(row_filter),
             text=sql.Identifier(text_column), space=sql.Literal(space), mv=sql.Literal(model_version))



def drop_column(table: sql.Identifier, column: str) -> sql.Composed:
    """Drops an adopted legacy column: printed for the operator (plan, deletion), never run by the pipeline."""
    return sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(table, sql.Identifier(column))

# ---------------------------------------------------------------- an application's columns


def create_app_columns(schema: str) -> sql.Composed:
    """``app_columns``: per (source, space), the column that holds it and how far its fill has got."""
    return sql.SQL("""CREATE TABLE IF NOT EXISTS {s}.app_columns (
    app text NOT NULL,
    source text NOT NULL,
    space text NOT NULL,
    column_name text NOT NULL,
    role text NOT NULL CHECK (role IN ('live', 'staged', 'aside')),
    -- A fill pass walks the per-model table in source_id order; the cursor is its last key.
    fill_cursor text,
    fill_started_at timestamptz,
    -- Every per-model row embedded before this instant (less an overlap) is in the column.
    filled_watermark timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, space)
)""").format(s=sql.Identifier(schema))


def select_regclass_exists() -> sql.SQL:
    """Params: a qualified name as text; reads the catalog only (``evaluation.queries`` has the same one)."""
    return sql.SQL("SELECT to_regclass(%s) IS NOT NULL")


def select_app_columns(schema: str) -> sql.Composed:
    """Params: ``{"s": source or None}``; None lists every source's rows."""
    return sql.SQL("SELECT * FROM {}.app_columns WHERE (%(s)s::text IS NULL OR source = %(s)s) "
                   "ORDER BY source, space").format(sql.Identifier(schema))


def select_legacy_column(schema: str) -> sql.Composed:
    """Params: source, legacy space; the column its ``legacy_column`` binding names."""
    return sql.SQL(
        "SELECT vector_column FROM {}.bindings WHERE source = %s AND space = %s AND storage = 'legacy_column'"
    ).format(sql.Identifier(schema))


def select_hnsw_index() -> sql.SQL:
    """Params: schema, table, column; name, validity, opclass and reloptions of its HNSW index (a valid one first)."""
    return sql.SQL(
        "SELECT ic.relname, i.indisvalid, opc.opcname, coalesce(ic.reloptions, '{}') "
        "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] "
        "JOIN pg_opclass opc ON opc.oid = i.indclass[0] "
        "WHERE am.amname = 'hnsw' AND n.nspname = %s AND t.relname = %s AND a.attname = %s "
        "ORDER BY i.indisvalid DESC, ic.relname LIMIT 1")


def set_lock_timeout(value: int | str) -> sql.Composed:
    """``SET LOCAL lock_timeout``: milliseconds as an int, or a PostgreSQL interval text such as '5s'."""
    return sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(value)}ms" if isinstance(value, int)
                                                                     else value))
