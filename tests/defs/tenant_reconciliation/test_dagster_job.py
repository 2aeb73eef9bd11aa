"""In-process runs of reconcile_orphans, one tenant partition each, on a real PostgreSQL."""

from datetime import timedelta

import pytest
from dagster import AssetCheckSeverity, Backoff, DagsterRunStatus, instance_for_test

from mailglass_pipeline.dagster_support.config_errors import LaunchpadConfigError
from mailglass_pipeline.dagster_support.database import database_errors
from mailglass_pipeline.definitions import defs
from mailglass_pipeline.defs.tenant_reconciliation.assets import WEBHOOK_RECONCILIATION_KEY
from mailglass_pipeline.defs.tenant_reconciliation.checks import stale_orphans_result
from mailglass_pipeline.defs.tenant_reconciliation.ops import (
    append_reconciled_events,
    attempt_link,
    find_orphans,
    markdown_preview,
)
from mailglass_pipeline.errors import DatabaseUnavailableError
from tests.defs.tenant_reconciliation.defs_support import (
    graph_config,
    materialization_counts,
    reconcile_job,
    run_tenant,
)
from tests.factories import fetch, make_delivery, make_orphan

INTEGER_KEYS = ("scanned", "linked", "unmatched", "malformed", "remaining_orphans", "stale_orphans")


def _ledger(engine):
    return fetch(engine, "SELECT id, tenant_id, type, delivery_id FROM mailglass_events ORDER BY id")


def test_t1_run_links_t1_only_and_records_integer_metadata(engine, database_url):
    t1_matched = make_orphan(engine, tenant_id="t1", message_id="m-1")
    t1_delivery = make_delivery(engine, tenant_id="t1", message_id="m-1")
    make_orphan(engine, tenant_id="t1", message_id="m-unmatched")
    make_orphan(engine, tenant_id="t1", message_id=None)  # malformed: no message id
    make_orphan(engine, tenant_id="t1", message_id="m-old", age=timedelta(days=8))  # past max age: stale
    make_orphan(engine, tenant_id="t2", message_id="m-2")
    make_delivery(engine, tenant_id="t2", message_id="m-2")
    t2_before = [r for r in _ledger(engine) if r.tenant_id == "t2"]
    t2_deliveries_before = fetch(engine, "SELECT * FROM mailglass_deliveries WHERE tenant_id = 't2'")

    with instance_for_test() as instance:
        result = run_tenant(database_url, instance, "t1")
        assert result.success
        counts = materialization_counts(result)
        for key in INTEGER_KEYS:
            assert isinstance(counts[key], int), key
        assert {k: counts[k] for k in INTEGER_KEYS} == {
            "scanned": 3,
            "linked": 1,
            "unmatched": 1,
            "malformed": 1,
            "remaining_orphans": 1,
            "stale_orphans": 1,
        }
        [event] = result.get_asset_materialization_events()
        assert event.materialization.asset_key == WEBHOOK_RECONCILIATION_KEY
        assert event.materialization.partition == "t1"
        # The materialization is in the instance's event log, per partition, for the UI's plots.
        recorded = instance.get_latest_materialization_event(WEBHOOK_RECONCILIATION_KEY)
        assert recorded.asset_materialization.partition == "t1"
        assert recorded.asset_materialization.metadata["linked"].value == 1

        reconciled = fetch(
            engine, "SELECT tenant_id, delivery_id, metadata FROM mailglass_events WHERE type = 'reconciled'"
        )
        assert [(r.tenant_id, r.delivery_id) for r in reconciled] == [("t1", t1_delivery)]
        assert reconciled[0].metadata["reconciled_from_event_id"] == str(t1_matched)
        # t2 untouched: no event appended, no projection written.
        assert [r for r in _ledger(engine) if r.tenant_id == "t2"] == t2_before
        assert fetch(engine, "SELECT * FROM mailglass_deliveries WHERE tenant_id = 't2'") == t2_deliveries_before

        # A second run finds nothing new to link; then t2's own run links t2.
        # The unmatched orphan waits out its backoff, unless the Launchpad says retry_all.
        again = materialization_counts(run_tenant(database_url, instance, "t1"))
        assert (again["scanned"], again["linked"]) == (0, 0)
        forced = materialization_counts(run_tenant(database_url, instance, "t1", graph_config(retry_all=True)))
        assert (forced["scanned"], forced["linked"], forced["unmatched"]) == (1, 0, 1)
        t2 = materialization_counts(run_tenant(database_url, instance, "t2"))
        assert (t2["scanned"], t2["linked"], t2["remaining_orphans"]) == (1, 1, 0)


