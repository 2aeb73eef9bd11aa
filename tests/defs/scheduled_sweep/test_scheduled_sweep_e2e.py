"""The minute schedule end to end at 200 tenants: real ``mailglass dev`` (webserver + daemon), real ticks.

What an operator does: start ``mailglass dev``, turn ``reconcile_every_minute``
on (the UI's toggle is the GraphQL ``startSchedule`` used here), and watch two
ticks at the minute boundaries. The data has the three kinds of tenants the
schedule must tell apart: 40 with linkable orphans past grace (their deliveries
exist), 100 whose orphans never match, 60 with only deliveries (nothing due).

Asserted from the instance's own records (ticks, run records, event log) and
the application database: at most one run per tick, all of job
``reconcile_due_tenants``, never two at once; every linkable orphan linked
exactly once; partition materializations of ``mailglass/webhook_reconciliation``
for exactly the tenants where something happened (linked) and for no other
tenant, the re-examined hopeless ones only in the run's totals; and
the second tick consistent with the backoff rule: after the first sweep examined
the hopeless orphans once, they are due again 1 minute after that examination
(``next_attempt_at = last_attempted_at + 1 min``), so tick 2 either finds them
still in backoff (skip, "no orphan is due"), finds the first run still in flight
(skip naming it), or launches one run that examines exactly those orphans again.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, RunsFilter
from dagster_graphql import DagsterGraphQLClient

from tests.dagster_private import InstigatorType, TickStatus, execute_graphql
from tests.factories import fetch, make_delivery, make_orphan
from tests.processes import log_tail, mailglass_dev, wait_until, webserver_up

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*")

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
REPOSITORY = {"repositoryLocationName": "mailglass_pipeline", "repositoryName": "__repository__"}
SCHEDULE = "reconcile_every_minute"
SWEEP_JOB = "reconcile_due_tenants"
PARTITION_KEY = AssetKey(["mailglass", "webhook_reconciliation"])
SWEEP_KEY = AssetKey(["mailglass", "reconciliation_sweep"])
START_SCHEDULE = """
mutation Start($scheduleSelector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $scheduleSelector) { __typename ... on Error { message } }
}
"""
LOCATION_QUERY = """
query { repositoryOrError(repositorySelector: {repositoryLocationName: "mailglass_pipeline",
                                               repositoryName: "__repository__"}) { __typename } }
"""


@pytest.fixture
def stack(tmp_path, database_url, dagster_storage_url, monkeypatch):
    """``mailglass dev`` on a fresh app database and its own Dagster storage database; stopped by process group."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home), "MAILGLASS_DATABASE_URL": database_url}
    env["MAILGLASS_DAGSTER_DATABASE_URL"] = dagster_storage_url
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with mailglass_dev({**os.environ, **env}, tmp_path, cwd=REPO) as port:
        yield port, tmp_path


def _location_loaded(client: DagsterGraphQLClient) -> bool:
    try:
        return execute_graphql(client, LOCATION_QUERY)["repositoryOrError"]["__typename"] == "Repository"
    except Exception:
        return False


def _finished_ticks(instance: DagsterInstance) -> list:
    states = instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
    states = [s for s in states if s.instigator_name == SCHEDULE]
    if not states:
        return []
    ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=20)
    return sorted((t for t in ticks if t.status != TickStatus.STARTED), key=lambda t: t.timestamp)


def _partition_materializations(instance: DagsterInstance, run_id: str) -> dict[str, dict[str, int]]:
    records = instance.fetch_materializations(PARTITION_KEY, limit=10_000).records
    found: dict[str, dict[str, int]] = {}
    for record in records:
        if record.run_id != run_id:
            continue
        materialization = record.asset_materialization
        assert materialization.partition not in found, f"two materializations of {materialization.partition}"
        found[materialization.partition] = {k: v.value for k, v in materialization.metadata.items()}
    return found


