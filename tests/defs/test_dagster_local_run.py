"""``materialize_tenants`` (quick start / ``mailglass run``) and ``mailglass dev``'s preparation."""

import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import fetch, make_delivery, make_orphan
from sqlalchemy.engine import make_url

from mailglass_pipeline.defs import dev
from mailglass_pipeline.defs.local_run import materialize_tenants

REPO = Path(__file__).resolve().parents[2]


def test_materialize_all_known_tenants_on_an_ephemeral_instance(engine, database_url, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("MAILGLASS_DATABASE_URL", raising=False)
    make_orphan(engine, "t1", "m-1")
    make_delivery(engine, "t1", "m-1")
    make_orphan(engine, "t2", "m-2")
    make_orphan(engine, "bad tenant", "m-3")  # unfit as a partition key: skipped, not fatal
    results = materialize_tenants(database_url=database_url)
    assert set(results) == {"t1", "t2"}
    assert (results["t1"]["scanned"], results["t1"]["linked"]) == (1, 1)
    assert (results["t2"]["scanned"], results["t2"]["linked"], results["t2"]["unmatched"]) == (1, 0, 1)
    assert all(isinstance(v, int) for counts in results.values() for v in counts.values())
    # Only the listed tenant runs when a list is given.
    make_delivery(engine, "t2", "m-2")
    assert materialize_tenants(["t2"], database_url=database_url) == {
        "t2": {**results["t2"], "linked": 1, "unmatched": 0, "remaining_orphans": 0}
    }
    assert len(fetch(engine, "SELECT 1 FROM mailglass_events WHERE type = 'reconciled'")) == 2


def test_materialize_refuses_an_unfit_explicit_tenant(database_url):
    with pytest.raises(ValueError, match="partition keys"):
        materialize_tenants(["a,b"], database_url=database_url)


@pytest.fixture
def project(tmp_path):
    for name in ("workspace.yaml", "dagster.yaml"):
        shutil.copyfile(REPO / name, tmp_path / name)
    return tmp_path


def test_dev_environment_with_explicit_urls(project, database_url, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("MAILGLASS_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", "postgresql://dagster:secret@db.example/dagster")
    env = dev.prepare_dev_environment(project)
    assert env["MAILGLASS_DATABASE_URL"] == database_url
    # The driver is spelled out for dagster-postgres (SQLAlchemy 2.1 would pick psycopg 3 otherwise).
    assert env["MAILGLASS_DAGSTER_DATABASE_URL"] == "postgresql+psycopg2://dagster:secret@db.example/dagster"
    home = Path(env["DAGSTER_HOME"])
    assert home == project / ".dagster_home"
    assert (home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()


def test_dev_creates_a_dagster_database_beside_the_app_database(
    project, database_url, admin_engine, monkeypatch, capsys
):
    name = f"mg_dagster_{uuid.uuid4().hex[:10]}"
    monkeypatch.setattr(dev, "DAGSTER_DATABASE", name)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("MAILGLASS_DAGSTER_DATABASE_URL", raising=False)
    monkeypatch.setenv("MAILGLASS_DATABASE_URL", database_url.replace("postgres@", "postgres:pw@"))
    try:
        env = dev.prepare_dev_environment(project)
        url = make_url(env["MAILGLASS_DAGSTER_DATABASE_URL"])
        assert (url.drivername, url.database) == ("postgresql+psycopg2", name)
        with admin_engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": name}).scalar()
        printed = capsys.readouterr().out
        assert "application database" in printed and name in printed
        assert "pw" not in printed  # passwords masked
    finally:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_run_dev_starts_dagster_dev_on_the_workspace(project, database_url, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("MAILGLASS_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", "postgresql://x@localhost/dagster")
    started = {}

    class FakeProcess:
        def __init__(self, command, env, cwd):
            started.update(command=command, env=env, cwd=cwd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(dev.subprocess, "Popen", FakeProcess)
    assert dev.run_dev("0.0.0.0", 3123) == 0
    command = started["command"]
    assert command[1:4] == ["-m", "dagster", "dev"]
    assert command[command.index("-w") + 1] == str(project / "workspace.yaml")
    assert command[command.index("-p") + 1] == "3123" and command[command.index("-h") + 1] == "0.0.0.0"
    assert started["env"]["DAGSTER_HOME"] == str(project / ".dagster_home")


def test_project_root_requires_the_yaml_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # From an empty folder the source checkout is found next to the package.
    assert dev.project_root() == REPO
    assert dev.project_root(tmp_path) == REPO
