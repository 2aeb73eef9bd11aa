"""`mailglass dev`'s output: no colour codes in a log file, no code-server heartbeat noise."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from mailglass_pipeline.dagster_devtools import dev

pytestmark = pytest.mark.process  # every test here starts a child process

REPO = Path(__file__).resolve().parents[2]

CHILD = "import sys; print('\\x1b[32m2026-12-03 dagster - INFO -\\x1b[0m hello', flush=True)"
PARENT = f"""
import sys
from pathlib import Path
from mailglass_pipeline.dagster_devtools.dev import Supervisor
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
    from tests.dagster_private import daemon_controller as controller
    from tests.dagster_private import grpc_server as server

    _, daemon = dev.dev_commands(REPO, "127.0.0.1", 3000)
    assert daemon[daemon.index("--code-server-log-level") + 1] == "error"
    # Why that is enough (pinned to Dagster's source, so an upgrade that changes it is noticed): the
    # daemon reloads its workspace every minute and the replaced code server logs its shutdown at WARNING.
    assert controller.RELOAD_WORKSPACE_INTERVAL == 60 and controller.DAEMON_GRPC_SERVER_HEARTBEAT_TTL == 20
    source = inspect.getsource(server.DagsterApiServer._heartbeat_thread)
    assert "self._logger.warning(" in source and "No heartbeat received" in source


DEBUG_CHILD = """
for line in [
    "2026-12-07 11:52:00 +0000 - dagster - DEBUG - reconcile_orphans - abc - STEP_START - Started",
    "    continued debug detail",
    "2026-12-07 11:52:01 +0000 - dagster.daemon.SensorDaemon - INFO - Checking for new runs",
    "\\x1b[33m2026-12-07 11:52:02 +0000 - dagster - WARNING - \\x1b[0mslow step",
    "    continued warning detail",
    "mailglass: a line of ours",
]:
    print(line, flush=True)
"""


@pytest.mark.parametrize(("level", "debug_shown"), [(None, False), ("debug", True)])
def test_the_log_file_has_info_and_above_by_default(tmp_path: Path, level: str | None, debug_shown: bool) -> None:
    """Run workers log every event at DEBUG: `mailglass dev`'s log file leaves them out unless asked (issue 24)."""
    parent = PARENT.replace(repr(CHILD), repr(DEBUG_CHILD)).replace(
        "plain_output=True)", "plain_output=True, min_level=dev.dev_log_level())"
    )
    parent = "from mailglass_pipeline.dagster_devtools import dev\n" + parent
    env = {k: v for k, v in __import__("os").environ.items() if k != "MAILGLASS_DEV_LOG_LEVEL"}
    if level:
        env["MAILGLASS_DEV_LOG_LEVEL"] = level
    log = tmp_path / "dev.log"
    with log.open("wb") as handle:
        subprocess.run([sys.executable, "-c", parent], stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=60)
    lines = log.read_text().splitlines()
    assert ("STEP_START - Started" in log.read_text(), "continued debug detail" in log.read_text()) == (
        debug_shown,
        debug_shown,
    ), lines
    for kept in ("Checking for new runs", "WARNING - slow step", "continued warning detail", "a line of ours"):
        assert any(kept in line for line in lines), (kept, lines)


def test_a_bad_dev_log_level_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGLASS_DEV_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match=r"^MAILGLASS_DEV_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL"):
        dev.dev_log_level()


def test_quickstart_shows_each_package_pip_collects() -> None:
    """`python3 quickstart.py run` prints progress while it installs, not 40 s of silence (issue 24)."""
    sys.path.insert(0, str(REPO))
    try:
        import quickstart
    finally:
        sys.path.remove(str(REPO))
    pip_output = [
        "Obtaining file:///work/mailglass-pipeline",
        "Collecting dagster==1.13.27 (from mailglass-pipeline==0.1.0)",
        "  Using cached dagster-1.13.27-py3-none-any.whl (1.9 MB)",
        "Requirement already satisfied: click in ./.venv/lib/python3.11/site-packages",
        "Installing collected packages: dagster, mailglass-pipeline",
    ]
    assert [quickstart.progress_line(line) for line in pip_output] == [
        None,
        "quickstart: collecting dagster==1.13.27",
        None,
        None,
        "quickstart: Installing collected packages: dagster, mailglass-pipeline",
    ]
