"""Vector spaces: the registry, one table per (source, space), and the source queries.

A space is an identity (model, revision, dimensions, prompts, normalisation, transport);
its ``model_version`` string is written into every row and pinned by a CHECK constraint,
so the database itself refuses a vector from another space. The legacy in-place column
(e.g. ``documents.embedding``) is adopted as a read-only binding and never altered.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.errors import DatabaseError
from embedding_pipeline.spaces.model import (
    OPS,
    index_name,
    model_version,
    space_table_name,
)
from embedding_pipeline.spaces.source import SourceTable


def space_table_ddl(source: SourceTable, schema: str, space: str, cfg) -> sql.Composed:
    table = space_table_name(source.name, space)
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {tbl} (\n"
        "    source_id {id_type} NOT NULL,\n"
        "    model_version text NOT NULL CONSTRAINT {ck} CHECK (model_version = {mv}),\n"
        "    content_sha256 bytea NOT NULL,\n"
        "    embedding {vtype}({dims}) NOT NULL,\n"
        "    embedded_at timestamptz NOT NULL DEFAULT now(),\n"
        # Covering primary key: drift counts (versions, coverage, stale, orphans) read the index
        # alone, never the wide vector heap.
        "    PRIMARY KEY (source_id) INCLUDE (model_version, content_sha256)\n"
        ")"
    ).format(
        tbl=sql.Identifier(schema, table),
        id_type=sql.SQL(source.id_type),  # a type name read from pg_catalog's format_type(), not from config
        ck=sql.Identifier(f"{table[:50]}_version_ck"),
        mv=sql.Literal(model_version(space, cfg)),
        vtype=sql.SQL(cfg.storage_type),
        dims=sql.Literal(cfg.dimensions),
    )


def ensure_binding(conn, config: PipelineConfig, source: SourceTable, space: str) -> None:
    """Create the space table for a source (or adopt the legacy column) and its binding row."""
    schema = config.project_schema
    cfg = config.space(space)
    legacy = source.cfg.legacy_space == space
    with conn.transaction():
        if legacy:
            row = (source.name, space, "legacy_column", source.cfg.schema_, source.cfg.table,
                   source.cfg.legacy_vector_column)
        else:
            conn.execute(space_table_ddl(source, schema, space, cfg))
            row = (source.name, space, "table", schema, space_table_name(source.name, space), "embedding")
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.bindings (source, space, storage, table_schema, table_name, vector_column) "
                "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (source, space) DO NOTHING"
            ).format(sql.Identifier(schema)),
            row,
        )


def binding(conn, schema: str, source: str, space: str) -> dict | None:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        sql.SQL("SELECT * FROM {}.bindings WHERE source = %s AND space = %s").format(sql.Identifier(schema)),
        (source, space),
    ).fetchone()


def bindings(conn, schema: str, source: str | None = None) -> list[dict]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    q = sql.SQL("SELECT * FROM {}.bindings WHERE (%(src)s::text IS NULL OR source = %(src)s) ORDER BY source, space")
    return cur.execute(q.format(sql.Identifier(schema)), {"src": source}).fetchall()


def active_space(conn, schema: str, source: str) -> str | None:
    row = conn.execute(
        sql.SQL("SELECT space FROM {}.bindings WHERE source = %s AND status = 'active'").format(sql.Identifier(schema)),
        (source,),
    ).fetchone()
    return row[0] if row else None


def initialise_active(conn, config: PipelineConfig, source: str) -> None:
    """At first start, mark the configured active space (the legacy column's model) active."""
    schema = sql.Identifier(config.project_schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cutover:{source}",))
        if active_space(conn, config.project_schema, source) is None:
            conn.execute(
                sql.SQL("UPDATE {}.bindings SET status = 'active', activated_at = now() "
                        "WHERE source = %s AND space = %s AND status = 'shadow'").format(schema),
                (source, config.source(source).active_space),
            )


def has_index(conn, schema: str, table: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND tablename = %s AND indexname = %s",
        (schema, table, index_name(table)),
    ).fetchone() is not None


def build_index(conn, config: PipelineConfig, source: str, space: str) -> bool:
    """Build the HNSW index after the bulk load (much faster than maintaining it row by row).

    ``maintenance_work_mem`` is raised for this transaction only: measured here, 100k x 384
    took 350 s at the default 64 MB and 75 s at 1 GB. Returns False when it already exists.
    """
    schema = config.project_schema
    cfg = config.space(space)
    table = space_table_name(source, space)
    if has_index(conn, schema, table):
        return False
    if cfg.dimensions > 4000:
        raise DatabaseError(f"space {space!r}: {cfg.dimensions} dimensions is past HNSW's limit; no index built")
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(cfg.index.maintenance_work_mem)))
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {idx} ON {tbl} USING hnsw (embedding {ops}) "
                    "WITH (m = {m}, ef_construction = {ef})").format(
                idx=sql.Identifier(index_name(table)), tbl=sql.Identifier(schema, table),
                ops=sql.SQL(OPS[cfg.storage_type][cfg.index.ops]), m=sql.Literal(cfg.index.m),
                ef=sql.Literal(cfg.index.ef_construction)))
    return True


def lock_key(source: str) -> str:
    """The advisory-lock key of every switch of a source (spaces.initialise_active uses it too)."""
    return f"cutover:{source}"


def active_binding(conn, schema: str, source: str) -> dict | None:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        sql.SQL("SELECT * FROM {}.bindings WHERE source = %s AND status = 'active'").format(sql.Identifier(schema)),
        (source,)).fetchone()
