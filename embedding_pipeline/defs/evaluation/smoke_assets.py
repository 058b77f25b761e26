"""One smoke asset per configured space, from one keyword-only factory (group ``evaluation``).

A materialization embeds the project's sentinel texts (``smoke.run_smoke``) and records the
metadata-only result: dimensions, p50/p95 latency, batch-vs-single consistency, endpoint class
and evidence. A blocked endpoint or a failed check still materializes (the result is evidence)
and fails the asset's ``smoke_passed`` check. The latest result is stored in
``<project_schema>.smoke_results`` for the migration plan.
"""


import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.resources import PipelineResource, asset_name
from embedding_pipeline.evaluation.smoke import (
    DEFAULT_CALLS,
    ensure_smoke_tables,
    run_smoke,
    store_smoke,
    summary,
)


class SmokeConfig(dg.Config):
    calls: int = DEFAULT_CALLS


def smoke_key(space: str) -> dg.AssetKey:
    return dg.AssetKey(["smoke", f"smoke_{asset_name(space)}"])


def metadata(result: dict) -> dict:
    """Dagster metadata of a result: every scalar field (none holds text or a vector)."""
    md = {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) and k not in ("reason", "error")}
    md["languages"] = ",".join(result["languages"])
    for k in ("p50_ms", "p95_ms", "batch_ms", "warmup_ms", "min_cosine"):
        if result.get(k) is not None:
            md[k] = dg.FloatMetadataValue(float(result[k]))
    if result.get("reason") or result.get("error"):
        md["problem"] = result.get("reason") or result.get("error")
    return md


def _build_smoke_asset(*, space: str, space_cfg) -> dg.AssetsDefinition:
    key = smoke_key(space)

    @dg.asset(
        key=key,
        group_name="evaluation",
        description=f"Smoke of space `{space}` ({space_cfg.model}, {space_cfg.dimensions}-d, {space_cfg.transport}): "
                    "dimensions, p50/p95 latency, batch consistency and endpoint class on sentinel texts.",
        kinds={"python"},
        tags={"space": space},
        check_specs=[dg.AssetCheckSpec("smoke_passed", asset=key,
                                       description="not blocked, expected dimensions, batch == single vectors")],
    )
    def _asset(context: dg.AssetExecutionContext, config: SmokeConfig,
               pipeline: PipelineResource) -> dg.MaterializeResult:
        pipeline_config = pipeline.config()
        result = run_smoke(space, pipeline_config.space(space), pipeline.provider, calls=config.calls)
        db = pipeline.database()
        with db.connect() as conn:
            ensure_smoke_tables(conn, pipeline_config.project_schema)
            store_smoke(conn, pipeline_config.project_schema, result)
        context.log.info(f"smoke {space}: {summary(result)}")
        return dg.MaterializeResult(
            metadata=metadata(result),
            check_results=[dg.AssetCheckResult(
                check_name="smoke_passed", passed=result["ok"], severity=dg.AssetCheckSeverity.ERROR,
                metadata={"summary": summary(result)})],
        )

    return _asset


def build_smoke(config: PipelineConfig) -> dg.Definitions:
    assets = [_build_smoke_asset(space=name, space_cfg=cfg) for name, cfg in sorted(config.spaces.items())]
    job = dg.define_asset_job("smoke", selection=dg.AssetSelection.assets(*assets),
                              description="Smoke every configured space (blocked endpoints are reported, not called).")
    return dg.Definitions(assets=assets, jobs=[job])
