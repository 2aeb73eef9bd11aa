"""Job ``prune_dagster_history`` (scheduled daily in ``schedules.py``): Dagster storage stays bounded.

A minute schedule writes about 1,440 runs a day, forever: Dagster OSS purges old schedule and
sensor ticks (``retention:`` in dagster.yaml) but never runs or their event logs. This job deletes
the finished runs of THIS code location's jobs that are older than ``keep_days`` (default 14), with
their event logs (``DagsterInstance.delete_run`` deletes the run row, its tags through the foreign
key, and every event of the run with their asset-event tags: see ``SqlEventLogStorage.delete_events``).

What the asset's partition history shows afterwards: each tenant partition of
``mailglass/webhook_reconciliation`` keeps its LATEST materialization, because the run that holds
it is never deleted, however old. So every tenant still shows its current state (last counts,
when it was last reconciled) and the asset page never falls back to "never materialized". What is
lost, plainly: the older points of each tenant's metadata plot, the run pages and logs of runs
older than ``keep_days``, and the asset check results of those runs (their events, and the
``asset_check_executions`` rows, which ``delete_run`` leaves behind and this job deletes for the
same runs: see ``dagster_support.private.delete_check_executions``). The ledger, the only
record that matters for correctness, is in the application database and untouched.

Bounded: at most ``max_runs`` deletions per run, in batches of ``batch_size`` (each batch is one
storage read plus a few statements per run), so a first run on a year of history cannot hold the
daemon or the database for long; the next day's run continues. Runs not finished (queued, started,
canceling) are never touched, nor runs of other code locations: a run qualifies only when its job
belongs to this repository and, when the run records its origin, its code location is this one.

The same daily job bounds the reconciliation work queue (op ``prune_parked_orphans``): queue rows
parked because their orphan can no longer link (``stale``: past max age; ``malformed``) are deleted
once parked longer than ``MAILGLASS_PARKED_RETENTION_DAYS`` (default 30), in batches of 1,000 rows,
each its own short transaction (``orphans.prune_parked``). Here and not in the minute sweep: the
sweep holds row locks and must stay a few seconds long, while a parked row's removal is due once a
day at most; a daily batch job can take the time a first run over a year of parked rows needs
without delaying a single sweep. The ledger keeps every event (explain still answers from it).

The job learns this code location's jobs and assets from the resource ``mailglass_code_location``
(``CodeLocationContents``), which ``definitions.build_definitions`` binds to the definitions it
builds: this module never imports ``definitions`` (which imports it), so there is no import circle.
"""

import time
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    OpExecutionContext,
    RunsFilter,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from mailglass_pipeline import orphans, settings
from mailglass_pipeline.dagster_support.database import database_errors
from mailglass_pipeline.dagster_support.private import (
    delete_check_executions,
    job_names,
    latest_materialization_ids_by_partition,
)
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.tenant_reconciliation.assets import WEBHOOK_RECONCILIATION_KEY

PRUNE_JOB_NAME = "prune_dagster_history"
DEFAULT_KEEP_DAYS = 14
LOCATION_NAME = "mailglass_pipeline"
FINISHED_STATUSES = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


class PruneConfig(Config):
    """Launchpad config of a retention run."""

    keep_days: int = Field(default=DEFAULT_KEEP_DAYS, ge=1, le=3650, description="Runs newer than this are kept.")
    batch_size: int = Field(default=200, ge=1, le=5000, description="Runs read and deleted per batch.")
    max_runs: int = Field(default=20_000, ge=1, le=1_000_000, description="Most runs one retention run deletes.")
    dry_run: bool = Field(default=False, description="Count what would be deleted, delete nothing.")


def protected_run_ids(instance: DagsterInstance, asset_keys: list[AssetKey]) -> set[str]:
    """Runs holding the latest materialization of each partition (and of the asset as a whole)."""
    protected: set[str] = set()
    for key in asset_keys:
        latest = instance.get_latest_materialization_event(key)
        if latest is not None:
            protected.add(latest.run_id)
        storage_ids = list(latest_materialization_ids_by_partition(instance, key).values())
        for start in range(0, len(storage_ids), 500):
            chunk = storage_ids[start : start + 500]
            records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, storage_ids=chunk), limit=500)
            protected.update(record.run_id for record in records.records)
    return protected


