"""One re-embed asset per space, from one keyword-only factory, partitioned by source table.

A run brings the (source, space) table up to date: new and edited rows embedded, vectors of
deleted or soft-deleted rows removed, HNSW index built after the first bulk load. Rerunning a
partition is cheap (unchanged rows are skipped by content hash) and resumes after a crash.
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
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.embeddings.setup import prepare_source
from embedding_pipeline.evaluation.smoke import latest_smoke


def reembed_key(space: str) -> dg.AssetKey:
    return dg.AssetKey(["embeddings", asset_name(space)])


def _build_reembed_asset(*, space: str, config: PipelineConfig,
                         partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    cfg = config.space(space)

    @dg.asset(
        key=reembed_key(space),
        group_name="embeddings",
        partitions_def=partitions,
        description=f"Vectors of space `{space}` ({cfg.model}, {cfg.dimensions}-d, {cfg.transport}) "
                    "for one source table, in the project's schema.",
        kinds={"postgres", "pgvector"},
        tags={"space": space},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        config = pipeline.config()
        source = context.partition_key
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
                cost = estimate(conn, src, config.space(space).on(src), provider, smoke=smoke)
                conn.rollback()
            context.log.info(f"estimate: {cost.line()}")
            stats = reembed(db, config, source, space, provider, logger=context.log)
        price = cost.price_per_million
        return dg.MaterializeResult(metadata={
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


def build(config: PipelineConfig) -> dg.Definitions:
    partitions = source_partitions(config)
    spaces = sorted({s for src in config.sources for s in config.spaces_for(src)})
    assets = [_build_reembed_asset(space=s, config=config, partitions=partitions) for s in spaces]
    job = dg.define_asset_job("reembed", selection=dg.AssetSelection.groups("embeddings"), partitions_def=partitions,
                              description="Re-embed one source table into every configured space.")
    return dg.Definitions(assets=assets, jobs=[job])
