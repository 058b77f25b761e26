"""Nearest neighbours in ONE named space (active or not), exact or through its HNSW index.

Used by evaluation and by the lazy strategy; the query vector must come from that space's own
provider. ``embed_query`` serializes calls per provider instance (fast tokenizers are not
thread-safe).
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Any, NamedTuple

import psycopg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.errors import EmbeddingPipelineError
from embedding_pipeline.read_path import queries
from embedding_pipeline.read_path.install import (
    pgvector_version,
    space_rows,
    vector_type,
)
from embedding_pipeline.spaces.bindings import binding
from embedding_pipeline.spaces.model import Space
from embedding_pipeline.spaces.source import SourceTable

EF_SEARCH_MAX = 1000  # pgvector's upper bound for hnsw.ef_search


class Hit(NamedTuple):
    source_id: Any
    distance: float


_embed_locks: "weakref.WeakKeyDictionary[Any, threading.Lock]" = weakref.WeakKeyDictionary()
_embed_locks_lock = threading.Lock()


def embed_query(provider, text: str):
    # Fast tokenizers raise "Already borrowed" when one instance is used from two threads at once.
    with _embed_locks_lock:
        lock = _embed_locks.setdefault(provider, threading.Lock())
    with lock:
        return provider.embed_queries([text])[0]


@contextmanager
def _local_settings(conn, settings: dict[str, str]):
    """Transaction-local settings, restored afterwards so a caller's own transaction is not changed."""
    with conn.transaction():
        old = {k: conn.execute(queries.current_setting(), (k,)).fetchone()[0] for k in settings}
        for k, v in settings.items():
            conn.execute(queries.set_local(), (k, v))
        try:
            yield
        finally:
            if not conn.broken and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                for k, v in old.items():
                    if v is not None:
                        conn.execute(queries.set_local(), (k, v))


def ann_settings(conn, space: Space, k: int) -> dict[str, str]:
    settings = {"hnsw.ef_search": str(min(max(space.index.ef_search, k), EF_SEARCH_MAX))}
    if pgvector_version(conn) >= (0, 8):
        settings["hnsw.iterative_scan"] = "strict_order"
    return settings


def search_space(conn, config: PipelineConfig, source: str, space: str, query_vector, k: int,
                 exact: bool = False) -> list[Hit]:
    """The k nearest eligible rows in ONE given space (active or not); for evaluation.

    ``exact=True`` turns index scans off for the query so the answer is the true top k.
    """
    b = binding(conn, config.project_schema, source, space)
    if b is None or b.status == "deleted":
        state = "was deleted" if b else "has no table"
        raise EmbeddingPipelineError(f"space {space!r} {state} for source {source!r}; nothing to search")
    src = SourceTable(source, config.source(source), id_type="")  # id_type is not needed to read
    resolved = config.space(space)
    settings = ({"enable_indexscan": "off", "enable_bitmapscan": "off", "enable_indexonlyscan": "off"} if exact
                else ann_settings(conn, resolved, k))
    q = resolved.vector_param(query_vector, vector_type(conn, resolved, b))
    with _local_settings(conn, settings):
        rows = conn.execute(queries.nearest_in_rows(space_rows(resolved, src, b), resolved.distance),
                            {"q": q, "k": k}).fetchall()
    return [Hit(r[0], r[1]) for r in rows]
