"""`mailglass dev`'s output: no colour codes in a log file, no code-server heartbeat noise."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from mailglass_pipeline.devtools import dev

pytestmark = pytest.mark.process  # every test here starts a child process

REPO = Path(__file__).resolve().parents[2]

CHILD = "import sys; print('\\x1b[32m2026-12-03 dagster - INFO -\\x1b[0m hello', flush=True)"
PARENT = f"""
import sys
from pathlib import Path
from mailglass_pipeline.devtools.dev import Supervisor
s = Supervisor([[sys.executable, "-c", {CHILD!r}]], dict(__import__("os").environ), Path("."), plain_output=True)
s.start()
s.processes[0].wait()
import time; time.sleep(0.3)
"""


def test_output_to_a_file_has_no_colour_codes(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    with log.open("wb") as handle:
        subprocess.run([sys.executable, "-c", PARENT], stdout=handle, stderr=subprocess.STDOUT, timeout=60, check=True)
    text = log.read_bytes()
    assert b"hello" in text and b"2026-12-03 dagster - INFO -" in text
    assert b"\x1b" not in text


def test_the_daemons_code_servers_do_not_log_their_recycling(tmp_path: Path) -> None:
    from mailglass_pipeline.dagster_support.private import daemon_controller as controller
    from mailglass_pipeline.dagster_support.private import grpc_server as server

    _, daemon = dev.dev_commands(REPO, "127.0.0.1", 3000)
    assert daemon[daemon.index("--code-server-log-level") + 1] == "error"
    # Why that is enough (pinned to Dagster's source, so an upgrade that changes it is noticed): the
    # daemon reloads its workspace every minute and the replaced code server logs its shutdown at WARNING.
    assert controller.RELOAD_WORKSPACE_INTERVAL == 60 and controller.DAEMON_GRPC_SERVER_HEARTBEAT_TTL == 20
    source = inspect.getsource(server.DagsterApiServer._heartbeat_thread)
    assert "self._logger.warning(" in source and "No heartbeat received" in source
