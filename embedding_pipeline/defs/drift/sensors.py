"""Sensors of the drift domain: catch-up of missed nights, alert delivery, failed runs.

- ``drift_catch_up_sensor`` requests a drift run for every table whose last drift
  materialization is older than MAX_AGE_HOURS (or that never had one): a night missed
  because the daemon was down is made up at the next tick instead of the next night.
- ``drift_alert_sensor`` posts undelivered alert rows (written by the drift asset for each
  failed check finding) to the webhook named by ``drift.webhook_url_env``.
- ``drift_run_failure_sensor`` turns any failed run of this code location into an alert
  row and delivers it: a run that crashed never got to evaluate its checks.
"""


import time

import dagster as dg

from embedding_pipeline import errors
from embedding_pipeline.db.schema import ensure_schema
from embedding_pipeline.defs.drift.assets import DRIFT_KEY, MODE_TAG
from embedding_pipeline.defs.resources import PipelineResource
from embedding_pipeline.drift import alerts

MAX_AGE_HOURS = 26.0  # one night plus slack for a slow run
# Our own errors promise messages without document content; other exceptions only show their class.
_DOMAIN_ERRORS = {c.__name__ for c in vars(errors).values()
                  if isinstance(c, type) and issubclass(c, errors.EmbeddingPipelineError)}


def stale_partitions(instance: dg.DagsterInstance, partitions: dg.PartitionsDefinition, now: float,
                     max_age_hours: float = MAX_AGE_HOURS) -> list[tuple[str, float | None]]:
    """(partition, last materialization timestamp or None) of partitions not checked within max_age_hours."""
    out = []
    for key in partitions.get_partition_keys():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DRIFT_KEY, asset_partitions=[key]), limit=50).records
        # A version-only run checks no coverage, stale or orphans: it does not count as a night's check.
        checked = [r for r in records if _mode(r) != "version"]
        last = checked[0].timestamp if checked else None
        if last is None or now - last > max_age_hours * 3600:
            out.append((key, last))
    return out


def _mode(record) -> str:
    mat = record.asset_materialization
    value = mat.metadata.get("drift_mode") if mat is not None else None
    return getattr(value, "value", value) or "full"


def build_catch_up_sensor(*, job, partitions: dg.PartitionsDefinition) -> dg.SensorDefinition:
    @dg.sensor(name="drift_catch_up_sensor", job=job, minimum_interval_seconds=900,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Runs the drift checks of every table not checked in the last {MAX_AGE_HOURS:.0f} h.")
    def drift_catch_up_sensor(context: dg.SensorEvaluationContext):
        due = stale_partitions(context.instance, partitions, time.time())
        if not due:
            return dg.SkipReason(f"every table was checked within {MAX_AGE_HOURS:.0f} h")
        # Keyed by the last materialization seen: one request per missed night, not one per tick
        # (a run that fails leaves the key unchanged; the failure sensor alerts instead).
        return [dg.RunRequest(run_key=f"drift-catch-up:{key}:{int(last or 0)}", partition_key=key,
                              tags={"drift/trigger": "catch-up", MODE_TAG: "incremental"}) for key, last in due]

    return drift_catch_up_sensor


def deliver(pipeline: PipelineResource) -> alerts.Delivery:
    config = pipeline.config()
    with pipeline.database().connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()  # release the DDL lock before any webhook round trip
        return alerts.deliver_pending(conn, config.project_schema, alerts.webhook_url(config))


def _summary(report: alerts.Delivery, env_name: str, url_set: bool) -> str:
    if not url_set:
        return f"{report.pending} undelivered alert(s); no webhook configured (set ${env_name})"
    errors_ = f"; {report.errors[0]}" if report.errors else ""
    return f"delivered {len(report.delivered)}, {report.pending} still pending{errors_}"


@dg.sensor(name="drift_alert_sensor", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Posts undelivered alert rows to the Slack-compatible webhook named by drift.webhook_url_env.")
def drift_alert_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    report = deliver(pipeline)
    config = pipeline.config()
    return dg.SkipReason(_summary(report, config.drift.webhook_url_env, alerts.webhook_url(config) is not None))


CHECK_FAILED = "DagsterAssetCheckFailedError"


def _step_errors(context: dg.RunFailureSensorContext) -> list[tuple[str, str, str]]:
    """(step, innermost error class, its first message line) of each failed step."""
    out = []
    for event in context.get_step_failure_events():
        err = event.event_specific_data.error if event.event_specific_data else None
        while err is not None and err.cause is not None:
            err = err.cause
        if err is not None:
            out.append((event.step_key or "?", err.cls_name or "error", (err.message or "").strip().split("\n")[0]))
    return out


def _error_summary(steps: list[tuple[str, str, str]]) -> str:
    """Error classes per step; the message only for our own errors, which never carry content."""
    parts = [f"step {step}: {cls}" + (f": {msg[:400]}" if cls in _DOMAIN_ERRORS else "") for step, cls, msg in steps]
    return "; ".join(parts) or "the run failed before any step (see its logs)"


@dg.run_failure_sensor(name="drift_run_failure_sensor", default_status=dg.DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=60,
                       description="Writes an alert row for every failed run of this code location and posts it.")
def drift_run_failure_sensor(context: dg.RunFailureSensorContext, pipeline: PipelineResource):
    run = context.dagster_run
    steps = _step_errors(context)
    if steps and all(cls == CHECK_FAILED for _, cls, _ in steps):
        return dg.SkipReason(f"run {run.run_id} stopped on a blocking check; its findings are already alert rows")
    source = run.tags.get("dagster/partition")
    config = pipeline.config()
    where = f" for source {source}" if source else ""
    message = (f"run {run.run_id} of job {run.job_name}{where} failed: {_error_summary(steps)}. Fix: open the "
               "run in the Dagster UI for the full error, fix the cause and re-execute it")
    with pipeline.database().connect() as conn:
        ensure_schema(conn, config.project_schema)
        conn.commit()
        with conn.transaction():
            alerts.record_alert(conn, config.project_schema, source=source, space=run.tags.get("space"),
                                check_name="run_failed", severity="ERROR", message=message,
                                details={"run_id": run.run_id, "job": run.job_name})
        alerts.deliver_pending(conn, config.project_schema, alerts.webhook_url(config))
