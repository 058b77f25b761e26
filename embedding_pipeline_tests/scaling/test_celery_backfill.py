"""A backfill of every shard of a source on Dagster's Celery executor, for real: Redis broker, two
`dagster-celery` workers, the run queue, the daemon; the table equals a single-process run's, and a
worker SIGKILLed mid-shard costs nothing.

Recovery from a dead worker (docs/scaling.md, "When a worker dies"): the executor's Celery config
(embedding_pipeline/celery.yaml) sets ``task_acks_late``, so a step's task is acknowledged only once it
has finished. A worker killed mid-step never acknowledges it; Redis keeps it in its unacked set and a
live worker's periodic sweep puts it back on the queue once it is older than ``visibility_timeout``
(40 s here). The other worker then runs the same task (same task id, so the run's orchestrator, which
waits on that id, sees its result), and ``reembed()`` resumes after the last batch the dead worker
committed: the killed process's connection closed with it, so Postgres rolled back the batch in flight
and released the advisory lock. Dagster's own retries (run retries, op RetryPolicy) never see a failure
here: to the run, the step just took longer.
"""

from __future__ import annotations

import time

import dagster as dg
import psycopg
import pytest
from dagster._core.events import DagsterEventType
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.embeddings.queries import in_shard
from embedding_pipeline.defs.embeddings.assets import parse_partition
from embedding_pipeline.embeddings.reembed import build_source_index, reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.providers import build_provider
from embedding_pipeline.spaces.model import space_table_name
from psycopg import sql

from embedding_pipeline_tests.scaling.conftest import SHARDS, SOURCE, SPACE
from embedding_pipeline_tests.support.celery_cluster import worker_config
from embedding_pipeline_tests.support.sources import make_documents

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

ROWS = 600  # two shards of ~300: ~75 requests of 4 texts each
DELAY = 0.08  # seconds per request: a step embeds for ~6 s, its first commit (64 rows) after ~1.3 s
PARTITIONS = [f"{SOURCE}:{k}/{SHARDS}" for k in range(SHARDS)]
VISIBILITY_TIMEOUT = 40  # > the longest step on a loaded machine, so no live step is delivered twice


def _table(cfg, source: str) -> sql.Composed:
    return sql.Identifier(cfg.project_schema, space_table_name(source, SPACE))


def _rows(db, cfg, source: str) -> list[tuple]:
    with db.connect() as conn:
        return conn.execute(sql.SQL("SELECT source_id, model_version, content_sha256, embedding::text FROM {} "
                                    "ORDER BY source_id").format(_table(cfg, source))).fetchall()


def _count(db, cfg, shard: tuple[int, int], table: sql.Composable | None = None) -> int:
    """Rows of one shard in the space table (or in ``table``, e.g. the source)."""
    with db.connect() as conn:
        try:
            return conn.execute(sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
                table or _table(cfg, SOURCE),
                in_shard(sql.SQL("t.id" if table else "t.source_id"), shard))).fetchone()[0]
        except psycopg.errors.UndefinedTable:  # the step has not created the table yet
            return 0


def _shard(partition_key: str) -> tuple[int, int]:
    return parse_partition(partition_key)[1]


def _seed(db, cfg) -> None:
    with db.connect() as conn:
        ensure_schema(conn, cfg.project_schema)
        make_documents(conn, ROWS, table=SOURCE)


def _workers(instance, run_id: str) -> list[str]:
    """The Celery workers that started the run's step, in order (dagster-celery's "Executing steps" event)."""
    names = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        meta = entry.dagster_event.engine_event_data.metadata or {}
        if "Celery worker" in meta:
            names.append(meta["Celery worker"].value.split("@")[0])
    return names


def _rows_embedded(instance, run_id: str) -> int:
    [entry] = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return entry.dagster_event.event_specific_data.materialization.metadata["rows_embedded"].value


