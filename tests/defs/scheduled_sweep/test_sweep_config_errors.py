"""A bad Launchpad value for the scheduled sweep fails its run at once, in one line, never retried.

An asset has no config mapping to refuse the launch (see ``dagster_support.config_errors``), so
the refusal is the run's first step: one failure naming the field and its bound, nothing swept.
"""

from __future__ import annotations

import pytest
from conftest import fetch, make_delivery, make_orphan
from dagster import DagsterEventType, instance_for_test

from mailglass_pipeline.definitions import build_definitions
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.assets import SWEEP_JOB_NAME


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"limit": 0}, "invalid sweep config: limit must be >= 1 (got 0)"),
        ({"max_total": 0, "grace_seconds": -1}, "max_total must be >= 1 (got 0); grace_seconds must be >= 0 (got -1)"),
    ],
)
def test_bad_sweep_config_fails_once_in_one_line(engine, database_url, config, expected) -> None:
    make_orphan(engine, "t1", "m-1")
    make_delivery(engine, "t1", "m-1")
    job = build_definitions(MailglassDatabase(database_url=database_url)).resolve_job_def(SWEEP_JOB_NAME)
    with instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config={"ops": {"mailglass__reconciliation_sweep": {"config": config}}},
            raise_on_error=False,
        )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(failures) == 1 and retries == []
    error = failures[0].step_failure_data.error
    assert expected in error.message and "\n" not in error.message.strip() and error.cause is None
    assert fetch(engine, "SELECT count(*) FROM mailglass_events WHERE type = 'reconciled'")[0][0] == 0
