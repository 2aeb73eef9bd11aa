"""The Dagster code location ``mailglass_pipeline.definitions:defs`` (loaded by ``workspace.yaml``).

One place merges the features of ``mailglass_pipeline.defs`` (tenant
reconciliation, scheduled sweep, retention); each module there says why it is
shaped the way it is. Resources are bound here so tests and
``materialize_tenants`` can swap the database by rebinding one key.
"""

from __future__ import annotations

from dagster import Definitions, ResourceDefinition, in_process_executor, mem_io_manager

from mailglass_pipeline.defs.resources import MailglassDatabase, default_database_resource
from mailglass_pipeline.defs.retention.jobs import (
    CODE_LOCATION_RESOURCE_KEY,
    CodeLocationContents,
    prune_dagster_history,
)
from mailglass_pipeline.defs.retention.schedules import prune_dagster_history_daily
from mailglass_pipeline.defs.scheduled_sweep.assets import reconciliation_sweep
from mailglass_pipeline.defs.scheduled_sweep.checks import reconciliation_lag
from mailglass_pipeline.defs.scheduled_sweep.jobs import reconcile_due_tenants
from mailglass_pipeline.defs.scheduled_sweep.schedules import reconcile_every_minute
from mailglass_pipeline.defs.scheduled_sweep.sensors import check_reconciliation_lag, reconciliation_monitor
from mailglass_pipeline.defs.tenant_reconciliation.assets import webhook_reconciliation
from mailglass_pipeline.defs.tenant_reconciliation.checks import no_stale_orphans
from mailglass_pipeline.defs.tenant_reconciliation.jobs import reconcile_orphans
from mailglass_pipeline.defs.tenant_reconciliation.ops import BATCH_IO_MANAGER_KEY
from mailglass_pipeline.defs.tenant_reconciliation.sensors import tenant_partitions


def build_definitions(database: MailglassDatabase | None = None) -> Definitions:
    """The code location, optionally bound to a given database resource."""
    location = CodeLocationContents()  # the retention job's view of this location, filled in below
    definitions = Definitions(
        assets=[webhook_reconciliation, reconciliation_sweep],
        asset_checks=[no_stale_orphans, reconciliation_lag],
        jobs=[reconcile_orphans, reconcile_due_tenants, prune_dagster_history, check_reconciliation_lag],
        schedules=[reconcile_every_minute, prune_dagster_history_daily],
        sensors=[tenant_partitions, reconciliation_monitor],
        # The code location's default executor: the asset page's implicit asset job uses it too, and
        # the ops hand their batch along in memory (mem_io_manager), which needs a single process.
        executor=in_process_executor,
        resources={
            "mailglass_db": database or default_database_resource(),
            BATCH_IO_MANAGER_KEY: mem_io_manager,
            CODE_LOCATION_RESOURCE_KEY: ResourceDefinition.hardcoded_resource(
                location, "This code location's jobs and assets (what the retention job may prune)."
            ),
        },
    )
    location.definitions = definitions
    return definitions


defs = build_definitions()
