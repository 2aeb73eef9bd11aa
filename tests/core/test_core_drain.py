"""``sweep_due_tenants``: the scheduled run's loop of bounded transactions under a time budget."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.reconciliation.drain import sweep_due_tenants, tenant_changed
from mailglass_pipeline.reconciliation.results import BUDGET, DRAINED, QUOTA
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.setting import Setting
from mailglass_pipeline.settings import BUDGET_SECONDS, DEFAULT_BUDGET_SECONDS, SweepConfig
from tests.core.core_support import statements_sent
from tests.factories import QUEUE, make_delivery, make_orphan, rows


def _attempts(engine: Engine) -> dict[int, int]:
    """How many queue rows have each attempt count."""
    return {int(a): int(n) for a, n in rows(engine, f"SELECT attempts, count(*) FROM {QUEUE} GROUP BY attempts")}


class Ticks:
    """A clock that moves ``step`` seconds each time it is read: a run's length without waiting for it."""

    def __init__(self, step: float) -> None:
        self._values = itertools.count(0.0, step)

    def __call__(self) -> float:
        return next(self._values)


def test_a_run_stops_after_its_budget_with_work_left_and_the_next_run_continues(engine: Engine) -> None:
    for i in range(50):
        make_orphan(engine, tenant_id=f"t{i:02d}", message_id=f"never-{i}", age=timedelta(minutes=10))
    config = SweepConfig(max_total=10)
    # Each transaction "takes" 1 s (two clock reads apart) and the budget is 4.5 s: two transactions
    # fit, a third would end past the budget, so the run stops there with 30 orphans still due.
    first = sweep_due_tenants(engine, 4.5, config, clock=Ticks(1.0))
    assert (first.transactions, first.stopped_by) == (2, BUDGET)
    assert (first.scanned, first.unmatched, first.due_remaining) == (20, 20, 30)
    assert first.tenants_swept == 20
    # A later run continues with the orphans not yet examined, never the examined ones (backoff).
    second = sweep_due_tenants(engine, 60, config)
    assert (second.transactions, second.scanned, second.stopped_by) == (3, 30, DRAINED)
    assert second.due_remaining == 0
    assert _attempts(engine) == {1: 50}


def test_the_first_transaction_always_runs_and_the_budget_is_wall_time(engine: Engine) -> None:
    for i in range(6):
        make_orphan(engine, tenant_id=f"t{i}", message_id=f"never-{i}", age=timedelta(minutes=10))
    result = sweep_due_tenants(engine, 0.001, SweepConfig(max_total=2))
    assert (result.transactions, result.scanned, result.stopped_by) == (1, 2, BUDGET)
    assert result.elapsed_seconds > 0


def test_limit_is_a_quota_per_run_not_per_transaction(engine: Engine) -> None:
    for i in range(10):
        make_orphan(engine, tenant_id="big", message_id=f"big-{i}", age=timedelta(minutes=10 + i))
    for i in range(2):
        make_orphan(engine, tenant_id="small", message_id=f"small-{i}", age=timedelta(minutes=10))
    result = sweep_due_tenants(engine, 60, SweepConfig(limit=3, max_total=2))
    assert {t: c["scanned"] for t, c in result.tenants.items()} == {"big": 3, "small": 2}
    assert result.stopped_by == QUOTA and result.due_remaining == 7
    # The next run gives "big" its next 3.
    assert sweep_due_tenants(engine, 60, SweepConfig(limit=3, max_total=2)).tenants["big"]["scanned"] == 3


def test_retry_all_examines_each_pending_orphan_once_per_run(engine: Engine) -> None:
    for i in range(5):
        make_orphan(engine, tenant_id=f"t{i}", message_id=f"never-{i}", age=timedelta(minutes=10))
    sweep_due_tenants(engine, 60, SweepConfig())
    assert _attempts(engine) == {1: 5}  # all in backoff now
    result = sweep_due_tenants(engine, 60, SweepConfig(max_total=2, retry_all=True))
    assert result.scanned == 5 and result.transactions == 4  # 2 + 2 + 1, then one that finds none
    assert _attempts(engine) == {2: 5}


