"""Sensor ``reconciliation_monitor``: the lag and the queue as they are now, each minute, without a run.

A scheduled sweep records ``lag_seconds`` and the queue on ``mailglass/reconciliation_sweep`` only when it
runs, and a tick with nothing due launches none: the Plots then drew a straight line from the last sweep's
values to the next sweep's, a fall that never happened (issue 24). So each minute this sensor reads the
current state (``due_summary``, ``reconciliation_lag`` and the queue totals: index reads) and records an
``AssetObservation`` of that asset with the same metadata keys, which its Plots draw beside the sweeps'
(decision D22).

What it writes: one event when something is due or waiting, or when a value changed since its last
record (its cursor); an idle instance writes nothing. Never one per tenant.

The check ``reconciliation_lag``: when its outcome (pass or warn) differs from the one the sensor last
saw, the sensor requests ONE run of the check alone (job ``check_reconciliation_lag``), so the check's
status follows the current state; a run per change of outcome, never per minute. The sensor does not
report the evaluation itself: Dagster keys a check execution row by (check, run id, partition) and
every runless evaluation has run id "", so each would update the first one's row in place, and that
row's old id is never again the latest once a run evaluated the check
(``SqlEventLogStorage._update_asset_check_evaluation``, ``get_asset_check_execution_history``).
"""

from __future__ import annotations

import json
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetObservation,
    AssetSelection,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from mailglass_pipeline import db, orphans
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.assets import SWEEP_KEY
from mailglass_pipeline.defs.scheduled_sweep.checks import default_lag_threshold
from mailglass_pipeline.reconciliation import monitoring

MONITOR_INTERVAL_SECONDS = 60
LAG_CHECK_KEY = AssetCheckKey(SWEEP_KEY, "reconciliation_lag")
LAG_CHECK_JOB_NAME = "check_reconciliation_lag"

check_reconciliation_lag = define_asset_job(
    name=LAG_CHECK_JOB_NAME,
    selection=AssetSelection.checks(LAG_CHECK_KEY),
    description="The reconciliation_lag check alone (requested by reconciliation_monitor when its outcome changes).",
)


def current_state(mailglass_db: MailglassDatabase, threshold: int) -> dict[str, Any]:
    """The lag, the due orphans and the queue by state now, as plottable numbers."""
    with db.connect(mailglass_db.get_engine()) as conn:
        due = monitoring.due_summary(conn)
        waiting = monitoring.reconciliation_lag(conn, None, 0)  # every linkable orphan: the current lag
        lagging = monitoring.reconciliation_lag(conn, None, threshold)
        totals = orphans.totals_by_state(conn)
    return {
        "lag_seconds": round(waiting.longest_wait_seconds or 0.0, 1),
        "due_remaining": due.orphans,
        "due_tenants": due.tenants,
        "oldest_due_age_seconds": round(due.oldest_due_age_seconds or 0.0, 1),
        "lagging_orphans": lagging.count,
        **{f"queue_{state}": n for state, n in totals.items()},
    }


def _quiet(state: dict[str, Any]) -> bool:
    return not (state["lag_seconds"] or state["due_remaining"] or state["lagging_orphans"])


@sensor(
    name="reconciliation_monitor",
    job=check_reconciliation_lag,
    minimum_interval_seconds=MONITOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Each minute: records the current lag, due orphans and queue on mailglass/reconciliation_sweep (when "
        "anything is due or changed) and re-runs the reconciliation_lag check when its outcome changes. No sweep."
    ),
)
def reconciliation_monitor(
    context: SensorEvaluationContext, mailglass_db: MailglassDatabase
) -> SensorResult | SkipReason:
    threshold = default_lag_threshold()
    state = current_state(mailglass_db, threshold)
    last = json.loads(context.cursor) if context.cursor else {}
    last_state, last_passed = last.get("state"), last.get("passed", True)  # no news so far is good news
    passed = state["lagging_orphans"] == 0
    record = not (_quiet(state) and state == last_state)
    events = [AssetObservation(asset_key=SWEEP_KEY, metadata=state, description="current state (no sweep)")]
    run_requests = [] if passed == last_passed else [RunRequest(run_key=None)]
    said = (
        f"lag {state['lag_seconds']} s, {state['due_remaining']} due in {state['due_tenants']} tenant(s), "
        f"{state['lagging_orphans']} waiting past {threshold} s"
    )
    reason = f"{said}: {'recorded' if record else 'unchanged, idle: not recorded'}"
    if run_requests:
        reason += f"; reconciliation_lag now {'passes' if passed else 'warns'}: re-checked"
    return SensorResult(
        run_requests=run_requests,
        asset_events=events if record else [],
        cursor=json.dumps({"state": state, "passed": passed}),
        skip_reason=None if run_requests else SkipReason(reason),
    )
