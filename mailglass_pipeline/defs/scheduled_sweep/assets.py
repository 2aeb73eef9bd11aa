"""The scheduled all-tenant sweep: asset ``mailglass/reconciliation_sweep`` and its op ``sweep_due_tenants``.

One action from the job down to the core: job ``reconcile_due_tenants`` (``jobs.py``) materializes
this asset, whose one op ``sweep_due_tenants`` calls ``reconciliation.drain.sweep_due_tenants``, a
loop of ``reconciliation.sweep.sweep`` transactions. (The op cannot share the job's name: Dagster
wants op and job names unique in a code location.)

Why this shape. The minute schedule must cover 10,000 tenants with ONE run per
tick (a Dagster run costs seconds of queueing and process start-up: one run per
tenant per minute cannot keep up beyond a few dozen tenants). What Dagster 1.13
offers, and why each was or was not used:

* A run of the partitioned asset can only cover a *contiguous range* of the
  dynamic partition keys, and then records a materialization for every key in
  the range (planned + materialized: 2 events per partition). The tenants with
  work are an arbitrary set, so a range would write events for thousands of
  idle tenants: storage would grow with the number of tenants.
* So the run materializes an unpartitioned asset, ``mailglass/reconciliation_sweep``,
  whose compute drains every due tenant for up to a time budget
  (``drain.sweep_due_tenants``: short all-tenant sweep transactions of at most
  ``max_total`` orphans each, linkable orphans first across tenants, at most
  ``limit`` per tenant per run; budget from the config's ``budget_seconds``,
  else ``MAILGLASS_SWEEP_BUDGET_SECONDS``, else 30 s of the 60 s tick) and then
  reports, for each tenant where something happened (an orphan linked, newly
  malformed or newly stale), a materialization of *that tenant's partition* of
  ``mailglass/webhook_reconciliation`` with the same count metadata as a
  per-tenant run. Idle tenants, and tenants whose only work was examining
  orphans that stay unmatched, get nothing (the run's totals count them): what
  a tick writes grows with the tenants that changed (one event row each, plus
  this asset's own few, plus an evaluation of ``no_stale_orphans`` for each of
  those partitions: one write each, capped, ``check_evaluations.py``, decision
  D31). A burst of 30,000 tenants with never-matching orphans would otherwise
  cost 30,000 event rows a tick for no news.
* Those materializations are written in batches: outside the webserver,
  dagster-postgres opens a connection per storage call (~25 ms per event here),
  so 3,000 tenants with work would cost 75 s one by one. Dagster batches events
  that carry batch metadata when ``DAGSTER_EVENT_BATCH_SIZE`` is set
  (``handle_new_event``), and dagster-postgres writes a batch of asset
  materializations in one INSERT (``store_event_batch``). This is the path
  Dagster itself uses for the materializations of a partition-range output
  (``execute_step._store_output``); :func:`record_tenant_materializations`
  follows it (``dagster_support.private.log_materializations_in_batches``).
* This asset's own materialization carries the run's totals (tenants swept and
  materialized, scanned, linked, unmatched, newly stale, backlog, oldest due
  age, lag, transactions, sweep seconds, budget and why the run stopped:
  ``drained``, ``quota`` or ``budget``, unfit tenant ids, check evaluations),
  so the asset page plots them per scheduled sweep over time; the asset check
  ``reconciliation_lag`` runs right after it in the same run.

Limits: the op is in ``RECONCILE_POOL`` (run granularity, limit 1 in
dagster.yaml) and the job's runs carry ``mailglass/reconcile=true``, so a
scheduled sweep never overlaps another reconciliation run, whatever launched
either. ``mailglass/tenant=*`` marks the run as covering every tenant ("*" can
never be a tenant partition key, so it shares no per-tenant slot).

Tenant ids unfit as partition keys are swept like any other; they only get no
partition materialization (their count and a sample are in the run's metadata).
"""

from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    Config,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    config_mapping,
    graph_asset,
    op,
)
from pydantic import Field