def test_linkable_orphans_drain_first_then_the_rest_and_totals_add_up(engine: Engine) -> None:
    for i in range(30):
        make_orphan(engine, tenant_id=f"n{i:02d}", message_id=f"never-{i}", age=timedelta(minutes=30))
    for i in range(5):
        make_orphan(engine, tenant_id=f"l{i}", message_id=f"good-{i}", age=timedelta(minutes=2))
        make_delivery(engine, tenant_id=f"l{i}", message_id=f"good-{i}")
    seen: list[tuple[int, int]] = []
    result = sweep_due_tenants(
        engine, 60, SweepConfig(max_total=5), on_transaction=lambda part: seen.append((part.scanned, part.linked))
    )
    assert seen[0] == (5, 5)  # the first transaction links all five
    assert sum(s for s, _ in seen) == result.scanned == 35 and result.linked == 5
    assert result.stopped_by == DRAINED and result.remaining_orphans == 30
    changed = {t for t, counts in result.tenants.items() if tenant_changed(counts)}
    assert changed == {f"l{i}" for i in range(5)}


def test_newly_stale_and_malformed_are_changes_reexamination_is_not(engine: Engine) -> None:
    make_orphan(engine, tenant_id="stale", message_id="m-old", age=timedelta(minutes=30))
    make_orphan(engine, tenant_id="broken", message_id=None, age=timedelta(minutes=5))
    make_orphan(engine, tenant_id="waiting", message_id="never", age=timedelta(minutes=5))
    result = sweep_due_tenants(engine, 60, SweepConfig(max_age_minutes=20))
    assert result.tenants["stale"]["newly_stale"] == 1 and result.tenants["stale"]["scanned"] == 0
    assert result.tenants["broken"]["malformed"] == 1
    assert result.newly_stale == 1
    changed = {t for t, counts in result.tenants.items() if tenant_changed(counts)}
    assert changed == {"stale", "broken"}  # "waiting" was examined and stays unmatched: no change


def test_statement_count_per_run_does_not_grow_with_the_tenants(engine: Engine) -> None:
    counts = []
    for prefix, tenants in (("one-", 1), ("many-", 300)):
        for i in range(tenants):
            make_orphan(engine, tenant_id=f"{prefix}{i}", message_id=f"{prefix}never-{i}", age=timedelta(minutes=5))
        with statements_sent(engine) as seen:
            result = sweep_due_tenants(engine, 60, SweepConfig())
        assert (result.tenants_swept, result.transactions) == (tenants, 1)
        counts.append(len(seen))
        # Backoff is in ticks: an orphan examined just before a minute boundary is due again just after
        # it. Keep this round's orphans out of the next round whatever the clock does meanwhile.
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {QUEUE} SET next_attempt_at = now() + interval '1 hour'"))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 3601, True, "30"])
def test_bad_budgets_are_refused_before_any_write(engine: Engine, bad: object) -> None:
    make_orphan(engine, tenant_id="t", message_id="never", age=timedelta(minutes=5))
    with pytest.raises(ConfigurationError):
        sweep_due_tenants(engine, bad, SweepConfig())  # type: ignore[arg-type]
    assert _attempts(engine) == {0: 1}


def test_budget_from_the_environment() -> None:
    name = BUDGET_SECONDS.env
    assert BUDGET_SECONDS.read({}) == DEFAULT_BUDGET_SECONDS
    assert BUDGET_SECONDS.read({name: " 12.5 "}) == 12.5
    for bad in ("abc", "0", "-3", "nan", "99999"):
        with pytest.raises(ConfigurationError, match=name):
            BUDGET_SECONDS.read({name: bad})
    with pytest.raises(ConfigurationError, match=r" must be a number of seconds from 0\.001 to 3600, got 'abc'$"):
        BUDGET_SECONDS.read({name: "abc"})


def test_whole_numbers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operators' whole-number settings (lag threshold, parked retention) share the budget's reader."""
    name = "MAILGLASS_TEST_WHOLE_NUMBER"
    days = Setting("days", 30, 1, None, env=name, unit="days")
    monkeypatch.delenv(name, raising=False)
    assert days.read() == 30
    monkeypatch.setenv(name, " 7 ")
    assert days.read() == 7
    monkeypatch.setenv(name, "7.5")
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a whole number of days >= 1, got '7.5'$"):
        days.read()
    monkeypatch.setenv(name, "0")
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a whole number of days >= 1, got '0'$"):
        days.read()


def test_a_single_sweep_is_unchanged_by_the_run_bookkeeping(engine: Engine) -> None:
    make_orphan(engine, tenant_id="t", message_id="m", age=timedelta(minutes=5))
    make_delivery(engine, tenant_id="t", message_id="m")
    assert sweep(engine, None, SweepConfig()).linked == 1
