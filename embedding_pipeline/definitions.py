"""The code location: every domain's definitions merged, plus the shared resource."""

import dagster as dg

from embedding_pipeline.config import load_config
from embedding_pipeline.defs import drift as drift_defs
from embedding_pipeline.defs.backup import assets as backup_assets
from embedding_pipeline.defs.cutover import app_jobs as app_cutover_jobs
from embedding_pipeline.defs.cutover import jobs as cutover_jobs
from embedding_pipeline.defs.cutover import plan_assets
from embedding_pipeline.defs.embeddings import assets as embedding_assets
from embedding_pipeline.defs.embeddings.capture_sensor import build_capture
from embedding_pipeline.defs.evaluation import assets as evaluation_assets
from embedding_pipeline.defs.evaluation import smoke_assets
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline.defs.startup import validate_on_load


def build_definitions() -> dg.Definitions:
    config = load_config()
    validate_on_load(config)
    return dg.Definitions.merge(
        backup_assets.build(config),
        embedding_assets.build(config),
        build_capture(config),
        evaluation_assets.build(config),
        smoke_assets.build_smoke(config),
        cutover_jobs.build(config),
        app_cutover_jobs.build(config),
        plan_assets.build_plan(config),
        drift_defs.build(config),
        dg.Definitions(resources={"pipeline": PipelineResource()}),
    )


defs = build_definitions()
