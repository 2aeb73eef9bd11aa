"""After the README's quick start, the schedule: what the asset page says in a real browser (Chromium).

The quick start (`mailglass run`: the demo, one run per tenant) leaves each demo tenant with 3 stale
orphans, so `no_stale_orphans` fails (a warning) for all three, and the asset page's latest
materialization is the last tenant run, `initech` (README). Then a linkable orphan arrives for `acme`
and the schedule is turned on through the mutation its toggle sends: the next tick's sweep links it and
materializes acme's partition. The check must still read acme's real outcome (decision D31): "Failed"
per partition and overall, through the GraphQL the Checks tab sends and on the screen, never "Missing".
``MAILGLASS_UPDATE_SCREENSHOTS=1`` writes the README's asset-page picture from the quick start's state.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.test_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    check_partition_statuses,
    open_page,
    readme_screenshot,
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


def _graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    from dagster_graphql import DagsterGraphQLClient

    from tests.dagster_private import execute_graphql

    return execute_graphql(DagsterGraphQLClient("127.0.0.1", port_number=port), query, variables)


def test_check_status_after_the_quick_start_and_a_scheduled_sweep(
    quick_start_server,
    browser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

    from mailglass_pipeline import db
    from mailglass_pipeline.dagster_devtools.dev import resolve_dagster_storage_url
    from tests.factories import fetch, make_delivery, make_orphan

    port, env = quick_start_server
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv("MAILGLASS_HOME", env["MAILGLASS_HOME"])
    monkeypatch.delenv("MAILGLASS_DATABASE_URL", raising=False)
    monkeypatch.delenv("MAILGLASS_DAGSTER_DATABASE_URL", raising=False)
    app_url = db.embedded_server_url()
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", resolve_dagster_storage_url(app_url))
    instance = DagsterInstance.get()
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

    # A webhook for acme whose delivery committed: the schedule's next tick links it.
    engine = db.get_engine(app_url)
    make_delivery(engine, tenant_id="acme", message_id="browser-late-1")
    make_orphan(engine, tenant_id="acme", message_id="browser-late-1")
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
