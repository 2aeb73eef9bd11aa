"""End to end with real processes: ``mailglass dev`` (dagster-webserver + dagster-daemon) on PostgreSQL.

Runs are launched through the GraphQL API the way the UI does it: the job's
Launchpad (partition tags asked from the code location, then a launch), the
job's partition backfill, the asset page's Materialize (the implicit
``__ASSET_JOB`` with an asset selection and a partition tag: no job tags), an
asset backfill (``launchPartitionBackfill`` with an asset selection), the
schedule, and ``mailglass run`` in a subprocess, all at once. Everything uses the
repository's own dagster.yaml, so the test shows the limits at work: no two
reconciliation runs overlap in time (run records' start and end), whatever
launched them.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from tests.dagster_private import execute_graphql, pool_limits
from tests.defs.check_history import check_history, shown_by_dagster
from tests.factories import fetch, make_delivery, make_orphan
from tests.processes import mailglass_dev, wait_until

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

CHECK_STATUSES = """
query CheckStatuses($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            executionForLatestMaterialization { runId partition status evaluation { severity partition } }
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses {
                succeededPartitions failedPartitions inProgressPartitions skippedPartitions executionFailedPartitions
              }
            }
          }
        }
      }
    }
  }
}
"""


def asset_check(client: DagsterGraphQLClient, check_name: str) -> dict:
    """A check as the asset page's Checks and Partitions tabs ask for it: its latest execution, its partitions."""
    data = execute_graphql(client, CHECK_STATUSES, {"assetKey": {"path": ASSET_PATH}})
    [check] = [c for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"] if c["name"] == check_name]
    return check


def check_partition_statuses(client: DagsterGraphQLClient, check_name: str) -> dict[str, list[str]]:
    """A check's partition keys by status, from the query the asset page's Checks and Partitions tabs send."""
    return asset_check(client, check_name)["partitionStatuses"]


def latest_materialization_job(instance: DagsterInstance, tenant: str) -> str:
    """The job of the run that wrote ``tenant``'s latest materialization."""
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(ASSET_PATH), asset_partitions=[tenant]), limit=1
    ).records
    return instance.get_run_by_id(record.run_id).job_name


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


@pytest.fixture
def dagster_home(tmp_path, dagster_storage_url):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    return home, dagster_storage_url


