"""Vector spaces: the registry, one table per (source, space), and the source queries.

A space is an identity (model, revision, dimensions, prompts, normalisation, transport);
its ``model_version`` string is written into every row and pinned by a CHECK constraint,
so the database itself refuses a vector from another space. The legacy in-place column
(e.g. ``documents.embedding``) is adopted as a read-only binding and never altered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from embedding_pipeline.canaries import CANARY_TEXTS
from embedding_pipeline.config import PipelineConfig, SourceConfig
from embedding_pipeline.db import column_types, table_exists
from embedding_pipeline.errors import ConfigError, DatabaseError, SpaceIdentityError

MAX_IDENT = 63
# A row "has text" when some character is neither ASCII whitespace nor a Unicode space
# (NBSP, zero-width space, BOM, ...): the C locale's \\S would count those as content.
HAS_TEXT = "~ '[^[:space:]\\u00a0\\u1680\\u2000-\\u200b\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]'"


def model_version(name: str, cfg) -> str:
    return f"{name}@{cfg.fingerprint[:16]}"


def space_table_name(source: str, space: str) -> str:
    """``<source>__<space>``, shortened with a hash when past PostgreSQL's 63-byte limit."""
    name = f"{source}__{space}"
    if len(name.encode()) <= MAX_IDENT - 6:  # room for the "_hnsw" index suffix
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_IDENT - 16]}_{digest}"


@dataclass(frozen=True)
class SourceTable:
    """A configured source table, checked against the live catalog."""

    name: str
    cfg: SourceConfig
    id_type: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.cfg.schema_, self.cfg.table)

    @property
    def qualified(self) -> str:
        return f"{self.cfg.schema_}.{self.cfg.table}"

    def eligible_rows(self) -> sql.Composed:
        """SELECT id, content of rows that should have a vector: filter passes, text not blank.

        The operator's filter is evaluated against the source alone, in a subquery, so its
        column names can never collide with the embedding table's.
        """
        c = self.cfg
        filt = sql.SQL(c.row_filter) if c.row_filter else sql.SQL("true")
        return sql.SQL(
            "SELECT {id} AS id, {text} AS content FROM {tbl} WHERE ({filt}) AND {text} " + HAS_TEXT
        ).format(id=sql.Identifier(c.id_column), text=sql.Identifier(c.text_column), tbl=self.ident, filt=filt)


def inspect_source(conn: psycopg.Connection, name: str, cfg: SourceConfig) -> SourceTable:
    """Check the table and columns exist; raise a ConfigError naming what is missing and the fix."""
    if not table_exists(conn, cfg.schema_, cfg.table):
        raise ConfigError(
            f"sources.{name}: table {cfg.schema_}.{cfg.table} does not exist in this database; "
            "fix `schema`/`table` in the config or create the table"
        )
    cols = column_types(conn, cfg.schema_, cfg.table)
    for key in ("id_column", "text_column", "legacy_vector_column", "updated_at_column"):
        col = getattr(cfg, key)
        if col is not None and col not in cols:
            raise ConfigError(
                f"sources.{name}.{key}: column {col!r} not found in {cfg.schema_}.{cfg.table}; "
                f"its columns are {sorted(cols)}"
            )
    if cfg.row_filter:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
                    sql.Identifier(cfg.schema_, cfg.table), sql.SQL(cfg.row_filter)))
        except psycopg.Error as e:
            raise ConfigError(f"sources.{name}.row_filter is not a valid expression on {cfg.schema_}.{cfg.table}: "
                              f"{e.diag.message_primary}") from None
    return SourceTable(name=name, cfg=cfg, id_type=cols[cfg.id_column])


# ---------------------------------------------------------------- registry


def _canary_rows(provider) -> list[tuple[int, str, list[float]]]:
    vecs = provider.embed_documents(list(CANARY_TEXTS))
    return [(i, hashlib.sha256(t.encode()).hexdigest(), vecs[i].tolist()) for i, t in enumerate(CANARY_TEXTS)]


