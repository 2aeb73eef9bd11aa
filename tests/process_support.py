"""Helpers for the tests that start real processes (``mailglass dev``, webserver, daemon, code server).

One home for them: tests/ has no packages, so this module is imported by name, like ``conftest``.
A fixture that starts servers registers each one's stop (``contextlib.ExitStack``) before the
command that may start it, and runs commands through ``run_checked``: a failing set-up then shows
the command's stderr and still stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webserver_up(port: int) -> bool:
    """Whether a Dagster webserver answers on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def log_tail(log_dir: Path | None, chars: int = 4000) -> str:
    """The end of every ``*.log`` in ``log_dir``: what a failing wait prints."""
    if log_dir is None:
        return ""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(Path(log_dir).glob("*.log")))


def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str, log_dir: Path | None = None, every: float = 0.5
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail with ``message`` and the logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{message}\n{log_tail(log_dir)}")


def run_checked(command: Sequence[str], *, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on a non-zero exit fail with the command, its exit code and the end of its stderr/stdout.

    ``subprocess.run(check=True, capture_output=True)`` keeps the output inside the exception,
    where pytest does not print it: a fixture's failing ``mailglass demo`` then says only "exit status 1".
    """
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError(
            f"`{' '.join(map(str, command))}` exited with {result.returncode}\n"
            f"--- stderr\n{result.stderr[-4000:]}\n--- stdout\n{result.stdout[-2000:]}"
        )
    return result


def stop_process_group(process: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM the process group of ``process`` (started with ``start_new_session=True``), SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
