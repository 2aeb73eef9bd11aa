"""``mailglass dev``: the Dagster UI and daemon on a ready database, in one command.

Steps (each printed, passwords masked):

1. resolve the application database: ``MAILGLASS_DATABASE_URL``, else the
   embedded PostgreSQL under ``.mailglass/``; migrate it to head;
2. resolve Dagster's storage: ``MAILGLASS_DAGSTER_DATABASE_URL``, else a
   ``dagster`` database created beside the application database (on the
   embedded server when nothing is set); either way with the psycopg2 driver
   spelled out (see ``psycopg2_url``);
3. ``DAGSTER_HOME``: kept when set, else ``.dagster_home/`` in the project
   (gitignored) with a fresh copy of the repository's ``dagster.yaml``, so
   edits to the repository file take effect on the next start;
4. ``dagster dev -w workspace.yaml``: webserver plus daemon (schedules,
   sensors, the run queue and its concurrency limits).

The resolved URLs are exported to the child, so the webserver, the daemon and
every run worker connect directly instead of each starting the embedded server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from mailglass_pipeline import db, schema
from mailglass_pipeline.errors import ConfigurationError

DAGSTER_DATABASE_URL_ENV = "MAILGLASS_DAGSTER_DATABASE_URL"
DAGSTER_DATABASE = "dagster"
DAGSTER_HOME_DIR = ".dagster_home"


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``workspace.yaml`` and ``dagster.yaml``: the working directory or the source checkout."""
    package_parent = Path(__file__).resolve().parents[2]
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
    explicit = os.environ.get(DAGSTER_DATABASE_URL_ENV)
    if explicit:
        return psycopg2_url(explicit)
    try:
        db.ensure_database(app_url, DAGSTER_DATABASE)
    except Exception as exc:
        raise ConfigurationError(
            f"could not create database {DAGSTER_DATABASE!r} beside {db.describe_url(app_url)} "
            f"({db.first_line(exc)}); set {DAGSTER_DATABASE_URL_ENV} to a database for Dagster's storage"
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


def prepare_dev_environment(root: Path | None = None) -> dict[str, str]:
    """Databases ready, schema migrated, DAGSTER_HOME written: the environment for ``dagster dev``."""
    root = root or project_root()
    app_url = db.resolve_database_url()
    before, after = schema.upgrade(app_url)
    print(f"application database: {db.describe_url(app_url)} (schema {before or 'empty'} -> {after})", flush=True)
    dagster_url = resolve_dagster_storage_url(app_url)
    print(f"dagster storage:      {db.describe_url(dagster_url)}", flush=True)
    home = prepare_dagster_home(root)
    print(f"DAGSTER_HOME:         {home}", flush=True)
    env = dict(os.environ)
    env.update(
        {
            db.DATABASE_URL_ENV: app_url,
            DAGSTER_DATABASE_URL_ENV: dagster_url,
            "DAGSTER_HOME": str(home),
        }
    )
    return env


def run_dev(host: str = "127.0.0.1", port: int = 3000) -> int:
    """Implement ``mailglass dev``; returns ``dagster dev``'s exit code."""
    root = project_root()
    env = prepare_dev_environment(root)
    command = [
        sys.executable, "-m", "dagster", "dev",
        "-w", str(root / "workspace.yaml"), "-h", host, "-p", str(port),
    ]  # fmt: skip
    print(f"starting the Dagster UI and daemon on http://{host}:{port}", flush=True)
    process = subprocess.Popen(command, env=env, cwd=root)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached `dagster dev` too (same process group); let it stop its webserver and daemon.
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()
            return process.wait()