@pytest.fixture
def stack(dagster_home, database_url, tmp_path, monkeypatch):
    """``mailglass dev`` (webserver and daemon), stopped by its process group afterwards."""
    home, storage_url = dagster_home
    env = {
        "DAGSTER_HOME": str(home),
        "MAILGLASS_DATABASE_URL": database_url,
        "MAILGLASS_DAGSTER_DATABASE_URL": storage_url,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with mailglass_dev({**os.environ, **env}, tmp_path, cwd=REPO) as port:
        yield port, tmp_path


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
            make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-{message}")
            deliveries[f"{tenant}-{message}"] = make_delivery(
                engine, tenant_id=tenant, message_id=f"{tenant}-{message}"
            )
    make_orphan(engine, tenant_id="t3", message_id="t3-unmatched")
    make_orphan(engine, tenant_id="t4", message_id="t4-x")  # a tenant nobody launches
    make_delivery(engine, tenant_id="t4", message_id="t4-x")

    instance = DagsterInstance.get()  # the same PostgreSQL storage the processes use
    instance.add_dynamic_partitions("tenants", ["t1", "t2", "t3", "t4"])
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    repository = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    selector = {"repositorySelector": repository, "partitionSetName": PARTITION_SET}

    # 1. A Launchpad launch for t1: the UI asks the code location for the partition's tags, then launches.
    wait_until(lambda: _code_location_loaded(client, selector), 60, "code location did not load", log_dir)
    tags_result = execute_graphql(client, PARTITION_TAGS_QUERY, {**selector, "partitionName": "t1"})
    tags = {t["key"]: t["value"] for t in tags_result["partitionSetOrError"]["partition"]["tagsOrError"]["results"]}
    assert tags["mailglass/tenant"] == "t1" and tags["mailglass/reconcile"] == "true"
    # A bad Launchpad value is refused at launch in one line naming the field and its bound: no run is created.
    with pytest.raises(DagsterGraphQLClientError, match=r"invalid reconcile config: limit must be >= 1 \(got 0\)"):
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
    status = wait_until(lambda: _finished(client, run_id), 60, "UI-launched run did not finish", log_dir)
    assert status == DagsterRunStatus.SUCCESS, (log_dir / "daemon.log").read_text()[-3000:]
    assert fetch(engine, "SELECT tenant_id FROM mailglass_events WHERE type = 'reconciled'") == [("t1",)]
    ui_run = instance.get_run_by_id(run_id)
    assert ui_run.tags["mailglass/tenant"] == "t1" and ui_run.tags["mailglass/reconcile"] == "true"

    # 2. A backfill over t2 and t3.
    launched = execute_graphql(
        client,
        LAUNCH_BACKFILL,
        {"backfillParams": {"selector": selector, "partitionNames": ["t2", "t3"], "fromFailure": False}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill_done():
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        return runs if len(runs) == 2 and all(r.is_finished for r in runs) else None

    runs = wait_until(backfill_done, DEADLINE_SECONDS, "backfill runs did not finish", log_dir)
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

    # 4. The sweep asset's page: Materialize (no partition, no config) sweeps every tenant, t4 included.
    run_id = launch_asset_materialization(client, None, ["mailglass", "reconciliation_sweep"])
    status = wait_until(lambda: _finished(client, run_id), 60, "the sweep asset's run did not finish", log_dir)
    assert status == DagsterRunStatus.SUCCESS, (log_dir / "daemon.log").read_text()[-3000:]
    assert fetch(engine, "SELECT tenant_id FROM mailglass_events WHERE type = 'reconciled' AND tenant_id = 't4'")
    assert (_metadata_by_partition(instance)["t4"]["linked"]) == 1
    [sweep] = instance.fetch_materializations(AssetKey(["mailglass", "reconciliation_sweep"]), limit=1).records
    assert sweep.run_id == run_id and sweep.asset_materialization.metadata["linked"].value == 1
    print(f"e2e flow took {time.monotonic() - started:.1f}s after the webserver was up")


def _code_location_loaded(client: DagsterGraphQLClient, selector) -> bool:
    try:
        result = execute_graphql(client, PARTITION_TAGS_QUERY, {**selector, "partitionName": "t1"})
    except Exception:
        return False
    return result["partitionSetOrError"]["__typename"] == "PartitionSet"


def _finished(client: DagsterGraphQLClient, run_id: str):
    status = client.get_run_status(run_id)
    return status if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED) else None


LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""
START_SCHEDULE = """
mutation Start($scheduleSelector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $scheduleSelector) { __typename ... on Error { message } }
}
"""
ASSET_PATH = ["mailglass", "webhook_reconciliation"]


def launch_asset_materialization(
    client: DagsterGraphQLClient, partition: str | None, path: list[str] = ASSET_PATH
) -> str:
    """The asset page's Materialize (for one partition): the implicit asset job, a partition tag, no job tags."""
    tags = [{"key": "dagster/partition", "value": partition}] if partition is not None else []
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": path}],
            "assetCheckSelection": [],
        },
        "mode": "default",
        "runConfigData": {},
        "executionMetadata": {"tags": tags},
    }
    launched = execute_graphql(client, LAUNCH_RUN, {"executionParams": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def launch_backfill(client: DagsterGraphQLClient, params: dict) -> str:
    launched = execute_graphql(client, LAUNCH_BACKFILL, {"backfillParams": {"fromFailure": False, **params}})
    launched = launched["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def assert_no_overlap(windows: dict[str, tuple[float, float]]) -> None:
    """No two of these (start, end) windows, by run id, overlap."""
    ordered = sorted(windows.items(), key=lambda item: item[1])
    for (run_a, (start_a, end_a)), (run_b, (start_b, end_b)) in itertools.pairwise(ordered):
        assert end_a <= start_b, (
            f"runs overlapped: {run_a} ({start_a:.3f}-{end_a:.3f}) and {run_b} ({start_b:.3f}-{end_b:.3f})"
        )


def sweep_window(instance: DagsterInstance, record) -> tuple[float, float]:
    """From the moment the run held the pool (its find_orphans says so) to the run's end."""
    from mailglass_pipeline.dagster_support.pool import POOL_HELD_MESSAGE

    held = [e.timestamp for e in instance.all_logs(record.dagster_run.run_id) if POOL_HELD_MESSAGE in e.user_message]
    assert len(held) == 1, record.dagster_run.run_id
    return held[0], record.end_time


@pytest.mark.slow
def test_every_launch_path_at_once_one_reconciliation_at_a_time(stack, engine, database_url, dagster_home):
    """Launchpad, job backfill, asset Materialize, asset backfill (several and all), schedule, `mailglass run`."""
    port, log_dir = stack
    tenants = [f"p{i}" for i in range(1, 7)]
    for tenant in tenants:
        make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-m")
        make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-m")
    make_orphan(engine, tenant_id="p3", message_id="p3-old", age=timedelta(days=8))  # stale: no_stale_orphans warns
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("tenants", tenants)
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    repository = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    selector = {"repositorySelector": repository, "partitionSetName": PARTITION_SET}
    wait_until(lambda: _code_location_loaded(client, selector), 90, "code location did not load", log_dir)
    # `mailglass dev` wrote the pool limit from dagster.yaml before anything could be queued.
    assert pool_limits(instance)["mailglass_reconcile"] == 1

    started = execute_graphql(
        client,
        START_SCHEDULE,
        {"scheduleSelector": {**repository, "scheduleName": "reconcile_every_minute"}},
    )["startSchedule"]
    assert "message" not in started, started

    run_env = {**os.environ}  # DAGSTER_HOME and both URLs, from the stack fixture
    mailglass_run = subprocess.Popen(
        [str(BIN / "mailglass"), "run", "--json", "--tenant-id", "p1", "--tenant-id", "p2"],
        env=run_env, cwd=log_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tags_result = execute_graphql(client, PARTITION_TAGS_QUERY, {**selector, "partitionName": "p3"})
    tags = {t["key"]: t["value"] for t in tags_result["partitionSetOrError"]["partition"]["tagsOrError"]["results"]}
    launchpad_run = client.submit_job_execution(
        "reconcile_orphans",
        repository_location_name=LOCATION,
        repository_name=REPOSITORY,
        run_config={"ops": {"mailglass__webhook_reconciliation": {"config": {"limit": 50, "retry_all": True}}}},
        tags=tags,
    )
    asset_run = launch_asset_materialization(client, "p4")
    job_backfill = launch_backfill(client, {"selector": selector, "partitionNames": ["p5", "p6"]})
    asset_backfill = launch_backfill(
        client, {"assetSelection": [{"path": ASSET_PATH}], "partitionNames": ["p1", "p3", "p6"]}
    )
    all_backfill = launch_backfill(client, {"assetSelection": [{"path": ASSET_PATH}], "allPartitions": True})

    out, err = mailglass_run.communicate(timeout=300)
    assert mailglass_run.returncode == 0, err
    assert set(json.loads(out)) == {"p1", "p2"}

    def backfill_runs(backfill_id: str, expected: int):
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        return runs if len(runs) == expected and all(r.is_finished for r in runs) else None

    def everything_done():
        backfills = [backfill_runs(job_backfill, 2), backfill_runs(asset_backfill, 3)]
        backfills.append(backfill_runs(all_backfill, len(tenants)))
        singles = [instance.get_run_by_id(run_id) for run_id in (launchpad_run, asset_run)]
        if any(b is None for b in backfills) or not all(r.is_finished for r in singles):
            return None
        return [run for group in backfills for run in group] + singles

    runs = wait_until(everything_done, 300, "not every launch finished", log_dir)

    # The schedule: tenants nobody launched get orphans; the next tick (within a minute) sweeps them:
    # s1's links, s2's ages out (newly stale: its no_stale_orphans fails).
    make_orphan(engine, tenant_id="s1", message_id="s1-m")
    make_delivery(engine, tenant_id="s1", message_id="s1-m")
    make_orphan(engine, tenant_id="s2", message_id="s2-old", age=timedelta(days=8))

    def scheduled_done():
        scheduled = instance.get_runs(RunsFilter(tags={"dagster/schedule_name": "reconcile_every_minute"}))
        swept = fetch(engine, "SELECT 1 FROM mailglass_events WHERE type = 'reconciled' AND tenant_id = 's1'")
        parked = fetch(
            engine, "SELECT 1 FROM mailglass_reconciliation_queue WHERE tenant_id = 's2' AND parked_reason = 'stale'"
        )
        return scheduled if scheduled and swept and parked and all(r.is_finished for r in scheduled) else None

    runs += wait_until(scheduled_done, 150, "the schedule did not sweep tenant s1", log_dir)
    failed = [(r.run_id, r.job_name, r.status) for r in runs if r.status != DagsterRunStatus.SUCCESS]
    assert not failed, failed
    everything = instance.get_run_records()
    local_ids = {r.dagster_run.run_id for r in everything} - {r.run_id for r in runs}
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in everything)
    assert len(everything) == len(runs) + 2  # plus the two `mailglass run` runs
    assert {"reconcile_orphans", "__ASSET_JOB"} <= {r.dagster_run.job_name for r in everything}
    # Runs launched through the queue never overlap at all, by their run records.
    queued = [r for r in everything if r.dagster_run.run_id not in local_ids]
    assert_no_overlap({r.dagster_run.run_id: (r.start_time, r.end_time) for r in queued})
    # With the two `mailglass run` runs (no queue), no two sweeps overlap: each sweeps only while it holds the pool.
    assert_no_overlap({r.dagster_run.run_id: sweep_window(instance, r) for r in everything})
    # The asset backfill's runs each carried one partition key (no backfill policy: decision D21).
    asset_runs = backfill_runs(asset_backfill, 3)
    assert sorted(r.tags["dagster/partition"] for r in asset_runs) == ["p1", "p3", "p6"]
    # Each names its tenant in the Runs list: the run tags itself when the asset backfill did not.
    for record in asset_runs:
        run = instance.get_run_by_id(record.run_id)
        assert run.tags["mailglass/tenant"] == run.tags["dagster/partition"]
    # The stale-orphan check's status per partition, as the asset's Checks and Partitions tabs ask for it:
    # the stale orphans of p3 and s2 fail it (a warning) on every path, the schedule's included; none reads
    # "Skipped" (issue 24), and no partition reads "not evaluated": a tenant whose latest materialization
    # is the scheduled sweep's has that sweep's evaluation of it (decision D31).
    check = asset_check(client, "no_stale_orphans")
    statuses = check["partitionStatuses"]
    rows = check_history(dagster_home[1])
    history = "\n".join(map(str, rows))  # printed only by a failure below
    assert statuses["skippedPartitions"] == [] and statuses["executionFailedPartitions"] == [], statuses
    assert statuses["inProgressPartitions"] == [], statuses
    # Dagster's rule: a partition shows its latest execution (by row id: rows are made when a run is
    # created) only if it targets the latest materialization. Two runs of one tenant created in one
    # order and executed in the other (two backfills: their runs are tagged only once started, so the
    # queue may launch both and the pool lets the first started go first) leave it "Missing" though
    # each evaluated its own materialization: not the sweep's doing, and allowed here only that way.
    shown = shown_by_dagster(rows)
    assert sorted(statuses["failedPartitions"]) == sorted(p for p, s in shown.items() if s == "FAILED"), history
    assert sorted(statuses["succeededPartitions"]) == sorted(p for p, s in shown.items() if s == "SUCCEEDED"), history
    for tenant, status in shown.items():
        expected = "FAILED" if tenant in ("p3", "s2") else "SUCCEEDED"
        assert status in (expected, "MISSING: runs executed out of creation order"), f"{tenant}: {status}\n{history}"
    assert shown["s1"] == "SUCCEEDED" and shown["s2"] == "FAILED", history  # the schedule's only
    for tenant in ("s1", "s2"):  # their only materializations: the schedule's sweep
        assert latest_materialization_job(instance, tenant) == "reconcile_due_tenants", tenant
    # The overall status: any failed partition makes it "Failed", coloured by the latest execution's
    # severity (a warning), which targets its partition's latest materialization.
    latest = check["executionForLatestMaterialization"]
    assert latest is not None and latest["evaluation"]["severity"] == "WARN", latest
    assert latest["evaluation"]["partition"] == latest["partition"] and latest["partition"], latest
    # Every tenant reconciled exactly once, whatever ran it how often.
    reconciled = fetch(engine, "SELECT tenant_id FROM mailglass_events WHERE type = 'reconciled' ORDER BY 1")
    assert [r.tenant_id for r in reconciled] == [*tenants, "s1"]
    launchpad = instance.get_run_by_id(launchpad_run)
    assert launchpad.run_config["ops"]["mailglass__webhook_reconciliation"]["config"]["limit"] == 50
    paths = sorted({r.dagster_run.job_name for r in everything})
    print(f"{len(everything)} runs ({paths}), none overlapping")