def registered_identity(conn: psycopg.Connection, schema: str, name: str) -> dict | None:
    row = conn.execute(
        sql.SQL("SELECT identity FROM {}.spaces WHERE name = %s").format(sql.Identifier(schema)), (name,)
    ).fetchone()
    return row[0] if row else None


def identity_diff(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def check_identity(conn, schema: str, name: str, cfg) -> None:
    """Refuse when a registered name now describes a different space (the same-name model swap)."""
    old = registered_identity(conn, schema, name)
    if old is not None and old != cfg.identity():
        changes = identity_diff(old, cfg.identity())
        raise SpaceIdentityError(
            f"space {name!r} is registered with a different identity ({'; '.join(changes)}). "
            "Vectors of two models must never share a name: register the new model under a new space name "
            "and migrate to it (or restore the previous config)"
        )


def register_space(conn: psycopg.Connection, config: PipelineConfig, name: str, provider) -> bool:
    """Register a space (with canary vectors) or confirm it; return True when newly registered."""
    cfg = config.space(name)
    schema = config.project_schema
    check_identity(conn, schema, name, cfg)
    if registered_identity(conn, schema, name) is not None:
        return False
    canaries = _canary_rows(provider)
    s = sql.Identifier(schema)
    with conn.transaction():
        inserted = conn.execute(
            sql.SQL(
                "INSERT INTO {}.spaces (name, model, revision, transport, dimensions, storage_type, query_prompt, "
                "document_prompt, normalize, identity, fingerprint, model_version, retention_days) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (name) DO NOTHING RETURNING name"
            ).format(s),
            (name, cfg.model, cfg.revision, cfg.transport, cfg.dimensions, cfg.storage_type, cfg.query_prompt,
             cfg.document_prompt, cfg.normalize, json.dumps(cfg.identity()), cfg.fingerprint,
             model_version(name, cfg), config.retention_for(name)),
        ).fetchone()
        if inserted is None:  # a concurrent registration won; it must be the same identity
            check_identity(conn, schema, name, cfg)
            return False
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {}.space_canaries (space, idx, text_sha256, vector) VALUES (%s,%s,%s,%s)").format(s),
                [(name, i, h, v) for i, h, v in canaries],
            )
    return True


def stored_canaries(conn, schema: str, name: str) -> np.ndarray:
    rows = conn.execute(
        sql.SQL("SELECT vector FROM {}.space_canaries WHERE space = %s ORDER BY idx").format(sql.Identifier(schema)),
        (name,),
    ).fetchall()
    return np.asarray([r[0] for r in rows], dtype=np.float32)


# ---------------------------------------------------------------- per-model tables


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


def index_name(table: str) -> str:
    return f"{table[:57]}_hnsw"


OPS = {"vector": {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "ip": "vector_ip_ops"},
       "halfvec": {"cosine": "halfvec_cosine_ops", "l2": "halfvec_l2_ops", "ip": "halfvec_ip_ops"}}


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


def prepare_source(conn, config: PipelineConfig, source_name: str, provider_for, spaces: list[str] | None = None) -> SourceTable:
    """Register the source's spaces, create their tables/bindings and set the first active space.

    ``provider_for(name)`` supplies providers for the canary vectors of spaces not yet registered.
    """
    source = inspect_source(conn, source_name, config.source(source_name))
    conn.commit()
    wanted = spaces if spaces is not None else [s for s in [source.cfg.legacy_space, *config.spaces_for(source_name)] if s]
    for space in wanted:
        if registered_identity(conn, config.project_schema, space) is None:
            register_space(conn, config, space, provider_for(space))
        else:
            check_identity(conn, config.project_schema, space, config.space(space))
        ensure_binding(conn, config, source, space)
    if source.cfg.active_space in wanted:
        initialise_active(conn, config, source_name)
        conn.commit()
        from embedding_pipeline.read_path import ensure_read_path  # read_path builds on this module

        ensure_read_path(conn, config, source_name)
    conn.commit()
    return source
