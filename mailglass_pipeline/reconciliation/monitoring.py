"""The read queries behind the schedule, the sensor and the asset checks (``sql/monitoring.sql``).

Each reads index ranges of the queue, or walks an index, so its cost follows
the due orphans or the tenants, never the ledger's history
(tests/perf/test_query_plans.py pins the plans).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from mailglass_pipeline.queries import statement
from mailglass_pipeline.reconciliation.results import DueSummary, LagSummary
from mailglass_pipeline.settings import DEFAULT_GRACE_SECONDS, DEFAULT_MAX_AGE_MINUTES


def _read(conn: Connection, name: str, params: dict[str, Any]) -> Any:
    conn.execute(statement("custom_plans"))
    return conn.execute(statement(name), params)


def _due_params(grace_seconds: int, max_age_minutes: int, tenant_id: str | None = None) -> dict[str, Any]:
    # The due rule as the scheduled sweep applies it: every tenant (or one), the backoff respected.
    return {
        "grace_seconds": grace_seconds,
        "max_age_minutes": max_age_minutes,
        "tenant_id": tenant_id,
        "retry_all": False,
        "run_started": None,
    }


def due_summary(
    conn: Connection,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> DueSummary:
    """Tenants and orphans due now, and how long the longest-waiting one has been due.

    One statement over two partial indexes that hold only fresh and retry
    rows: its cost follows the due orphans, not the tenants or the history.
    """
    row = _read(conn, "due_summary", _due_params(grace_seconds, max_age_minutes)).one()
    return DueSummary(int(row.tenants), int(row.orphans), float(row.oldest) if row.oldest is not None else None)


def tenants_with_due_orphans(
    conn: Connection,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> list[str]:
    """Tenants with at least one orphan a sweep would examine now: one query."""
    return [row[0] for row in _read(conn, "due_tenants", _due_params(grace_seconds, max_age_minutes))]


def reconciliation_lag(
    conn: Connection,
    tenant_id: str | None = None,
    threshold_seconds: float = 300,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> LagSummary:
    """Pending orphans linkable now (past grace, delivery committed) waiting longer than the threshold.

    The wait runs from when the orphan became linkable:
    ``GREATEST(linkable_at, orphan_inserted_at + grace)``.
    """
    params = {**_due_params(grace_seconds, max_age_minutes, tenant_id), "threshold_seconds": float(threshold_seconds)}
    row = _read(conn, "reconciliation_lag", params).one()
    return LagSummary(int(row.n), float(row.longest) if row.longest is not None else None)


def known_tenants(conn: Connection) -> list[str]:
    """Every tenant with a delivery or a queued orphan."""
    return [row[0] for row in conn.execute(statement("known_tenants"))]


def stale_orphans(
    conn: Connection, tenant_id: str | None = None, max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES
) -> tuple[int, float | None]:
    """Orphans past max age still unreconciled: (count, age in seconds of the oldest)."""
    row = _read(conn, "stale_orphans", {"tenant_id": tenant_id, "max_age_minutes": max_age_minutes}).one()
    return int(row.n), (float(row.oldest) if row.oldest is not None else None)
