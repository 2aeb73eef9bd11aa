"""``sweep_due_tenants``: drain the due backlog within a time budget, what one scheduled run does.

The scheduled job ``reconcile_due_tenants`` (``defs/scheduled_sweep/``) runs it through its op ``sweep_due_tenants``.

Why a loop of short transactions. One sweep transaction is bounded by
``max_total`` so that it holds its row locks for a second or two, not for the
whole run; but a cap per *run* wastes the tick whenever a burst is larger than
the cap (a daemon down for an hour, a first adoption of a Mailglass database
with a backlog): the sweep drains 5,000 to 9,000 orphans a second and then
sits idle until the next minute. :func:`sweep_due_tenants` therefore runs bounded
sweep transactions (:func:`sweep.sweep`, all tenants, each committed
before the next starts) until the time budget is spent or nothing is due.

Rules kept across the transactions of one run:

* ``limit`` stays a quota per tenant per *run*: each transaction is told what
  every tenant already had examined (``RunProgress.used``), so one tenant's
  backlog still waits for the next run once it had its share.
* Linkable first, globally: inside every transaction the cap goes first to
  orphans whose delivery is known to exist, across all tenants and fairly
  shared, then to the other due orphans; the loop then spends the rest of
  the budget on never-matching fresh orphans and retries, so every orphan is
  examined within its first few ticks.
* An examined orphan is not due again inside the run (its backoff is at least
  a minute, longer than the budget); with ``retry_all`` the run's start time
  keeps each orphan to one examination per run.
* One run at a time is the Dagster layer's rule (pool limit 1); transactions
  lock ``SKIP LOCKED``, so a concurrent manual sweep still takes other orphans.

The budget: ``DEFAULT_BUDGET_SECONDS`` (30 s of the 60 s tick), overridable by
``MAILGLASS_SWEEP_BUDGET_SECONDS`` or the job's config. A run also spends about
5 s starting and a few seconds recording its events, so 30 s leaves the run
finished before the next tick. A transaction is started only when the time
the previous one took still fits in the budget, so the budget is not overrun
by more than one transaction's variance.

What changed, per tenant (:func:`tenant_changed`): an orphan linked, newly
malformed (parked at its first examination) or newly stale (parked past max
age). Re-examining orphans that stay unmatched is not a change: it shows in
the run's totals, not as a tenant event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from sqlalchemy.engine import Engine

from mailglass_pipeline import db
from mailglass_pipeline.queries import statement
from mailglass_pipeline.reconciliation.results import BUDGET, DRAINED, QUOTA, DrainResult, RunProgress, SweepResult
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import BUDGET_SECONDS, DEFAULT_BUDGET_SECONDS, SweepConfig

#: Counts summed over the transactions of a run; the backlog ones are taken from the latest.
_SUMMED = ("scanned", "linked", "unmatched", "malformed", "already_reconciled", "newly_stale")
_LATEST = ("remaining_orphans", "stale_orphans")


def tenant_changed(counts: Mapping[str, int]) -> bool:
    """Whether something happened to the tenant: linked, newly malformed or newly stale (parked)."""
    return any(counts.get(key, 0) > 0 for key in ("linked", "malformed", "newly_stale"))


def _merge(total: DrainResult, part: SweepResult) -> None:
    for tenant, counts in part.tenants.items():
        mine = total.tenants.setdefault(tenant, dict.fromkeys(_SUMMED + _LATEST, 0))
        for key in _SUMMED:
            mine[key] += counts.get(key, 0)
        for key in _LATEST:
            mine[key] = counts.get(key, 0)
    for key in _SUMMED:
        setattr(total, key, getattr(total, key) + getattr(part, key))
    total.remaining_orphans = part.remaining_orphans
    total.stale_orphans = part.stale_orphans
    total.due_remaining = part.due_remaining
    total.oldest_due_age_seconds = part.oldest_due_age_seconds
    lags = [v for v in (total.lag_seconds, part.lag_seconds) if v is not None]
    total.lag_seconds = max(lags) if lags else None


def sweep_due_tenants(
    engine: Engine,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    config: SweepConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_transaction: Callable[[SweepResult], None] | None = None,
) -> DrainResult:
    """All-tenant sweep transactions until ``budget_seconds`` is spent or nothing is due.

    Each transaction examines at most ``config.max_total`` orphans (linkable
    ones first, across tenants); a tenant gets at most ``config.limit`` in
    the whole run. ``on_transaction`` is called after each commit (progress
    logging). Arguments are validated before the database is touched.
    """
    budget = BUDGET_SECONDS.check(budget_seconds)
    config = config or SweepConfig()
    run = RunProgress()
    if config.retry_all:
        # The database's clock, as the examinations record it: one statement per run, not per tenant.
        with db.connect(engine) as conn:
            run.started = conn.execute(statement("run_started")).scalar_one()
    total = DrainResult(budget_seconds=budget)
    start = clock()
    while True:
        began = clock()
        part = sweep(engine, None, config, run=run)
        took = clock() - began
        total.transactions += 1
        _merge(total, part)
        for tenant, counts in part.tenants.items():
            if counts.get("scanned", 0):
                run.used[tenant] = run.used.get(tenant, 0) + counts["scanned"]
        if on_transaction is not None:
            on_transaction(part)
        if part.scanned == 0:
            total.stopped_by = QUOTA if part.due_remaining and not config.retry_all else DRAINED
            break
        if part.due_remaining == 0 and not config.retry_all:
            total.stopped_by = DRAINED
            break
        if clock() - start + took > budget:
            total.stopped_by = BUDGET
            break
    total.tenants_swept = sum(1 for counts in total.tenants.values() if counts["scanned"] > 0)
    total.elapsed_seconds = clock() - start
    return total
