"""End to end with real processes: dagster-webserver + dagster-daemon on a PostgreSQL-backed instance.

A run for one tenant is launched through the GraphQL API the way the UI does it
(partition tags asked from the code location, then ``launchRun``), and a backfill
over two more tenants through ``launchPartitionBackfill``. Everything goes through
the run queue with the repository's own dagster.yaml, so the test also shows the
concurrency limits at work: the backfill's runs never overlap.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import fetch, make_delivery, make_orphan
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from sqlalchemy.engine import make_url

from mailglass_pipeline.defs.dev import psycopg2_url

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCATION = "mailglass_pipeline"
REPOSITORY = "__repository__"
PARTITION_SET = "reconcile_orphans_partition_set"
DEADLINE_SECONDS = 100

PARTITION_TAGS_QUERY = """
query PartitionTags($repositorySelector: RepositorySelector!, $partitionSetName: String!, $partitionName: String!) {
  partitionSetOrError(repositorySelector: $repositorySelector, partitionSetName: $partitionSetName) {
    __typename
    ... on PartitionSet {
      partition(partitionName: $partitionName) {
        tagsOrError { __typename ... on PartitionTags { results { key value } } ... on PythonError { message } }
      }
    }
    ... on PythonError { message }
  }
}
"""

LAUNCH_BACKFILL = """
mutation Backfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dagster_home(tmp_path, admin_url, admin_engine):
    name = f"mg_dagster_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    yield home, psycopg2_url(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def stack(dagster_home, database_url, tmp_path, monkeypatch):
    """Webserver and daemon processes; always terminated."""
    home, storage_url = dagster_home
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MAILGLASS_DATABASE_URL": database_url,
        "MAILGLASS_DAGSTER_DATABASE_URL": storage_url,
    }
    for key, value in env.items():
        if key in ("DAGSTER_HOME", "MAILGLASS_DATABASE_URL", "MAILGLASS_DAGSTER_DATABASE_URL"):
            monkeypatch.setenv(key, value)
    port = _free_port()
    workspace = str(REPO / "workspace.yaml")
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("webserver", "daemon")}  # noqa: SIM115
    processes = [
        subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
            env=env, cwd=tmp_path, stdout=logs["webserver"], stderr=subprocess.STDOUT, start_new_session=True,
        ),
        subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", workspace],
            env=env, cwd=tmp_path, stdout=logs["daemon"], stderr=subprocess.STDOUT, start_new_session=True,
        ),
    ]  # fmt: skip
    try:
        _wait(lambda: _up(port), 60, "webserver did not come up", tmp_path)
        yield port, tmp_path
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait(predicate, timeout, message, log_dir=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    logs = ""
    if log_dir is not None:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in Path(log_dir).glob("*.log"))
    raise AssertionError(f"{message}\n{logs}")


def _metadata_by_partition(instance: DagsterInstance) -> dict[str, dict[str, int]]:
    result = instance.fetch_materializations(AssetKey(["mailglass", "webhook_reconciliation"]), limit=100)
    latest: dict[str, dict[str, int]] = {}
    for record in sorted(result.records, key=lambda r: r.storage_id):
        materialization = record.asset_materialization
        latest[materialization.partition] = {k: v.value for k, v in materialization.metadata.items()}
    return latest


