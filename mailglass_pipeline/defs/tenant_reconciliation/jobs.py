"""Job ``reconcile_orphans``: the asset, in process, tagged for the run queue.

Every launch path (Launchpad, schedule, backfill, ``materialize_tenants``)
goes through this job, so every run gets the same tags: ``mailglass/reconcile``
from the job's run tags and ``mailglass/tenant=<tenant>`` from the partitioned
config's ``tags_for_partition_key_fn`` (Dagster applies it to UI launches,
schedule run requests and each backfill run alike). ``dagster.yaml`` caps both.
The partitioned config's run config is empty: the defaults of
``ReconcileConfig`` apply unless the Launchpad overrides them.
"""

from __future__ import annotations

from dagster import PartitionedConfig, define_asset_job, in_process_executor

from mailglass_pipeline.defs.tenant_reconciliation.assets import WEBHOOK_RECONCILIATION_KEY
from mailglass_pipeline.defs.tenant_reconciliation.partitions import RECONCILE_TAGS, tags_for_tenant, tenants_partitions

RECONCILE_JOB_NAME = "reconcile_orphans"

tenant_partitioned_config = PartitionedConfig(
    partitions_def=tenants_partitions,
    run_config_for_partition_key_fn=lambda _tenant: {},
    tags_for_partition_key_fn=tags_for_tenant,
)

reconcile_orphans = define_asset_job(
    name=RECONCILE_JOB_NAME,
    selection=[WEBHOOK_RECONCILIATION_KEY],
    config=tenant_partitioned_config,
    tags=RECONCILE_TAGS,
    run_tags=RECONCILE_TAGS,
    executor_def=in_process_executor,
    description="Reconcile one tenant's orphan webhook events (one run per tenant partition).",
)
