"""What the Dagster UI shows of the orphans: the stale-orphan table, per-tenant checks and tags, queue states.

An asset backfill launched from the asset page (``launchPartitionBackfill`` with an asset selection)
gives each run of the implicit asset job one partition key (the asset has no backfill policy: decision
D21) and no job tags. The run here has exactly that shape, so the check and the tenant tag are tested on
the route an operator takes; the slow end-to-end test (tests/defs/test_dagster_e2e.py) launches it
through the real webserver and daemon and reads the check's status per partition as the UI does.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import AssetKey, instance_for_test

from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.jobs import SWEEP_JOB_NAME
from mailglass_pipeline.defs.tenant_reconciliation.partitions import TENANT_TAG, TENANTS_PARTITIONS_NAME
from tests.factories import make_delivery, make_orphan

TENANT_ASSET = AssetKey(["mailglass", "webhook_reconciliation"])


def _backfill_run(database_url: str, instance, tenant: str):
    """One run of an asset backfill from the asset page: the implicit asset job, one partition key."""
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=[TENANT_ASSET],
        partition_key=tenant,
    )


def test_backfill_run_checks_its_own_tenant_with_the_stale_table(engine, database_url) -> None:
    for tenant in ("t1", "t2", "t3"):
        for days in (8, 9, 10):
            make_orphan(
                engine,
                tenant_id=tenant,
                message_id=f"{tenant}-old-{days}",
                age=timedelta(days=days),
                event_type="bounced",
            )
    make_orphan(engine, tenant_id="t1", message_id="t1-m")
    make_delivery(engine, tenant_id="t1", message_id="t1-m")
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, ["t1", "t2", "t3"])
        result = _backfill_run(database_url, instance, "t1")
        assert result.success
        [evaluation] = result.get_asset_check_evaluations()
        # Three in t1, not nine (every tenant's); recorded for partition t1, where the UI reads its status.
        assert evaluation.metadata["stale_orphans"].value == 3
        assert evaluation.partition == "t1" and not evaluation.passed
        table = evaluation.metadata["oldest_stale_orphans"]
        rows = [r.data for r in table.value.records]
        assert [c.name for c in table.value.schema.columns][:5] == [
            "tenant",
            "provider",
            "message_id",
            "type",
            "age_days",
        ]
        assert [r["message_id"] for r in rows] == ["t1-old-10", "t1-old-9", "t1-old-8"]
        assert {r["tenant"] for r in rows} == {"t1"} and {r["type"] for r in rows} == {"bounced"}
        assert 9.9 < rows[0]["age_days"] < 10.1
        # The Runs list names the tenant of the backfill's run.
        run = instance.get_run_by_id(result.run_id)
        assert run.tags[TENANT_TAG] == "t1" and run.tags["mailglass/reconcile"] == "true"
        # The tenant's materialization carries its queue by state.
        [materialization] = result.get_asset_materialization_events()
        metadata = {k: v.value for k, v in materialization.materialization.metadata.items()}
        assert metadata["linked"] == 1
        assert (metadata["queue_stale"], metadata["queue_due"], metadata["queue_malformed"]) == (3, 0, 0)


def test_scheduled_sweep_plots_the_queue_by_state(engine, database_url) -> None:
    make_orphan(engine, tenant_id="a", message_id="never")  # examined, then waiting
    make_orphan(engine, tenant_id="a", message_id=None)  # malformed
    make_orphan(engine, tenant_id="b", message_id="old", age=timedelta(days=8))  # stale
    make_orphan(engine, tenant_id="b", message_id="young", age=timedelta(seconds=5))  # waiting (grace)
    with instance_for_test() as instance:
        job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(SWEEP_JOB_NAME)
        result = job.execute_in_process(instance=instance)
        assert result.success
        events = result.get_asset_materialization_events()
        by_key = {(e.materialization.asset_key.to_user_string(), e.materialization.partition): e for e in events}
        sweep = {k: v.value for k, v in by_key["mailglass/reconciliation_sweep", None].materialization.metadata.items()}
        assert (sweep["queue_waiting"], sweep["queue_malformed"], sweep["queue_stale"], sweep["queue_due"]) == (
            2,
            1,
            1,
            0,
        )
        records = instance.fetch_materializations(TENANT_ASSET, limit=10).records
        [tenant_a] = [r.asset_materialization.metadata for r in records if r.asset_materialization.partition == "a"]
        assert tenant_a["queue_waiting"].value == 1 and tenant_a["queue_malformed"].value == 1
