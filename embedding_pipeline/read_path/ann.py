"""The read path: per source, one view and one search function over the active space only.

``<project_schema>."<source>_active_embedding"`` (source_id, embedding, space, model_version)
selects either the adopted legacy column of the source table or a per-model table joined to the
source's eligible rows, so filtered, soft-deleted and blank rows never appear.
``<project_schema>."<source>_search"(query, k)`` orders that view by the space's distance.

A switch (cutover.py) replaces both in the same transaction that updates the bindings, under
the ``cutover:<source>`` advisory lock. The view is dropped and created rather than replaced
because its vector column changes type when dimensions differ; readers wait on the view's lock
and then see the old or the new definition, never a mix.

Python ``search()`` runs in a REPEATABLE READ transaction that first locks the view (LOCK takes
no snapshot, so the snapshot is taken after any switch in flight has committed) and then reads
the binding: binding and view always agree, and a query embedded for a space that stopped being
active before the lock was granted is embedded again with the active space's provider.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.errors import EmbeddingPipelineError
from embedding_pipeline.providers.cache import _providers_lock
from embedding_pipeline.read_path.install import (
    _operator,
    _vector_type,
    pgvector_version,
    space_rows,
)
from embedding_pipeline.spaces.bindings import binding
from embedding_pipeline.spaces.source import SourceTable

EF_SEARCH_MAX = 1000  # pgvector's upper bound for hnsw.ef_search


class Hit(NamedTuple):
    source_id: Any
    distance: float


_embed_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()


def embed_query(provider, text: str):
    # Fast tokenizers raise "Already borrowed" when one instance is used from two threads at once.
    with _providers_lock:
        lock = _embed_locks.setdefault(provider, threading.Lock())
    with lock:
        return provider.embed_queries([text])[0]


def _param(vtype: str, vector):
    from pgvector import HalfVector, Vector

    return HalfVector(vector) if vtype == "halfvec" else Vector(vector)


@contextmanager
def _local_settings(conn, settings: dict[str, str]):
    """Transaction-local settings, restored afterwards so a caller's own transaction is not changed."""
    with conn.transaction():
        old = {k: conn.execute("SELECT current_setting(%s, true)", (k,)).fetchone()[0] for k in settings}
        for k, v in settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (k, v))
        try:
            yield
        finally:
            if not conn.broken and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                for k, v in old.items():
                    if v is not None:
                        conn.execute("SELECT set_config(%s, %s, true)", (k, v))


def _ann_settings(conn, config: PipelineConfig, space: str, k: int) -> dict[str, str]:
    settings = {"hnsw.ef_search": str(min(max(config.space(space).index.ef_search, k), EF_SEARCH_MAX))}
    if pgvector_version(conn) >= (0, 8):
        settings["hnsw.iterative_scan"] = "strict_order"
    return settings


def search_space(conn, config: PipelineConfig, source: str, space: str, query_vector, k: int,
                 exact: bool = False) -> list[Hit]:
    """The k nearest eligible rows in ONE given space (active or not); for evaluation.

    ``exact=True`` turns index scans off for the query so the answer is the true top k.
    """
    b = binding(conn, config.project_schema, source, space)
    if b is None or b["status"] == "deleted":
        state = "was deleted" if b else "has no table"
        raise EmbeddingPipelineError(f"space {space!r} {state} for source {source!r}; nothing to search")
    src = SourceTable(source, config.source(source), id_type="")  # id_type is not needed to read
    op = _operator(config, space)
    settings = ({"enable_indexscan": "off", "enable_bitmapscan": "off", "enable_indexonlyscan": "off"} if exact
                else _ann_settings(conn, config, space, k))
    q = _param(_vector_type(conn, config, b), query_vector)
    with _local_settings(conn, settings):
        rows = conn.execute(sql.SQL(
            "SELECT v.source_id, (v.embedding {op} %(q)s)::double precision FROM ({rows}) v "
            "ORDER BY v.embedding {op} %(q)s LIMIT %(k)s").format(op=op, rows=space_rows(config, src, b)),
            {"q": q, "k": k}).fetchall()
    return [Hit(r[0], r[1]) for r in rows]
