"""The lazy strategy on real MiniLM vectors: rank fusion across two spaces, and coverage that grows with traffic."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql

from embedding_pipeline.embeddings.capture import consume
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.read_path.lazy import FusedResult, fused_search
from embedding_pipeline.read_path.search import search
from embedding_pipeline.spaces.model import space_table_name

OLD, NEW = "minilm", "minilm-256"
QUERY = "how long should pasta boil on the stove"


@pytest.fixture
def lazy(db, configure, provider_cache, prepared_source):
    """60 documents with real MiniLM vectors in the legacy column; the first 30 also in the MiniLM-256 table."""
    cfg = configure(source={"spaces": [NEW], "mode": "lazy"})
    provider_for = provider_cache.for_config(cfg)

    def legacy_vectors(conn, ids):
        texts = [r[0] for r in conn.execute("SELECT content FROM documents ORDER BY id").fetchall()]
        vectors = provider_for(OLD).embed_documents(texts)
        with conn.cursor() as cur:
            cur.executemany("UPDATE documents SET embedding = %s WHERE id = %s", list(zip(vectors, ids)))

    ids = prepared_source([OLD, NEW], 60, cfg=cfg, seed=legacy_vectors).ids
    reembed(db, cfg, "documents", NEW, provider_for(NEW), ids=ids[:30], build_hnsw=False)
    return cfg, provider_for, ids


def _brute_force(conn, query_vec, select: sql.Composable, depth: int) -> list[str]:
    """Exact cosine ranking computed in numpy from the stored vectors: independent of the SQL path."""
    rows = conn.execute(select).fetchall()
    ids = [r[0] for r in rows]
    m = np.asarray([np.asarray(r[1].to_numpy() if hasattr(r[1], "to_numpy") else r[1], dtype=np.float64)
                    for r in rows])
    q = np.asarray(query_vec, dtype=np.float64)
    dist = 1 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    return [ids[i] for i in np.argsort(dist, kind="stable")[:depth]]


def _queued(conn, cfg) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT source_id, op FROM {} ORDER BY id").format(
        sql.Identifier(cfg.project_schema, "change_queue"))).fetchall()


def test_fusion_is_rrf_of_the_two_rankings(db, lazy):
    """Hits come from both spaces and their order is reciprocal-rank fusion of each space's own ranks, no raw scores."""
    cfg, provider_for, ids = lazy
    with db.connect() as conn:
        result = fused_search(conn, cfg, "documents", QUERY, provider_for, k=10)
        old = _brute_force(conn, provider_for(OLD).embed_queries([QUERY])[0],
                           sql.SQL("SELECT id, embedding FROM documents"), 20)
        new = _brute_force(conn, provider_for(NEW).embed_queries([QUERY])[0], sql.SQL(
            "SELECT source_id, embedding FROM {}").format(
                sql.Identifier(cfg.project_schema, space_table_name("documents", NEW))), 20)
    assert (result.old_space, result.new_space) == (OLD, NEW)
    expected: dict[str, float] = {}
    for ranking in (old, new):
        for rank, i in enumerate(ranking, 1):
            expected[i] = expected.get(i, 0.0) + 1 / (60 + rank)
    top = sorted(expected, key=lambda i: -expected[i])[:10]
    assert result.ids == top
    for h in result.hits:
        assert h.ranks == {s: r.index(h.source_id) + 1 for s, r in ((OLD, old), (NEW, new)) if h.source_id in r}
        assert h.score == pytest.approx(sum(1 / (60 + r) for r in h.ranks.values()), abs=1e-12)
    assert any(set(h.ranks) == {OLD, NEW} for h in result.hits)
    assert all(h.source_id in ids[:30] for h in result.hits if NEW in h.ranks)


def test_old_hits_missing_from_new_space_are_queued(db, lazy):
    """Old-space hits without a new vector are queued once, and the consumer embeds them: coverage climbs."""
    cfg, provider_for, ids = lazy
    with db.connect() as conn:
        result = fused_search(conn, cfg, "documents", QUERY, provider_for, k=10, depth=20)
        missing = [i for i in _brute_force(conn, provider_for(OLD).embed_queries([QUERY])[0],
                                           sql.SQL("SELECT id, embedding FROM documents"), 20) if i not in ids[:30]]
        assert missing and result.enqueued == len(missing)
        assert sorted(_queued(conn, cfg)) == sorted((i, "L") for i in missing)
        again = fused_search(conn, cfg, "documents", QUERY, provider_for, k=10, depth=20)
        assert again.enqueued == 0 and len(_queued(conn, cfg)) == len(missing)
    r = consume(db, cfg, "documents", provider_for)
    assert r["claimed"] == len(missing) and r["spaces"][NEW]["embedded"] == len(missing)
    with db.connect() as conn:
        stored = {row[0] for row in conn.execute(sql.SQL("SELECT source_id FROM {}").format(
            sql.Identifier(cfg.project_schema, space_table_name("documents", NEW)))).fetchall()}
        assert stored == set(ids[:30]) | set(missing)
        after = fused_search(conn, cfg, "documents", QUERY, provider_for, k=10, depth=20)
    assert after.enqueued == 0


def test_read_path_search_fuses_in_lazy_mode(db, lazy):
    """search() on a lazy source answers with the fused ranking over both spaces."""
    cfg, provider_for, _ = lazy
    result = search(db, cfg, "documents", QUERY, k=5, provider_for=provider_for)
    assert isinstance(result, FusedResult) and len(result.hits) == 5
    assert {s for h in result.hits for s in h.ranks} == {OLD, NEW}
