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

Config is validated twice on purpose: ``ReconcileConfig``'s pydantic bounds and
the core's ``SweepConfig`` both run in the graph's config mapping
(``reconcile_config_mapping``), which Dagster evaluates while it builds the run's
execution plan. A bad Launchpad value is therefore refused at launch, before any
op starts.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from dagster import (
    Backoff,
    Config,
    Failure,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    RetryPolicy,
    config_mapping,
    op,
)
from pydantic import Field

from mailglass_pipeline import db, reconciler
from mailglass_pipeline.defs.partitions import RECONCILE_TAG, TENANT_TAG
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.errors import ConfigurationError, DatabaseUnavailableError

BATCH_IO_MANAGER_KEY = "mailglass_batch_io"
PREVIEW_ROWS = 10
PREVIEW_COLUMNS = ["id", "type", "provider", "provider_message_id", "attempts", "malformed"]

#: Transient database trouble (restart, failover, connection reset) is retried
#: 1 s, 2 s, 4 s later; the next minute's run would retry anyway.
DATABASE_RETRY_POLICY = RetryPolicy(max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL)

#: The metadata keys of a materialization, all integers (the UI plots them).
COUNT_KEYS = ("scanned", "linked", "unmatched", "malformed", "already_reconciled", "remaining_orphans", "stale_orphans")


class ReconcileConfig(Config):
    """Launchpad config of a sweep (defaults as in DESIGN.md section 1)."""

    limit: int = Field(
        default=reconciler.DEFAULT_LIMIT,
        ge=1,
        le=100_000,
        description="At most this many orphans are examined per run (oldest never-attempted first).",
    )
    max_age_minutes: int = Field(
        default=reconciler.DEFAULT_MAX_AGE_MINUTES,
        ge=1,
        le=366 * 24 * 60,
        description="Orphans older than this fall out of the scan and are reported as stale.",
    )
    grace_seconds: int = Field(
        default=reconciler.DEFAULT_GRACE_SECONDS,
        ge=0,
        le=24 * 60 * 60,
        description="Orphans younger than this are left for the next run (the delivery may still commit).",
    )

    def sweep_config(self) -> reconciler.SweepConfig:
        """The core's config; raises ``ConfigurationError`` for combinations pydantic cannot see."""
        return reconciler.SweepConfig(
            limit=self.limit, max_age_minutes=self.max_age_minutes, grace_seconds=self.grace_seconds
        )


@config_mapping
def reconcile_config_mapping(config: ReconcileConfig) -> dict[str, Any]:
    """Validate the Launchpad config once, then hand it to the ops that need it."""
    try:
        config.sweep_config()
    except ConfigurationError as exc:
        raise ValueError(f"invalid reconcile config: {exc}") from exc
    values = {"limit": config.limit, "max_age_minutes": config.max_age_minutes, "grace_seconds": config.grace_seconds}
    return {"find_orphans": {"config": values}, "append_reconciled_events": {"config": values}}


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn an unreachable database into a one-line step failure (still retried by the policy)."""
    try:
        yield
    except DatabaseUnavailableError as exc:
        raise Failure(description=str(exc), allow_retries=True) from exc


def tenant_of(context: OpExecutionContext) -> str:
    """The run's tenant: its partition key (the job is always partitioned by tenant)."""
    if not context.has_partition_key:
        raise Failure(
            description="reconcile_orphans runs one tenant at a time: launch it for a tenant partition",
            allow_retries=False,  # retrying cannot help
        )
    return context.partition_key


def warn_if_untagged(context: OpExecutionContext) -> None:
    """Say so when the run escaped the run queue's limits (launched outside ``reconcile_orphans``).

    The asset page's "Materialize" uses Dagster's implicit asset job, whose runs
    carry no ``mailglass/*`` tags. The result is still exact; only the
    one-run-at-a-time guarantee does not hold for such a run.
    """
    missing = [tag for tag in (RECONCILE_TAG, TENANT_TAG) if tag not in context.run.tags]
    if missing:
        context.log.warning(
            f"run lacks tag(s) {missing}: it was not launched through job reconcile_orphans, so the run queue's "
            "concurrency limits did not apply (the result is still exact). Launch from the job's page instead."
        )


def markdown_preview(batch: pd.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """A short markdown table of the batch, for the run's step metadata."""
    if batch.empty:
        return "_no orphans in this batch_"
    columns = [c for c in [*PREVIEW_COLUMNS, "delivery_id"] if c in batch.columns]
    head = batch[columns].head(rows).astype(str)
    table = head.to_markdown(index=False)
    more = len(batch) - len(head)
    return table + (f"\n\n_... and {more} more_" if more > 0 else "")


@op(out=Out(pd.DataFrame, io_manager_key=BATCH_IO_MANAGER_KEY), retry_policy=DATABASE_RETRY_POLICY)
def find_orphans(context: OpExecutionContext, config: ReconcileConfig, mailglass_db: MailglassDatabase) -> pd.DataFrame:
    """The tenant's batch: pending orphans past grace and inside max age, in fair order."""
    tenant = tenant_of(context)
    warn_if_untagged(context)
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        batch = reconciler.find_orphans(conn, tenant, config.sweep_config(), lock=False)
    context.add_output_metadata({"orphans": len(batch), "preview": MetadataValue.md(markdown_preview(batch))})
    return batch


@op(out=Out(pd.DataFrame, io_manager_key=BATCH_IO_MANAGER_KEY), retry_policy=DATABASE_RETRY_POLICY)
def attempt_link(context: OpExecutionContext, orphans: pd.DataFrame, mailglass_db: MailglassDatabase) -> pd.DataFrame:
    """The batch plus ``delivery_id``: the same-tenant delivery each orphan belongs to, or None."""
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        linked = reconciler.attempt_link(conn, orphans)
    matched = int(linked["delivery_id"].notna().sum()) if not linked.empty else 0
    context.add_output_metadata({"matched": matched, "preview": MetadataValue.md(markdown_preview(linked))})
    return linked


@op(out=Out(Nothing), retry_policy=DATABASE_RETRY_POLICY)
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
    context.log.info(f"tenant {tenant}: {counts}")
    context.add_output_metadata(counts)
