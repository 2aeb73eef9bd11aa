"""Schedule ``prune_dagster_history_daily``: the retention job once a day.

Default status RUNNING: unlike the reconcile schedule it changes nothing an operator relies on
(14 days of runs stay), and without it storage grows without bound; turning it off is one click.
It runs at 03:17 UTC, away from the top of the hour.
"""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from mailglass_pipeline.defs.retention.jobs import DEFAULT_KEEP_DAYS, prune_dagster_history

prune_dagster_history_daily = ScheduleDefinition(
    name="prune_dagster_history_daily",
    job=prune_dagster_history,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description=f"Daily at 03:17 UTC: delete this location's runs older than {DEFAULT_KEEP_DAYS} days.",
)
