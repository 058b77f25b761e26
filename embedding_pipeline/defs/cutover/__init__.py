"""The cutover domain: cutover, rollback and delayed-deletion jobs (with the daily deletion
schedule), the application column jobs (stage, cutover, rollback; built when an app uses
``cutover: column``) and one migration-plan asset per built space."""

import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.cutover import app_jobs, jobs
from embedding_pipeline.defs.cutover.plan_assets import build_plan


def build(config: PipelineConfig) -> dg.Definitions:
    return dg.Definitions.merge(jobs.build(config), app_jobs.build(config), build_plan(config))