from mailglass_pipeline import db, orphans, settings
from mailglass_pipeline.dagster_support.config_errors import LaunchpadConfigError, parse_launchpad_config
from mailglass_pipeline.dagster_support.database import DATABASE_RETRY_POLICY, database_errors
from mailglass_pipeline.dagster_support.metadata import queue_state_metadata
from mailglass_pipeline.dagster_support.pool import RECONCILE_POOL, wait_for_pool_turn
from mailglass_pipeline.dagster_support.private import config_schema, log_materializations_in_batches
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.check_evaluations import evaluate_stale_checks
from mailglass_pipeline.defs.tenant_reconciliation.assets import WEBHOOK_RECONCILIATION_KEY
from mailglass_pipeline.defs.tenant_reconciliation.partitions import TENANTS_PARTITIONS_NAME, is_valid_tenant_key
from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.reconciliation import drain
from mailglass_pipeline.reconciliation.results import DrainResult
from mailglass_pipeline.settings import SweepConfig

SWEEP_KEY = AssetKey(["mailglass", "reconciliation_sweep"])

UNFIT_SAMPLE = 20


class SweepDueConfig(Config):
    """Launchpad config of the all-tenant sweep: defaults, bounds and descriptions from ``settings``."""

    limit: int = Field(**settings.LIMIT.field_kwargs())
    max_total: int = Field(**settings.MAX_TOTAL.field_kwargs())
    budget_seconds: float | None = Field(**settings.BUDGET_SECONDS.field_kwargs(unset_reads_env=True))
    max_age_minutes: int = Field(**settings.MAX_AGE_MINUTES.field_kwargs())
    grace_seconds: int = Field(**settings.GRACE_SECONDS.field_kwargs())
    retry_all: bool = Field(**settings.RETRY_ALL.field_kwargs())

    def budget(self) -> float:
        """The run's time budget: this config's, else the environment's, else the default (validated)."""
        if self.budget_seconds is None:
            return settings.BUDGET_SECONDS.read()
        return settings.BUDGET_SECONDS.check(self.budget_seconds)

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(
            limit=self.limit,
            max_total=self.max_total,
            max_age_minutes=self.max_age_minutes,
            grace_seconds=self.grace_seconds,
            retry_all=self.retry_all,
        )


def record_tenant_materializations(
    context: OpExecutionContext, counts_by_tenant: Mapping[str, Mapping[str, int]]
) -> int:
    """One materialization of ``mailglass/webhook_reconciliation`` per tenant, written in batches."""
    return log_materializations_in_batches(
        context,
        [
            AssetMaterialization(
                asset_key=WEBHOOK_RECONCILIATION_KEY,
                partition=tenant,
                metadata={key: int(value) for key, value in counts.items()},
                description="swept by the scheduled all-tenant sweep",
            )
            for tenant, counts in counts_by_tenant.items()
        ],
    )


def ensure_partitions(context: OpExecutionContext, tenants: list[str]) -> int:
    """Add the partitions the tenants with work lack (one read, at most one write)."""
    if not tenants:
        return 0
    known = set(context.instance.get_dynamic_partitions(TENANTS_PARTITIONS_NAME))
    missing = [t for t in tenants if t not in known]
    if missing:
        context.instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, missing)
    return len(missing)


def _seconds(value: float | None) -> float:
    return round(value, 1) if value is not None else 0.0


def sweep_metadata(
    result: DrainResult, unfit: list[str], recorded: int, evaluated: int = 0, check_seconds: float = 0.0
) -> dict[str, Any]:
    """The run's totals as plottable numbers (and the unfit ids and why the run stopped as text)."""
    metadata: dict[str, Any] = {
        "tenants_swept": result.tenants_swept,
        "tenants_materialized": recorded,
        # no_stale_orphans evaluations of those partitions, and those past the cap ("Missing": D31)
        "checks_evaluated": evaluated,
        "checks_deferred": recorded - evaluated,
        "check_seconds": round(check_seconds, 2),
        "scanned": result.scanned,
        "linked": result.linked,
        "unmatched": result.unmatched,
        "malformed": result.malformed,
        "newly_stale": result.newly_stale,
        "already_reconciled": result.already_reconciled,
        "transactions": result.transactions,
        "sweep_seconds": _seconds(result.elapsed_seconds),
        "budget_seconds": _seconds(result.budget_seconds),
        "stopped_by": MetadataValue.text(result.stopped_by),
        "remaining_orphans": result.remaining_orphans,
        "stale_orphans": result.stale_orphans,
        "due_remaining": result.due_remaining,
        "oldest_due_age_seconds": _seconds(result.oldest_due_age_seconds),
        "lag_seconds": _seconds(result.lag_seconds),
        "unfit_tenant_ids": len(unfit),
    }
    if unfit:
        metadata["unfit_tenant_ids_sample"] = MetadataValue.text(", ".join(repr(t) for t in unfit[:UNFIT_SAMPLE]))
    return metadata


