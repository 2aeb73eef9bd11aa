"""The sweep's evaluations of ``no_stale_orphans`` for the tenant partitions it materializes (decision D31).

Why the sweep evaluates a check it does not plan. Dagster 1.13 shows a partitioned check's status
per partition only while the partition's latest evaluation targets the partition's latest
materialization (``AssetCheckPartitionInfo.is_current``: the evaluation's
``target_materialization_data.storage_id`` against the latest materialization's storage id);
any newer materialization clears it, and the partition reads "Missing". The asset's overall
status is the aggregate of those (any failed partition: "Failed"), coloured by the severity of the
check's latest execution if it targets its partition's latest materialization. So every tenant
partition the sweep materializes gets an evaluation of its own, naming that partition and that
materialization, or its status would vanish after every tick that linked one of its orphans.

The evaluation is the per-tenant check's own (``stale_orphans_result`` over the same two reads), so
a tenant's status reads the same whichever path last materialized it. No plan names these
evaluations (the check is not in the sweep's job), so each is stored as a new
``asset_check_executions`` row for this run and partition; there is no PLANNED row for it to leave
behind as "Skipped". Dagster stores check evaluations one by one (``BATCH_WRITABLE_EVENTS`` has no
check evaluation): each costs one storage write, hence a cap per run in count and in seconds, the
tenants whose stale count may have changed (newly stale) first. A tenant past the cap keeps its new
materialization and reads "Missing" until its next run; the run's metadata counts them
(``checks_evaluated``, ``checks_deferred``, ``check_seconds``). A tenant with its own run in flight
(created, so its check is planned: queued or waiting for the pool) is left to that run, which
evaluates its later materialization: Dagster takes a partition's latest execution by row id, and
that run's row is older than one inserted here, so an evaluation here would leave the partition
"Missing" once the run ends. Runs in flight are read just before each chunk of evaluations, so one
that starts meanwhile has a short window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from dagster import AssetCheckEvaluation, AssetCheckKey, OpExecutionContext
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import db, orphans
from mailglass_pipeline.dagster_support.database import database_errors
from mailglass_pipeline.dagster_support.private import (
    MaterializationTarget,
    partitions_with_check_in_flight,
    target_materializations_of_run,
)
from mailglass_pipeline.defs.tenant_reconciliation.assets import WEBHOOK_RECONCILIATION_KEY
from mailglass_pipeline.defs.tenant_reconciliation.checks import STALE_TABLE_ROWS, stale_orphans_result
from mailglass_pipeline.reconciliation.monitoring import stale_orphans
from mailglass_pipeline.settings import DEFAULT_MAX_AGE_MINUTES

CHECK_NAME = "no_stale_orphans"
CHECK_KEY = AssetCheckKey(WEBHOOK_RECONCILIATION_KEY, CHECK_NAME)
#: Evaluations per sweep run, and the seconds they may take: each is one storage write (25-140 ms measured,
#: load-dependent), so a burst costs a tick at most ~10 s more and ~400 rows of asset_check_executions (D31).
MAX_CHECK_EVALUATIONS = 400
CHECK_BUDGET_SECONDS = 10.0
#: Tenants whose runs in flight are read just before their evaluations are written (two reads a chunk).
IN_FLIGHT_CHUNK = 25


def evaluation_order(counts_by_tenant: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The tenants to evaluate first: those with newly stale orphans (their outcome may flip), then the rest."""
    return sorted(counts_by_tenant, key=lambda t: (counts_by_tenant[t].get("newly_stale", 0) == 0, t))


def evaluate_stale_checks(
    context: OpExecutionContext,
    engine: Engine,
    counts_by_tenant: Mapping[str, Mapping[str, int]],
) -> tuple[int, int, float]:
    """Evaluate ``no_stale_orphans`` for the tenants this run materialized: (evaluated, deferred, seconds)."""
    started = time.perf_counter()
    tenants = evaluation_order(counts_by_tenant)[:MAX_CHECK_EVALUATIONS]
    # Each evaluation names the materialization this run just stored for its partition (one read).
    targets = target_materializations_of_run(context.instance, context.run_id, WEBHOOK_RECONCILIATION_KEY)
    evaluated = 0
    with database_errors(), db.connect(engine) as conn:
        for first in range(0, len(tenants), IN_FLIGHT_CHUNK):
            if time.perf_counter() - started > CHECK_BUDGET_SECONDS:
                break  # the rest read "Missing" until their next run: better than a late tick
            chunk = tenants[first : first + IN_FLIGHT_CHUNK]
            # A tenant whose run is waiting for the pool is left to that run: it evaluates its own later
            # materialization, and an evaluation from here would outrank it (Dagster orders by row id).
            # Read just before the chunk's writes, so a run starting meanwhile has little time to plan.
            in_flight = partitions_with_check_in_flight(context.instance, CHECK_KEY, chunk)
            for tenant in (t for t in chunk if t not in in_flight):
                evaluated += _evaluate(context, conn, tenant, targets.get(tenant))
    return evaluated, len(counts_by_tenant) - evaluated, time.perf_counter() - started


def _evaluate(context: OpExecutionContext, conn: Connection, tenant: str, target: MaterializationTarget | None) -> int:
    count, oldest_seconds = stale_orphans(conn, tenant, DEFAULT_MAX_AGE_MINUTES)
    table = orphans.oldest_stale(conn, tenant, STALE_TABLE_ROWS) if count else []
    result = stale_orphans_result(count, oldest_seconds, table)
    context.log_event(
        AssetCheckEvaluation(
            asset_key=WEBHOOK_RECONCILIATION_KEY,
            check_name=CHECK_NAME,
            passed=result.passed,
            metadata=result.metadata,
            target_materialization_data=target,
            severity=result.severity,
            description=result.description,
            blocking=False,
            partition=tenant,  # the partition is the evaluation's own: never None (D21's pitfall)
        )
    )
    return 1
