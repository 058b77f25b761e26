"""The nightly drift run: every source table at 03:00 UTC, one run per partition."""


from datetime import datetime, timezone

import dagster as dg

NIGHTLY_CRON = "0 3 * * *"
NIGHTLY_TZ = "UTC"


def build_nightly_schedule(*, job, partitions: dg.PartitionsDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(name="drift_nightly_schedule", cron_schedule=NIGHTLY_CRON, execution_timezone=NIGHTLY_TZ, job=job,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Drift stats and checks of every source table, nightly at 03:00 UTC.")
    def drift_nightly_schedule(context: dg.ScheduleEvaluationContext):
        when = context.scheduled_execution_time or datetime.now(timezone.utc)
        night = when.strftime("%Y-%m-%d")
        # One run per table: a slow or failing table never holds up the others' checks.
        return [dg.RunRequest(run_key=f"drift:{key}:{night}", partition_key=key, tags={"drift/trigger": "schedule"})
                for key in partitions.get_partition_keys()]

    return drift_nightly_schedule
