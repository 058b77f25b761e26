"""Search in the source's active space, in one snapshot that sees the binding and the view together.

``search()`` runs in a REPEATABLE READ transaction that first locks the view (LOCK takes no
snapshot, so the snapshot is taken after any switch in flight has committed) and then reads the
binding: binding and view always agree, and a query embedded for a space that stopped being active
before the lock was granted is embedded again with the active space's provider. Sources in
``mode: lazy`` are answered by ``lazy.fused_search`` instead.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.connection import Database
from embedding_pipeline.errors import DatabaseError, EmbeddingPipelineError
from embedding_pipeline.providers.cache import default_provider_for
from embedding_pipeline.read_path import queries
from embedding_pipeline.read_path.ann import Hit, ann_settings, embed_query
from embedding_pipeline.read_path.install import (
    ensure_read_path,
    vector_type,
    view_name,
)
from embedding_pipeline.spaces.bindings import active_binding


@dataclass
class SearchResult:
    """Ranked hits, all from one space (the one active in the snapshot that produced them)."""

    source: str
    space: str
    model_version: str
    hits: list[Hit] = field(default_factory=list)
    # True when the active space changed after the query was embedded and it was embedded again.
    reembedded: bool = False

    @property
    def ids(self) -> list:
        return [h.source_id for h in self.hits]

    def to_json(self) -> dict:
        return {"source": self.source, "space": self.space, "model_version": self.model_version,
                "reembedded": self.reembedded,
                "hits": [{"rank": i + 1, "source_id": h.source_id, "distance": h.distance}
                         for i, h in enumerate(self.hits)]}


@contextmanager
def _connection(db_or_conn):
    if isinstance(db_or_conn, Database):
        with db_or_conn.connect() as conn:
            yield conn
    else:
        with nullcontext(db_or_conn) as conn:
            yield conn


def search(db_or_conn, config: PipelineConfig, source: str, query_text: str, k: int = 10,
           provider_for=None) -> SearchResult:
    """The k nearest rows of the source in its active space, the query embedded by that space.

    ``db_or_conn``: a Database, or a connection with no transaction open (the search needs its
    own REPEATABLE READ transaction). ``provider_for(space)`` defaults to providers cached per process.
    """
    provider_for = provider_for or default_provider_for(config)
    with _connection(db_or_conn) as conn:
        if config.source(source).mode == "lazy":
            from embedding_pipeline.read_path.lazy import fused_search

            return fused_search(conn, config, source, query_text, provider_for, k)
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise EmbeddingPipelineError("search() needs a connection with no open transaction "
                                         "(it reads the binding and the view in one snapshot of its own)")
        guess = ensure_read_path(conn, config, source)
        if guess is None:
            raise EmbeddingPipelineError(f"source {source!r} has no active space yet; run `embedding-pipeline "
                                         f"setup --source {source}` first")
        vector = embed_query(provider_for(guess), query_text)
        saved = conn.isolation_level
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            return _search_in_snapshot(conn, config, source, query_text, k, provider_for, guess, vector)
        finally:
            conn.isolation_level = saved


def _search_in_snapshot(conn, config, source, query_text, k, provider_for, guess, vector) -> SearchResult:
    schema = config.project_schema
    view = sql.Identifier(schema, view_name(source))
    with conn.transaction():
        # Before any snapshot: waits for a switch in flight, then the snapshot sees its result.
        conn.execute(queries.lock_view(view))
        b = active_binding(conn, schema, source)
        if b is None:
            raise EmbeddingPipelineError(f"source {source!r} has no active space")
        space = b.space
        resolved = config.space(space)
        reembedded = space != guess
        if reembedded:
            vector = embed_query(provider_for(space), query_text)
        for name, value in ann_settings(conn, resolved, k).items():
            conn.execute(queries.set_local(), (name, value))
        rows = conn.execute(
            queries.nearest_in_view(view, resolved.distance),
            {"q": resolved.vector_param(vector, vector_type(conn, resolved, b)), "k": k}).fetchall()
    served = {r[2] for r in rows}
    if served - {space}:
        raise DatabaseError(f"the read path of {source!r} serves {sorted(served)} but the active space is {space!r}; "
                            "run `embedding-pipeline status` and report this")
    mv = rows[0][3] if rows else resolved.model_version
    return SearchResult(source, space, mv, [Hit(r[0], r[1]) for r in rows], reembedded)
