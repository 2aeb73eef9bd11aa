"""The three ops of a sweep, each a thin wrapper over one core function.

``find_orphans`` -> ``attempt_link`` -> ``append_reconciled_events`` hand
pandas DataFrames along, exactly as ``reconciler.sweep`` composes them in one
transaction. Here each op opens its own short transaction: correctness under
concurrency comes from the unique ``reconciled:<orphan id>`` idempotency index
(a second ``reconciled`` event for one orphan cannot be inserted, and
projections are written only for events this run inserted), not from one
transaction spanning the ops. So a retried op, a re-executed run or two runs
overlapping on one tenant can cost duplicated reads, never a duplicated write.

The DataFrames travel through ``mem_io_manager``: the job runs in process (three
tiny steps; a subprocess per step would cost seconds per minute-tick), and a
batch is only meaningful inside its run, so nothing is pickled to disk per tick.

Every op declares ``pool=RECONCILE_POOL``: ``dagster.yaml`` sets that pool to run
granularity with a limit of 1, so the run queue admits at most one run holding the
pool at a time, whatever launched it (the asset page's implicit asset job carries no
job tags, but its ops still carry the pool). Runs that never pass through the queue
(``mailglass run``, i.e. ``execute_in_process``) are covered by ``wait_for_pool_turn``
in ``find_orphans``: a run sweeps only once no run that started before it still
holds the pool (see that function).

Config is validated twice on purpose: ``ReconcileConfig``'s pydantic bounds and
the core's ``SweepConfig`` both run in the graph's config mapping
(``reconcile_config_mapping``), which Dagster evaluates while it builds the run's
execution plan. A bad Launchpad value is therefore refused at launch, before any
op starts.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from dagster import (
    Backoff,
    Config,
    DagsterRunStatus,
    Failure,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    RetryPolicy,
    RunsFilter,
    config_mapping,
    op,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from pydantic import Field

from mailglass_pipeline import db, orphans, reconciler
from mailglass_pipeline.defs.partitions import RECONCILE_POOL, tags_for_tenant
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.errors import ConfigurationError, DatabaseUnavailableError
from mailglass_pipeline.reconcile import settings

BATCH_IO_MANAGER_KEY = "mailglass_batch_io"
PREVIEW_ROWS = 10
PREVIEW_COLUMNS = ["id", "type", "provider", "provider_message_id", "attempts", "malformed"]

#: Transient database trouble (restart, failover, connection reset) is retried
#: 1 s, 2 s, 4 s later; the next minute's run would retry anyway.
DATABASE_RETRY_POLICY = RetryPolicy(max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL)

#: The metadata keys of a materialization, all integers (the UI plots them).
COUNT_KEYS = ("scanned", "linked", "unmatched", "malformed", "already_reconciled", "remaining_orphans", "stale_orphans")


class ReconcileConfig(Config):
    """Launchpad config of a sweep: defaults, bounds and descriptions from ``reconcile.settings``."""

    limit: int = Field(**settings.LIMIT.field_kwargs())
    max_age_minutes: int = Field(**settings.MAX_AGE_MINUTES.field_kwargs())
    grace_seconds: int = Field(**settings.GRACE_SECONDS.field_kwargs())
    retry_all: bool = Field(**settings.RETRY_ALL.field_kwargs())

    def values(self) -> dict[str, Any]:
        """The config as the ops receive it."""
        return {
            "limit": self.limit,
            "max_age_minutes": self.max_age_minutes,
            "grace_seconds": self.grace_seconds,
            "retry_all": self.retry_all,
        }

    def sweep_config(self) -> reconciler.SweepConfig:
        """The core's config; raises ``ConfigurationError`` for combinations pydantic cannot see."""
        return reconciler.SweepConfig(**self.values())


