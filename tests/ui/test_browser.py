"""The Dagster UI in a real browser: Debian's chromium, driven by selenium, against a real ``mailglass dev``.

The operator's route: on the asset page, Materialize one tenant through the
dialog and see the run succeed; launch a backfill of all tenants; from the job's
Launchpad (Materialize caret -> "Open launchpad") launch a run with a changed
config; Materialize the sweep asset (every tenant in one run) from its page.
Then the run records show that no two reconciliation runs overlapped.
What the README and docs/operating.md say about these pages is checked on the
way: the backfill's runs name their tenant in the Runs list, the
`no_stale_orphans` check counts one tenant (3 demo orphans, not every
tenant's 9) and carries its table, the job's Partitions tab offers
Materialize…, and the log file `mailglass dev` wrote has no colour codes and
no code-server heartbeat noise.
``mailglass dev`` runs on the embedded PostgreSQL under a temporary
MAILGLASS_HOME, exactly as after a fresh clone. On failure, screenshots and the
page source go to ``$MAILGLASS_TEST_ARTIFACTS`` (default ``tests/ui/artifacts/``).
``MAILGLASS_UPDATE_SCREENSHOTS=1`` also writes the README's Partitions screenshot into ``docs/``
(the asset page's: ``test_browser_schedule.py``, after the quick start).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import mailglass_dev, run_checked

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("MAILGLASS_TEST_ARTIFACTS") or REPO / "tests" / "ui" / "artifacts")
TIMEOUT = 120.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian chromium"),
]


def wait_for(predicate: Callable[[], Any], message: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # the DOM changes under us while React renders
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(message)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """`mailglass demo` then `mailglass dev` on the embedded database of a temporary MAILGLASS_HOME."""
    with dev_after(tmp_path, "demo") as server:
        yield server


@contextlib.contextmanager
def dev_after(
    tmp_path: Path,
    command: str,
    before_dev: Callable[[dict[str, str]], None] | None = None,
    dev_env: dict[str, str] | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """`mailglass <command>` then `mailglass dev`, on the embedded database of a temporary MAILGLASS_HOME.

    ``before_dev(env)`` runs between the two (the embedded server is up); ``dev_env`` is added to
    `mailglass dev`'s environment only. Every stop is registered before the command that may start
    what it stops: ``mailglass demo`` and ``run`` start the embedded PostgreSQL, so one that fails
    half-way still has it stopped, and its stderr is in the failure (``run_checked``).
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGLASS_")}
    env.update({"MAILGLASS_HOME": str(tmp_path / "mailglass"), "DAGSTER_HOME": str(home)})
    mailglass = str(BIN / "mailglass")
    with contextlib.ExitStack() as cleanup:
        # Last to run: the embedded server outlives `mailglass dev` and `mailglass demo` by design.
        cleanup.callback(subprocess.run, [mailglass, "stop"], env=env, cwd=REPO, capture_output=True, timeout=60)
        run_checked([mailglass, command], env=env, cwd=REPO, timeout=300)
        if before_dev is not None:
            before_dev(env)
        env.update(dev_env or {})
        port = cleanup.enter_context(mailglass_dev(env, tmp_path, cwd=REPO, timeout=TIMEOUT))
        yield port, env


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    yield driver
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        stem = ARTIFACTS / f"{request.node.name}-{int(time.time())}"
        driver.save_screenshot(f"{stem}.png")
        Path(f"{stem}.html").write_text(driver.page_source)
        print(f"\nbrowser artifacts: {stem}.png, {stem}.html")
    driver.quit()


def dismiss_community_dialog(driver: Any) -> None:
    """Dagster shows a "Join the Dagster community" dialog on a fresh profile: Skip it when it appears."""
    quiet_until = time.monotonic() + 3
    while time.monotonic() < quiet_until:
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()
            quiet_until = time.monotonic() + 2
        time.sleep(0.3)


def button(driver: Any, text: str, scope: str = "") -> Any:
    return wait_for(
        lambda: next(
            b
            for b in driver.find_elements(By.XPATH, f"{scope}//button[contains(normalize-space(), '{text}')]")
            if b.is_displayed() and b.is_enabled()
        ),
        f"no enabled button {text!r}",
    )  # fmt: skip


def open_page(driver: Any, url: str, ready_text: str) -> None:
    driver.get(url)
    wait_for(lambda: driver.find_elements(By.XPATH, f"//*[contains(normalize-space(), '{ready_text}')]"), url)
    dismiss_community_dialog(driver)


