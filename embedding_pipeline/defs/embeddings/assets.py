"""One re-embed asset per space, partitioned by shard, and one index asset per space, by source.

A run brings the (source, space) table up to date: new and edited rows embedded, vectors of
deleted or soft-deleted rows removed, HNSW index built after the first bulk load. Rerunning a
partition is cheap (unchanged rows are skipped by content hash) and resumes after a crash.

Shards (``sources.<name>.shards``, docs/scaling.md). A source of one shard is one partition keyed
by its name, exactly as before shards existed. A source of N shards is N partitions
``<source>:<k>/<N>``, each a run of ``reembed(shard=(k, N))`` under its own lock that never builds
the index; ``index/index_<space>`` (partitioned by source) depends on every shard partition of its
source through a ``StaticPartitionMapping`` and builds the index once they are done. Dagster's
``MultiPartitionsDefinition`` was the issue's suggestion, but it is a full cartesian product: with
shard counts per source (1 for documents, 8 for a 100M-row table) it would show partitions for
shards that do not exist. Static keys list exactly the shards there are, and the same mapping
tells drift and eval which partitions make up a source.

Backfills: ``BackfillPolicy.multi_run(1)``, one run per shard, so each shard is retried, resumed
and queued on its own (the run queue and a Celery or Kubernetes executor spread them), and a
failed shard never holds back the others' commits. Each step claims a slot of its space's Dagster
pool (``model:<space>`` by default, limit ``concurrency.model_calls``), which caps the calls one
model server gets at once whatever the executor; `embedding-pipeline dev` sets the limits on the
instance (the UI's Concurrency page shows them).
"""


import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.defs.resources import (
    PipelineResource,
    asset_name,
    fail_fast_on_permanent_errors,
    source_partitions,
)
from embedding_pipeline.embeddings.cost import estimate
from embedding_pipeline.embeddings.reembed import (
    build_source_index,
    parse_shard,
    reembed,
)
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.evaluation.smoke import latest_smoke


def reembed_key(space: str) -> dg.AssetKey:
    return dg.AssetKey(["embeddings", asset_name(space)])


def index_key(space: str) -> dg.AssetKey:
    return dg.AssetKey(["index", f"index_{asset_name(space)}"])  # a short name of its own in the graph


def shard_partition_key(source: str, k: int, n: int) -> str:
    return f"{source}:{k}/{n}"  # the CLI's `reembed --shard K/N`; ':' cannot occur in a source name


def shard_keys(config: PipelineConfig) -> dict[str, str]:
    """Every re-embed partition key -> its source: the source's name when it has one shard."""
    keys: dict[str, str] = {}
    for name in sorted(config.sources):
        n = config.source(name).shards
        keys.update({name: name} if n == 1 else {shard_partition_key(name, k, n): name for k in range(n)})
    return keys


def parse_partition(key: str) -> tuple[str, tuple[int, int] | None]:
    """(source, shard or None) of a re-embed partition key."""
    source, sep, shard = key.partition(":")
    return (source, parse_shard(shard)) if sep else (source, None)


def shard_partitions(config: PipelineConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(shard_keys(config)))


def source_dep(space: str, config: PipelineConfig) -> dg.AssetDep:
    """A source-partitioned asset's dependency on a space's vectors: every shard of the same source."""
    return dg.AssetDep(reembed_key(space), partition_mapping=dg.StaticPartitionMapping(shard_keys(config)))


def partitions_of(config: PipelineConfig, source: str) -> list[str]:
    """The re-embed partition keys of one source (what a refusal tells the user to materialize)."""
    return [k for k, s in shard_keys(config).items() if s == source]


