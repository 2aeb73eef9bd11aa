"""The code location loads and validates; the repository's dagster.yaml means what the README says."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DynamicPartitionsDefinition
from sqlalchemy.engine import make_url

from mailglass_pipeline.dagster_devtools.dev import psycopg2_url
from mailglass_pipeline.definitions import defs
from tests.dagster_private import InstigatorType, TickStatus

REPO = Path(__file__).resolve().parents[2]


def test_definitions_expose_the_contract_names():
    assert defs.resolve_assets_def(AssetKey(["mailglass", "webhook_reconciliation"]))
    job = defs.resolve_job_def("reconcile_orphans")
    partitions = job.partitions_def
    assert isinstance(partitions, DynamicPartitionsDefinition) and partitions.name == "tenants"
    op_names = {op.name for op in job.all_node_defs}
    assert {"find_orphans", "attempt_link", "append_reconciled_events"} <= op_names
    assert defs.resolve_schedule_def("reconcile_every_minute")
    assert defs.resolve_sensor_def("tenant_partitions")
    checks = {key.name: key.asset_key for key in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "no_stale_orphans": AssetKey(["mailglass", "webhook_reconciliation"]),
        "reconciliation_lag": AssetKey(["mailglass", "reconciliation_sweep"]),
    }
    assert defs.resolve_schedule_def("reconcile_every_minute").job_name == "reconcile_due_tenants"


def test_workspace_has_no_pyproject_shadow():
    # A [tool.dagster] table would make `dagster dev` ignore workspace.yaml.
    assert "[tool.dagster]" not in (REPO / "pyproject.toml").read_text()
    assert "mailglass_pipeline.definitions" in (REPO / "workspace.yaml").read_text()


@pytest.mark.process
def test_dagster_definitions_validate_passes(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}  # an empty instance: validation needs no storage
    env.pop("MAILGLASS_DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout


def test_repository_dagster_yaml_as_parsed_by_a_real_instance(monkeypatch, dagster_storage_url):
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", dagster_storage_url)
    with DagsterInstance.from_config(str(REPO)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"

        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        by_key = {limit["key"]: limit for limit in limits}
        assert by_key["mailglass/reconcile"]["limit"] == 1
        assert "value" not in by_key["mailglass/reconcile"]  # across all values: one run in total
        assert by_key["mailglass/tenant"]["limit"] == 1
        assert by_key["mailglass/tenant"]["value"] == {"applyLimitPerUniqueValue": True}
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds > 0
        for kind in (InstigatorType.SCHEDULE, InstigatorType.SENSOR):
            retention = instance.get_tick_retention_settings(kind)
            assert retention[TickStatus.SKIPPED] == 1
            assert retention[TickStatus.SUCCESS] == retention[TickStatus.FAILURE] == 7


def test_psycopg2_url_for_the_embedded_socket_form():
    url = psycopg2_url("postgresql+psycopg://postgres:@/mailglass?host=/tmp/pg sock")
    assert url.startswith("postgresql+psycopg2://postgres")
    parsed = make_url(url)
    assert parsed.query["host"] == "/tmp/pg sock"


def test_resource_url_comes_from_the_environment(monkeypatch, database_url):
    from dagster import EnvVar, instance_for_test

    from mailglass_pipeline.definitions import build_definitions
    from mailglass_pipeline.defs.resources import MailglassDatabase, default_database_resource

    monkeypatch.setenv("MAILGLASS_DATABASE_URL", database_url)
    bound = default_database_resource()
    assert isinstance(bound.database_url, EnvVar) and bound.database_url.env_var_name == "MAILGLASS_DATABASE_URL"
    monkeypatch.delenv("MAILGLASS_DATABASE_URL")
    assert default_database_resource().database_url is None  # the core's default applies at run time

    # Unset at load time, set at run time: the run still writes where the environment says.
    job = build_definitions().resolve_job_def("reconcile_orphans")
    monkeypatch.setenv("MAILGLASS_DATABASE_URL", database_url)
    assert MailglassDatabase().resolved_url() == database_url
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", ["t1"])
        assert job.execute_in_process(partition_key="t1", instance=instance).success
