"""Job ``reconcile_due_tenants``: one run sweeping every due tenant (the minute schedule's job).

It materializes ``mailglass/reconciliation_sweep`` (``assets.py``), whose op of the same name
does the work. Its runs carry ``mailglass/reconcile=true`` and ``mailglass/tenant=*`` ("*" is never
a tenant partition key, so it shares no per-tenant slot); ``dagster.yaml`` caps both.
"""

from __future__ import annotations

from dagster import define_asset_job

from mailglass_pipeline.defs.scheduled_sweep.assets import SWEEP_KEY
from mailglass_pipeline.defs.tenant_reconciliation.partitions import RECONCILE_TAGS, TENANT_TAG

SWEEP_JOB_NAME = "reconcile_due_tenants"
#: The tenant tag of a run covering every tenant ("*" is never a valid partition key).
ALL_TENANTS = "*"
SWEEP_RUN_TAGS = {**RECONCILE_TAGS, TENANT_TAG: ALL_TENANTS}

reconcile_due_tenants = define_asset_job(
    name=SWEEP_JOB_NAME,
    selection=[SWEEP_KEY],
    tags=SWEEP_RUN_TAGS,
    run_tags=SWEEP_RUN_TAGS,
    description="Sweep every tenant with due orphans in one run (the minute schedule's job).",
)