@pytest.mark.slow
def test_ui_launch_and_two_tenant_backfill_through_real_processes(stack, engine):
    port, log_dir = stack
    started = time.monotonic()
    deliveries = {}
    for tenant, messages in {"t1": ["a"], "t2": ["b", "c"], "t3": ["d"]}.items():
        for message in messages:
            make_orphan(engine, tenant, f"{tenant}-{message}")
            deliveries[f"{tenant}-{message}"] = make_delivery(engine, tenant, f"{tenant}-{message}")
    make_orphan(engine, "t3", "t3-unmatched")
    make_orphan(engine, "t4", "t4-x")  # a tenant nobody launches
    make_delivery(engine, "t4", "t4-x")

    instance = DagsterInstance.get()  # the same PostgreSQL storage the processes use
    instance.add_dynamic_partitions("tenants", ["t1", "t2", "t3", "t4"])
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    repository = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    selector = {"repositorySelector": repository, "partitionSetName": PARTITION_SET}

    # 1. A Launchpad launch for t1: the UI asks the code location for the partition's tags, then launches.
    _wait(lambda: _code_location_loaded(client, selector), 60, "code location did not load", log_dir)
    tags_result = client._execute(PARTITION_TAGS_QUERY, {**selector, "partitionName": "t1"})
    tags = {t["key"]: t["value"] for t in tags_result["partitionSetOrError"]["partition"]["tagsOrError"]["results"]}
    assert tags["mailglass/tenant"] == "t1" and tags["mailglass/reconcile"] == "true"
    # A bad Launchpad value is refused at launch: no run is created.
    with pytest.raises(DagsterGraphQLClientError):
        client.submit_job_execution(
            "reconcile_orphans",
            repository_location_name=LOCATION,
            repository_name=REPOSITORY,
            run_config={"ops": {"mailglass__webhook_reconciliation": {"config": {"limit": 0}}}},
            tags=tags,
        )
    assert instance.get_runs() == []
    run_id = client.submit_job_execution(
        "reconcile_orphans",
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        run_config={},
        tags=tags,
    )
    status = _wait(lambda: _finished(client, run_id), 60, "UI-launched run did not finish", log_dir)
    assert status == DagsterRunStatus.SUCCESS, (log_dir / "daemon.log").read_text()[-3000:]
    assert fetch(engine, "SELECT tenant_id FROM mailglass_events WHERE type = 'reconciled'") == [("t1",)]
    ui_run = instance.get_run_by_id(run_id)
    assert ui_run.tags["mailglass/tenant"] == "t1" and ui_run.tags["mailglass/reconcile"] == "true"

    # 2. A backfill over t2 and t3.
    launched = client._execute(
        LAUNCH_BACKFILL,
        {"backfillParams": {"selector": selector, "partitionNames": ["t2", "t3"], "fromFailure": False}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill_done():
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        return runs if len(runs) == 2 and all(r.is_finished for r in runs) else None

    runs = _wait(backfill_done, DEADLINE_SECONDS, "backfill runs did not finish", log_dir)
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    assert sorted(r.tags["mailglass/tenant"] for r in runs) == ["t2", "t3"]
    assert all(r.tags["mailglass/reconcile"] == "true" for r in runs)
    # One tenant at a time: the run queue kept the two runs from overlapping.
    records = sorted(instance.get_run_records(RunsFilter(run_ids=[r.run_id for r in runs])), key=lambda r: r.start_time)
    assert records[0].end_time <= records[1].start_time

    # 3. The database and the recorded materialization metadata agree.
    reconciled = fetch(
        engine, "SELECT tenant_id, delivery_id FROM mailglass_events WHERE type = 'reconciled' ORDER BY tenant_id"
    )
    assert sorted(r.tenant_id for r in reconciled) == ["t1", "t2", "t2", "t3"]
    assert {r.delivery_id for r in reconciled} == {deliveries[k] for k in ("t1-a", "t2-b", "t2-c", "t3-d")}
    metadata = _metadata_by_partition(instance)
    assert set(metadata) == {"t1", "t2", "t3"}  # t4 untouched
    assert (metadata["t1"]["scanned"], metadata["t1"]["linked"]) == (1, 1)
    assert (metadata["t2"]["scanned"], metadata["t2"]["linked"]) == (2, 2)
    assert (metadata["t3"]["scanned"], metadata["t3"]["linked"], metadata["t3"]["unmatched"]) == (2, 1, 1)
    assert metadata["t3"]["remaining_orphans"] == 1
    print(f"e2e flow took {time.monotonic() - started:.1f}s after the webserver was up")


def _code_location_loaded(client: DagsterGraphQLClient, selector) -> bool:
    try:
        result = client._execute(PARTITION_TAGS_QUERY, {**selector, "partitionName": "t1"})
    except Exception:
        return False
    return result["partitionSetOrError"]["__typename"] == "PartitionSet"


def _finished(client: DagsterGraphQLClient, run_id: str):
    status = client.get_run_status(run_id)
    return status if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED) else None
