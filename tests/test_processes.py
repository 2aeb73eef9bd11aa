"""A fixture that fails in set-up shows the failing command's stderr and still stops the servers it started.

Run for real: an inner pytest session whose fixture starts a server (an HTTP server in its own
session, as ``mailglass dev`` is started) and then runs a command that fails, the shape of
tests/ui/test_browser.py's ``dev_server`` when ``mailglass demo`` fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import free_port

pytestmark = pytest.mark.process  # every test here starts a child process

REPO = Path(__file__).resolve().parents[1]

INNER = """
import contextlib, subprocess, sys
import pytest
from tests.processes import run_checked, stop_process_group, wait_until

PORT = {port}

@pytest.fixture
def servers(tmp_path):
    with contextlib.ExitStack() as cleanup:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(PORT), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        cleanup.callback(stop_process_group, server)
        (tmp_path / "server.pid").write_text(str(server.pid))
        print("SERVER_PID", server.pid, flush=True)
        wait_until(lambda: _answers(PORT), 20, "server did not start")
        failing = "import sys; sys.stderr.write('demo: could not reach the database\\\\n'); sys.exit(3)"
        run_checked([sys.executable, "-c", failing])
        yield server

def _answers(port):
    import urllib.request
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{{port}}/", timeout=1).status == 200
    except OSError:
        return False

def test_never_reached(servers):
    pass
"""


def test_failing_setup_shows_stderr_and_stops_its_server(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "test_inner.py").write_text(INNER.format(port=port))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "."],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    out = inner.stdout + inner.stderr
    assert inner.returncode == 1 and "1 error" in out, out[-3000:]
    # The failing command's stderr and exit code are in the report, not swallowed.
    assert "demo: could not reach the database" in out and "exited with 3" in out, out[-3000:]
    [pid] = [int(line.split()[1]) for line in out.splitlines() if line.startswith("SERVER_PID")]
    # The server the fixture started is gone (not even a zombie: it was waited for).
    assert not Path(f"/proc/{pid}").exists(), f"server {pid} still running after the failed set-up"
