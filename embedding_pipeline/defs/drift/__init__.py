"""The drift domain: nightly stats and checks per source table, alerts, quality regression."""


import dagster as dg

from embedding_pipeline.config import PipelineConfig
from embedding_pipeline.defs.drift.assets import (
    build_drift_asset,
    build_drift_job,
    build_version_job,
)
from embedding_pipeline.defs.drift.schedules import (
    build_nightly_schedule,
    build_weekly_full_schedule,
)
from embedding_pipeline.defs.drift.sensors import (
    build_catch_up_sensor,
    drift_alert_sensor,
    drift_run_failure_sensor,
)
from embedding_pipeline.defs.resources import source_partitions


def build(config: PipelineConfig) -> dg.Definitions:
    partitions = source_partitions(config)
    asset = build_drift_asset(config=config, partitions=partitions)
    job = build_drift_job()
    return dg.Definitions(
        assets=[asset],
        jobs=[job, build_version_job()],
        schedules=[build_nightly_schedule(job=job, partitions=partitions),
                   build_weekly_full_schedule(job=job, partitions=partitions)],
        sensors=[build_catch_up_sensor(job=job, partitions=partitions), drift_alert_sensor, drift_run_failure_sensor],
    )
