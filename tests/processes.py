"""Helpers for the tests that start real processes (``mailglass serve``, ``mailglass dev``, Dagster servers).

A fixture that starts servers registers each one's stop (``contextlib.ExitStack``) before the
command that may start it, and runs commands through ``run_checked``: a failing set-up then shows
the command's stderr and still stops everything it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from mailglass_pipeline.ingest import IngestSettings

#: The installed ``mailglass`` command beside this interpreter.
MAILGLASS = Path(sys.executable).with_name("mailglass")


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


def start_process(
    command: Sequence[str | Path], *, env: Mapping[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """``command`` in its own process group (stopped with its children by ``stop_process_group``), output
    appended to ``log``; ``env`` is its whole environment."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(part) for part in command],
            env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


@contextmanager
def mailglass_dev(env: Mapping[str, str], log_dir: Path, *, cwd: Path, timeout: float = 180) -> Iterator[int]:
    """``mailglass dev`` (webserver and daemon) on a free port, answering when the block starts: the port.

    Stopped afterwards by SIGTERM to its process group, SIGKILL if it outlives 20 s. Its output is
    ``log_dir/dev.log``, printed by a failing wait.
    """
    port = free_port()
    process = start_process([MAILGLASS, "dev", "--port", str(port)], env=env, cwd=cwd, log=log_dir / "dev.log")
    try:
        wait_until(lambda: webserver_up(port) or process.poll() is not None, timeout, "no webserver", log_dir)
        assert process.poll() is None, f"mailglass dev exited with {process.returncode}\n{log_tail(log_dir)}"
        yield port
    finally:
        stop_process_group(process)


# -- the mailglass command, in this process -------------------------------------------------


@dataclass
class CommandResult:
    """What ``subprocess.run(..., capture_output=True, text=True)`` of the command returns, in short."""

    returncode: int
    stdout: str
    stderr: str


def mailglass(*args: str, env: Mapping[str, str | None] | None = None, stdin: str | None = None) -> CommandResult:
    """``mailglass ARGS`` run in this process through the console script's own entry point (``cli.main``).

    The same exit code, stdout and stderr as the installed command, without a new interpreter paying
    its imports: for tests of what a command does. ``env`` overrides this process's environment for
    the call (``None`` unsets a variable). A test of the process boundary itself (start-up time,
    signals, exit of the interpreter) runs ``MAILGLASS`` as a real process instead.
    """
    from click.testing import CliRunner

    from mailglass_pipeline import cli

    with CliRunner().isolation(input=stdin, env=dict(env or {})) as (out, err, _):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # a command that exits by itself
            code = exc.code if isinstance(exc.code, int) else 1
        return CommandResult(code, out.getvalue().decode(), err.getvalue().decode())


# -- mailglass serve, and a path to PostgreSQL the test can cut ------------------------------


def secrets_env(settings: IngestSettings) -> dict[str, str]:
    """The global secret variables that verify requests signed with the test keys."""
    return {
        "MAILGLASS_POSTMARK_WEBHOOK_AUTH": settings.postmark_auth or "",
        "MAILGLASS_SENDGRID_VERIFICATION_KEY": settings.sendgrid_verification_key or "",
        "MAILGLASS_MAILGUN_SIGNING_KEY": settings.mailgun_signing_key or "",
        "MAILGLASS_RESEND_WEBHOOK_SECRET": settings.resend_webhook_secret or "",
        "MAILGLASS_SNS_CERT_DIR": settings.sns_cert_dir or "",
        "MAILGLASS_SES_TOPIC_ARNS": ",".join(settings.ses_topic_arns or ()),
    }


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A running ``mailglass serve``."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("POST", path, body, headers)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status in (200, 503)
    except OSError:
        return False


@contextmanager
def run_receiver(
    database_url: str, env: Mapping[str, str], tmp_path: Path, *args: str, expect_healthy: bool = True
) -> Iterator[Receiver]:
    """Start ``mailglass serve`` (own process group), wait until it answers, stop it afterwards.

    401s are answered at once unless ``args`` set ``--auth-failure-delay`` (its own tests do).
    """
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    if not any(arg.startswith("--auth-failure-delay") for arg in args):
        args = (*args, "--auth-failure-delay", "0")  # 401s at once: tests that count many of them stay quick
    full_env = {**os.environ, "MAILGLASS_DATABASE_URL": database_url, **env}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MAILGLASS), "serve", "--port", str(port), *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    receiver = Receiver(port, process, log)
    try:
        wait_until(lambda: healthy(port) or process.poll() is not None, 60, f"mailglass serve did not start:\n{log}")
        assert process.poll() is None, f"mailglass serve exited:\n{receiver.log_text()}"
        yield receiver
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


class CuttableProxy:
    """A TCP forwarder to PostgreSQL that the test can cut (refuse and drop everything) and restore.

    The receiver connects through it, so "the database is down" is real to the
    receiver without stopping the PostgreSQL that other tests share.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        # A host that is a directory is a Unix socket's (the embedded server listens on one only).
        self.target = (target_host, target_port)
        self.port = free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.restore()

    @classmethod
    def for_url(cls, database_url: str) -> CuttableProxy:
        """A proxy in front of the server that ``database_url`` names (TCP, or a Unix socket directory)."""
        url = make_url(database_url)
        socket_dir = url.query.get("host")
        host = socket_dir if isinstance(socket_dir, str) and socket_dir.startswith("/") else url.host
        return cls(host or "127.0.0.1", url.port or 5432)

    def url_for(self, database_url: str) -> str:
        url = make_url(database_url).difference_update_query(["host"])
        return url.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _connect_upstream(self) -> socket.socket:
        host, port = self.target
        if host.startswith("/"):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(f"{host}/.s.PGSQL.{port}")
            except OSError:
                upstream.close()
                raise
            return upstream
        return socket.create_connection(self.target)

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and drop every open connection: new connects are refused."""
        if self._listener is not None:
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in list(self._sockets):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update({client, upstream})
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.cut()
