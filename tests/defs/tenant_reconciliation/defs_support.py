"""Helpers of the per-tenant job tests: build the job on a test database, run one tenant, read its counts."""

from __future__ import annotations

from typing import Any

from dagster import DagsterInstance, ExecuteInProcessResult, JobDefinition

from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.tenant_reconciliation.jobs import RECONCILE_JOB_NAME
from mailglass_pipeline.defs.tenant_reconciliation.partitions import TENANTS_PARTITIONS_NAME


def reconcile_job(database_url: str) -> JobDefinition:
    return build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(RECONCILE_JOB_NAME)


def run_tenant(
    database_url: str, instance: DagsterInstance, tenant: str, run_config: dict[str, Any] | None = None
) -> ExecuteInProcessResult:
    if tenant not in instance.get_dynamic_partitions(TENANTS_PARTITIONS_NAME):
        instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, [tenant])
    return reconcile_job(database_url).execute_in_process(
        partition_key=tenant, instance=instance, run_config=run_config or {}
    )


def materialization_counts(result: ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def graph_config(**values: Any) -> dict[str, Any]:
    """Launchpad-shaped run config for the asset's graph."""
    return {"ops": {"mailglass__webhook_reconciliation": {"config": values}}}