def test_runs_carry_concurrency_tags(database_url):
    with instance_for_test() as instance:
        result = run_tenant(database_url, instance, "tenant-a")
        assert result.dagster_run.tags["mailglass/reconcile"] == "true"
        assert result.dagster_run.tags["mailglass/tenant"] == "tenant-a"
        assert result.dagster_run.tags["dagster/partition"] == "tenant-a"
    # The same tags come from the job's partitioned config, which the webserver and the backfill
    # daemon ask for when they create a run for a partition.
    job = defs.resolve_job_def("reconcile_orphans")
    tags = job.partitioned_config.get_tags_for_partition_key("tenant-b")
    assert (tags["mailglass/reconcile"], tags["mailglass/tenant"]) == ("true", "tenant-b")
    assert job.tags["mailglass/reconcile"] == "true"


@pytest.mark.parametrize(
    "bad",
    [
        {"limit": 0},
        {"limit": -5},
        {"limit": 100_001},  # the setting's bound (mailglass_pipeline/settings.py), in pydantic and the core alike
        {"max_age_minutes": 0},
        {"grace_seconds": -1},
        {"grace_seconds": 600, "max_age_minutes": 5},  # grace longer than max age: the core refuses
    ],
)
def test_bad_launchpad_config_is_refused_before_any_op(engine, database_url, bad):
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    make_delivery(engine, tenant_id="t1", message_id="m-1")
    with instance_for_test() as instance:
        with pytest.raises(LaunchpadConfigError, match=r"^invalid reconcile config: [^\n]+$"):
            run_tenant(database_url, instance, "t1", graph_config(**bad))
        # Nothing executed: no step ever started, nothing written.
        assert not [r for r in instance.get_runs() if r.status == DagsterRunStatus.SUCCESS]
        for run in instance.get_runs():
            steps = [e for e in instance.all_logs(run.run_id) if e.is_step_event]
            assert steps == []
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type='reconciled'")[0].n == 0
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_reconciliation_queue WHERE attempts > 0")[0].n == 0


def test_wrong_type_is_refused_by_the_schema(database_url):
    with instance_for_test() as instance, pytest.raises(Exception, match="limit"):
        run_tenant(database_url, instance, "t1", graph_config(limit="many"))


def test_launchpad_config_reaches_the_ops(engine, database_url):
    for i in range(3):
        make_orphan(engine, tenant_id="t1", message_id=f"m-{i}", age=timedelta(minutes=10 - i))
    make_orphan(engine, tenant_id="t1", message_id="m-young", age=timedelta(seconds=90))
    with instance_for_test() as instance:
        counts = materialization_counts(run_tenant(database_url, instance, "t1", graph_config(limit=2)))
        assert counts["scanned"] == 2
        counts = materialization_counts(
            run_tenant(database_url, instance, "t1", graph_config(limit=10, grace_seconds=120, retry_all=True))
        )
        # retry_all ignores the backoff of the two just tried; the 90 s old orphan is inside a 120 s grace window.
        assert counts["scanned"] == 3


def test_stale_orphan_check_warns_with_count_and_age(engine, database_url):
    make_orphan(engine, tenant_id="t1", message_id="m-old", age=timedelta(days=9))
    make_orphan(engine, tenant_id="t1", message_id="m-older", age=timedelta(days=10))
    make_orphan(engine, tenant_id="t2", message_id="m-fresh")
    with instance_for_test() as instance:
        result = run_tenant(database_url, instance, "t1")
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.check_name == "no_stale_orphans"
        assert evaluation.passed is False
        assert evaluation.severity == AssetCheckSeverity.WARN
        assert evaluation.partition == "t1"
        assert evaluation.metadata["stale_orphans"].value == 2
        assert 9.9 < evaluation.metadata["oldest_orphan_age_days"].value < 10.1
        assert "older than 7 days, unlikely to reconcile" in evaluation.description
        assert result.success  # WARN: the run itself succeeds

        [clean] = run_tenant(database_url, instance, "t2").get_asset_check_evaluations()
        assert clean.passed is True
        assert clean.metadata["stale_orphans"].value == 0


def test_check_result_without_stale_orphans_has_no_age():
    result = stale_orphans_result(0, None)
    assert result.passed and "oldest_orphan_age_seconds" not in result.metadata


def test_database_unavailable_becomes_a_clear_failure():
    from dagster import Failure

    with pytest.raises(Failure, match="database unreachable") as info, database_errors():
        raise DatabaseUnavailableError("database unreachable (postgresql+psycopg://x@nowhere/db): refused")
    assert info.value.allow_retries


def test_markdown_preview_is_short(engine, database_url):
    import pandas as pd

    frame = pd.DataFrame({"id": range(25), "type": ["delivered"] * 25, "malformed": [False] * 25})
    text = markdown_preview(frame)
    assert text.count("\n") < 16 and "15 more" in text
    assert markdown_preview(frame.iloc[0:0]) == "_no orphans in this batch_"


def test_job_uses_the_in_process_executor_and_retries_database_trouble(database_url):
    job = reconcile_job(database_url)
    assert job.executor_def.name == "in_process"
    for op_def in (find_orphans, attempt_link, append_reconciled_events):
        assert op_def.retry_policy.max_retries == 3
        assert op_def.retry_policy.backoff == Backoff.EXPONENTIAL