def test_celery_backfill_of_every_shard_equals_single_process_and_survives_a_killed_worker(
        cluster, cluster_databases, scaling_config, embedding_server, tmp_path):
    _, cfg = scaling_config
    dbs = cluster_databases
    _seed(dbs.vectors, cfg)
    _seed(dbs.reference, cfg)
    size = {k: _count(dbs.vectors, cfg, _shard(k), sql.Identifier("public", SOURCE)) for k in PARTITIONS}
    assert all(size.values()), size  # the hash put rows in every shard

    # The single-process reference: one whole-table reembed() in this process, into its own database.
    provider = build_provider(SPACE, cfg.space(SPACE))
    with dbs.reference.connect() as conn:
        prepare_source(conn, cfg, SOURCE, lambda _: provider, spaces=[SPACE])
    assert reembed(dbs.reference, cfg, SOURCE, SPACE, provider).embedded == ROWS
    provider.close()

    embedding_server.delay = DELAY
    conf = worker_config(tmp_path / "celery.yaml", visibility_timeout=VISIBILITY_TIMEOUT,
                         unacked_restore_interval=1)
    for name in ("w1", "w2"):
        cluster.start_worker(name, conf)
    cluster.start_daemon()
    for name in ("w1", "w2"):
        cluster.wait_ready(name, "ready.")
    backfill = cluster.backfill("reembed_celery", PARTITIONS)

    instance = dg.DagsterInstance.get()
    killed = None  # (shard partition, worker, rows of the shard committed when it was killed)
    deadline = time.monotonic() + 240
    while True:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill}))
        if killed is None:
            for run in runs:
                key = run.tags["dagster/partition"]
                workers = _workers(instance, run.run_id)
                rows = _count(dbs.vectors, cfg, _shard(key))
                if workers and 0 < rows < size[key] and run.status == dg.DagsterRunStatus.STARTED:
                    cluster.kill(workers[-1])
                    killed = (key, workers[-1], rows)
                    break
        if len(runs) == len(PARTITIONS) and all(r.is_finished for r in runs):
            break
        assert time.monotonic() < deadline, (
            f"backfill not finished; killed={killed}; runs={[(r.tags['dagster/partition'], r.status) for r in runs]}"
            f"\n--- daemon\n{cluster.log('daemon')}\n--- w1\n{cluster.log('w1')}\n--- w2\n{cluster.log('w2')}")
        time.sleep(0.2)

    assert killed is not None, "no step was caught in flight: the kill never happened"
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), (
        [(r.tags["dagster/partition"], r.status) for r in runs], cluster.log("w1"), cluster.log("w2"))

    # After every shard, the index step (the `index/det` asset's work), then row for row and vector
    # for vector what the single-process run wrote: nothing lost, nothing twice.
    built = build_source_index(dbs.vectors, cfg, SOURCE, SPACE)
    assert built.index_built and built.stored == built.eligible == ROWS
    got, want = _rows(dbs.vectors, cfg, SOURCE), _rows(dbs.reference, cfg, SOURCE)
    assert len(got) == ROWS and got == want

    # The killed step was run again by the other worker, and resumed: it embedded only what the dead
    # worker had not committed.
    key, dead, committed = killed
    run = next(r for r in runs if r.tags["dagster/partition"] == key)
    workers = _workers(instance, run.run_id)
    assert workers[0] == dead and workers[-1] != dead, workers
    assert 0 < _rows_embedded(instance, run.run_id) <= size[key] - committed

    # The run queue: every run was queued first, and the two shards ran at the same time.
    for r in runs:
        assert instance.all_logs(r.run_id, of_type=DagsterEventType.RUN_ENQUEUED), r.run_id
    records = instance.get_run_records(dg.RunsFilter(run_ids=[r.run_id for r in runs]))
    (s1, e1), (s2, e2) = [(rec.start_time, rec.end_time) for rec in records]
    assert s1 < e2 and s2 < e1, "the runs did not overlap"
