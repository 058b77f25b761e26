"""Incremental re-embedding from the change queue: a sensor and the job it launches.

Every minute the sensor asks each source for its pending-work key (the newest queue id, plus
the newest ``updated_at`` past the mark in cursor mode) and launches one run of
``capture_consume`` for the source's partition when the key changed. The run key is derived
from that key, so the same work is never launched twice; work still queued under the same
key (a run failed or was deferred) is relaunched after ``retry_after_seconds``. Concurrent
runs of one source are safe: the consumer claims entries with SKIP LOCKED.
"""

import json
import time

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.queue import pending_signal
from embedding_pipeline.defs.embeddings.assets import index_key, reembed_key
from embedding_pipeline.defs.resources import PipelineResource, source_partitions
from embedding_pipeline.embeddings.capture import consume
from embedding_pipeline.errors import EmbeddingPipelineError

JOB_NAME = "capture_consume"
SENSOR_NAME = "capture_sensor"
SOURCE_TAG = "embedding_pipeline/source"


class ConsumeConfig(dg.Config):
    limit: int = 1000  # queue entries claimed (and re-embedded) per transaction
    max_batches: int = 100  # a bound on one run; the sensor launches another for what is left


def _build_job(partitions: dg.PartitionsDefinition) -> dg.JobDefinition:
    @dg.op(name="consume_changes", description="Re-embed the queued rows of one source into its shadow and "
                                               "active per-model tables, then drop their queue entries.")
    def consume_changes(context: dg.OpExecutionContext, config: ConsumeConfig, pipeline: PipelineResource) -> dict:
        cfg = pipeline.config()
        source = context.partition_key
        db = pipeline.database()
        totals = {"claimed": 0, "rows": 0, "polled": 0, "batches": 0}
        per_space: dict[str, dict[str, int]] = {}
        deferred = None
        while totals["batches"] < config.max_batches:
            r = consume(db, cfg, source, pipeline.provider, limit=config.limit, logger=context.log)
            totals["batches"] += 1
            for key in ("claimed", "rows", "polled"):
                totals[key] += r[key]
            for space, s in r["spaces"].items():
                acc = per_space.setdefault(space, {"embedded": 0, "deleted": 0})
                acc["embedded"] += s["embedded"]
                acc["deleted"] += s["deleted"]
            deferred = r["deferred"]
            if deferred or r["claimed"] < config.limit:
                break
        for space, s in per_space.items():
            # An observation, not a materialization: it must not trigger what depends on a full rebuild.
            # A sharded source has no partition named after it on the re-embed asset: its index asset
            # (partitioned by source) carries the observation instead.
            key = reembed_key(space) if cfg.source(source).shards == 1 else index_key(space)
            context.log_event(dg.AssetObservation(
                asset_key=key, partition=source,
                metadata={"incremental_rows_embedded": s["embedded"], "incremental_rows_deleted": s["deleted"]}))
        context.add_output_metadata({**totals, "deferred": deferred or ""})
        return {**totals, "spaces": per_space, "deferred": deferred}

    @dg.job(name=JOB_NAME, partitions_def=partitions, tags={"embedding_pipeline/kind": "incremental"},
            description="Incremental re-embed of one source from its change queue (launched by the capture sensor).")
    def capture_consume():
        consume_changes()

    return capture_consume


def _build_sensor(job: dg.JobDefinition, interval_seconds: int, retry_after_seconds: float) -> dg.SensorDefinition:
    @dg.sensor(name=SENSOR_NAME, job=job, minimum_interval_seconds=interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Launches capture_consume for every source with queued changes.")
    def capture_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
        cfg = pipeline.config()
        seen = json.loads(context.cursor) if context.cursor else {}
        requests = []
        try:
            with pipeline.database().connect() as conn:
                signals = {s: pending_signal(conn, cfg, s) for s in sorted(cfg.sources)}
        except EmbeddingPipelineError as e:
            return dg.SkipReason(f"cannot read the change queue: {e}")
        now = time.time()
        for source, signal in signals.items():
            if signal is None:
                seen.pop(source, None)
                continue
            last = seen.get(source)  # [signal, launched_at, attempt]
            if last and last[0] == signal and now - last[1] < retry_after_seconds:
                continue
            attempt = last[2] + 1 if last and last[0] == signal else 0
            seen[source] = [signal, now, attempt]
            requests.append(dg.RunRequest(run_key=f"{source}:{signal}:{attempt}", partition_key=source,
                                          tags={SOURCE_TAG: source}))
        context.update_cursor(json.dumps(seen))
        return requests or dg.SkipReason("no new queued changes")

    return capture_sensor


def build_capture(config: PipelineConfig, *, interval_seconds: int = 60,
                  retry_after_seconds: float = 600.0) -> dg.Definitions:
    from embedding_pipeline.db.queue import queue_stats_hook
    from embedding_pipeline.drift import stats as drift

    # The drift stats report queue depth and lag per source through this hook.
    drift.set_queue_stats_hook(queue_stats_hook)
    job = _build_job(source_partitions(config))
    return dg.Definitions(jobs=[job], sensors=[_build_sensor(job, interval_seconds, retry_after_seconds)])
