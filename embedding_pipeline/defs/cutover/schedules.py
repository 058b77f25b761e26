"""The daily deletion run: retired tables past their retention are dropped (or, by default, only reported)."""


import dagster as dg

DELETION_CRON = "0 4 * * *"  # 04:00 UTC: after the nightly jobs, before the working day


def build_schedules(delete_job: dg.JobDefinition) -> list[dg.ScheduleDefinition]:
    return [dg.ScheduleDefinition(
        name="delete_retired_daily",
        job=delete_job,
        cron_schedule=DELETION_CRON,
        execution_timezone="UTC",
        # Safe to run from the start: deletion is a dry run until `deletion_enabled: true`.
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily: drop retired space tables past their retention (dry run unless deletion_enabled).",
    )]
