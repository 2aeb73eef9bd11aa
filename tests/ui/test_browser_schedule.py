"""After the README's quick start, the schedule: what the asset pages say in a real browser (Chromium).

The quick start (`mailglass run`: the demo, one run per tenant) leaves each demo tenant with 3 stale
orphans, so `no_stale_orphans` fails (a warning) for all three, and the asset page's latest
materialization is the last tenant run, `initech` (README). Then a linkable orphan arrives for `acme`
(its delivery committed) before `mailglass dev` starts, and the schedule is turned on through the
mutation its toggle sends: the next tick's sweep links it and materializes acme's partition. The check
must still read acme's real outcome (decision D31): "Failed" per partition and overall, through the
GraphQL the Checks tab sends and on the screen, never "Missing".

The same wait shows the lag told each minute without a run (issue 24, decision D22): the sensor
`reconciliation_monitor`, as shipped (on, 60 s), plots the orphan's wait on `mailglass/reconciliation_sweep`
before the sweep, and after it, with nothing due and no further run, a point at lag 0; the
`reconciliation_lag` check (threshold 0 s here: a wait of seconds counts) reads "Failed" before the sweep
and "Passed" after it, each time from the run of `check_reconciliation_lag` the sensor requested. Read
through the query the asset's Plots send and the Checks tab's, and on the screen.
``MAILGLASS_UPDATE_SCREENSHOTS=1`` writes the README's asset-page picture from the quick start's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.test_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    button,
    check_partition_statuses,
    dev_after,
    open_page,
    readme_screenshot,
    use_dev_instance,
    wait_for,
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian chromium"),
]

START_SCHEDULE = """
mutation Start($scheduleSelector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $scheduleSelector) { __typename ... on PythonError { message } }
}
"""
LATEST_EXECUTION = """
query Latest($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
      name executionForLatestMaterialization { runId partition status evaluation { severity } }
    } } } }
  }
}
"""

SWEEP_ASSET = {"path": ["mailglass", "reconciliation_sweep"]}
# What the asset's Plots (Overview -> Metadata -> Plots, and the asset graph's sidebar) send: the webapp's
# RecentAssetEventsQuery, limit 100, these two event types (ui-core AssetTimeMetadataPlots); only fields read here.
PLOTTED_EVENTS = """
query Plotted($assetKey: AssetKeyInput!, $limit: Int!, $eventTypeSelectors: [AssetEventHistoryEventTypeSelector!]!) {
  assetOrError(assetKey: $assetKey) {
    ... on Asset { assetEventHistory(limit: $limit, eventTypeSelectors: $eventTypeSelectors) { results {
      __typename
      ... on MaterializationEvent { runId timestamp description metadataEntries { ...Numbers } }
      ... on ObservationEvent { runId timestamp description metadataEntries { ...Numbers } }
    } } }
  }
}
fragment Numbers on MetadataEntry {
  label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
}
"""
#: reconciliation_lag warns on any wait: the orphan's wait starts when its delivery committed, seconds before
#: the monitor's first tick (with the default 300 s it would pass for 5 minutes).
DEV_ENV = {"MAILGLASS_LAG_THRESHOLD_SECONDS": "0"}


def _late_orphan(env: dict[str, str]) -> None:
    """A webhook for acme whose delivery committed, arriving after the quick start: linkable, unlinked."""
    from mailglass_pipeline import db
    from tests.factories import make_delivery, make_orphan

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAILGLASS_HOME", env["MAILGLASS_HOME"])
        engine = db.get_engine(db.embedded_server_url())
        make_delivery(engine, tenant_id="acme", message_id="browser-late-1")
        make_orphan(engine, tenant_id="acme", message_id="browser-late-1")
        engine.dispose()


@pytest.fixture
def quick_start_then_late_orphan(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The README's quick start (`mailglass run`), a late orphan for acme, then `mailglass dev` (DEV_ENV)."""
    with dev_after(tmp_path, "run", before_dev=_late_orphan, dev_env=DEV_ENV) as server:
        yield server


def plotted(port: int) -> list[dict[str, Any]]:
    """The points the Plots of ``mailglass/reconciliation_sweep`` draw, oldest first, with their numbers."""
    variables = {"assetKey": SWEEP_ASSET, "limit": 100, "eventTypeSelectors": ["MATERIALIZATION", "OBSERVATION"]}
    events = _graphql(port, PLOTTED_EVENTS, variables)["assetOrError"]["assetEventHistory"]["results"]
    points = [
        {
            "kind": e["__typename"], "run_id": e["runId"], "at": int(e["timestamp"]), "description": e["description"],
            "values": {m["label"]: m.get("intValue", m.get("floatValue")) for m in e["metadataEntries"]},
        }
        for e in events
    ]  # fmt: skip
    return sorted(points, key=lambda p: p["at"])


