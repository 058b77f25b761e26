"""The project's own tables: the space registry, per-source bindings, audit, alerts and index builds.

Everything lives in one schema (``project_schema`` in config, default ``embedding_pipeline``).
DDL is idempotent and runs under an advisory lock so that several Dagster processes
starting at once do not race on CREATE.
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql

from embedding_pipeline.db import queries
from embedding_pipeline.db.connection import ensure_extension

SCHEMA_LOCK = 724_311_001  # pg_advisory_xact_lock key for DDL of the project schema

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    # One row per vector space: its identity, fingerprint and canary vectors.
    """CREATE TABLE IF NOT EXISTS {s}.spaces (
        name text PRIMARY KEY,
        model text NOT NULL,
        revision text,
        transport text NOT NULL,
        dimensions integer NOT NULL CHECK (dimensions > 0),
        storage_type text NOT NULL CHECK (storage_type IN ('vector', 'halfvec')),
        query_prompt text NOT NULL DEFAULT '',
        document_prompt text NOT NULL DEFAULT '',
        normalize boolean NOT NULL,
        identity jsonb NOT NULL,
        fingerprint text NOT NULL,
        model_version text NOT NULL UNIQUE,
        status text NOT NULL DEFAULT 'shadow' CHECK (status IN ('shadow', 'active', 'retired', 'deleted')),
        retention_days double precision NOT NULL DEFAULT 14,
        registered_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.space_canaries (
        space text NOT NULL REFERENCES {s}.spaces(name) ON DELETE CASCADE,
        idx integer NOT NULL,
        text_sha256 text NOT NULL,
        vector real[] NOT NULL,
        PRIMARY KEY (space, idx)
    )""",
    # A space as built for one source table: its table (or the legacy column) and its state.
    """CREATE TABLE IF NOT EXISTS {s}.bindings (
        source text NOT NULL,
        space text NOT NULL REFERENCES {s}.spaces(name),
        storage text NOT NULL CHECK (storage IN ('table', 'legacy_column')),
        table_schema text NOT NULL,
        table_name text NOT NULL,
        vector_column text NOT NULL,
        status text NOT NULL DEFAULT 'shadow' CHECK (status IN ('shadow', 'active', 'retired', 'deleted')),
        previous_space text,
        created_at timestamptz NOT NULL DEFAULT now(),
        activated_at timestamptz,
        retired_at timestamptz,
        delete_after timestamptz,
        deleted_at timestamptz,
        PRIMARY KEY (source, space)
    )""",
    # At most one active space per source, enforced by the database.
    "CREATE UNIQUE INDEX IF NOT EXISTS bindings_one_active ON {s}.bindings (source) WHERE status = 'active'",
    """CREATE TABLE IF NOT EXISTS {s}.audit (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        action text NOT NULL,
        source text,
        space text,
        actor text NOT NULL DEFAULT current_user,
        forced boolean NOT NULL DEFAULT false,
        details jsonb NOT NULL DEFAULT '{{}}'
    )""",
    # Shadow evaluation results: the cutover gate reads the latest row per (source, candidate).
    """CREATE TABLE IF NOT EXISTS {s}.eval_reports (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        source text NOT NULL,
        eval_set text,
        kind text NOT NULL CHECK (kind IN ('labeled', 'unlabeled')),
        active_space text NOT NULL,
        candidate_space text NOT NULL,
        metrics jsonb NOT NULL,
        gate_passed boolean,
        tolerance double precision,
        report_path text
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.alerts (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        source text,
        space text,
        check_name text NOT NULL,
        severity text NOT NULL,
        message text NOT NULL,
        details jsonb NOT NULL DEFAULT '{{}}',
        delivered boolean NOT NULL DEFAULT false
    )""",
    # Every HNSW build of the re-embed engine: the migration plan scales its estimates from these.
    """CREATE TABLE IF NOT EXISTS {s}.index_builds (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        source text NOT NULL,
        space text NOT NULL,
        rows bigint NOT NULL CHECK (rows >= 0),
        dims integer NOT NULL CHECK (dims > 0),
        seconds double precision NOT NULL CHECK (seconds >= 0)
    )""",
    # Rows the provider refused (a 4xx for that input alone): isolated by the re-embed engine so the
    # rest of the partition lands; the reason never holds the text. Cleared once the row has a vector.
    """CREATE TABLE IF NOT EXISTS {s}.refused_rows (
        source text NOT NULL,
        space text NOT NULL,
        source_id text NOT NULL,
        reason text NOT NULL,
        at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (source, space, source_id)
    )""",
]


# The DDL's digest, stored once it has run: a process finding it there skips the lock and the DDL.
DDL_DIGEST = hashlib.sha256("\n".join(_DDL).encode()).hexdigest()[:16]


def _current(conn: psycopg.Connection, project_schema: str) -> bool:
    marker = sql.Identifier(project_schema, "schema_version")
    if conn.execute("SELECT to_regclass(%s)", (marker.as_string(conn),)).fetchone()[0] is None:
        return False
    row = conn.execute(sql.SQL("SELECT digest FROM {}").format(marker)).fetchone()
    return row is not None and row[0] == DDL_DIGEST


def ensure_schema(conn: psycopg.Connection, project_schema: str) -> None:
    """Create the extension and the project's tables if missing (idempotent, race-safe).

    Every run calls this first. Once this version's DDL has run, two catalog reads answer it: the
    DDL itself serializes callers on its advisory lock (and CREATE INDEX IF NOT EXISTS locks its
    table), which queued 8 shard workers starting together ~0.4 s each, one after another.
    """
    if _current(conn, project_schema):
        return
    ensure_extension(conn)
    s = sql.Identifier(project_schema)
    with conn.transaction():
        conn.execute(queries.lock_schema(), (SCHEMA_LOCK,))
        for stmt in _DDL:
            conn.execute(sql.SQL(stmt).format(s=s))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.schema_version (digest text NOT NULL)").format(s))
        conn.execute(sql.SQL("DELETE FROM {}.schema_version").format(s))
        conn.execute(sql.SQL("INSERT INTO {}.schema_version (digest) VALUES (%s)").format(s), (DDL_DIGEST,))
