"""One migration-plan asset per built space, from one keyword-only factory (group ``cutover``).

A materialization reads the live database (read-only) for every source the space is configured
for and writes the Markdown plan (``plan.build_plan``) under ``<home>/reports/plans/``; the
document is attached as Markdown metadata. Expected index build times are scaled from the HNSW
builds the re-embed engine recorded in the project's ``index_builds`` table when those are large
enough to extrapolate, else from the reference rate; the plan says which.
"""


import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.resources import PipelineResource, asset_name
from embedding_pipeline.plan import gather as plan_lib
from embedding_pipeline.plan.model import DONE, FAILED, PENDING


def plan_key(space: str) -> dg.AssetKey:
    return dg.AssetKey(["plan", f"plan_{asset_name(space)}"])


def _build_plan_asset(*, space: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=plan_key(space),
        group_name="cutover",
        description=f"Migration plan to space `{space}` from the config and the live database: schema, indexes, "
                    "write and read path, cutover, rollback, deletion, backup, evidence and a checklist.",
        kinds={"markdown"},
        tags={"space": space},
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
        config = pipeline.config()
        db = pipeline.database()
        plan = plan_lib.build_plan(db, config, space, provider_for=pipeline.provider)
        path = plan_lib.write_plan(db, plan)
        states = [s.state for p in plan.sources for s in p.steps]
        context.log.info(f"plan for {space} written to {path}")
        return dg.MaterializeResult(metadata={
            "plan": dg.MetadataValue.md(plan.markdown),
            "path": dg.MetadataValue.path(str(path)),
            "sources": ",".join(p.name for p in plan.sources),
            "steps_done": states.count(DONE),
            "steps_pending": states.count(PENDING),
            "steps_failed": states.count(FAILED),
        })

    return _asset


def build_plan_assets(config: PipelineConfig) -> list[dg.AssetsDefinition]:
    spaces = sorted({s for src in config.sources for s in config.spaces_for(src)})
    return [_build_plan_asset(space=s) for s in spaces]


def build_plan(config: PipelineConfig) -> dg.Definitions:
    return dg.Definitions(assets=build_plan_assets(config))
