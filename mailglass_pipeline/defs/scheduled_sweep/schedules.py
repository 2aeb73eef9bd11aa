"""Schedule ``reconcile_every_minute``: at most ONE run per tick, sweeping every due tenant.

``build_schedule_from_partitioned_job`` refuses dynamic partitions, and a run per
tenant per minute cannot keep up (seconds of queue and start-up per run), so the
schedule targets the all-tenant job ``reconcile_due_tenants`` (``defs/scheduled_sweep/jobs.py``).
Each tick costs two cheap reads and launches at most one run:

1. one run-storage query: is a run of ``reconcile_due_tenants`` still queued or
   running? Then skip, naming it: a slow sweep delays the next, it never piles
   runs up behind itself;
2. two statements on the application database: ``absorb_wakes`` (the triggers' signals, decision D27)
   then ``due_summary``
   (two partial indexes holding only due-able rows): no orphan due, skip.
   Never-matching orphans in backoff are not due, so a quiet tenant costs no run;
3. otherwise one ``RunRequest`` (run key = the tick time). That run drains for
   up to its time budget (30 s by default, ``MAILGLASS_SWEEP_BUDGET_SECONDS``),
   so it ends before the next tick and a burst is worked off at full speed.

Default status STOPPED: the schedule writes to the ledger of every tenant every
minute; turning that on is a decision per Dagster instance (one click, remembered
by the instance), not a side effect of loading the code.
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

from mailglass_pipeline import db
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.jobs import SWEEP_JOB_NAME, SWEEP_RUN_TAGS, reconcile_due_tenants
from mailglass_pipeline.reconciliation.monitoring import due_summary
from mailglass_pipeline.reconciliation.sweep import absorb_wakes
from mailglass_pipeline.settings import DEFAULT_GRACE_SECONDS, DEFAULT_MAX_AGE_MINUTES

#: A run in any of these states still occupies (or will occupy) the sweep.
IN_FLIGHT_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def sweep_in_flight(instance: DagsterInstance) -> tuple[str, str] | None:
    """(run id, status) of a queued or running ``reconcile_due_tenants`` run, if any: one storage query."""
    records = instance.get_run_records(RunsFilter(job_name=SWEEP_JOB_NAME, statuses=IN_FLIGHT_STATUSES), limit=1)
    return (records[0].dagster_run.run_id, records[0].dagster_run.status.value) if records else None


@schedule(
    name="reconcile_every_minute",
    cron_schedule="* * * * *",
    job=reconcile_due_tenants,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description=(
        "Every minute: one run sweeping every tenant with due orphans; none while the previous sweep is queued "
        "or running, none when nothing is due."
    ),
)
def reconcile_every_minute(
    context: ScheduleEvaluationContext, mailglass_db: MailglassDatabase
) -> RunRequest | SkipReason:
    in_flight = sweep_in_flight(context.instance)
    if in_flight is not None:
        run_id, status = in_flight
        return SkipReason(f"previous sweep {run_id} is still {status.lower()}: this tick waits for it")
    with db.connect(mailglass_db.get_engine()) as conn:
        # The signals of deliveries that appeared since the last sweep first (decision D27): an orphan they
        # make due counts now, not after its backoff.
        absorb_wakes(conn)
        conn.commit()
        due = due_summary(conn, DEFAULT_GRACE_SECONDS, DEFAULT_MAX_AGE_MINUTES)
    if due.orphans == 0:
        return SkipReason("no orphan is due (none past the grace window, linkable or at its retry time)")
    tick = context.scheduled_execution_time or datetime.now(UTC)
    stamp = tick.strftime("%Y%m%dT%H%M%SZ") if tick.tzinfo else tick.isoformat()
    oldest = f", oldest due {due.oldest_due_age_seconds:.0f} s" if due.oldest_due_age_seconds is not None else ""
    context.log.info(f"{due.orphans} due orphan(s) in {due.tenants} tenant(s){oldest}: one sweep")
    return RunRequest(run_key=f"sweep@{stamp}", tags=SWEEP_RUN_TAGS)
