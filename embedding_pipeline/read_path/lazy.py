"""The lazy strategy: serve from the old and the new space together while traffic fills the new one.

For a source in ``mode: lazy`` a search queries the active space (old) and the lazy target
(new), each with a query vector from its own provider, and fuses the two rankings by
reciprocal-rank fusion: ``score(id) = sum over spaces of 1 / (rrf_k + rank)``. Distances of
two models live on different scales, so raw scores are never compared across spaces; only
ranks are. Old-space hits that have no vector in the new space yet are queued (op 'L' in
the change queue) and the capture consumer embeds them, so coverage of the new space climbs
with the traffic that needs it, and a full backfill can run later or never.

The lazy target is ``sources.<name>.lazy_target`` when the config has that key, else the
source's one shadow per-model table space (several shadows without ``lazy_target`` are an
error). Without any shadow space (after the cutover) only the active space is searched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.queue import enqueue, ensure_capture_tables
from embedding_pipeline.errors import ConfigError, EmbeddingPipelineError
from embedding_pipeline.read_path import queries
from embedding_pipeline.spaces.bindings import active_space, bindings

RRF_K = 60


@dataclass
class FusedHit:
    source_id: Any
    score: float
    ranks: dict[str, int]  # space -> 1-based rank in that space's own list


@dataclass
class FusedResult:
    source: str
    old_space: str
    new_space: str | None
    hits: list[FusedHit] = field(default_factory=list)
    enqueued: int = 0  # old-space hits newly queued for the new space

    @property
    def ids(self) -> list:
        return [h.source_id for h in self.hits]

    def to_json(self) -> dict:
        return {"source": self.source, "old_space": self.old_space, "new_space": self.new_space,
                "enqueued": self.enqueued,
                "hits": [{"rank": i + 1, "source_id": h.source_id, "score": h.score, "ranks": h.ranks}
                         for i, h in enumerate(self.hits)]}


def lazy_target(conn, config: PipelineConfig, source: str) -> str | None:
    """The new space of a lazy migration: ``lazy_target`` if configured, else the single shadow table space."""
    configured = set(config.spaces_for(source))
    shadows = [b.space for b in bindings(conn, config.project_schema, source)
               if b.status == "shadow" and not b.is_legacy and b.space in configured]
    explicit = getattr(config.source(source), "lazy_target", None)
    if explicit:
        if explicit not in shadows:
            raise ConfigError(f"sources.{source}.lazy_target: space {explicit!r} is not a shadow per-model table of "
                              f"{source} (its shadow spaces: {shadows}); run `embedding-pipeline setup --source "
                              f"{source}` or name one of those")
        return explicit
    if len(shadows) > 1:
        raise ConfigError(f"source {source!r} is in lazy mode with several shadow spaces {shadows}: "
                          f"set sources.{source}.lazy_target to the one being migrated to")
    return shadows[0] if shadows else None


def rrf(rankings: dict[str, list], k: int, rrf_k: int = RRF_K) -> list[FusedHit]:
    """Reciprocal-rank fusion of ranked id lists (best first); ties broken by best single rank, then id."""
    scores: dict[Any, float] = {}
    ranks: dict[Any, dict[str, int]] = {}
    for space, ids in rankings.items():
        for rank, i in enumerate(ids, 1):
            ranks.setdefault(i, {})[space] = rank
            scores[i] = scores.get(i, 0.0) + 1.0 / (rrf_k + rank)
    order = sorted(scores, key=lambda i: (-scores[i], min(ranks[i].values()), str(i)))
    return [FusedHit(i, scores[i], ranks[i]) for i in order[:k]]


def missing_in(conn, config: PipelineConfig, source: str, space: str, ids: list) -> list:
    """The ids with no vector in the space's table (ids keep their Python type, so the PK index is used)."""
    if not ids:
        return []
    present = {r[0] for r in conn.execute(queries.select_present_ids(config.space(space).on(source).ident),
                                          (list(ids),)).fetchall()}
    return [i for i in ids if i not in present]


def fused_search(conn, config: PipelineConfig, source: str, query_text: str, provider_for, k: int = 10,
                 rrf_k: int = RRF_K, depth: int | None = None) -> FusedResult:
    """Top ``k`` of the RRF fusion of the old and new space's top ``depth`` lists (default max(2k, 20)).

    Queues old-space hits missing from the new space. On a connection with a transaction
    open the queue write commits with the caller's transaction; otherwise it is committed here.
    """
    # Imported here: read_path imports this module when a source is in lazy mode.
    from embedding_pipeline.read_path.ann import embed_query, search_space

    schema = config.project_schema
    owns_transaction = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    old = active_space(conn, schema, source)
    if old is None:
        raise EmbeddingPipelineError(f"source {source!r} has no active space yet; run `embedding-pipeline setup "
                                     f"--source {source}` first")
    new = lazy_target(conn, config, source)
    depth = depth or max(2 * k, 20)
    rankings = {}
    for space in [old] + ([new] if new else []):
        vector = embed_query(provider_for(space), query_text)
        rankings[space] = [h.source_id for h in search_space(conn, config, source, space, vector, depth)]
    result = FusedResult(source, old, new, rrf(rankings, k, rrf_k))
    if new:
        missing = missing_in(conn, config, source, new, rankings[old])
        if missing:
            ensure_capture_tables(conn, schema)
            with conn.transaction():
                result.enqueued = enqueue(conn, schema, source, missing, "L")
    if owns_transaction and not conn.autocommit:
        conn.commit()
    return result