# The launchpad's YAML editor is a CodeMirror 5 instance: the test types into it and reads it through its API.
_EDITOR = "[...document.querySelectorAll('[role=dialog] .CodeMirror')].find(e => e.offsetParent).CodeMirror"
GET_CONFIG = f"return {_EDITOR}.getValue();"
LIMIT_NUMBER = "//pre[starts-with(normalize-space(), 'limit:')]//span[normalize-space()='1000']"


def snapshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Path(ARTIFACTS / f"{name}.html").write_text(driver.page_source)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def readme_screenshot(driver: Any, url: str, name: str) -> None:
    """With MAILGLASS_UPDATE_SCREENSHOTS=1, refresh the README's screenshot ``docs/<name>`` from this page."""
    if os.environ.get("MAILGLASS_UPDATE_SCREENSHOTS") != "1":
        return
    open_page(driver, url, "Materialize")
    time.sleep(3)  # let the page's queries and charts settle: only the picture depends on it, no assertion
    driver.save_screenshot(str(REPO / "docs" / name))


def use_dev_instance(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    """The Dagster instance `mailglass dev` uses, read from this process: its DAGSTER_HOME and MAILGLASS_HOME,
    and the storage URL it exported to its children, resolved as it did (it was started without any other
    MAILGLASS_* variable, whatever this process has). monkeypatch undoes all of it after the test."""
    from dagster import DagsterInstance

    from mailglass_pipeline import db
    from mailglass_pipeline.dagster_devtools.dev import resolve_dagster_storage_url

    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv("MAILGLASS_HOME", env["MAILGLASS_HOME"])
    monkeypatch.delenv("MAILGLASS_DATABASE_URL", raising=False)
    monkeypatch.delenv("MAILGLASS_DAGSTER_DATABASE_URL", raising=False)  # before resolving: it reads this first
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", resolve_dagster_storage_url(db.embedded_server_url()))
    return DagsterInstance.get()


def test_asset_page_materialize_backfill_and_launchpad(
    dev_server, browser, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dagster import AssetKey, DagsterRunStatus

    port, env = dev_server
    base = f"http://127.0.0.1:{port}"
    instance = use_dev_instance(monkeypatch, env)
    wait_for(lambda: len(instance.get_dynamic_partitions("tenants")) == 3, "the sensor added no partitions")

    # 1. Asset page -> Materialize -> one partition -> Launch 1 run.
    open_page(browser, f"{base}/assets/mailglass/webhook_reconciliation", "Materialize")
    button(browser, "Materialize").click()
    dialog = "//*[@role='dialog']"
    wait_for(lambda: browser.find_elements(By.XPATH, dialog), "no Materialize dialog")
    snapshot(browser, "materialize-dialog")
    # "Custom" lists every tenant as a tag with a close icon: keep only acme.
    button(browser, "Custom", dialog).click()
    for other in ("globex", "initech"):
        close = f"{dialog}//*[normalize-space(text())='{other}']/ancestor::*[.//*[@aria-label='close']][1]"
        wait_for(lambda close=close: browser.find_element(By.XPATH, f"{close}//*[@aria-label='close']"), other).click()
        wait_for(lambda other=other: not browser.find_elements(By.XPATH, f"{dialog}//*[text()='{other}']"), other)
    button(browser, "Launch 1 run", dialog).click()
    run = wait_for(lambda: instance.get_runs(limit=1), "no run was created")[0]
    assert run.tags.get("dagster/partition") == "acme"
    finished = wait_for(lambda: (r := instance.get_run_by_id(run.run_id)).is_finished and r, "run did not finish")
    assert finished.status == DagsterRunStatus.SUCCESS

    # 2. A backfill of all partitions from the same dialog.
    open_page(browser, f"{base}/assets/mailglass/webhook_reconciliation", "Materialize")
    button(browser, "Materialize").click()
    button(browser, "All", dialog).click()
    button(browser, "Launch backfill", dialog).click()
    backfill_runs = wait_for(
        lambda: (
            (runs := [r for r in instance.get_runs() if r.tags.get("dagster/backfill")])
            and len(runs) == 3
            and all(r.is_finished for r in runs)
            and runs
        ),
        "the backfill did not finish 3 runs",
        timeout=300,
    )
    assert all(r.status == DagsterRunStatus.SUCCESS for r in backfill_runs)
    # Each backfill run names its tenant (README: "tagged mailglass/tenant=<tenant> in the Runs list").
    tagged = [instance.get_run_by_id(r.run_id).tags.get("mailglass/tenant") for r in backfill_runs]
    assert sorted(tagged) == ["acme", "globex", "initech"], tagged
    open_page(browser, f"{base}/runs", "Runs")
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[contains(normalize-space(text()), 'mailglass/tenant')]"),
        "the Runs list shows no mailglass/tenant tag",
    )
    # The stale-orphan check of a backfill run counts its own tenant: 3 (the demo's), not 9 (all tenants).
    open_page(browser, f"{base}/assets/mailglass/webhook_reconciliation?view=checks", "no_stale_orphans")
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[contains(normalize-space(), '3 orphan(s) older than 7 days')]"),
        "the Checks tab does not show the tenant's 3 stale orphans",
    )
    assert not browser.find_elements(By.XPATH, "//*[contains(normalize-space(), '9 orphan(s) older than 7 days')]")
    snapshot(browser, "checks-tab")
    # Its status per partition, as the page asks for it: each tenant's 3 stale orphans are a failed (WARN)
    # check, none reads "Skipped" (the asset backfill's runs now carry their partition key: decision D21).
    statuses = check_partition_statuses(port, "no_stale_orphans")
    assert sorted(statuses["failedPartitions"]) == ["acme", "globex", "initech"], statuses
    assert statuses["skippedPartitions"] == [] and statuses["succeededPartitions"] == [], statuses
    # On the screen: the check reads "Failed" with its latest execution's partition, never "Skipped"; its own
    # Partitions tab counts "Failed (3)".
    wait_for(lambda: browser.find_elements(By.XPATH, "//*[normalize-space(text())='Failed']"), "no 'Failed' status")
    assert browser.find_elements(By.XPATH, "//*[normalize-space(text())='Partition']")
    assert not browser.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), 'Skipped')]")
    wait_for(
        lambda: [e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Partitions']")
                 if e.is_displayed()][-1],
        "no Partitions tab in the check's pane",
    ).click()  # fmt: skip
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[contains(normalize-space(), 'Failed (3)')]"),
        "the check's Partitions tab does not count 3 failed partitions",
    )
    assert not browser.find_elements(By.XPATH, "//*[contains(normalize-space(), 'Skipped (3)')]")
    # A skipped tick's row (the partition sensor's here; the schedule's look the same): "0 runs requested".
    open_page(browser, f"{base}/locations/mailglass_pipeline/sensors/tenant_partitions", "tenant_partitions")
    wait_for(
        lambda: browser.find_elements(By.XPATH, "//*[contains(normalize-space(text()), '0 runs requested')]"),
        "a skipped tick does not read '0 runs requested' (README, docs/operating.md)",
    )
    partitions_page = f"{base}/assets/mailglass/webhook_reconciliation?view=partitions&partition=globex"
    readme_screenshot(browser, partitions_page, "ui-asset-partitions.png")

    # The job's Partitions tab offers Materialize… (README: the job's Partitions tab -> Materialize…).
    open_page(browser, f"{base}/locations/mailglass_pipeline/jobs/reconcile_orphans/partitions", "Materialize")

    # 3. The job's Launchpad: Materialize caret -> Open launchpad, limit 50, one tenant.
    before = {r.run_id for r in instance.get_runs()}
    open_page(browser, f"{base}/locations/mailglass_pipeline/jobs/reconcile_orphans", "Materialize")
    caret = wait_for(
        lambda: next(b for b in browser.find_elements(By.XPATH, "//button[.//*[@aria-label='arrow_drop_down']]")
                 if b.is_displayed()),
        "no Materialize caret",
    )  # fmt: skip
    caret.click()
    # The innermost element holding the text: an ancestor match would click the page itself.
    wait_for(
        lambda: next(
            e
            for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Open launchpad']")
            if e.is_displayed()
        ),
        "no 'Open launchpad' in the Materialize menu",
    ).click()
    wait_for(lambda: browser.find_elements(By.XPATH, f"{dialog}//*[contains(text(), 'Launchpad')]"), "no launchpad")
    snapshot(browser, "launchpad")
    partition = wait_for(
        lambda: next(
            e
            for e in browser.find_elements(By.XPATH, f"{dialog}//input[contains(@placeholder, 'artition')]")
            if e.is_displayed()
        ),
        "no partition picker in the launchpad",
    )
    partition.click()
    partition.send_keys("globex")
    wait_for(
        lambda: next(
            e
            for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='globex']")
            if e.is_displayed() and e.tag_name != "input"
        ),
        "globex is not offered as a partition",
    ).click()
    # Choosing the partition reloads its config into the editor (tags first): only then change the limit.
    tag = f"{dialog}//*[contains(normalize-space(), 'partition: globex')]"
    wait_for(lambda: browser.find_elements(By.XPATH, tag), "the launchpad did not take the globex partition")
    wait_for(lambda: "limit: 1000" in browser.execute_script(GET_CONFIG), "no partition config in the launchpad")

    def limit_is_50() -> bool:  # as the operator does: double-click the number, type the new one
        if "limit: 1000" in browser.execute_script(GET_CONFIG):
            number = browser.find_element(By.XPATH, f"{dialog}{LIMIT_NUMBER}")
            ActionChains(browser).double_click(number).send_keys("50").perform()
        return "limit: 50\n" in browser.execute_script(GET_CONFIG)

    wait_for(limit_is_50, "the launchpad config did not change")
    snapshot(browser, "launchpad-configured")
    button(browser, "Materialize", dialog).click()
    launched = wait_for(
        lambda: [r for r in instance.get_runs() if r.run_id not in before], "the launchpad created no run"
    )[0]
    assert launched.tags.get("dagster/partition") == "globex"
    assert launched.run_config["ops"]["mailglass__webhook_reconciliation"]["config"]["limit"] == 50
    finished = wait_for(lambda: (r := instance.get_run_by_id(launched.run_id)).is_finished and r, "run did not finish")
    assert finished.status == DagsterRunStatus.SUCCESS

    # 4. The sweep asset (one run for every tenant, not partitioned): its page's Materialize runs it at once.
    before = {r.run_id for r in instance.get_runs()}
    open_page(browser, f"{base}/assets/mailglass/reconciliation_sweep", "Materialize")
    button(browser, "Materialize").click()
    swept = wait_for(
        lambda: [r for r in instance.get_runs() if r.run_id not in before], "the sweep's Materialize created no run"
    )[0]
    assert swept.asset_selection == {AssetKey(["mailglass", "reconciliation_sweep"])}, swept.asset_selection
    finished = wait_for(lambda: (r := instance.get_run_by_id(swept.run_id)).is_finished and r, "run did not finish")
    assert finished.status == DagsterRunStatus.SUCCESS
    [sweep] = instance.fetch_materializations(AssetKey(["mailglass", "reconciliation_sweep"]), limit=1).records
    assert sweep.run_id == swept.run_id and "tenants_swept" in sweep.asset_materialization.metadata

    # 5. The pool held: no two of these runs (all of this test's) overlapped in time.
    ours = {run.run_id, launched.run_id, swept.run_id} | {r.run_id for r in backfill_runs}
    records = [r for r in instance.get_run_records() if r.dagster_run.run_id in ours]
    assert len(records) == 6 and all(r.start_time and r.end_time for r in records), records
    _no_overlap(records)

    # 6. The log file `mailglass dev` wrote: no colour codes, no code-server heartbeat noise (the daemon
    # reloads its workspace every minute; this test ran several).
    log = (tmp_path / "dev.log").read_text()
    assert "\x1b[" not in log and "No heartbeat received" not in log, log[-2000:]


CHECK_STATUSES = """
query CheckStatuses($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions skippedPartitions }
            }
          }
        }
      }
    }
  }
}
"""


def check_partition_statuses(port: int, check_name: str) -> dict[str, list[str]]:
    """A check's partition keys by status: the query behind the asset page's Checks and Partitions tabs."""
    from dagster_graphql import DagsterGraphQLClient

    from tests.dagster_private import execute_graphql

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    data = execute_graphql(client, CHECK_STATUSES, {"assetKey": {"path": ["mailglass", "webhook_reconciliation"]}})
    [check] = [c for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"] if c["name"] == check_name]
    return check["partitionStatuses"]


def _no_overlap(records: list[Any]) -> None:
    ordered = sorted(records, key=lambda r: r.start_time)
    for a, b in itertools.pairwise(ordered):
        assert a.end_time is not None and a.end_time <= b.start_time, (a.dagster_run.run_id, b.dagster_run.run_id)
