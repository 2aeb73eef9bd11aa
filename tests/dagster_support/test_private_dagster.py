"""Pins: each private Dagster behaviour that ``mailglass_pipeline.dagster_support.private`` and
tests/dagster_private.py (the tests' and benchmarks' own) rely on.

A Dagster upgrade that renames or changes one of them fails here, naming what to revisit,
instead of failing a production run. In-memory/SQLite instances: these are Dagster's own
behaviours, independent of the application database.
"""

import os
import warnings

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    DailyPartitionsDefinition,
    Definitions,
    DynamicPartitionsDefinition,
    MaterializeResult,
    PreviewWarning,
    asset,
    asset_check,
    define_asset_job,
    instance_for_test,
)

from mailglass_pipeline.dagster_support import private
from tests import dagster_private
from tests.dagster_private import InstigatorType, TickStatus

TARGET = AssetKey(["pin", "target"])
PARTS = DynamicPartitionsDefinition(name="pin_parts")


@asset(key=TARGET, partitions_def=PARTS)
def target() -> None:
    """The asset whose partitions another step records (never computed here)."""


def test_materializations_logged_in_batches_are_all_stored_in_few_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """record_tenant_materializations: DAGSTER_EVENT_BATCH_SIZE + DagsterEventBatchMetadata -> batched writes."""
    monkeypatch.setenv(private.EVENT_BATCH_SIZE_ENV, "10")  # the environment's size wins over ours (1,000)
    keys = [f"t{i}" for i in range(25)]

    @asset
    def recorder(context: AssetExecutionContext) -> MaterializeResult:
        logged = private.log_materializations_in_batches(
            context.op_execution_context,
            [AssetMaterialization(asset_key=TARGET, partition=k, metadata={"n": 1}) for k in keys],
        )
        return MaterializeResult(metadata={"logged": logged})

    job = Definitions(assets=[recorder, target]).resolve_implicit_global_asset_job_def()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTS.name, keys)
        storage = instance.event_log_storage
        batches: list[int] = []
        store_event_batch = storage.store_event_batch

        def counting(events):  # a spy: Dagster's own storage still writes every event
            batches.append(len(events))
            return store_event_batch(events)

        monkeypatch.setattr(storage, "store_event_batch", counting)
        assert job.execute_in_process(instance=instance, asset_selection=[recorder.key]).success
        assert instance.get_materialized_partitions(TARGET) == set(keys)
    # Three writes of the batch size (the last one short), not 25 single writes.
    assert batches == [10, 10, 5]


def test_event_batching_sets_the_size_only_for_its_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(private.EVENT_BATCH_SIZE_ENV, raising=False)
    with private.event_batching():
        assert os.environ[private.EVENT_BATCH_SIZE_ENV] == str(private.EVENT_BATCH_SIZE)
    assert private.EVENT_BATCH_SIZE_ENV not in os.environ


def test_delete_run_leaves_check_executions_that_delete_check_executions_removes() -> None:
    """retention: ``DagsterInstance.delete_run`` keeps asset_check_executions rows; our helper deletes them."""

    @asset
    def checked() -> None:
        return None

    @asset_check(asset=checked)
    def always() -> AssetCheckResult:
        return AssetCheckResult(passed=True)

    job = Definitions(assets=[checked], asset_checks=[always]).resolve_implicit_global_asset_job_def()
    check_key = AssetCheckKey(checked.key, "always")
    with instance_for_test() as instance:
        run_id = job.execute_in_process(instance=instance).run_id
        instance.delete_run(run_id)
        storage = instance.event_log_storage
        left = storage.get_asset_check_execution_history(check_key, limit=10)
        assert [r.run_id for r in left] == [run_id], "delete_run now removes check executions: drop the helper"
        assert private.delete_check_executions(instance, [run_id]) == 1
        assert storage.get_asset_check_execution_history(check_key, limit=10) == []


