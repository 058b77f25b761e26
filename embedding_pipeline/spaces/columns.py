"""Names and state of an application's vector columns (``cutover: column``), with no heavy imports; also the catalog reads and short-lock helpers that stage and flip share.

An app column cutover keeps every space it has shown the app as a column of the app's own
table: the column the app reads (``embedding``) holds the live space, every other space sits
beside it as ``embedding__<space>``. A column keeps its name only while it holds its space, so
the name always says what is inside. The project's ``<schema>.app_columns`` table records, per
(source, space), which column holds it and how far its fill has got (so a fill resumes).

The legacy space's binding (storage ``legacy_column``) follows its column: after a flip its
``vector_column`` is ``embedding__<legacy space>``. Coverage, the validator and evaluation read
the column through ``bound_legacy_column`` rather than from the config, which keeps naming the
column the app reads.
"""

from __future__ import annotations

import hashlib
import logging
import time

import psycopg
from psycopg import sql

from embedding_pipeline.db.connection import column_types
from embedding_pipeline.spaces import queries

MAX_IDENT = 63

log = logging.getLogger(__name__)

# Per-model rows written this long before a fill pass started are re-read by the next one: a
# re-embed batch stamps embedded_at at its transaction's start but becomes visible at commit.
WATERMARK_OVERLAP_S = 300


def _short(name: str) -> str:
    if len(name.encode()) <= MAX_IDENT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_IDENT - 9].decode(errors="ignore")
    return f"{head}_{digest}"


def space_column(live_column: str, space: str) -> str:
    """``embedding__<space>``: where a space sits beside the app's column (shortened to 63 bytes)."""
    return _short(f"{live_column}__{space}")


def column_index_name(table: str, column: str) -> str:
    """Honcho's pattern, ``ix_<table>_<column>_hnsw``, so the live column's index keeps Honcho's name."""
    return _short(f"ix_{table}_{column}_hnsw")


def ensure_state(conn, schema: str) -> None:
    conn.execute(queries.create_app_columns(schema))


def state_rows(conn, schema: str, source: str | None = None) -> list[dict]:
    if not conn.execute(queries.select_regclass_exists(),
                        (sql.Identifier(schema, "app_columns").as_string(conn),)).fetchone()[0]:
        return []
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(queries.select_app_columns(schema), {"s": source}).fetchall()


def bound_legacy_column(conn, schema: str, src) -> str | None:
    """The column that holds the legacy space now: its binding's, else the configured one."""
    c = src.cfg
    if not c.legacy_space:
        return c.legacy_vector_column
    try:
        with conn.transaction():
            row = conn.execute(queries.select_legacy_column(schema), (src.name, c.legacy_space)).fetchone()
    except psycopg.errors.UndefinedTable:  # no project schema yet: nothing has moved
        return c.legacy_vector_column
    return row[0] if row else c.legacy_vector_column


# pgvector's HNSW defaults, used when the app's live column has no HNSW index to copy.
HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}


def column_type(conn, schema: str, table: str, column: str) -> str | None:
    return column_types(conn, schema, table).get(column)


def hnsw_index_on(conn, schema: str, table: str, column: str) -> dict | None:
    """The HNSW index on one column: name, validity, opclass, m, ef_construction."""
    row = conn.execute(queries.select_hnsw_index(), (schema, table, column)).fetchone()
    if row is None:
        return None
    opts = dict(HNSW_DEFAULTS)
    for o in row[3]:
        k, _, v = o.partition("=")
        if k in opts:
            opts[k] = int(v)
    return {"name": row[0], "valid": row[1], "opclass": row[2], **opts}


def set_lock_timeout(conn, ms: int) -> None:
    conn.execute(queries.set_lock_timeout(ms))


def retrying(what: str, tries: int, fn):
    """Run ``fn`` again after a lock timeout, up to ``tries`` more times, backing off."""
    for attempt in range(tries + 1):
        try:
            return fn()
        except psycopg.errors.LockNotAvailable:
            if attempt == tries:
                raise
            log.info(f"{what}: lock not available, retry {attempt + 1} of {tries}")
            time.sleep(min(0.2 * 2 ** attempt, 2.0))


def write_vectors(conn, write: sql.Composable, rows: list, vectors, app_cfg, what: str) -> int:
    """``write`` (params: vector, id, text) for each (id, text) row and its vector, in one short
    transaction under the app's lock_timeout, retried on a lock timeout; the rows written.

    The text is part of the WHERE: a row edited since it was read keeps its column as it was."""
    def one():
        with conn.transaction():
            set_lock_timeout(conn, app_cfg.lock_timeout_ms)
            with conn.cursor() as cur:
                cur.executemany(write, [(v, r[0], r[1]) for v, r in zip(vectors, rows)])
                return cur.rowcount
    return retrying(what, app_cfg.flip_retries, one) or 0
