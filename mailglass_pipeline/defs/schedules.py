"""Schedule ``reconcile_every_minute``: a run per tenant with due orphans, never a flood.

``build_schedule_from_partitioned_job`` refuses dynamic partitions, so this is a
plain ``@schedule``. Each tick:

1. one grouped query for the tenants with orphans past the grace window
   (``reconciler.tenants_with_due_orphans``);
2. one query for this job's in-flight runs (queued, not started, starting,
   started, canceling), read for their ``mailglass/tenant`` tag;
3. a ``RunRequest`` for each due tenant without one, with a run key unique per
   tenant per tick (schedule run keys only dedupe within a tick, which is why
   step 2 exists).

So with 200 tenants and runs slower than a minute the queue holds at most one
run per tenant: a tenant is requested again only once its run has finished.
A due tenant that has no partition yet (the sensor is stopped or has not
ticked) gets one here, so the schedule never fails on an unknown key.

Default status STOPPED: the schedule writes to the ledger every minute for every
tenant; turning that on is a decision per Dagster instance (one click,
remembered by the instance), not a side effect of loading the code.
"""

from datetime import UTC, datetime

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from mailglass_pipeline import db, reconciler
from mailglass_pipeline.defs.jobs import RECONCILE_JOB_NAME, reconcile_orphans
from mailglass_pipeline.defs.partitions import (
    TENANT_TAG,
    TENANTS_PARTITIONS_NAME,
    is_valid_tenant_key,
    tags_for_tenant,
)
from mailglass_pipeline.defs.resources import MailglassDatabase

#: A run in any of these states still occupies (or will occupy) its tenant.
IN_FLIGHT_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def tenants_in_flight(instance: DagsterInstance) -> set[str]:
    """Tenants with a run of ``reconcile_orphans`` queued or running: one storage query for all."""
    runs = instance.get_runs(RunsFilter(job_name=RECONCILE_JOB_NAME, statuses=IN_FLIGHT_STATUSES))
    return {run.tags[TENANT_TAG] for run in runs if TENANT_TAG in run.tags}


@schedule(
    name="reconcile_every_minute",
    cron_schedule="* * * * *",
    job=reconcile_orphans,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every minute: one run per tenant with orphans past grace and no run already queued or running.",
)
def reconcile_every_minute(
    context: ScheduleEvaluationContext, mailglass_db: MailglassDatabase
) -> list[RunRequest] | SkipReason:
    with db.connect(mailglass_db.get_engine()) as conn:
        due = reconciler.tenants_with_due_orphans(
            conn, reconciler.DEFAULT_GRACE_SECONDS, reconciler.DEFAULT_MAX_AGE_MINUTES
        )
    if not due:
        return SkipReason(f"no tenant has orphans older than the {reconciler.DEFAULT_GRACE_SECONDS} s grace window")

    unfit = [t for t in due if not is_valid_tenant_key(t)]
    if unfit:
        context.log.warning(
            f"skipping tenant id(s) unfit as partition keys (use `mailglass reconcile`): {unfit[:20]!r}"
        )
    busy = tenants_in_flight(context.instance)
    ready = [t for t in due if t not in busy and is_valid_tenant_key(t)]
    if not ready:
        return SkipReason(
            f"{len(due)} tenant(s) have due orphans, but each already has a run queued or running "
            f"or an id unfit as a partition key: {due[:20]!r}"
        )

    known = set(context.instance.get_dynamic_partitions(TENANTS_PARTITIONS_NAME))
    missing = [t for t in ready if t not in known]
    if missing:
        context.instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, missing)

    tick = context.scheduled_execution_time or datetime.now(UTC)
    stamp = tick.strftime("%Y%m%dT%H%M%SZ") if tick.tzinfo else tick.isoformat()
    if len(ready) < len(due):
        context.log.info(f"{len(due) - len(ready)} due tenant(s) skipped (run in flight or unfit id)")
    return [RunRequest(partition_key=t, run_key=f"{t}@{stamp}", tags=tags_for_tenant(t)) for t in ready]
