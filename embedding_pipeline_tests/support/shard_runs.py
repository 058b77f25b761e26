"""A backfill of a sharded source as Dagster runs it, in process: each shard partition of the
re-embed asset in its own run, then the source's partition of the index asset."""

from __future__ import annotations

from pathlib import Path


def materialize_shards_then_index(shards, index, keys: list[str], source: str, config_path: Path):
    """(the materialization of each shard run in ``keys`` order, the index run's materialization)."""
    import dagster as dg

    from embedding_pipeline.defs.resources import PipelineResource

    resources = {"pipeline": PipelineResource(config_path=str(config_path))}
    done = []
    with dg.DagsterInstance.ephemeral() as instance:
        for key in keys:
            result = dg.materialize([shards], partition_key=key, instance=instance, resources=resources)
            [m] = result.asset_materializations_for_node(shards.op.name)
            done.append(m)
        result = dg.materialize([index], partition_key=source, instance=instance, resources=resources)
        [m] = result.asset_materializations_for_node(index.op.name)
    return done, m
