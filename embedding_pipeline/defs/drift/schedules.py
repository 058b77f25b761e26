"""The drift schedules: an incremental check nightly, a full check weekly (the proof it builds on).

- ``drift_nightly_schedule`` (03:00 UTC): every source table, run tag ``drift/mode=incremental``.
  Where change capture runs a trigger and the last full check found the space clean, coverage,
  stale and orphans come from the capture queue in O(changes); anywhere else the run falls back
  to a full check by itself and says why in its metadata.
- ``drift_weekly_full_schedule`` (Sundays 04:00 UTC): every source table, ``drift/mode=full``:
  every count from the tables, which also catches what capture cannot see (TRUNCATE, a disabled
  trigger, writes into a space table that bypass the engine).
"""


from datetime import datetime, timezone

import dagster as dg

from embedding_pipeline.defs.drift.assets import MODE_TAG

NIGHTLY_CRON = "0 3 * * *"
WEEKLY_CRON = "0 4 * * 0"
NIGHTLY_TZ = "UTC"


def _requests(context, partitions, name: str, mode: str) -> list[dg.RunRequest]:
    when = context.scheduled_execution_time or datetime.now(timezone.utc)
    night = when.strftime("%Y-%m-%d")
    # One run per table: a slow or failing table never holds up the others' checks.
    return [dg.RunRequest(run_key=f"{name}:{key}:{night}", partition_key=key,
                          tags={"drift/trigger": "schedule", MODE_TAG: mode})
            for key in partitions.get_partition_keys()]


def build_nightly_schedule(*, job, partitions: dg.PartitionsDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(name="drift_nightly_schedule", cron_schedule=NIGHTLY_CRON, execution_timezone=NIGHTLY_TZ, job=job,
                 default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Drift checks of every source table, nightly at 03:00 UTC: incremental from change "
                             "capture where its premise holds, else full.")
    def drift_nightly_schedule(context: dg.ScheduleEvaluationContext):
        return _requests(context, partitions, "drift", "incremental")

    return drift_nightly_schedule


def build_weekly_full_schedule(*, job, partitions: dg.PartitionsDefinition) -> dg.ScheduleDefinition:
    @dg.schedule(name="drift_weekly_full_schedule", cron_schedule=WEEKLY_CRON, execution_timezone=NIGHTLY_TZ,
                 job=job, default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Full drift check of every source table, Sundays at 04:00 UTC: the proof the "
                             "nightly incremental checks build on.")
    def drift_weekly_full_schedule(context: dg.ScheduleEvaluationContext):
        return _requests(context, partitions, "drift-full", "full")

    return drift_weekly_full_schedule