@config_mapping(config_schema=config_schema(SweepDueConfig))
def sweep_config_mapping(values: dict[str, Any]) -> dict[str, Any]:
    """Validate the Launchpad config before any run exists (one line: ``dagster_support.config_errors``)."""
    config = parse_launchpad_config(SweepDueConfig, values, "sweep config")
    try:
        config.sweep_config()
        config.budget()
    except ConfigurationError as exc:
        raise LaunchpadConfigError(f"invalid sweep config: {exc}") from None
    return {"sweep_due_tenants": {"config": config.model_dump()}}


@op(out=Out(Nothing), retry_policy=DATABASE_RETRY_POLICY, pool=RECONCILE_POOL)
def sweep_due_tenants(context: OpExecutionContext, config: SweepDueConfig, mailglass_db: MailglassDatabase) -> None:
    """Drain every due tenant for the run's budget; record the tenants that changed; the totals as metadata."""
    # The config mapping validated these values at launch; a config error here would be a bug.
    sweep_config = config.sweep_config()
    budget = config.budget()
    wait_for_pool_turn(context)
    with database_errors():
        result = drain.sweep_due_tenants(mailglass_db.get_engine(), budget, sweep_config)
    # Only tenants where something happened get an event; re-examinations show in the totals below.
    changed = {tenant: counts for tenant, counts in result.tenants.items() if drain.tenant_changed(counts)}
    fit = {tenant: counts for tenant, counts in changed.items() if is_valid_tenant_key(tenant)}
    unfit = sorted(tenant for tenant in result.tenants if not is_valid_tenant_key(tenant))
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        states = queue_state_metadata(conn, list(fit))  # each tenant's queue by state, and the whole queue's
        totals = {f"queue_{state}": n for state, n in orphans.totals_by_state(conn).items()}
    fit = {tenant: {**counts, **states[tenant]} for tenant, counts in fit.items()}
    added = ensure_partitions(context, list(fit))
    recorded = record_tenant_materializations(context, fit)
    # Each materialized partition gets its check evaluated, or its status would read "Missing" (D31).
    evaluated, deferred, check_seconds = evaluate_stale_checks(context, mailglass_db.get_engine(), fit)
    context.log.info(
        f"swept {result.tenants_swept} tenant(s) in {result.transactions} transaction(s), "
        f"{result.elapsed_seconds:.1f} s of a {result.budget_seconds:.0f} s budget ({result.stopped_by}): "
        f"scanned {result.scanned}, linked {result.linked}; {recorded} partition materialization(s) for the "
        f"tenants that changed, {evaluated} no_stale_orphans evaluation(s) ({deferred} past the cap), "
        f"{added} partition(s) added, {len(unfit)} unfit tenant id(s)"
    )
    context.add_output_metadata({**sweep_metadata(result, unfit, recorded, evaluated, check_seconds), **totals})


# Graph-backed for one reason: an asset's own config cannot have a config mapping, and only a mapping
# refuses a bad Launchpad value at launch (before any run) instead of failing the run's first step.
# The run config keeps the asset's path: ops.mailglass__reconciliation_sweep.config.
@graph_asset(
    key=SWEEP_KEY,
    group_name="mailglass",
    config=sweep_config_mapping,
    kinds={"postgres", "python"},
    description=(
        "One sweep over every tenant with due orphans (what the minute schedule runs): records a materialization "
        "of each worked tenant's partition of mailglass/webhook_reconciliation; its own metadata holds the totals."
    ),
)
def reconciliation_sweep():
    return sweep_due_tenants()
