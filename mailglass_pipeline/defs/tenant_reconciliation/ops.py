"""The three ops of a sweep, each a thin wrapper over one core function.

``find_orphans`` -> ``attempt_link`` -> ``append_reconciled_events`` hand
pandas DataFrames along, exactly as ``sweep`` composes them in one
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
holds the pool (``dagster_support.pool``).

Config is validated twice on purpose: ``ReconcileConfig``'s pydantic bounds and
the core's ``SweepConfig`` both run in the graph's config mapping
(``reconcile_config_mapping``), which Dagster evaluates while it builds the run's
execution plan. A bad Launchpad value is therefore refused at launch, before any
op starts, in one line naming the field and its bound (``dagster_support.config_errors``).
"""

from typing import Any

import pandas as pd
from dagster import (
    Config,
    Failure,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    config_mapping,
    op,
)
from pydantic import Field

from mailglass_pipeline import db, settings
from mailglass_pipeline.dagster_support.config_errors import LaunchpadConfigError, parse_launchpad_config
from mailglass_pipeline.dagster_support.database import DATABASE_RETRY_POLICY, database_errors
from mailglass_pipeline.dagster_support.metadata import queue_state_metadata
from mailglass_pipeline.dagster_support.pool import RECONCILE_POOL, wait_for_pool_turn
from mailglass_pipeline.dagster_support.private import add_run_tags, config_schema
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.tenant_reconciliation.partitions import tags_for_tenant
from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.reconciliation import sweep
from mailglass_pipeline.settings import SweepConfig

BATCH_IO_MANAGER_KEY = "mailglass_batch_io"
PREVIEW_ROWS = 10
PREVIEW_COLUMNS = ["id", "type", "provider", "provider_message_id", "attempts", "malformed"]

#: The metadata keys of a materialization, all integers (the UI plots them).
COUNT_KEYS = ("scanned", "linked", "unmatched", "malformed", "already_reconciled", "remaining_orphans", "stale_orphans")


class ReconcileConfig(Config):
    """Launchpad config of a sweep: defaults, bounds and descriptions from ``settings``."""

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

    def sweep_config(self) -> SweepConfig:
        """The core's config; raises ``ConfigurationError`` for combinations pydantic cannot see."""
        return SweepConfig(**self.values())


@config_mapping(config_schema=config_schema(ReconcileConfig))
def reconcile_config_mapping(values: dict[str, Any]) -> dict[str, Any]:
    """Validate the Launchpad config once (one-line refusal: ``dagster_support.config_errors``), then hand it on."""
    config = parse_launchpad_config(ReconcileConfig, values, "reconcile config")
    try:
        config.sweep_config()
    except ConfigurationError as exc:
        raise LaunchpadConfigError(f"invalid reconcile config: {exc}") from None
    values = config.values()
    return {"find_orphans": {"config": values}, "append_reconciled_events": {"config": values}}


def tenant_of(context: OpExecutionContext) -> str:
    """The run's tenant: its partition key (every launch path gives one: decision D21)."""
    if context.has_partition_key:
        return context.partition_key
    # A run without one key (no partition, or a range from a hand-written run config) is refused.
    raise Failure(
        description="webhook_reconciliation runs one tenant per run: launch it for one tenant partition",
        allow_retries=False,  # retrying cannot help
    )


def markdown_preview(batch: pd.DataFrame) -> str:
    """A short markdown table of the batch, for the run's step metadata."""
    if batch.empty:
        return "_no orphans in this batch_"
    columns = [c for c in [*PREVIEW_COLUMNS, "delivery_id"] if c in batch.columns]
    head = batch[columns].head(PREVIEW_ROWS).astype(str)
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
        add_run_tags(context.instance, context.run_id, missing)


@op(out=Out(pd.DataFrame, io_manager_key=BATCH_IO_MANAGER_KEY), retry_policy=DATABASE_RETRY_POLICY, pool=RECONCILE_POOL)
def find_orphans(context: OpExecutionContext, config: ReconcileConfig, mailglass_db: MailglassDatabase) -> pd.DataFrame:
    """The tenant's batch: pending orphans past grace and inside max age, in fair order."""
    tenant = tenant_of(context)
    name_the_tenant(context, tenant)
    wait_for_pool_turn(context)
    with database_errors():
        # The triggers' signals, committed (the find below runs in a transaction that is not): decision D27.
        db.run_transaction(mailglass_db.get_engine(), sweep.absorb_wakes)
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        batch = sweep.find_orphans(conn, tenant, config.sweep_config(), lock=False)
    context.add_output_metadata({"orphans": len(batch), "preview": MetadataValue.md(markdown_preview(batch))})
    return batch


@op(out=Out(pd.DataFrame, io_manager_key=BATCH_IO_MANAGER_KEY), retry_policy=DATABASE_RETRY_POLICY, pool=RECONCILE_POOL)
def attempt_link(context: OpExecutionContext, orphans: pd.DataFrame, mailglass_db: MailglassDatabase) -> pd.DataFrame:
    """The batch plus ``delivery_id``: the same-tenant delivery each orphan belongs to, or None."""
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        linked = sweep.attempt_link(conn, orphans)
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
            lambda conn: sweep.append_reconciled_events(conn, linked, tenant, sweep_config),
        )
    counts = {key: int(getattr(result, key)) for key in COUNT_KEYS}
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        counts.update(queue_state_metadata(conn, [tenant])[tenant])
    context.log.info(f"tenant {tenant}: {counts}")
    context.add_output_metadata(counts)
