"""The scheduled all-tenant sweep (job ``reconcile_due_tenants``) on a real PostgreSQL-backed Dagster instance."""

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import fetch, make_delivery, make_orphan
from dagster import AssetKey, build_asset_check_context, instance_for_test
from sqlalchemy.engine import make_url

from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.checks import LagCheckConfig, reconciliation_lag
from mailglass_pipeline.defs.dev import psycopg2_url
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.sweep import SWEEP_JOB_NAME

TENANT_ASSET = AssetKey(["mailglass", "webhook_reconciliation"])
SWEEP_ASSET = AssetKey(["mailglass", "reconciliation_sweep"])


@pytest.fixture
def pg_instance(admin_url, admin_engine):
    """A Dagster instance whose storage is dagster-postgres (what the daemon's run workers write to)."""
    name = f"mg_dagster_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = psycopg2_url(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    with instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        yield instance
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _sweep(database_url, instance, run_config=None):
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(SWEEP_JOB_NAME)
    return job.execute_in_process(instance=instance, run_config=run_config or {})


def _partition_materializations(instance, run_id):
    records = instance.fetch_materializations(TENANT_ASSET, limit=10_000).records
    found = {}
    for record in records:
        if record.run_id == run_id:
            materialization = record.event_log_entry.asset_materialization
            found[materialization.partition] = {k: v.value for k, v in materialization.metadata.items()}
    return found


def test_one_run_materializes_exactly_the_tenants_with_work(pg_instance, engine, database_url, monkeypatch):
    # 50 tenants: 5 with due orphans, the rest idle (deliveries only) or with orphans still in grace.
    for i in range(5):
        tenant = f"busy-{i}"
        make_delivery(engine, tenant, f"{tenant}-m1")
        make_orphan(engine, tenant, f"{tenant}-m1")  # linkable
        make_orphan(engine, tenant, f"{tenant}-never")  # never matches
    for i in range(40):
        make_delivery(engine, f"idle-{i}", f"idle-{i}-m")
    for i in range(5):
        make_orphan(engine, f"young-{i}", f"young-{i}-m", age=timedelta(seconds=5))

    # Spy on the storage: the partition materializations must go in one batch, not one write each.
    batches = []
    original = pg_instance.event_log_storage.store_event_batch

    def spy(events):
        batches.append(len(events))
        return original(events)

    monkeypatch.setattr(pg_instance.event_log_storage, "store_event_batch", spy)

    result = _sweep(database_url, pg_instance)
    assert result.success
    found = _partition_materializations(pg_instance, result.run_id)
    assert sorted(found) == [f"busy-{i}" for i in range(5)]
    for counts in found.values():
        assert counts["scanned"] == 2 and counts["linked"] == 1 and counts["unmatched"] == 1
        assert counts["remaining_orphans"] == 1 and counts["stale_orphans"] == 0
    assert batches == [5]
    assert {f"busy-{i}" for i in range(5)} <= set(pg_instance.get_dynamic_partitions("tenants"))
    assert not {f"idle-{i}" for i in range(40)} & set(pg_instance.get_dynamic_partitions("tenants"))

    [sweep_event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == SWEEP_ASSET
    ]  # the run's own totals
    totals = {k: v.value for k, v in sweep_event.materialization.metadata.items()}
    assert totals["tenants_swept"] == 5 and totals["tenants_materialized"] == 5
    assert totals["scanned"] == 10 and totals["linked"] == 5 and totals["unmatched"] == 5
    assert totals["remaining_orphans"] == 10  # 5 in backoff + 5 still in grace
    assert totals["unfit_tenant_ids"] == 0
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "reconciliation_lag" and check.passed

    rows = fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type = 'reconciled'")
    assert rows[0].n == 5

    # Next tick's run: nothing due (backoff), so no partition event at all.
    again = _sweep(database_url, pg_instance)
    assert _partition_materializations(pg_instance, again.run_id) == {}


def test_tenant_ids_unfit_as_keys_are_swept_and_counted(pg_instance, engine, database_url):
    make_delivery(engine, "bad tenant", "m-1")
    make_orphan(engine, "bad tenant", "m-1")
    make_orphan(engine, "good", "m-2")
    result = _sweep(database_url, pg_instance)
    assert sorted(_partition_materializations(pg_instance, result.run_id)) == ["good"]
    [sweep_event] = [e for e in result.get_asset_materialization_events() if e.asset_key == SWEEP_ASSET]
    totals = sweep_event.materialization.metadata
    assert totals["unfit_tenant_ids"].value == 1 and "'bad tenant'" in totals["unfit_tenant_ids_sample"].value
    assert totals["linked"].value == 1  # the unfit tenant's orphan was linked all the same
    assert "bad tenant" not in pg_instance.get_dynamic_partitions("tenants")


def test_per_tenant_quota_and_total_cap_from_the_launchpad(pg_instance, engine, database_url):
    for i in range(3):
        for j in range(4):
            make_orphan(engine, f"t{i}", f"t{i}-m{j}")
    result = _sweep(database_url, pg_instance, {"ops": {"mailglass__reconciliation_sweep": {"config": {"limit": 2}}}})
    found = _partition_materializations(pg_instance, result.run_id)
    assert {t: c["scanned"] for t, c in found.items()} == {"t0": 2, "t1": 2, "t2": 2}


def test_reconciliation_lag_warns_with_count_and_longest_wait(engine, database_url):
    make_delivery(engine, "t1", "m-late")
    make_orphan(engine, "t1", "m-late", age=timedelta(minutes=20))
    with engine.begin() as conn:  # its delivery committed 10 minutes ago and nothing linked it since
        conn.execute(sa.text("UPDATE mailglass_reconciliation_queue SET linkable_at = now() - interval '10 minutes'"))
    database = MailglassDatabase(database_url=database_url)
    result = reconciliation_lag(build_asset_check_context(), LagCheckConfig(), mailglass_db=database)
    assert not result.passed and result.severity.value == "WARN"
    assert result.metadata["lagging_orphans"].value == 1
    assert 590 <= result.metadata["longest_wait_seconds"].value <= 700
    relaxed = reconciliation_lag(
        build_asset_check_context(), LagCheckConfig(threshold_seconds=3600), mailglass_db=database
    )
    assert relaxed.passed
