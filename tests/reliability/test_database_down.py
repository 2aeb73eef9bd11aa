"""Item 5: a database that is down or unreachable fails fast, says so in one line, writes nothing.

Two ways a database is out of reach: a closed port (refused at once) and a
black hole (a socket that accepts the TCP handshake into its backlog but
never answers, like a firewalled or hung server). Only the connect timeout
(``MAILGLASS_CONNECT_TIMEOUT``) ends the second; the command must exit
non-zero within it plus start-up, with one line saying why and no password.
The Dagster op fails the same way and is retried with exponential backoff by
its ``RetryPolicy`` before the run fails.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from mailglass_pipeline.errors import DatabaseUnavailableError
from mailglass_pipeline.reconciliation.sweep import reconcile
from tests.processes import MAILGLASS

CONNECT_TIMEOUT = 2
#: Interpreter and import start-up of the CLI on a slow CI machine.
STARTUP_MARGIN = 8


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on exit: connections are refused


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)  # never accept(): the handshake completes, no byte ever comes back
        yield int(sock.getsockname()[1])


def _cli(port: int, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "MAILGLASS_DATABASE_URL": f"postgresql://mailglass:s3cret-pw@127.0.0.1:{port}/mailglass",
        "MAILGLASS_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    }
    started = time.monotonic()
    proc = subprocess.run([MAILGLASS, *args], env=env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - started


def _assert_one_line_failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr and "s3cret-pw" not in proc.stderr
    # stderr: the database line (password masked), then exactly one error line.
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("mailglass: database ") and "***" in lines[0]
    assert len(lines) == 2, proc.stderr
    assert lines[1].startswith("mailglass: database unreachable"), lines[1]
    return lines[1]


@pytest.mark.parametrize("command", [["reconcile", "--tenant-id", "t1"], ["reconcile"], ["migrate"]])
@pytest.mark.process
def test_cli_refused_connection_fails_fast_with_one_line(closed_port: int, command: list[str]) -> None:
    proc, elapsed = _cli(closed_port, *command)
    _assert_one_line_failure(proc)
    assert elapsed < STARTUP_MARGIN


@pytest.mark.process
def test_cli_blackhole_is_ended_by_the_connect_timeout(blackhole_port: int) -> None:
    proc, elapsed = _cli(blackhole_port, "reconcile", "--tenant-id", "t1", "--batch-size", "10")
    line = _assert_one_line_failure(proc)
    assert "timeout" in line
    assert CONNECT_TIMEOUT * 0.9 <= elapsed < CONNECT_TIMEOUT + STARTUP_MARGIN, elapsed


def test_python_api_raises_database_unavailable(closed_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="unreachable") as info:
        reconcile("t1", database_url=f"postgresql://mailglass:s3cret-pw@127.0.0.1:{closed_port}/x")
    assert time.monotonic() - started < 5
    assert "s3cret-pw" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_dagster_op_retries_with_exponential_backoff_then_fails(closed_port: int) -> None:
    dagster = pytest.importorskip("dagster")
    from mailglass_pipeline.dagster_support.database import DATABASE_RETRY_POLICY
    from mailglass_pipeline.definitions import build_definitions
    from mailglass_pipeline.defs.resources import MailglassDatabase
    from mailglass_pipeline.defs.tenant_reconciliation.jobs import RECONCILE_JOB_NAME
    from mailglass_pipeline.defs.tenant_reconciliation.partitions import TENANTS_PARTITIONS_NAME

    unreachable = f"postgresql://mailglass:s3cret-pw@127.0.0.1:{closed_port}/x"
    job = build_definitions(MailglassDatabase(database_url=unreachable)).resolve_job_def(RECONCILE_JOB_NAME)
    with dagster.instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, ["t1"])
        result = job.execute_in_process(partition_key="t1", instance=instance, raise_on_error=False)
        assert not result.success
        events = instance.all_logs(result.run_id)

    def of(kind: str) -> list[object]:
        return [e for e in events if e.dagster_event is not None and e.dagster_event.event_type_value == kind]

    retries = of("STEP_UP_FOR_RETRY")
    failures = of("STEP_FAILURE")
    assert len(retries) == DATABASE_RETRY_POLICY.max_retries == 3
    assert len(failures) == 1
    [failed_step] = {e.step_key for e in failures}
    assert failed_step.endswith("find_orphans") and {e.step_key for e in retries} == {failed_step}
    assert "database unreachable" in failures[0].dagster_event.event_specific_data.error.to_string()
    # Exponential backoff: the first restart waits the policy's delay, each later one well over
    # half again as long as the one before (Dagster 1.13 waits 1 s, 3 s, 7 s for delay=1).
    restarts = of("STEP_RESTARTED")
    waits = [b.timestamp - a.timestamp for a, b in zip(retries, restarts, strict=False)]
    assert len(waits) == 3
    assert waits[0] >= (DATABASE_RETRY_POLICY.delay or 0) * 0.9 > 0, waits
    assert all(later >= 1.5 * earlier for earlier, later in itertools.pairwise(waits)), waits
    # Nothing was attempted downstream, so nothing half-written anywhere.
    assert not of("ASSET_MATERIALIZATION")
