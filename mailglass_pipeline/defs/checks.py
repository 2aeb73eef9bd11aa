"""Asset check ``no_stale_orphans``: orphans that aged out of the scan, per tenant.

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

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check
from dagster._utils.warnings import PreviewWarning

from mailglass_pipeline import db, reconciler
from mailglass_pipeline.defs.assets import WEBHOOK_RECONCILIATION_KEY
from mailglass_pipeline.defs.ops import database_errors
from mailglass_pipeline.defs.partitions import tenants_partitions
from mailglass_pipeline.defs.resources import MailglassDatabase


def stale_orphans_result(count: int, oldest_seconds: float | None) -> AssetCheckResult:
    """The check's result for ``count`` stale orphans, the oldest ``oldest_seconds`` old."""
    metadata: dict[str, object] = {"stale_orphans": count, "message": reconciler.STALE_MESSAGE}
    if oldest_seconds is not None:
        metadata["oldest_orphan_age_seconds"] = round(oldest_seconds, 1)
        metadata["oldest_orphan_age_days"] = round(oldest_seconds / 86400, 2)
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.WARN,
        description=f"{count} orphan(s) {reconciler.STALE_MESSAGE}" if count else "no stale orphans",
        metadata=metadata,
    )


def _no_stale_orphans(context: AssetCheckExecutionContext, mailglass_db: MailglassDatabase) -> AssetCheckResult:
    tenant = context.partition_key if context.has_partition_key else None
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        count, oldest_seconds = reconciler.stale_orphans(conn, tenant, reconciler.DEFAULT_MAX_AGE_MINUTES)
    return stale_orphans_result(count, oldest_seconds)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", PreviewWarning)
    no_stale_orphans = asset_check(
        asset=WEBHOOK_RECONCILIATION_KEY,
        name="no_stale_orphans",
        partitions_def=tenants_partitions,
        blocking=False,
        description=f"Orphans past max age still unreconciled: {reconciler.STALE_MESSAGE}.",
    )(_no_stale_orphans)
