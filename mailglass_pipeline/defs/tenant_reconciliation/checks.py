"""Asset check ``no_stale_orphans``: orphans that aged out of the scan, per tenant.

(``reconciliation_lag``, the scheduled sweep's check, is in ``defs/scheduled_sweep/checks.py``.)

An orphan older than ``max_age_minutes`` (7 days) is no longer examined: it is
"older than 7 days, unlikely to reconcile". That deserves a warning, not a
failed run (the sweep did its job), hence severity WARN and a non-blocking
check. It is partitioned like the asset, so it runs inside each tenant's run
and reports that tenant's count and the age of its oldest stale orphan.
Partitioned asset checks are a Dagster preview feature in 1.13; its warning is
silenced here on purpose, and an unpartitioned check would lose the per-tenant
history in the UI.
"""

import warnings

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    PreviewWarning,
    TableColumn,
    TableRecord,
    TableSchema,
    asset_check,
)

from mailglass_pipeline import db, orphans
from mailglass_pipeline.dagster_support.database import database_errors
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.tenant_reconciliation.assets import WEBHOOK_RECONCILIATION_KEY
from mailglass_pipeline.defs.tenant_reconciliation.partitions import tenants_partitions
from mailglass_pipeline.reconciliation.monitoring import stale_orphans
from mailglass_pipeline.settings import DEFAULT_MAX_AGE_MINUTES, stale_message

#: Rows of the stale-orphan table in the check's metadata (the oldest first).
STALE_TABLE_ROWS = 20
STALE_TABLE_SCHEMA = TableSchema(
    columns=[
        TableColumn("tenant", "string"),
        TableColumn("provider", "string"),
        TableColumn("message_id", "string"),
        TableColumn("type", "string"),
        TableColumn("age_days", "float"),
        TableColumn("event_id", "string"),
    ]
)


def stale_table(rows: list[dict[str, object]]) -> MetadataValue:
    """The oldest stale orphans as a table the UI renders (Mailglass's admin view of them)."""
    records = [
        TableRecord(
            {
                "tenant": str(r["tenant_id"]),
                "provider": str(r["provider"] or "-"),
                "message_id": str(r["provider_message_id"] or "-"),
                "type": str(r["type"]),
                "age_days": round(float(r["age_seconds"]) / 86400, 2),  # type: ignore[arg-type]
                "event_id": str(r["event_id"]),
            }
        )
        for r in rows
    ]
    return MetadataValue.table(records, schema=STALE_TABLE_SCHEMA)


def stale_orphans_result(
    count: int, oldest_seconds: float | None, oldest: list[dict[str, object]] | None = None
) -> AssetCheckResult:
    """The check's result for ``count`` stale orphans, the oldest ``oldest_seconds`` old."""
    metadata: dict[str, object] = {"stale_orphans": count, "message": stale_message()}
    if oldest_seconds is not None:
        metadata["oldest_orphan_age_seconds"] = round(oldest_seconds, 1)
        metadata["oldest_orphan_age_days"] = round(oldest_seconds / 86400, 2)
    if oldest is not None:
        metadata["oldest_stale_orphans"] = stale_table(oldest)
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.WARN,
        description=f"{count} orphan(s) {stale_message()}" if count else "no stale orphans",
        metadata=metadata,
    )


def _no_stale_orphans(context: AssetCheckExecutionContext, mailglass_db: MailglassDatabase) -> AssetCheckResult:
    # The run's partition key is the tenant (every launch path gives one: decision D21); a run without
    # one (the check launched alone, unpartitioned) covers every tenant.
    tenant = context.partition_key if context.has_partition_key else None
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        count, oldest_seconds = stale_orphans(conn, tenant, DEFAULT_MAX_AGE_MINUTES)
        table = orphans.oldest_stale(conn, tenant, STALE_TABLE_ROWS) if count else []
    return stale_orphans_result(count, oldest_seconds, table)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    no_stale_orphans = asset_check(
        asset=WEBHOOK_RECONCILIATION_KEY,
        name="no_stale_orphans",
        partitions_def=tenants_partitions,
        blocking=False,
        description=f"Orphans past max age still unreconciled: {stale_message()}.",
    )(_no_stale_orphans)