@config_mapping
def reconcile_config_mapping(config: ReconcileConfig) -> dict[str, Any]:
    """Validate the Launchpad config once, then hand it to the ops that need it."""
    try:
        config.sweep_config()
    except ConfigurationError as exc:
        raise ValueError(f"invalid reconcile config: {exc}") from exc
    values = config.values()
    return {"find_orphans": {"config": values}, "append_reconciled_events": {"config": values}}


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn an unreachable database into a one-line step failure (still retried by the policy)."""
    try:
        yield
    except DatabaseUnavailableError as exc:
        raise Failure(description=str(exc), allow_retries=True) from exc


def tenant_of(context: OpExecutionContext) -> str:
    """The run's tenant: its partition key, or the one key of a one-key partition range.

    An asset backfill (``BackfillPolicy.multi_run(1)``) gives each run a range of
    exactly one key (tags ``dagster/asset_partition_range_start/end``, no partition
    key): that key is the tenant. A wider range means several tenants in one run,
    which this asset never does (one tenant per run keeps the per-tenant history and
    limits), so it fails with a message saying what to launch instead.
    """
    if context.has_partition_key:
        return context.partition_key
    tags = context.run.tags
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is not None and start == end:
        return start
    if start is not None:
        raise Failure(
            description=(
                f"this run covers the tenant range {start}...{end}; webhook_reconciliation runs one tenant per run: "
                "launch a backfill (one run per tenant) instead"
            ),
            allow_retries=False,
        )
    raise Failure(
        description="reconcile_orphans runs one tenant at a time: launch it for a tenant partition",
        allow_retries=False,  # retrying cannot help
    )


#: Statuses in which a run may be sweeping (a QUEUED run is the run queue's business).
SWEEPING_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
#: How long a run waits for an older run holding the pool before it fails (longer than any healthy sweep).
POOL_WAIT_TIMEOUT_SECONDS = 900.0
POOL_POLL_SECONDS = 0.5


def holds_reconcile_pool(run: Any) -> bool:
    """Whether ``run`` (a DagsterRun) has a step in ``RECONCILE_POOL``."""
    concurrency = run.run_op_concurrency
    return bool(concurrency and RECONCILE_POOL in (concurrency.all_pools or ()))


POOL_HELD_MESSAGE = f"sweeping: pool {RECONCILE_POOL} is this run's"


def older_pool_runs(context: OpExecutionContext) -> list[str]:
    """Ids of other started runs holding the pool that started before this one (ties: by run id)."""
    records = context.instance.get_run_records(RunsFilter(statuses=SWEEPING_STATUSES))
    mine = next((r for r in records if r.dagster_run.run_id == context.run_id), None)
    mine_key = (mine.start_time, context.run_id) if mine is not None and mine.start_time else None
    older = []
    for record in records:
        run = record.dagster_run
        if run.run_id == context.run_id or not holds_reconcile_pool(run) or not record.start_time:
            continue  # a run not started yet will start after us and wait for us here
        if mine_key is None or (record.start_time, run.run_id) < mine_key:
            older.append(run.run_id)
    return older


def wait_for_pool_turn(context: OpExecutionContext, timeout: float = POOL_WAIT_TIMEOUT_SECONDS) -> float:
    """Wait until no run that started earlier still holds ``RECONCILE_POOL``; return the seconds waited.

    The run queue already keeps two pool runs apart (run granularity, limit 1), so
    a queued launch never waits here. What this closes is the path around the queue:
    an ``execute_in_process`` run (``mailglass run``) counts as in progress for the
    queue only once it has started, and the daemon may launch a run meanwhile.
    Both runs then meet here, and the order of their start times (then run ids),
    which both read from the same run storage, lets exactly one sweep first: a run
    that started later sees the earlier one as started and waits; the earlier one
    sees the later one either not yet started or started after it. A run that
    waits longer than ``timeout`` fails and names the run it waited for (a crashed
    worker's run is failed by run monitoring, which frees the pool).
    """
    started = time.monotonic()
    announced = False
    while True:
        older = older_pool_runs(context)
        if not older:
            waited = time.monotonic() - started
            context.log.info(f"{POOL_HELD_MESSAGE} (waited {waited:.1f} s)")
            return waited
        if not announced:
            context.log.info(f"waiting for run(s) {older} holding pool {RECONCILE_POOL} to finish")
            announced = True
        if time.monotonic() - started > timeout:
            raise Failure(
                description=(
                    f"waited {timeout:.0f} s for run(s) {older} holding pool {RECONCILE_POOL}; "
                    "terminate or fail them in the UI (Runs) and launch again"
                ),
                allow_retries=False,
            )
        time.sleep(POOL_POLL_SECONDS)


def markdown_preview(batch: pd.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """A short markdown table of the batch, for the run's step metadata."""
    if batch.empty:
        return "_no orphans in this batch_"
    columns = [c for c in [*PREVIEW_COLUMNS, "delivery_id"] if c in batch.columns]
    head = batch[columns].head(rows).astype(str)
    table = head.to_markdown(index=False)
    more = len(batch) - len(head)
    return table + (f"\n\n_... and {more} more_" if more > 0 else "")


def name_the_tenant(context: OpExecutionContext, tenant: str) -> None:
    """Tag the run with its tenant when its launcher did not (the asset page's Materialize and backfill).

    The Runs list then says which tenant every reconciliation run handled. Added at the start of the
    run, so the queue's per-tenant limit cannot see it: the pool keeps those runs apart.
    """
    missing = {k: v for k, v in tags_for_tenant(tenant).items() if k not in context.run.tags}
    if missing:
        context.instance.add_run_tags(context.run_id, missing)


def queue_state_metadata(conn: Any, tenants: list[str]) -> dict[str, dict[str, int]]:
    """Per tenant: its queued orphans by state, as ``queue_due`` ... ``queue_malformed`` (plotted per tenant)."""
    return {
        tenant: {f"queue_{state}": n for state, n in counts.items()}
        for tenant, counts in orphans.counts_by_state(conn, tenants).items()
    }


@op(out=Out(pd.DataFrame, io_manager_key=BATCH_IO_MANAGER_KEY), retry_policy=DATABASE_RETRY_POLICY, pool=RECONCILE_POOL)
def find_orphans(context: OpExecutionContext, config: ReconcileConfig, mailglass_db: MailglassDatabase) -> pd.DataFrame:
    """The tenant's batch: pending orphans past grace and inside max age, in fair order."""
    tenant = tenant_of(context)
    name_the_tenant(context, tenant)
    wait_for_pool_turn(context)
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        batch = reconciler.find_orphans(conn, tenant, config.sweep_config(), lock=False)
    context.add_output_metadata({"orphans": len(batch), "preview": MetadataValue.md(markdown_preview(batch))})
    return batch


@op(out=Out(pd.DataFrame, io_manager_key=BATCH_IO_MANAGER_KEY), retry_policy=DATABASE_RETRY_POLICY, pool=RECONCILE_POOL)
def attempt_link(context: OpExecutionContext, orphans: pd.DataFrame, mailglass_db: MailglassDatabase) -> pd.DataFrame:
    """The batch plus ``delivery_id``: the same-tenant delivery each orphan belongs to, or None."""
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        linked = reconciler.attempt_link(conn, orphans)
    matched = int(linked["delivery_id"].notna().sum()) if not linked.empty else 0
    context.add_output_metadata({"matched": matched, "preview": MetadataValue.md(markdown_preview(linked))})
    return linked


@op(out=Out(Nothing), retry_policy=DATABASE_RETRY_POLICY, pool=RECONCILE_POOL)
def append_reconciled_events(
    context: OpExecutionContext, config: ReconcileConfig, linked: pd.DataFrame, mailglass_db: MailglassDatabase
) -> None:
    """Append the ``reconciled`` events and projections in one transaction; record the counts.

    The counts become the asset materialization's metadata (this op's output is
    the asset's), as plain integers so the UI plots them per tenant over time.
    """
    tenant = tenant_of(context)
    sweep_config = config.sweep_config()
    with database_errors():
        result = db.run_transaction(
            mailglass_db.get_engine(),
            lambda conn: reconciler.append_reconciled_events(conn, linked, tenant, sweep_config),
        )
    counts = {key: int(getattr(result, key)) for key in COUNT_KEYS}
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        counts.update(queue_state_metadata(conn, [tenant])[tenant])
    context.log.info(f"tenant {tenant}: {counts}")
    context.add_output_metadata(counts)
