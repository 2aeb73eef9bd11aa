"""Asset check ``reconciliation_lag``: is the minute schedule keeping up?

It sits on ``mailglass/reconciliation_sweep``, unpartitioned: lag is a property of the whole
reconciler, measured after every scheduled sweep in the same run, and launchable alone from that
asset's Checks tab. On the per-tenant asset it would either run inside every tenant's run (a
partitioned check, a preview feature) or not at all.
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, Config, asset_check
from pydantic import Field

from mailglass_pipeline import db, settings
from mailglass_pipeline.dagster_support.database import database_errors
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.assets import SWEEP_KEY
from mailglass_pipeline.reconciliation import monitoring
from mailglass_pipeline.reconciliation.results import LagSummary


def default_lag_threshold() -> int:
    """The environment's threshold for the whole instance (the schedule runs the check with its defaults)."""
    return settings.LAG_THRESHOLD_SECONDS.read()


class LagCheckConfig(Config):
    threshold_seconds: int | None = Field(**settings.LAG_THRESHOLD_SECONDS.field_kwargs(unset_reads_env=True))


def reconciliation_lag_result(summary: LagSummary, threshold_seconds: int) -> AssetCheckResult:
    longest = round(summary.longest_wait_seconds or 0.0, 1)
    return AssetCheckResult(
        passed=summary.count == 0,
        severity=AssetCheckSeverity.WARN,
        description=(
            f"{summary.count} linkable orphan(s) still unlinked more than {threshold_seconds} s after their "
            f"delivery committed (longest wait {longest} s)"
            if summary.count
            else f"no linkable orphan has waited more than {threshold_seconds} s"
        ),
        metadata={
            "lagging_orphans": summary.count,
            "longest_wait_seconds": longest,
            "threshold_seconds": threshold_seconds,
        },
    )


@asset_check(
    asset=SWEEP_KEY,
    name="reconciliation_lag",
    blocking=False,
    description=(
        "Orphans that could be linked now (past grace, their delivery committed) and are still unlinked more "
        "than the threshold (300 s) after they became linkable. Runs after each scheduled sweep."
    ),
)
def reconciliation_lag(
    context: AssetCheckExecutionContext, config: LagCheckConfig, mailglass_db: MailglassDatabase
) -> AssetCheckResult:
    threshold = config.threshold_seconds if config.threshold_seconds is not None else default_lag_threshold()
    with database_errors(), db.connect(mailglass_db.get_engine()) as conn:
        summary = monitoring.reconciliation_lag(conn, None, threshold)
    return reconciliation_lag_result(summary, threshold)
