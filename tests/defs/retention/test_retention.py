"""Retention job ``prune_dagster_history`` on a real PostgreSQL-backed Dagster instance.

Real runs of ``reconcile_orphans`` are executed into the instance, then some of them are made old
by moving their ``create_timestamp`` back 20 days in Dagster's ``runs`` table (the column the
retention filter reads). The retention job itself runs as a real run of the code location's job.
"""

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRun, DagsterRunStatus
from sqlalchemy.engine import Engine

from mailglass_pipeline.dagster_support.private import latest_materialization_ids_by_partition
from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.retention.jobs import PRUNE_JOB_NAME
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.dagster_private import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from tests.factories import fetch, make_delivery, make_orphan

KEY = AssetKey(["mailglass", "webhook_reconciliation"])


def run_tenant(database_url: str, instance: DagsterInstance, tenant: str):
    if tenant not in instance.get_dynamic_partitions("tenants"):
        instance.add_dynamic_partitions("tenants", [tenant])
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def("reconcile_orphans")
    result = job.execute_in_process(partition_key=tenant, instance=instance)
    assert result.success
    return result


@pytest.fixture
def storage(tmp_path: Path, dagster_storage_url: str) -> Iterator[tuple[DagsterInstance, Engine]]:
    url = dagster_storage_url
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_url": url}}}))
    instance = DagsterInstance.from_config(str(tmp_path))
    dagster_engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield instance, dagster_engine
    finally:
        instance.dispose()
        dagster_engine.dispose()


def _age(dagster_engine: Engine, run_ids: list[str], days: int) -> None:
    with dagster_engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE runs SET create_timestamp = create_timestamp - make_interval(days => :d) WHERE run_id = ANY(:r)"
            ),
            {"d": days, "r": run_ids},
        )


def _event_rows(dagster_engine: Engine, run_id: str) -> int:
    with dagster_engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r"), {"r": run_id}).scalar_one()


def _other_location_run(instance: DagsterInstance, job_name: str) -> str:
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(GrpcServerCodeLocationOrigin(host="elsewhere", port=4000, location_name="other"), "x"),
        job_name,
    )
    run = instance.add_run(
        DagsterRun(
            job_name=job_name, run_id=str(uuid.uuid4()), status=DagsterRunStatus.SUCCESS, remote_job_origin=origin
        )
    )
    return run.run_id


def test_prunes_old_runs_with_their_events_and_keeps_latest_per_tenant(storage, database_url, engine) -> None:
    instance, dagster_engine = storage
    for tenant in ("t1", "t2"):
        make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-a")
        make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-a")
    t1_first = run_tenant(database_url, instance, "t1").run_id
    make_orphan(engine, tenant_id="t1", message_id="t1-b")
    make_delivery(engine, tenant_id="t1", message_id="t1-b")
    t1_latest = run_tenant(database_url, instance, "t1").run_id
    t2_only = run_tenant(database_url, instance, "t2").run_id
    recent = run_tenant(database_url, instance, "t1").run_id  # newer than 14 days: kept, and now t1's latest
    other_job = instance.add_run(
        DagsterRun(job_name="someone_elses_job", run_id=str(uuid.uuid4()), status=DagsterRunStatus.SUCCESS)
    ).run_id
    other_location = _other_location_run(instance, "reconcile_orphans")
    old = [t1_first, t1_latest, t2_only, other_job, other_location]
    _age(dagster_engine, old, days=20)
    assert all(_event_rows(dagster_engine, r) > 0 for r in (t1_first, t1_latest, t2_only))

    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(PRUNE_JOB_NAME)
    result = job.execute_in_process(instance=instance)
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == "prune_runs"]
    counts = {k: v.value for k, v in output.event_specific_data.metadata.items()}

    remaining = {r.run_id for r in instance.get_runs()}
    # Deleted: t1's first run (old, and not the latest of its partition) and t1's second run (old; the
    # recent run is now t1's latest). Kept: t2's only run (old, but holds t2's latest materialization),
    # the recent run, the retention run itself, and the two runs that are not this location's.
    assert t1_first not in remaining and t1_latest not in remaining
    assert {t2_only, recent, result.run_id, other_job, other_location} <= remaining
    assert counts["deleted_runs"] == 2
    assert counts["kept_latest_materialization_runs"] == 1
    assert counts["skipped_other_location_runs"] == 1
    # Their event logs went with them; nobody else's did.
    assert _event_rows(dagster_engine, t1_first) == 0 and _event_rows(dagster_engine, t1_latest) == 0
    assert _event_rows(dagster_engine, t2_only) > 0 and _event_rows(dagster_engine, recent) > 0
    with dagster_engine.connect() as conn:
        for table in ("run_tags", "asset_check_executions"):
            for run_id in (t1_first, t1_latest):
                sql = f"SELECT count(*) FROM {table} WHERE run_id = :r"
                assert conn.execute(sa.text(sql), {"r": run_id}).scalar() == 0, table
        kept_checks = conn.execute(
            sa.text("SELECT count(*) FROM asset_check_executions WHERE run_id = :r"), {"r": t2_only}
        ).scalar()
    assert kept_checks == 1 and counts["deleted_check_executions"] == 2
    # Every tenant keeps its current state on the asset page.
    latest = latest_materialization_ids_by_partition(instance, KEY)
    assert set(latest) == {"t1", "t2"}
    records = instance.fetch_materializations(KEY, limit=10).records
    assert {r.run_id for r in records} == {t2_only, recent}


