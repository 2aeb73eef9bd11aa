"""Reconciliation: link orphan webhook events to the deliveries that committed after them.

Follow an orphan one module at a time:

* ``settings``: what a sweep may do, each setting defined once (defaults, bounds, the backoff);
* ``sweep``: find the due orphans, link them, write the outcome (``sql/sweep.sql``);
* ``drain``: a scheduled run's loop of bounded sweep transactions under a time budget;
* ``monitoring``: the reads behind the schedule, the sensor and the checks (``sql/monitoring.sql``);
* ``results``: what they report;
* ``statements``: the package's SQL, registered in :mod:`mailglass_pipeline.queries`.

The names below are the public API (``mailglass_pipeline.reconciler`` re-exports them).
"""

from mailglass_pipeline.reconcile.drain import sweep_until, tenant_changed
from mailglass_pipeline.reconcile.monitoring import (
    backlog,
    due_summary,
    known_tenants,
    reconciliation_lag,
    stale_orphans,
    tenants_with_due_orphans,
)
from mailglass_pipeline.reconcile.results import DrainResult, DueSummary, LagSummary, RunProgress, SweepResult
from mailglass_pipeline.reconcile.settings import (
    BACKOFF_CAP_MINUTES,
    BACKOFF_MINUTES,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_LIMIT,
    DEFAULT_MAX_AGE_MINUTES,
    DEFAULT_MAX_TOTAL,
    STALE_MESSAGE,
    SweepConfig,
    validate_tenant_id,
)
from mailglass_pipeline.reconcile.sweep import (
    ORPHAN_COLUMNS,
    append_reconciled_events,
    attempt_link,
    find_orphans,
    reconcile,
    sweep,
)

__all__ = [
    "BACKOFF_CAP_MINUTES",
    "BACKOFF_MINUTES",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_LIMIT",
    "DEFAULT_MAX_AGE_MINUTES",
    "DEFAULT_MAX_TOTAL",
    "ORPHAN_COLUMNS",
    "STALE_MESSAGE",
    "DrainResult",
    "DueSummary",
    "LagSummary",
    "RunProgress",
    "SweepConfig",
    "SweepResult",
    "append_reconciled_events",
    "attempt_link",
    "backlog",
    "due_summary",
    "find_orphans",
    "known_tenants",
    "reconcile",
    "reconciliation_lag",
    "stale_orphans",
    "sweep",
    "sweep_until",
    "tenant_changed",
    "tenants_with_due_orphans",
    "validate_tenant_id",
]
