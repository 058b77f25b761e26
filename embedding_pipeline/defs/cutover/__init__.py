"""The cutover domain: cutover, rollback and delayed-deletion jobs (with the daily deletion
schedule) and one migration-plan asset per built space."""

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.cutover import jobs
from embedding_pipeline.defs.cutover.plan_assets import build_plan


def build(config: PipelineConfig) -> dg.Definitions:
    return dg.Definitions.merge(jobs.build(config), build_plan(config))
