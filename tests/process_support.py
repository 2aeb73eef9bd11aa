"""Helpers for the tests that start real processes (``mailglass dev``, webserver, daemon, code server).

One home for them: tests/ has no packages, so this module is imported by name, like ``conftest``.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
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
