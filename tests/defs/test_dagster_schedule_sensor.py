"""The minute schedule and the tenant-partition sensor, evaluated as the daemon would."""

import logging
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterRunStatus,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from mailglass_pipeline import ledger
from mailglass_pipeline.definitions import defs
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.schedules import reconcile_every_minute
from mailglass_pipeline.defs.tenant_reconciliation.partitions import is_valid_tenant_key
from mailglass_pipeline.defs.tenant_reconciliation.sensors import tenant_partitions
from mailglass_pipeline.reconciliation.sweep import reconcile
from tests.dagster_private import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
    create_run_for_test,
)
from tests.factories import make_delivery, make_orphan


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        yield instance


def _tick(instance, database_url, minute=0):
    with build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 1, 1, 12, minute, tzinfo=UTC),
        resources={"mailglass_db": MailglassDatabase(database_url=database_url)},
        repository_def=defs.get_repository_def(),
    ) as context:
        return reconcile_every_minute.evaluate_tick(context)


def _run(instance, status, tags, job_name="reconcile_orphans"):
    """A run of ``job_name`` in ``status`` with ``tags``, as the run queue would hold it."""
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=RegisteredCodeLocationOrigin(location_name="mailglass_pipeline"),
            repository_name="__repository__",
        ),
        job_name=job_name,
    )
    return create_run_for_test(instance, job_name=job_name, status=status, tags=tags, remote_job_origin=origin)


def test_schedule_skips_with_a_reason_when_nothing_is_due(instance, engine, database_url):
    make_orphan(engine, tenant_id="t1", message_id="m-young", age=timedelta(seconds=10))  # inside the grace window
    result = _tick(instance, database_url)
    assert result.run_requests == []
    assert "no orphan is due" in result.skip_message


def test_schedule_skips_never_matching_orphans_in_backoff(instance, engine, database_url):
    make_orphan(engine, tenant_id="t1", message_id="m-never")
    assert len(_tick(instance, database_url).run_requests) == 1
    reconcile(database_url=database_url)  # examined, unmatched: next try in 1 minute
    result = _tick(instance, database_url, minute=1)
    assert result.run_requests == [] and "no orphan is due" in result.skip_message
    make_delivery(engine, tenant_id="t1", message_id="m-never")  # its delivery commits: due again at once
    assert len(_tick(instance, database_url, minute=2).run_requests) == 1


def test_schedule_requests_one_sweep_per_tick_for_many_due_tenants(instance, engine, database_url):
    for i in range(30):
        make_orphan(engine, tenant_id=f"t{i}", message_id=f"m-{i}")
    make_delivery(engine, tenant_id="idle", message_id="m-x")  # a tenant without orphans
    result = _tick(instance, database_url, minute=1)
    [request] = result.run_requests
    assert request.partition_key is None  # one run for every tenant, not a partition run
    assert request.tags["mailglass/reconcile"] == "true"
    assert request.tags["mailglass/tenant"] == "*"
    assert defs.resolve_schedule_def("reconcile_every_minute").job_name == "reconcile_due_tenants"
    later = _tick(instance, database_url, minute=2)
    assert [r.run_key for r in later.run_requests] != [request.run_key]  # a key per tick


@pytest.mark.parametrize("status", [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
def test_schedule_skips_while_the_previous_sweep_is_in_flight(instance, engine, database_url, status):
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    _run(instance, DagsterRunStatus.SUCCESS, {}, job_name="reconcile_due_tenants")  # finished: does not count
    _run(instance, DagsterRunStatus.QUEUED, {"mailglass/tenant": "t1"})  # a per-tenant run: the pool's business
    assert len(_tick(instance, database_url).run_requests) == 1
    previous = _run(instance, status, {}, job_name="reconcile_due_tenants")
    skipped = _tick(instance, database_url, minute=1)
    assert skipped.run_requests == []
    assert previous.run_id in skipped.skip_message and "still" in skipped.skip_message


def test_schedule_never_floods_the_queue_with_200_tenants(instance, engine, database_url):
    tenants = [f"tenant-{i:03d}" for i in range(200)]
    events = [
        ledger.NewEvent(
            tenant_id=t,
            type="delivered",
            occurred_at=datetime.now(UTC) - timedelta(minutes=5),
            inserted_at=datetime.now(UTC) - timedelta(minutes=5),
            idempotency_key=f"flood:{t}",
            metadata={"provider": "postmark", "provider_message_id": f"m-{t}"},
            needs_reconciliation=True,
        )
        for t in tenants
    ]
    with engine.begin() as conn:
        ledger.append_events(conn, events)
    # The sweep is slower than a minute: nothing the schedule queued finishes during 5 ticks.
    for minute in range(5):
        result = _tick(instance, database_url, minute=minute)
        for request in result.run_requests:
            _run(instance, DagsterRunStatus.QUEUED, request.tags, job_name="reconcile_due_tenants")
        assert len(result.run_requests) == (1 if minute == 0 else 0)
    assert len(instance.get_runs()) == 1


def test_schedule_definition(instance):
    schedule = defs.resolve_schedule_def("reconcile_every_minute")
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.job_name == "reconcile_due_tenants"
    assert schedule.default_status.value == "STOPPED"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _sense(instance, database_url):
    """Evaluate the sensor once; returns (log messages, result)."""
    records = _Records()
    with build_sensor_context(
        instance=instance, resources={"mailglass_db": MailglassDatabase(database_url=database_url)}
    ) as context:
        context.log.addHandler(records)
        return records.messages, tenant_partitions(context)


def test_sensor_adds_partitions_and_skips_unfit_ids(instance, engine, database_url):
    make_delivery(engine, tenant_id="acme", message_id="m-1")
    make_orphan(engine, tenant_id="globex.io", message_id="m-2")
    make_orphan(engine, tenant_id="has space", message_id="m-3")
    make_orphan(engine, tenant_id="x" * 65, message_id="m-4")
    make_delivery(engine, tenant_id="a,b", message_id="m-5")

    logged, result = _sense(instance, database_url)
    assert isinstance(result, SensorResult)
    [request] = result.dynamic_partitions_requests
    assert request.partitions_def_name == "tenants"
    assert sorted(request.partition_keys) == ["acme", "globex.io"]
    [warning] = [m for m in logged if "cannot be partition keys" in m]
    assert "has space" in warning and "a,b" in warning and "x" * 65 in warning

    instance.add_dynamic_partitions("tenants", list(request.partition_keys))  # what the daemon does
    _, again = _sense(instance, database_url)
    assert isinstance(again, SkipReason)
    assert "3 unfit" in again.skip_message  # also visible on the tick without opening its logs

    # A new tenant appears within one tick.
    make_orphan(engine, tenant_id="initech", message_id="m-6")
    _, newer = _sense(instance, database_url)
    assert list(newer.dynamic_partitions_requests[0].partition_keys) == ["initech"]


def test_sensor_definition():
    sensor = defs.resolve_sensor_def("tenant_partitions")
    assert sensor.default_status.value == "RUNNING"


@pytest.mark.parametrize(
    ("key", "ok"),
    [("t1", True), ("acme-eu_2", True), ("a.b@c", True), ("a,b", False), ("a b", False), ("[x]", False),
     ("", False), ("x" * 64, True), ("x" * 65, False), ("é", False)],
)  # fmt: skip
def test_partition_key_rule(key, ok):
    assert is_valid_tenant_key(key) is ok