def _sweep_totals(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    [event] = [r for r in instance.fetch_materializations(SWEEP_KEY, limit=10).records if r.run_id == run_id]
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_two_ticks_at_200_tenants_one_run_each_and_only_tenants_with_work(stack, engine):
    port, log_dir = stack
    started = time.monotonic()
    linkable = [f"link{i:03d}" for i in range(40)]
    hopeless = [f"hope{i:03d}" for i in range(100)]
    idle = [f"idle{i:03d}" for i in range(60)]
    linkable_orphans: dict[uuid.UUID, str] = {}
    for n, tenant in enumerate(linkable):
        for k in range(1 + n % 3):  # 1 to 3 orphans each, inserted 3 minutes ago: past the 60 s grace
            message = f"{tenant}-m{k}"
            linkable_orphans[make_orphan(engine, tenant_id=tenant, message_id=message, age=timedelta(minutes=3))] = (
                tenant
            )
            make_delivery(engine, tenant_id=tenant, message_id=message)
    hopeless_orphans = {
        make_orphan(engine, tenant_id=t, message_id=f"{t}-never", age=timedelta(minutes=3)): t for t in hopeless
    }
    for tenant in idle:
        make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-sent")

    wait_until(lambda: webserver_up(port), 120, "webserver did not come up", log_dir)
    instance = DagsterInstance.get()  # the storage the processes use
    instance.add_dynamic_partitions("tenants", linkable + hopeless + idle)
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    wait_until(lambda: _location_loaded(client), 90, "code location did not load", log_dir)
    result = execute_graphql(client, START_SCHEDULE, {"scheduleSelector": {**REPOSITORY, "scheduleName": SCHEDULE}})
    assert result["startSchedule"]["__typename"] == "ScheduleStateResult", result
    schedule_on = time.time()

    # Two finished ticks (at the next two minute boundaries), then every run they launched finished.
    ticks = wait_until(lambda: (t := _finished_ticks(instance)) and len(t) >= 2 and t, 150, "no two ticks", log_dir, 2)
    ticks = ticks[:2]
    run_ids = [run_id for tick in ticks for run_id in tick.run_ids]
    wait_until(
        lambda: all(r.is_finished for r in instance.get_runs(RunsFilter(run_ids=run_ids))),
        90,
        "runs did not finish",
        log_dir,
    )
    logs = log_tail(log_dir)

    # At most one run per tick; the first tick had work due, so it launched one.
    assert all(len(t.run_ids) <= 1 for t in ticks), [(t.status, t.run_ids) for t in ticks]
    assert ticks[0].status == TickStatus.SUCCESS and len(ticks[0].run_ids) == 1, (ticks[0], logs)
    assert ticks[0].timestamp >= schedule_on - 1
    # Every run in the instance is a scheduled sweep, and they never overlapped.
    runs = instance.get_runs()
    assert {r.job_name for r in runs} == {SWEEP_JOB}, logs
    assert all(r.is_success for r in runs), logs
    assert sorted(r.run_id for r in runs) == sorted(run_ids)
    records = sorted(instance.get_run_records(RunsFilter(run_ids=run_ids)), key=lambda r: r.start_time)
    for before, after in itertools.pairwise(records):
        assert before.end_time <= after.start_time, "two reconciliation runs overlapped"

    # Every linkable orphan linked exactly once; no hopeless one.
    linked = fetch(
        engine,
        "SELECT metadata ->> 'reconciled_from_event_id' AS orphan, count(*) AS n FROM mailglass_events "
        "WHERE type = 'reconciled' GROUP BY 1",
    )
    assert {uuid.UUID(r.orphan): r.n for r in linked} == dict.fromkeys(linkable_orphans, 1)

    # Run 1 examined the linkable and hopeless tenants, but something happened only to the linkable ones:
    # one partition materialization each; none for the hopeless (examined, still unmatched) nor the idle.
    first = _partition_materializations(instance, ticks[0].run_ids[0])
    assert set(first) == set(linkable)
    for tenant in linkable:
        expected = sum(1 for t in linkable_orphans.values() if t == tenant)
        assert (first[tenant]["scanned"], first[tenant]["linked"]) == (expected, expected)
    totals = _sweep_totals(instance, ticks[0].run_ids[0])
    assert (totals["tenants_swept"], totals["linked"]) == (140, len(linkable_orphans))
    assert totals["unmatched"] == len(hopeless) and totals["tenants_materialized"] == len(linkable)

    # The backoff rule on the queue rows of the hopeless orphans.
    queue = fetch(
        engine,
        "SELECT event_id, attempts, last_attempted_at, next_attempt_at FROM mailglass_reconciliation_queue "
        "WHERE event_id = ANY(:ids)",
        ids=list(hopeless_orphans),
    )
    assert len(queue) == len(hopeless)
    backoff = {1: timedelta(minutes=1), 2: timedelta(minutes=2)}
    # Backoff in ticks: the retry time counts from the minute tick of the examining sweep.
    tick_of = lambda at: at.replace(second=0, microsecond=0)  # noqa: E731
    assert all(q.next_attempt_at - tick_of(q.last_attempted_at) == backoff[q.attempts] for q in queue), queue[:3]

    second = ticks[1]
    if second.run_ids:
        # Their retry time had come: run 2 examined exactly the hopeless orphans again, nothing else,
        # and a re-examination that changes nothing writes no partition event (only the run's totals).
        assert _partition_materializations(instance, second.run_ids[0]) == {}
        again = _sweep_totals(instance, second.run_ids[0])
        assert (again["scanned"], again["unmatched"], again["linked"]) == (len(hopeless), len(hopeless), 0)
        assert all(q.attempts == 2 for q in queue)
    else:
        assert second.status == TickStatus.SKIPPED, (second, logs)
        assert all(q.attempts == 1 for q in queue)
        first_record = records[0]
        if "no orphan is due" in second.skip_reason:
            # Derived from the rule: the first examination + 1 min was still ahead of the tick.
            retry_at = min(q.next_attempt_at for q in queue).timestamp()
            assert retry_at > second.timestamp, (retry_at, second.timestamp)
        else:
            assert ticks[0].run_ids[0] in second.skip_reason and first_record.end_time > second.timestamp
    print(
        f"ticks: {[(t.status.value, len(t.run_ids), t.skip_reason) for t in ticks]}; "
        f"{time.monotonic() - started:.1f} s in all"
    )