def lag_check(port: int) -> dict[str, Any] | None:
    """``reconciliation_lag``'s execution as the Checks tab reads it (its status), None before any."""
    data = _graphql(port, LATEST_EXECUTION, {"assetKey": SWEEP_ASSET})
    [check] = data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    assert check["name"] == "reconciliation_lag", check
    return check["executionForLatestMaterialization"]


def _graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    from dagster_graphql import DagsterGraphQLClient

    from tests.dagster_private import execute_graphql

    return execute_graphql(DagsterGraphQLClient("127.0.0.1", port_number=port), query, variables)


def test_check_status_and_lag_after_the_quick_start_and_a_scheduled_sweep(
    quick_start_then_late_orphan,
    browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster import AssetKey, AssetRecordsFilter, DagsterRunStatus, RunsFilter

    from mailglass_pipeline import db
    from mailglass_pipeline.defs.scheduled_sweep.sensors import LAG_CHECK_JOB_NAME
    from tests.factories import fetch

    port, env = quick_start_then_late_orphan
    base = f"http://127.0.0.1:{port}"
    instance = use_dev_instance(monkeypatch, env)
    app_url = db.embedded_server_url()
    tenants = ["acme", "globex", "initech"]

    # The README: the asset page's latest materialization is the last tenant the quick start ran.
    asset_page = f"{base}/assets/mailglass/webhook_reconciliation"
    open_page(browser, asset_page, "Latest materialization")
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[normalize-space(text())='initech']"),
        "the asset page does not name initech as the latest materialization (README)",
    )
    readme_screenshot(browser, asset_page, "ui-asset-materialized.png")
    statuses = check_partition_statuses(port, "no_stale_orphans")
    assert sorted(statuses["failedPartitions"]) == tenants, statuses

    # Before any sweep, acme's late orphan waits: the monitor's tick plots its wait (no run), and the
    # reconciliation_lag check reads "Failed" (a warning), evaluated by the run the monitor requested.
    def job_of(execution: dict[str, Any] | None) -> str | None:
        return execution and (run := instance.get_run_by_id(execution["runId"])) and run.job_name

    warned = wait_for(
        lambda: (e := lag_check(port)) and e["status"] == "FAILED" and job_of(e) == LAG_CHECK_JOB_NAME and e,
        "reconciliation_lag was not re-checked (Failed) by the monitor's run before any sweep",
    )
    assert warned["evaluation"]["severity"] == "WARN", warned
    assert instance.get_run_by_id(warned["runId"]).tags["dagster/sensor_name"] == "reconciliation_monitor"
    [waiting, *_] = [p for p in plotted(port) if p["values"].get("lagging_orphans")]
    assert waiting["kind"] == "ObservationEvent" and waiting["run_id"] == "", waiting
    assert waiting["description"] == "current state (no sweep)", waiting
    # Only acme's orphan is linkable; the demo's foreign ones (no delivery) are due again after their backoff.
    assert waiting["values"]["lagging_orphans"] == 1 and waiting["values"]["lag_seconds"] > 0, waiting
    assert waiting["values"]["due_remaining"] >= 1, waiting

    # The schedule's next tick links acme's orphan.
    engine = db.get_engine(app_url)
    selector = {
        "repositoryLocationName": "mailglass_pipeline",
        "repositoryName": "__repository__",
        "scheduleName": "reconcile_every_minute",
    }
    started = _graphql(port, START_SCHEDULE, {"scheduleSelector": selector})["startSchedule"]
    assert started["__typename"] == "ScheduleStateResult", started
    scheduled = wait_for(
        lambda: (
            (runs := instance.get_runs(RunsFilter(tags={"dagster/schedule_name": "reconcile_every_minute"})))
            and fetch(engine, "SELECT 1 FROM mailglass_events WHERE type = 'reconciled' AND tenant_id = 'acme'")
            and all(r.is_finished for r in runs)
            and runs
        ),
        "no scheduled sweep linked acme's orphan",
        timeout=180,
    )
    assert all(r.status == DagsterRunStatus.SUCCESS for r in scheduled)
    [latest] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["mailglass", "webhook_reconciliation"]), asset_partitions=["acme"]),
        limit=1,
    ).records
    assert instance.get_run_by_id(latest.run_id).job_name == "reconcile_due_tenants"

    # Per partition and overall, as the Checks tab asks: acme still fails on its 3 stale orphans, now
    # evaluated by the sweep against the sweep's materialization (decision D31); no partition is missing.
    statuses = check_partition_statuses(port, "no_stale_orphans")
    assert sorted(statuses["failedPartitions"]) == tenants, statuses
    assert statuses["succeededPartitions"] == [] and statuses["skippedPartitions"] == [], statuses
    data = _graphql(port, LATEST_EXECUTION, {"assetKey": {"path": ["mailglass", "webhook_reconciliation"]}})
    [check] = [c for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"] if c["name"] == "no_stale_orphans"]
    execution = check["executionForLatestMaterialization"]
    assert execution["runId"] == latest.run_id and execution["partition"] == "acme", execution
    assert execution["status"] == "FAILED" and execution["evaluation"]["severity"] == "WARN", execution

    # On the screen: the check reads "Failed" with acme's table; its Partitions tab counts 3 failed, none missing.
    open_page(browser, f"{asset_page}?view=checks", "no_stale_orphans")
    wait_for(lambda: browser.find_elements(By.XPATH, "//*[normalize-space(text())='Failed']"), "no 'Failed' status")
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[contains(normalize-space(), '3 orphan(s) older than 7 days')]"),
        "the Checks tab does not show acme's 3 stale orphans",
    )
    assert not browser.find_elements(By.XPATH, "//*[normalize-space(text())='Not evaluated']")
    wait_for(
        lambda: [e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Partitions']")
                 if e.is_displayed()][-1],
        "no Partitions tab in the check's pane",
    ).click()  # fmt: skip
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[contains(normalize-space(), 'Failed (3)')]"),
        "the check's Partitions tab does not count 3 failed partitions",
    )
    assert not browser.find_elements(By.XPATH, "//*[contains(normalize-space(), 'Missing (1)')]")

    # While the monitor's next tick is awaited: the sweep asset's Overview -> Metadata -> Plots (the only
    # Plots toggle in Dagster 1.13) draw lag_seconds and due_remaining as charts, not as table rows.
    sweep_page = f"{base}/assets/mailglass/reconciliation_sweep"
    open_page(browser, sweep_page, "Metadata")
    button(browser, "Plots").click()
    for label in ("lag_seconds", "due_remaining"):
        chart = f"//*[normalize-space(text())='{label}'][not(ancestor::table)]/following::canvas"
        wait_for(lambda chart=chart: browser.find_elements(By.XPATH, chart), f"the Plots draw no {label}")

    # The monitor's next tick plots the lag at 0 and nothing due (decision D22), with no further run: the
    # Plots fall at that minute, not at the next sweep's. The sweep put the demo's foreign orphans back in
    # backoff (2 min), so nothing is due until then. The check reads "Passed" again from the run of
    # check_reconciliation_lag the monitor requested when its outcome changed.
    def idle_after_sweep() -> tuple[dict[str, Any], dict[str, Any]] | None:
        points = plotted(port)
        sweep = next(p for p in points if p["kind"] == "MaterializationEvent")  # the first: the scheduled sweep
        after = [p for p in points if p["kind"] == "ObservationEvent" and p["at"] > sweep["at"]]
        idle = [p for p in after if not p["values"]["lag_seconds"]]  # a tick may have read before the sweep's commit
        return (sweep, idle[0]) if idle else None

    sweep, idle = wait_for(idle_after_sweep, "the monitor plotted no lag of 0 after the sweep", timeout=150)
    assert sweep["run_id"] == latest.run_id and sweep["values"]["linked"] >= 1, sweep
    assert idle["run_id"] == "" and idle["description"] == "current state (no sweep)", idle
    assert {k: idle["values"][k] for k in ("due_remaining", "due_tenants", "lagging_orphans", "queue_due")} == {
        "due_remaining": 0, "due_tenants": 0, "lagging_orphans": 0, "queue_due": 0
    }, idle  # fmt: skip
    sweep_run = instance.get_run_record_by_id(latest.run_id)
    passed = wait_for(
        lambda: (
            (e := lag_check(port))
            and e["status"] in ("SUCCEEDED", "FAILED")
            and job_of(e) == LAG_CHECK_JOB_NAME
            and instance.get_run_record_by_id(e["runId"]).create_timestamp > sweep_run.create_timestamp
            and e
        ),
        "reconciliation_lag was not re-checked by the monitor's run after the sweep",
    )
    assert passed["status"] == "SUCCEEDED", passed
    sweeps = instance.get_run_records(RunsFilter(job_name="reconcile_due_tenants"))
    assert [r.dagster_run.run_id for r in sweeps if r.create_timestamp.timestamp() * 1000 < idle["at"]] == [
        r.run_id for r in scheduled
    ], "another sweep ran before the lag of 0 was plotted"

    # On the screen, once the monitor re-checked: the sweep asset's check reads "Passed".
    open_page(browser, f"{sweep_page}?view=checks", "reconciliation_lag")
    wait_for(lambda: browser.find_elements(By.XPATH, "//*[normalize-space(text())='Passed']"), "no 'Passed' status")
