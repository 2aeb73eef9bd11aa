"""What a sweep, a run of sweeps and the monitoring reads report: plain records, no database access."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from mailglass_pipeline.settings import DEFAULT_BUDGET_SECONDS

#: Why a run stopped.
DRAINED = "drained"  # nothing due any more
QUOTA = "quota"  # what is still due belongs to tenants that used their per-run limit (or is locked)
BUDGET = "budget"  # the time budget was spent with due work left


@dataclass
class SweepResult:
    """Counts of one sweep, overall and per tenant.

    ``scanned`` .. ``already_reconciled`` count this sweep's examinations;
    ``remaining_orphans`` and ``stale_orphans`` are the backlog left in scope
    (the tenant, or every tenant) after it. ``tenants`` holds the per-tenant
    counts (same keys) of the tenants examined in this sweep, or with
    orphans it parked as stale (``newly_stale``), never all tenants (a
    tenant-scoped sweep: that tenant, always). ``tenants_swept``:
    how many tenants had an orphan examined. ``due_remaining``: orphans still
    due in scope after the sweep (left by the caps). ``oldest_due_age_seconds``:
    how long the longest-waiting of those has been due. ``lag_seconds``: the
    longest time an orphan linked by this sweep, or still linkable and
    pending after it, had waited since it became linkable (past grace, its
    delivery committed); None when there was none.
    """

    scanned: int = 0
    linked: int = 0
    unmatched: int = 0
    malformed: int = 0
    already_reconciled: int = 0
    newly_stale: int = 0
    remaining_orphans: int = 0
    stale_orphans: int = 0
    tenant_id: str | None = None
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    tenants_swept: int = 0
    due_remaining: int = 0
    oldest_due_age_seconds: float | None = None
    lag_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DrainResult(SweepResult):
    """A run's totals: :class:`SweepResult` summed over its transactions, and how it ended.

    ``tenants`` holds each touched tenant's counts summed over the run, with
    its backlog as the last transaction that touched it saw it.
    ``stopped_by``: ``drained``, ``quota`` or ``budget``.
    """

    transactions: int = 0
    elapsed_seconds: float = 0.0
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    stopped_by: str = DRAINED


@dataclass
class RunProgress:
    """A run of several sweep transactions so far: when it started (database clock) and the orphans
    each tenant had examined. Keeps ``limit`` a quota per run and ``retry_all`` once per orphan per run."""

    started: datetime | None = None
    used: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DueSummary:
    """What the schedule's tick asks before launching a sweep."""

    tenants: int
    orphans: int
    oldest_due_age_seconds: float | None


@dataclass(frozen=True)
class LagSummary:
    """Linkable orphans still pending beyond the threshold."""

    count: int
    longest_wait_seconds: float | None
