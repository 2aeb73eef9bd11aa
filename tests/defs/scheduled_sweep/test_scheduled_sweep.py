"""The scheduled all-tenant sweep (job ``reconcile_due_tenants``) on a real PostgreSQL-backed Dagster instance."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from dagster import AssetKey, build_asset_check_context, instance_for_test

from mailglass_pipeline.dagster_support.config_errors import LaunchpadConfigError
from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.checks import LagCheckConfig, reconciliation_lag
from mailglass_pipeline.defs.scheduled_sweep.jobs import SWEEP_JOB_NAME
from tests.factories import fetch, make_delivery, make_orphan

TENANT_ASSET = AssetKey(["mailglass", "webhook_reconciliation"])
SWEEP_ASSET = AssetKey(["mailglass", "reconciliation_sweep"])


@pytest.fixture
def pg_instance(dagster_storage_url):
    """A Dagster instance whose storage is dagster-postgres (what the daemon's run workers write to)."""
    with instance_for_test(overrides={"storage": {"postgres": {"postgres_url": dagster_storage_url}}}) as instance:
        yield instance


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
        make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-m1")
        make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-m1")  # linkable
        make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-never")  # never matches
    for i in range(40):
        make_delivery(engine, tenant_id=f"idle-{i}", message_id=f"idle-{i}-m")
    for i in range(5):
        make_orphan(engine, tenant_id=f"young-{i}", message_id=f"young-{i}-m", age=timedelta(seconds=5))

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
    checks = {(c.check_name, c.partition): c for c in result.get_asset_check_evaluations()}
    assert checks.pop(("reconciliation_lag", None)).passed
    # Each materialized partition's no_stale_orphans, evaluated against this run's materialization (D31).
    assert sorted(checks) == [("no_stale_orphans", f"busy-{i}") for i in range(5)]
    assert all(c.passed for c in checks.values()) and totals["checks_evaluated"] == 5

    rows = fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type = 'reconciled'")
    assert rows[0].n == 5

    # Next tick's run: nothing due (backoff), so no partition event at all.
    again = _sweep(database_url, pg_instance)
    assert _partition_materializations(pg_instance, again.run_id) == {}


def _check_status_by_partition(instance) -> dict[str, tuple[str, bool]]:
    """no_stale_orphans per partition as the UI's status reads it: (latest status, targets latest materialization)."""
    from dagster import AssetCheckKey

    from mailglass_pipeline.dagster_support.private import check_partition_infos

    infos = check_partition_infos(instance, AssetCheckKey(TENANT_ASSET, "no_stale_orphans"))
    return {i.partition_key: (i.latest_execution_status.value, i.is_current) for i in infos}


def test_the_sweep_evaluates_the_stale_check_of_each_partition_it_materializes(
    pg_instance, engine, database_url, monkeypatch
):
    """After a scheduled sweep, each tenant it materialized shows its real no_stale_orphans outcome (D31)."""
    from mailglass_pipeline.defs.scheduled_sweep import check_evaluations

    make_delivery(engine, tenant_id="fine", message_id="m-1")
    make_orphan(engine, tenant_id="fine", message_id="m-1")  # linked: passes (no stale orphan)
    make_orphan(engine, tenant_id="aging", message_id="m-old", age=timedelta(days=8))  # newly stale: fails
    make_delivery(engine, tenant_id="both", message_id="m-2")
    make_orphan(engine, tenant_id="both", message_id="m-2")
    make_orphan(engine, tenant_id="both", message_id="m-3", age=timedelta(days=9))
    first = _sweep(database_url, pg_instance)
    assert _check_status_by_partition(pg_instance) == {
        "fine": ("SUCCEEDED", True),
        "aging": ("FAILED", True),
        "both": ("FAILED", True),
    }
    evaluations = {c.partition: c for c in first.get_asset_check_evaluations() if c.partition}
    aging = evaluations["aging"]
    assert aging.description == "1 orphan(s) older than 7 days, unlikely to reconcile"
    assert aging.metadata["stale_orphans"].value == 1 and aging.metadata["oldest_stale_orphans"].value.records
    assert aging.target_materialization_data.run_id == first.run_id
    # A later link for "aging" re-materializes it: evaluated again, still failing, still current.
    make_delivery(engine, tenant_id="aging", message_id="m-4")
    make_orphan(engine, tenant_id="aging", message_id="m-4")
    _sweep(database_url, pg_instance)
    assert _check_status_by_partition(pg_instance)["aging"] == ("FAILED", True)
    # Past the cap: the newly stale tenant first; the other keeps its materialization, "not evaluated".
    monkeypatch.setattr(check_evaluations, "MAX_CHECK_EVALUATIONS", 1)
    make_delivery(engine, tenant_id="fine", message_id="m-5")
    make_orphan(engine, tenant_id="fine", message_id="m-5")
    make_orphan(engine, tenant_id="later", message_id="m-6", age=timedelta(days=8))
    capped = _sweep(database_url, pg_instance)
    statuses = _check_status_by_partition(pg_instance)
    assert statuses["later"] == ("FAILED", True) and statuses["fine"] == ("SUCCEEDED", False)
    assert (_totals(capped)["checks_evaluated"], _totals(capped)["checks_deferred"]) == (1, 1)


def test_tenant_ids_unfit_as_keys_are_swept_and_counted(pg_instance, engine, database_url):
    make_delivery(engine, tenant_id="bad tenant", message_id="m-1")
    make_orphan(engine, tenant_id="bad tenant", message_id="m-1")
    make_delivery(engine, tenant_id="good", message_id="m-2")
    make_orphan(engine, tenant_id="good", message_id="m-2")
    result = _sweep(database_url, pg_instance)
    assert sorted(_partition_materializations(pg_instance, result.run_id)) == ["good"]
    [sweep_event] = [e for e in result.get_asset_materialization_events() if e.asset_key == SWEEP_ASSET]
    totals = sweep_event.materialization.metadata
    assert totals["unfit_tenant_ids"].value == 1 and "'bad tenant'" in totals["unfit_tenant_ids_sample"].value
    assert totals["linked"].value == 2  # the unfit tenant's orphan was linked all the same
    assert "bad tenant" not in pg_instance.get_dynamic_partitions("tenants")


def _config(**values):
    return {"ops": {"mailglass__reconciliation_sweep": {"config": values}}}


def _totals(result):
    [sweep_event] = [e for e in result.get_asset_materialization_events() if e.asset_key == SWEEP_ASSET]
    return {k: v.value for k, v in sweep_event.materialization.metadata.items()}


def _attempts_by_tenant(engine):
    rows = fetch(engine, "SELECT tenant_id, sum(attempts) AS n FROM mailglass_reconciliation_queue GROUP BY 1")
    return {r.tenant_id: int(r.n) for r in rows}


def test_per_tenant_quota_and_total_cap_from_the_launchpad(pg_instance, engine, database_url):
    for i in range(3):
        for j in range(4):
            make_orphan(engine, tenant_id=f"t{i}", message_id=f"t{i}-m{j}")
    # A quota per tenant per run, however many transactions (max_total 2: at least 3 of them).
    result = _sweep(database_url, pg_instance, _config(limit=2, max_total=2))
    assert _attempts_by_tenant(engine) == {"t0": 2, "t1": 2, "t2": 2}
    totals = _totals(result)
    assert totals["scanned"] == 6 and totals["transactions"] >= 3 and totals["stopped_by"] == "quota"
    # Examined and still unmatched: nothing changed for these tenants, so no partition event.
    assert _partition_materializations(pg_instance, result.run_id) == {}
    assert totals["tenants_swept"] == 3 and totals["tenants_materialized"] == 0


def test_only_tenants_where_something_happened_get_a_materialization(pg_instance, engine, database_url):
    make_delivery(engine, tenant_id="linked", message_id="m-1")
    make_orphan(engine, tenant_id="linked", message_id="m-1")
    make_orphan(engine, tenant_id="broken", message_id=None)  # malformed: parked at its first examination
    make_orphan(
        engine, tenant_id="aged", message_id="m-old", age=timedelta(minutes=30)
    )  # past max age below: parked stale
    make_orphan(engine, tenant_id="hopeless", message_id="never")  # first examination, stays unmatched
    first = _sweep(database_url, pg_instance, _config(max_age_minutes=20))
    found = _partition_materializations(pg_instance, first.run_id)
    assert sorted(found) == ["aged", "broken", "linked"]
    assert found["linked"]["linked"] == 1 and found["broken"]["malformed"] == 1
    assert found["aged"]["stale_orphans"] == 1
    totals = _totals(first)
    assert (totals["scanned"], totals["unmatched"], totals["newly_stale"]) == (3, 1, 1)
    assert totals["tenants_materialized"] == 3
    # The hopeless orphan's retry time comes: re-examined, still unmatched, still no event for it.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mailglass_reconciliation_queue SET next_attempt_at = now() - interval '1 s'"))
    again = _sweep(database_url, pg_instance, _config(max_age_minutes=20))
    assert _totals(again)["scanned"] == 1 and _totals(again)["unmatched"] == 1
    assert _partition_materializations(pg_instance, again.run_id) == {}
    assert _attempts_by_tenant(engine)["hopeless"] == 2
    # Its delivery commits: linked by the next run, and now the tenant's partition records it.
    make_delivery(engine, tenant_id="hopeless", message_id="never")
    last = _sweep(database_url, pg_instance)
    assert sorted(_partition_materializations(pg_instance, last.run_id)) == ["hopeless"]


def test_time_budget_from_config_and_environment(pg_instance, engine, database_url, monkeypatch):
    for i in range(30):
        make_orphan(engine, tenant_id=f"t{i:02d}", message_id=f"never-{i}")
    # A budget far shorter than one transaction: the run does one bounded transaction and stops.
    result = _sweep(database_url, pg_instance, _config(max_total=10, budget_seconds=0.001))
    totals = _totals(result)
    assert (totals["transactions"], totals["scanned"], totals["stopped_by"]) == (1, 10, "budget")
    assert totals["due_remaining"] == 20 and totals["budget_seconds"] == 0.0  # rounded to 0.1 s
    # The environment's budget applies when the config names none; the next run goes on where it stopped.
    monkeypatch.setenv("MAILGLASS_SWEEP_BUDGET_SECONDS", "45")
    totals = _totals(_sweep(database_url, pg_instance, _config(max_total=10)))
    assert (totals["scanned"], totals["stopped_by"], totals["budget_seconds"]) == (20, "drained", 45.0)
    assert set(_attempts_by_tenant(engine).values()) == {1}


@pytest.mark.parametrize(("config", "env"), [({"budget_seconds": 0}, None), ({}, "soon"), ({}, "-5")])
def test_a_bad_budget_is_refused_at_launch_before_any_write(
    pg_instance, engine, database_url, monkeypatch, config, env
):
    """The config's budget or, when it names none, the environment's: checked by the job's config mapping."""
    make_orphan(engine, tenant_id="t", message_id="never")
    if env is not None:
        monkeypatch.setenv("MAILGLASS_SWEEP_BUDGET_SECONDS", env)
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(SWEEP_JOB_NAME)
    runs_before = len(pg_instance.get_runs())
    with pytest.raises(LaunchpadConfigError, match=r"^invalid sweep config: .*(budget|MAILGLASS_SWEEP)") as refused:
        job.execute_in_process(instance=pg_instance, run_config=_config(**config))
    assert "\n" not in str(refused.value)
    assert len(pg_instance.get_runs()) == runs_before and _attempts_by_tenant(engine) == {"t": 0}


def test_reconciliation_lag_warns_with_count_and_longest_wait(engine, database_url):
    make_delivery(engine, tenant_id="t1", message_id="m-late")
    make_orphan(engine, tenant_id="t1", message_id="m-late", age=timedelta(minutes=20))
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
