"""Sensor ``reconciliation_monitor``: the lag as it is each minute, without a sweep (issue 24).

Evaluated as the daemon does (``build_sensor_context`` on a real instance, the resource bound to the
test database), tick after tick: a webhook waits with its delivery committed, a sweep links it, and
nothing happens after; what the sensor records and requests at each step is what the asset's Plots
and the check's status show.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from dagster import SensorResult, build_sensor_context, instance_for_test

from mailglass_pipeline import settings
from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.assets import SWEEP_KEY
from mailglass_pipeline.defs.scheduled_sweep.sensors import LAG_CHECK_JOB_NAME, reconciliation_monitor
from mailglass_pipeline.reconciliation.sweep import reconcile
from tests.factories import make_delivery, make_orphan


def test_the_lag_is_recorded_each_minute_and_the_check_follows_it(
    engine, database_url, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.LAG_THRESHOLD_SECONDS.env, "120")
    with instance_for_test() as instance:
        cursor = None

        def tick() -> SensorResult:
            nonlocal cursor
            resources = {"mailglass_db": MailglassDatabase(database_url=database_url)}
            with build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                result = reconciliation_monitor(context)
            assert isinstance(result, SensorResult)
            cursor = result.cursor
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
            return result

        # Idle from the start: the first tick records the zeros once, the next records nothing.
        first = tick()
        assert [e.metadata["lag_seconds"].value for e in first.asset_events] == [0.0]
        assert tick().asset_events == [] and "not recorded" in tick().skip_reason.skip_message

        # A webhook that arrived 5 minutes ago, its delivery committed since: the lag is 240 s and rising.
        make_orphan(engine, tenant_id="acme", message_id="late", age=timedelta(minutes=5))
        make_delivery(engine, tenant_id="acme", message_id="late")
        with engine.begin() as conn:  # ... committed 4 minutes ago: the orphan has been linkable that long
            conn.execute(sa.text("UPDATE mailglass_reconciliation_queue SET linkable_at = now() - interval '4 min'"))
        waiting = tick()
        [observed] = waiting.asset_events
        assert observed.asset_key == SWEEP_KEY
        values = {k: v.value for k, v in observed.metadata.items()}
        assert values["due_remaining"] == 1 and values["due_tenants"] == 1 and values["lagging_orphans"] == 1
        assert 239 < values["lag_seconds"] < 340 and values["queue_due"] == 1
        # Past the threshold: the check is re-run once (its status is now "warn"), not on every tick.
        assert [r.job_name for r in waiting.run_requests] in ([None], [LAG_CHECK_JOB_NAME])
        still = tick()
        assert len(still.asset_events) == 1 and still.run_requests == []  # recorded (still waiting), no run

        # A sweep links it: the next tick records the fall to 0 once, re-runs the check once (it passes).
        assert reconcile(database_url=database_url)["linked"] == 1
        fallen = tick()
        [observed] = fallen.asset_events
        assert observed.metadata["lag_seconds"].value == 0.0 and observed.metadata["due_remaining"].value == 0
        assert len(fallen.run_requests) == 1
        quiet = tick()
        assert quiet.asset_events == [] and quiet.run_requests == []

        # The observations are the asset's events, which its Plots draw (one per recorded tick).
        observations = instance.fetch_observations(SWEEP_KEY, limit=10).records
        assert [r.asset_observation.metadata["lag_seconds"].value > 0 for r in observations] == [
            False,
            True,
            True,
            False,
        ]


def test_the_lag_check_job_runs_the_check_alone(engine, database_url) -> None:
    definitions = build_definitions(MailglassDatabase(database_url=database_url))
    job = definitions.resolve_job_def(LAG_CHECK_JOB_NAME)
    with instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success and result.get_asset_materialization_events() == []
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.check_name == "reconciliation_lag" and evaluation.passed
