"""Batched top-k search of one space, exact or through its HNSW index, for evaluation.

A space is searched only in its own storage: the per-model table
``<project_schema>.<space_table_name(source, space)>`` joined to the source's eligible rows, or,
for the adopted legacy space, the source table's legacy column. ``queries.search_batch`` composes exactly
one of the two, so a query can never read another space's vectors; results of two spaces are
compared by ids and ranks only, since scores of two models live on different scales.

All queries of a batch go to the server in one statement (an array of query vectors unnested
``WITH ORDINALITY`` and a LATERAL top-k per query), so 300 queries cost one round trip, not 300.
Exact search scans the space's stored vectors per query with index scans disabled and drops the
ids whose source row is no longer eligible (read once per batch; usually none). HNSW search
lets each LATERAL use the index (``ef_search`` of the space, iterative scan on pgvector >= 0.8)
through a semi-join to the eligible rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db import queries as db_queries
from embedding_pipeline.db.connection import column_types, table_exists
from embedding_pipeline.errors import ConfigError, DatabaseError
from embedding_pipeline.evaluation import queries as statements
from embedding_pipeline.spaces.bindings import has_index
from embedding_pipeline.spaces.columns import bound_legacy_column
from embedding_pipeline.spaces.source import SourceTable, inspect_source

MODES = ("exact", "hnsw")
BATCH = 500  # queries per statement: bounds the parameter size (500 x 4 KB) and the result set


@dataclass(frozen=True)
class SearchTarget:
    """Where one space's vectors for one source live, and how to rank them."""

    source: SourceTable
    space: str
    storage: str  # 'table' | 'legacy_column'
    schema: str
    table: str
    vector_column: str
    vector_type: str  # 'vector' | 'halfvec'
    ops: str  # 'cosine' | 'l2' | 'ip'
    ef_search: int
    hnsw_index: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def _legacy_hnsw(conn, schema: str, table: str, column: str) -> bool:
    """Whether the operator's table has any HNSW index on the legacy vector column."""
    return conn.execute(statements.select_legacy_hnsw(), (schema, table, column)).fetchone() is not None


def search_target(conn: psycopg.Connection, config: PipelineConfig, source: str | SourceTable,
                  space: str) -> SearchTarget:
    """Resolve (source, space) to its one table; raise a DatabaseError naming the fix if it is missing."""
    src = source if isinstance(source, SourceTable) else inspect_source(conn, source, config.source(source))
    cfg = config.space(space)
    if src.cfg.legacy_space == space:
        col = bound_legacy_column(conn, config.project_schema, src)
        declared = column_types(conn, src.cfg.schema_, src.cfg.table).get(col, "")
        return SearchTarget(src, space, "legacy_column", src.cfg.schema_, src.cfg.table, col,
                            "halfvec" if declared.startswith("halfvec") else "vector", cfg.index.ops,
                            cfg.index.ef_search, _legacy_hnsw(conn, src.cfg.schema_, src.cfg.table, col))
    table = cfg.on(src)
    if not table_exists(conn, table.schema, table.name):
        raise DatabaseError(
            f"space {space!r} has no table {table.qualified} for source {src.name!r}; embed it first "
            f"(`embedding-pipeline reembed --source {src.name} --space {space}`)")
    return SearchTarget(src, space, "table", table.schema, table.name, "embedding", cfg.storage_type, cfg.index.ops,
                        cfg.index.ef_search, has_index(conn, table))


def _session_settings(conn, target: SearchTarget, mode: str) -> list[str]:
    """Transaction-local planner settings for the mode; returns their names for restoring."""
    if mode == "exact":
        settings = {"enable_indexscan": "off", "enable_bitmapscan": "off"}
    else:
        # Measure the index itself: on a small table the planner would otherwise sort exactly.
        settings = {"enable_seqscan": "off", "hnsw.ef_search": str(target.ef_search)}
        version = conn.execute(db_queries.select_vector_version()).fetchone()[0]
        if tuple(int(p) for p in version.split(".")[:2]) >= (0, 8):
            # Rows the eligibility filter drops are replaced by further index candidates, in order.
            settings["hnsw.iterative_scan"] = "strict_order"
    for name, value in settings.items():
        conn.execute(statements.set_local(), (name, value))
    return list(settings)


def _param(vectors: np.ndarray, vector_type: str) -> list:
    from pgvector import HalfVector, Vector

    wrap = HalfVector if vector_type == "halfvec" else Vector
    return [wrap(np.asarray(v, dtype=np.float32)) for v in vectors]


def search_space(conn: psycopg.Connection, config: PipelineConfig, source: str | SourceTable, space: str,
                 query_vectors: np.ndarray, *, k: int, mode: str = "exact") -> list[list[str]]:
    """Top-``k`` source ids (as text, best first) per query vector, searched in this space only.

    Runs in one transaction block of ``conn`` (a savepoint when the caller has a transaction
    open); its planner settings are transaction-local and reset before it returns.
    """
    target = search_target(conn, config, source, space)
    return search_target_batch(conn, target, query_vectors, k=k, mode=mode)


def search_target_batch(conn: psycopg.Connection, target: SearchTarget, query_vectors: np.ndarray, *,
                        k: int, mode: str = "exact") -> list[list[str]]:
    """``search_space`` for an already resolved target (the runner searches one target twice)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query_vectors = np.asarray(query_vectors, dtype=np.float32)
    if mode not in MODES:
        raise ConfigError(f"search mode {mode!r} is not one of {MODES}")
    stmt = statements.search_batch(target, mode)
    out: list[list[str]] = []
    if not len(query_vectors):
        return out
    with conn.transaction():
        changed = _session_settings(conn, target, mode)
        excluded: set[str] = set()
        if mode == "exact":
            excluded = {r[0] for r in conn.execute(statements.excluded_ids(target)).fetchall()}
        for start in range(0, len(query_vectors), BATCH):
            chunk = query_vectors[start:start + BATCH]
            try:
                rows = conn.execute(stmt, {"qv": _param(chunk, target.vector_type), "k": k + len(excluded)}).fetchall()
            except psycopg.errors.DataException as e:
                raise DatabaseError(f"search of space {target.space!r} in {target.qualified} failed with "
                                    f"{query_vectors.shape[1]}-d query vectors: {e.diag.message_primary}") from None
            out.extend([i for i in (ids or []) if i not in excluded][:k] for _, ids in rows)
        # When the caller had a transaction open, SET LOCAL would outlive this search.
        for name in changed:
            conn.execute(statements.reset_local(name))
    return out


def search_queries(conn: psycopg.Connection, config: PipelineConfig, source: str | SourceTable, space: str,
                   provider, queries: Mapping[str, str], *, k: int, mode: str = "exact") -> dict[str, list[str]]:
    """Embed ``queries`` with the space's own provider and query prompt, then ``search_space``."""
    qids: Sequence[str] = list(queries)
    vectors = provider.embed_queries([queries[q] for q in qids])
    ranked = search_space(conn, config, source, space, vectors, k=k, mode=mode)
    return dict(zip(qids, ranked))
