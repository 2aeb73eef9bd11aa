"""Private Dagster names that only the tests and benchmarks use (never imported by the code location).

They build runs and origins the way the daemon and webserver do, read tick records, and
pin the Dagster behaviour that ``mailglass dev``'s log settings rely on. Kept here, beside
``private``, so that one package holds every ``dagster._`` import (tests/test_layering.py).
"""

from __future__ import annotations

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
    "grpc_server",
    "validate_config",
]