def test_keep_days_and_dry_run_are_honoured(storage, database_url, engine) -> None:
    instance, dagster_engine = storage
    make_orphan(engine, tenant_id="t1", message_id="a")
    make_delivery(engine, tenant_id="t1", message_id="a")
    first = run_tenant(database_url, instance, "t1").run_id
    second = run_tenant(database_url, instance, "t1").run_id
    _age(dagster_engine, [first], days=5)
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(PRUNE_JOB_NAME)

    config = {"ops": {"prune_runs": {"config": {"keep_days": 7}}}}
    assert job.execute_in_process(instance=instance, run_config=config).success
    assert instance.get_run_by_id(first) is not None  # 5 days old, kept with keep_days 7

    dry = {"ops": {"prune_runs": {"config": {"keep_days": 3, "dry_run": True}}}}
    assert job.execute_in_process(instance=instance, run_config=dry).success
    assert instance.get_run_by_id(first) is not None  # dry run deletes nothing

    assert job.execute_in_process(
        instance=instance, run_config={"ops": {"prune_runs": {"config": {"keep_days": 3}}}}
    ).success
    assert instance.get_run_by_id(first) is None and instance.get_run_by_id(second) is not None


def test_batches_are_bounded(storage, database_url, engine) -> None:
    instance, dagster_engine = storage
    make_orphan(engine, tenant_id="t1", message_id="a")
    make_delivery(engine, tenant_id="t1", message_id="a")
    runs = [run_tenant(database_url, instance, "t1").run_id for _ in range(6)]
    _age(dagster_engine, runs, days=30)
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(PRUNE_JOB_NAME)
    capped = {"ops": {"prune_runs": {"config": {"batch_size": 2, "max_runs": 3}}}}
    assert job.execute_in_process(instance=instance, run_config=capped).success
    left = [r for r in runs if instance.get_run_by_id(r) is not None]
    assert len(left) == 3  # 3 deleted this time; the newest (t1's latest) among those left
    assert runs[-1] in left
    assert job.execute_in_process(
        instance=instance, run_config={"ops": {"prune_runs": {"config": {"batch_size": 2}}}}
    ).success
    assert [r for r in runs if instance.get_run_by_id(r) is not None] == [runs[-1]]


def test_the_daily_job_prunes_parked_queue_rows_and_keeps_the_ledger(storage, database_url, engine) -> None:
    """The retention run deletes queue rows parked past the period, nothing else; the ledger keeps them."""
    instance, _ = storage
    old_stale = make_orphan(engine, tenant_id="t1", message_id="gone", age=timedelta(days=8))
    malformed = make_orphan(engine, tenant_id="t1", message_id=None)
    pending = make_orphan(engine, tenant_id="t1", message_id="pending")
    sweep(engine, None, SweepConfig())
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE mailglass_reconciliation_queue SET parked_at = parked_at - interval '31 days',"
                " orphan_inserted_at = orphan_inserted_at - interval '31 days' WHERE event_id = :id"
            ),
            {"id": old_stale},
        )
    events = fetch(engine, "SELECT count(*) FROM mailglass_events")
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(PRUNE_JOB_NAME)
    result = job.execute_in_process(instance=instance)
    assert result.success
    [output] = [
        e for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == "prune_parked_orphans"
    ]
    counts = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert (counts["deleted_stale"], counts["deleted_malformed"], counts["retention_days"]) == (1, 0, 30)
    queued = {r[0] for r in fetch(engine, "SELECT event_id FROM mailglass_reconciliation_queue")}
    assert queued == {malformed, pending}
    assert fetch(engine, "SELECT count(*) FROM mailglass_events") == events
