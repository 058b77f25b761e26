"""Distributed execution: the re-embed assets as a job on Dagster's Celery executor.

``reembed_celery`` selects the same assets (and so the same partitions) as ``reembed``; only the
executor differs: each step is a Celery task on a Redis broker, run by whichever
``dagster-celery`` worker takes it. The executor's config is ``embedding_pipeline/celery.yaml``,
the file the workers are started with too (docs/scaling.md).
"""

from pathlib import Path

import dagster as dg
import yaml
from dagster_celery import celery_executor

from embedding_pipeline.config import PipelineConfig

CELERY_CONFIG = Path(__file__).resolve().parents[2] / "celery.yaml"


def celery_executor_config(path: Path = CELERY_CONFIG) -> dict:
    """The ``execution: config:`` block of the Celery config file (broker and backend as env references)."""
    return yaml.safe_load(path.read_text())["execution"]["config"]


def build(config: PipelineConfig) -> dg.Definitions:
    job = dg.define_asset_job(
        "reembed_celery",
        selection=dg.AssetSelection.groups("embeddings"),
        executor_def=celery_executor.configured(celery_executor_config(), name="celery_redis"),
        description="The `reembed` job with each step a Celery task (broker: EMBEDDING_PIPELINE_CELERY_BROKER_URL); "
                    "needs `dagster-celery worker start -A dagster_celery.app -y embedding_pipeline/celery.yaml` "
                    "workers. See docs/scaling.md.")
    return dg.Definitions(jobs=[job])
