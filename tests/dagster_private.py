"""Every non-public Dagster name only the tests and benchmarks use, in one place that never ships.

The package's own non-public Dagster calls live in ``mailglass_pipeline/dagster_support/private.py``;
what only a test or benchmark needs (Dagster's run, origin and tick builders, the daemon and code
server modules, the instance-config validators, a raw GraphQL query) lives here, outside the wheel
(decision D12). A re-exported name Dagster renames fails this import, the helpers below are pinned by
tests/dagster_support/test_private_dagster.py; no other test or benchmark imports ``dagster._`` or
calls a name in ``NON_PUBLIC_ATTRIBUTES`` (tests/test_layering.py).
``benchmarks.scale`` imports it too: benchmarks run from a checkout, beside ``tests``.
"""

from __future__ import annotations

from typing import Any

from dagster import DagsterInstance
from dagster._config import validate_config
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.config import dagster_instance_config
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_run_for_test
from dagster._daemon import controller as daemon_controller
from dagster._grpc import server as grpc_server
from dagster._serdes.config_class import class_from_code_pointer

__all__ = [
    "NON_PUBLIC_ATTRIBUTES",
    "NON_PUBLIC_ATTRIBUTES_TESTS_CALL",
    "GrpcServerCodeLocationOrigin",
    "InstigatorType",
    "RegisteredCodeLocationOrigin",
    "RemoteJobOrigin",
    "RemoteRepositoryOrigin",
    "TickStatus",
    "class_from_code_pointer",
    "create_run_for_test",
    "daemon_controller",
    "dagster_instance_config",
    "execute_graphql",
    "grpc_server",
    "pool_limits",
    "validate_config",
]

#: Non-public Dagster methods and attributes called in ``private.py`` or below; nothing else calls them.
NON_PUBLIC_ATTRIBUTES = (
    "_execute",
    "add_run_tags",
    "get_asset_check_partition_info",
    "get_pool_limits",
    "get_step_execution_context",
    "get_latest_storage_id_by_partition",
    "global_op_concurrency_default_limit",
    "index_connection",
    "initialize_concurrency_limit_to_default",
    "run_op_concurrency",
    "to_config_schema",
)
#: Non-public methods the package calls only in ``private.py``, which the tests and benchmarks also call
#: directly (``defs.resolve_job_def(...)``, ``result.get_asset_materialization_events()``: Dagster's own
#: testing idiom).
NON_PUBLIC_ATTRIBUTES_TESTS_CALL = ("resolve_job_def", "get_asset_materialization_events", "get_repository_def")


def execute_graphql(client: Any, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a GraphQL ``query`` through a ``DagsterGraphQLClient`` (no public method does)."""
    return client._execute(query, variables)


def pool_limits(instance: DagsterInstance) -> dict[str, int | None]:
    """Each pool the instance knows, with its limit."""
    return {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