def _build_reembed_asset(*, space: str, config: PipelineConfig,
                         partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    cfg = config.space(space)

    @dg.asset(
        key=reembed_key(space),
        group_name="embeddings",
        partitions_def=partitions,
        description=f"Vectors of space `{space}` ({cfg.model}, {cfg.dimensions}-d, {cfg.transport}) "
                    "for one source table (or one shard of it, `<source>:<k>/<n>`), in the project's schema.",
        kinds={"postgres", "pgvector"},
        tags={"space": space},
        pool=config.model_pool(space),
        backfill_policy=dg.BackfillPolicy.multi_run(1),
        retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        config = pipeline.config()
        source, shard = parse_partition(context.partition_key)
        if space not in config.spaces_for(source):
            context.log.info(f"space {space} is not configured for source {source}; nothing to do")
            return dg.MaterializeResult(metadata={"skipped": f"space {space} not configured for {source}"})
        with fail_fast_on_permanent_errors():
            db = pipeline.database()
            provider = pipeline.provider(space)
            with db.connect() as conn:
                # A fresh database has no registry yet, and prepare_source reads it.
                ensure_schema(conn, config.project_schema)
                needed = {config.source(source).legacy_space, space} - {None}
                src = prepare_source(conn, config, source, pipeline.provider, spaces=sorted(needed))
                smoke = latest_smoke(conn, config.project_schema, space)
                cost = estimate(conn, src, config.space(space).on(src), provider, smoke=smoke, shard=shard)
                conn.rollback()
            context.log.info(f"estimate: {cost.line()}")
            stats = reembed(db, config, source, space, provider, shard=shard, logger=context.log)
        price = cost.price_per_million
        return dg.MaterializeResult(metadata={
            **({"shard": stats.shard} if shard else {}),
            "rows_embedded": stats.embedded,
            "rows_deleted": stats.deleted,
            **{f"skipped_{k}": v for k, v in stats.skipped.items()},
            **{f"altered_{k}": v for k, v in stats.altered.items()},
            "coverage_pct": dg.FloatMetadataValue(round(100 * stats.coverage, 3)),
            "rows_stored": stats.stored,
            "rows_eligible": stats.eligible,
            "rows_per_s": dg.FloatMetadataValue(round(stats.rows_per_s, 1)),
            "seconds": dg.FloatMetadataValue(round(stats.seconds, 2)),
            **({"input_limit": stats.input_limit} if stats.input_limit else {}),
            # Requests sent beside batches asked for: retries (and so any retry storm) show as the difference.
            **{f"requests_{k}": v for k, v in stats.requests.items()},
            "index_built": stats.index_built,
            "index_build_seconds": dg.FloatMetadataValue(round(stats.index_seconds, 2)),
            # The estimate made before the run beside what the run actually sent.
            "tokens_estimated": cost.tokens,
            "tokens_actual": stats.tokens,
            "tokens_counted_by": f"estimate: {cost.method}; actual: {stats.tokens_method or 'nothing embedded'}",
            **({"price_estimated": dg.FloatMetadataValue(cost.price or 0.0),
                "price_actual": dg.FloatMetadataValue(round(stats.tokens / 1e6 * price, 4))} if price is not None else {}),
        })

    return _asset


def _build_index_asset(*, space: str, config: PipelineConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=index_key(space),
        group_name="index",
        partitions_def=source_partitions(config),
        deps=[source_dep(space, config)],
        description=f"The HNSW index of space `{space}` for one source table, built once every shard of the "
                    "source is re-embedded (a source of one shard has it built by its re-embed run already), "
                    "with the table's coverage counted over all shards.",
        kinds={"postgres", "pgvector"},
        tags={"space": space},
        retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        config = pipeline.config()
        source = context.partition_key
        if space not in config.spaces_for(source):
            context.log.info(f"space {space} is not configured for source {source}; nothing to do")
            return dg.MaterializeResult(metadata={"skipped": f"space {space} not configured for {source}"})
        with fail_fast_on_permanent_errors():
            stats = build_source_index(pipeline.database(), config, source, space, logger=context.log)
        return dg.MaterializeResult(metadata={
            "shards": config.source(source).shards,
            "index_built": stats.index_built,
            "index_build_seconds": dg.FloatMetadataValue(round(stats.index_seconds, 2)),
            "coverage_pct": dg.FloatMetadataValue(round(100 * stats.coverage, 3)),
            "rows_stored": stats.stored,
            "rows_eligible": stats.eligible,
        })

    return _asset


def build(config: PipelineConfig) -> dg.Definitions:
    partitions = shard_partitions(config)
    spaces = sorted({s for src in config.sources for s in config.spaces_for(src)})
    assets = [_build_reembed_asset(space=s, config=config, partitions=partitions) for s in spaces]
    assets += [_build_index_asset(space=s, config=config) for s in spaces]
    job = dg.define_asset_job("reembed", selection=dg.AssetSelection.groups("embeddings"), partitions_def=partitions,
                              description="Re-embed one source table (or one shard of it) into every configured "
                                          "space; the `index` group builds the indexes after the shards.")
    return dg.Definitions(assets=assets, jobs=[job])