def prune_history(
    instance: DagsterInstance,
    job_names: set[str],
    *,
    keep_days: int = DEFAULT_KEEP_DAYS,
    batch_size: int = 200,
    max_runs: int = 20_000,
    dry_run: bool = False,
    location_name: str | None = LOCATION_NAME,
    asset_keys: list[AssetKey] | None = None,
    exclude_run_ids: set[str] | None = None,
    log=None,
) -> dict[str, int]:
    """Delete finished runs of ``job_names`` created before ``now - keep_days``; return the counts."""
    cutoff = datetime.now(UTC) - timedelta(days=keep_days)
    protected = protected_run_ids(instance, asset_keys or [WEBHOOK_RECONCILIATION_KEY])
    skip = protected | (exclude_run_ids or set())
    deleted = examined = kept_latest = other_location = check_rows = 0
    # The cursor is the last run seen that stays in storage: a deleted run cannot be a cursor.
    cursor: str | None = None
    started = time.monotonic()
    while deleted < max_runs:
        records = instance.get_run_records(
            RunsFilter(job_name=None, statuses=FINISHED_STATUSES, created_before=cutoff),
            limit=batch_size,
            order_by="create_timestamp",
            ascending=True,
            cursor=cursor,
        )
        if not records:
            break
        batch = []
        for record in records:
            run = record.dagster_run
            examined += 1
            if run.job_name not in job_names:
                continue
            origin = run.remote_job_origin
            if location_name and origin is not None and origin.location_name != location_name:
                other_location += 1
                continue
            if run.run_id in skip:
                kept_latest += run.run_id in protected
                continue
            batch.append(run.run_id)
        doomed = set(batch[: max_runs - deleted])
        for run_id in batch[: max_runs - deleted]:
            if not dry_run:
                instance.delete_run(run_id)
            deleted += 1
        if not dry_run:
            check_rows += delete_check_executions(instance, sorted(doomed))
        kept = [r.dagster_run.run_id for r in records if dry_run or r.dagster_run.run_id not in doomed]
        if kept:
            cursor = kept[-1]
        if log is not None:
            log(f"examined {examined} run(s), {'would delete' if dry_run else 'deleted'} {deleted}")
    return {
        "deleted_runs": deleted,
        "examined_runs": examined,
        "kept_latest_materialization_runs": kept_latest,
        "skipped_other_location_runs": other_location,
        "deleted_check_executions": check_rows,
        "seconds": round(time.monotonic() - started, 3),
        "dry_run": int(dry_run),
    }


CODE_LOCATION_RESOURCE_KEY = "mailglass_code_location"


class CodeLocationContents:
    """This code location's job names and asset keys, read from the definitions once they are built.

    Bound as a resource by ``definitions.build_definitions`` (which sets ``definitions``): the op asks
    the definitions that launched it instead of importing the module that imports this one.
    """

    def __init__(self) -> None:
        self.definitions: Definitions | None = None

    def job_names(self) -> set[str]:
        """Every job of the location, the implicit asset job(s) of the asset page included."""
        return job_names(self._definitions())

    def asset_keys(self) -> list[AssetKey]:
        return sorted(self._definitions().resolve_all_asset_keys(), key=lambda k: k.path)

    def _definitions(self) -> Definitions:
        if self.definitions is None:
            raise RuntimeError("CodeLocationContents is bound by definitions.build_definitions")
        return self.definitions


@op(
    description="Delete this code location's finished runs older than keep_days, with their event logs.",
    required_resource_keys={CODE_LOCATION_RESOURCE_KEY},
)
def prune_runs(context: OpExecutionContext, config: PruneConfig) -> None:
    location: CodeLocationContents = getattr(context.resources, CODE_LOCATION_RESOURCE_KEY)
    job_names = location.job_names()
    asset_keys = location.asset_keys()
    origin = context.dagster_run.remote_job_origin
    counts = prune_history(
        context.instance,
        job_names,
        keep_days=config.keep_days,
        batch_size=config.batch_size,
        max_runs=config.max_runs,
        dry_run=config.dry_run,
        location_name=origin.location_name if origin is not None else LOCATION_NAME,
        asset_keys=asset_keys or [WEBHOOK_RECONCILIATION_KEY],
        exclude_run_ids={context.run_id},
        log=context.log.info,
    )
    context.log.info(f"retention: {counts}")
    context.add_output_metadata(counts)


class ParkedRetentionConfig(Config):
    """Launchpad config of the parked-row retention."""

    retention_days: int | None = Field(**settings.PARKED_RETENTION_DAYS.field_kwargs(unset_reads_env=True))
    batch_size: int = Field(default=1000, ge=1, le=100_000, description="Queue rows deleted per transaction.")
    max_rows: int = Field(default=1_000_000, ge=1, description="Most rows one retention run deletes.")


@op(description="Delete work-queue rows parked (stale, malformed) longer than the retention period; never events.")
def prune_parked_orphans(
    context: OpExecutionContext, config: ParkedRetentionConfig, mailglass_db: MailglassDatabase
) -> None:
    with database_errors():
        counts = orphans.prune_parked(
            mailglass_db.get_engine(), config.retention_days, batch_size=config.batch_size, max_rows=config.max_rows
        )
    context.log.info(f"parked-row retention: {counts}")
    context.add_output_metadata(counts)


@job(
    name=PRUNE_JOB_NAME,
    executor_def=in_process_executor,
    description=f"Keep Dagster storage bounded: delete runs older than {DEFAULT_KEEP_DAYS} days (configurable).",
)
def prune_dagster_history() -> None:
    prune_runs()
    prune_parked_orphans()