def test_a_partitioned_asset_check_is_still_a_preview_feature() -> None:
    """tenant_reconciliation/checks.py silences exactly this warning; when it graduates, drop the filter."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        @asset(partitions_def=DailyPartitionsDefinition("2026-01-01"))
        def daily() -> None:
            return None

        asset_check(asset=daily, name="pin", partitions_def=daily.partitions_def)(lambda: AssetCheckResult(passed=True))
    assert any(issubclass(w.category, PreviewWarning) for w in caught)


def test_tick_and_instigator_enums_used_by_tests_and_benchmarks() -> None:
    assert {"SCHEDULE", "SENSOR"} <= set(InstigatorType.__members__)
    assert {"SUCCESS", "SKIPPED", "FAILURE", "STARTED"} <= set(TickStatus.__members__)


def test_every_non_public_attribute_still_exists() -> None:
    """``NON_PUBLIC_ATTRIBUTES``: each name is still there on the Dagster class it is called on."""
    from dagster import Config, DagsterInstance, DagsterRun, ExecuteInProcessResult, OpExecutionContext
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster_graphql import DagsterGraphQLClient

    owners = (
        DagsterInstance,
        DagsterRun,
        OpExecutionContext,
        SqlEventLogStorage,
        DagsterGraphQLClient,
        Config,
        Definitions,
        ExecuteInProcessResult,
    )
    names = (*dagster_private.NON_PUBLIC_ATTRIBUTES, *dagster_private.NON_PUBLIC_ATTRIBUTES_TESTS_CALL)
    missing = [name for name in names if not any(hasattr(c, name) for c in owners)]
    assert missing == []


def test_graphql_client_execute_takes_a_query_and_variables() -> None:
    """execute_graphql: ``DagsterGraphQLClient._execute(query, variables)`` returns the response's data."""
    import inspect

    from dagster_graphql import DagsterGraphQLClient

    assert list(inspect.signature(DagsterGraphQLClient._execute).parameters)[:3] == ["self", "query", "variables"]


def test_run_pools_and_added_run_tags(tmp_path) -> None:
    """holds_reconcile_pool and name_the_tenant: a run's pools as created, tags added to an existing run."""

    @asset(pool="pin_pool")
    def pooled() -> None:
        return None

    job = Definitions(assets=[pooled]).resolve_implicit_global_asset_job_def()
    with instance_for_test() as instance:
        run = instance.get_run_by_id(job.execute_in_process(instance=instance).run_id)
        assert private.run_pools(run) == {"pin_pool"}
        private.add_run_tags(instance, run.run_id, {"pin/tag": "yes"})
        assert instance.get_run_by_id(run.run_id).tags["pin/tag"] == "yes"


def test_ensure_default_pool_limit_writes_the_default_once_and_keeps_a_manual_limit(tmp_path) -> None:
    """mailglass dev: dagster.yaml's ``concurrency.pools.default_limit`` written into the instance."""
    (tmp_path / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    assert private.ensure_default_pool_limit(tmp_path, "pin_pool") == 1
    assert private.ensure_default_pool_limit(tmp_path, "pin_pool") == 1  # idempotent
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert dagster_private.pool_limits(instance)["pin_pool"] == 1
        instance.event_log_storage.set_concurrency_slots("pin_pool", 3)
    assert private.ensure_default_pool_limit(tmp_path, "pin_pool") == 3  # set by hand: kept


def test_latest_materialization_ids_by_partition() -> None:
    """retention: the storage id of each partition's latest materialization (the runs it keeps)."""
    keys = ["a", "b"]

    @asset(partitions_def=PARTS)
    def parted() -> None:
        return None

    job = Definitions(assets=[parted]).resolve_implicit_global_asset_job_def()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTS.name, keys)
        for key in [*keys, "a"]:
            assert job.execute_in_process(instance=instance, partition_key=key).success
        ids = private.latest_materialization_ids_by_partition(instance, parted.key)
        latest: dict[str, int] = {}
        for record in instance.fetch_materializations(parted.key, limit=10).records:
            latest[record.partition_key] = max(record.storage_id, latest.get(record.partition_key, 0))
        assert ids == latest and set(ids) == {"a", "b"}


def test_a_job_by_name_its_materialization_and_the_location_s_jobs() -> None:
    """local_run and retention: an asset job resolved by name, an in-process run's one materialization's
    metadata, every job of a code location (the implicit asset job included)."""

    @asset(partitions_def=PARTS)
    def counted() -> MaterializeResult:
        return MaterializeResult(metadata={"linked": 3})

    definitions = Definitions(assets=[counted], jobs=[define_asset_job("pin_job", selection=[counted])])
    job = private.job_by_name(definitions, "pin_job")
    assert "pin_job" in private.job_names(definitions) and "__ASSET_JOB" in private.job_names(definitions)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(PARTS.name, ["a"])
        metadata = private.materialization_metadata(job.execute_in_process(instance=instance, partition_key="a"))
    assert metadata["linked"].value == 3


def test_config_schema_of_a_pythonic_config_class() -> None:
    """The Launchpad config mappings: a ``Config`` class's fields, defaults and bounds as a config schema."""
    from dagster import Config, config_mapping

    class Pin(Config):
        limit: int = 5

    @config_mapping(config_schema=private.config_schema(Pin))
    def mapping(values: dict) -> dict:
        return values

    assert mapping.resolve_from_unvalidated_config({}) == {"limit": 5}


def test_the_daemon_runs_as_its_module() -> None:
    """mailglass dev without the dagster-daemon script: ``python -m`` DAEMON_MODULE is the daemon's CLI."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", private.DAEMON_MODULE, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "run" in done.stdout
