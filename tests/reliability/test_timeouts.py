"""Item 6: a stuck lock cannot hang a minute job; the sweep gives up and loses nothing.

Another session holds a lock the sweep needs (a delivery row ``FOR UPDATE``,
as an application transaction left open would, or a whole table, as a
migration would). The sweep must fail within its ``lock_timeout`` /
``statement_timeout`` (not hang), roll back everything it did, and the next
sweep after the lock is released must finish the work.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline.db import sqlstate_of
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import fetch, make_delivery, make_orphan
from tests.processes import MAILGLASS

#: Past this a sweep counts as hung: the lock is released so the test ends (and fails).
HANG_LIMIT_S = 10


@contextmanager
def holding(engine: Engine, sql: str, **params: object) -> Iterator[Connection]:
    """Run ``sql`` in an open transaction on its own connection, held until the block ends."""
    with engine.connect() as conn:
        tx = conn.begin()
        conn.execute(sa.text(sql), params)
        try:
            yield conn
        finally:
            tx.rollback()


def _state(engine: Engine) -> tuple[int, list[tuple[object, ...]], list[tuple[object, ...]]]:
    reconciled = fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type = 'reconciled'")[0].n
    queue = fetch(engine, "SELECT event_id, attempts, last_attempted_at, parked_at FROM mailglass_reconciliation_queue")
    deliveries = fetch(engine, "SELECT id, lock_version, last_event_type, delivered_at FROM mailglass_deliveries")
    return reconciled, sorted(map(tuple, queue)), sorted(map(tuple, deliveries))


def _seed(engine: Engine, n: int = 5) -> list[object]:
    ids = []
    for i in range(n):
        make_orphan(engine, tenant_id="t1", message_id=f"m-{i}")
        ids.append(make_delivery(engine, tenant_id="t1", message_id=f"m-{i}"))
    make_orphan(engine, tenant_id="t1", message_id="m-nobody")  # unmatched: its attempt bookkeeping must roll back too
    return ids


@pytest.mark.parametrize(
    ("lock_sql", "config", "sqlstate"),
    [
        pytest.param(
            "SELECT 1 FROM mailglass_deliveries WHERE id = :id FOR UPDATE",
            SweepConfig(grace_seconds=0, lock_timeout_ms=300),
            "55P03",
            id="row-lock-timeout",
        ),
        pytest.param(
            "LOCK TABLE mailglass_deliveries IN ACCESS EXCLUSIVE MODE",
            SweepConfig(grace_seconds=0, lock_timeout_ms=300),
            "55P03",
            id="table-lock-timeout",
        ),
        pytest.param(
            "SELECT 1 FROM mailglass_deliveries WHERE id = :id FOR UPDATE",
            SweepConfig(grace_seconds=0, lock_timeout_ms=60_000, statement_timeout_ms=300),
            "57014",
            id="statement-timeout",
        ),
    ],
)
def test_locked_delivery_makes_sweep_give_up_then_next_sweep_finishes(
    engine: Engine, lock_sql: str, config: SweepConfig, sqlstate: str
) -> None:
    ids = _seed(engine)
    before = _state(engine)
    # The sweep runs in a thread so that, if the timeout were not applied, the test fails
    # (after releasing the lock) instead of hanging with it.
    with ThreadPoolExecutor(1) as pool:
        with holding(engine, lock_sql, id=ids[2]):
            started = time.monotonic()
            future = pool.submit(sweep, engine, "t1", config)
            try:
                error = future.exception(timeout=HANG_LIMIT_S)
            except FuturesTimeout:
                error = None
            elapsed = time.monotonic() - started
        assert elapsed < 1.5, f"sweep waited {elapsed:.2f}s on a lock"
        assert isinstance(error, sa.exc.OperationalError), error
        assert sqlstate_of(error) == sqlstate
    # Read after the holder let go (its lock may block readers): nothing half-written,
    # not even the attempt bookkeeping of the unmatched orphan.
    assert _state(engine) == before
    result = sweep(engine, "t1", config)
    assert (result.scanned, result.linked, result.unmatched) == (6, 5, 1)
    linked = fetch(engine, "SELECT count(*) AS n FROM mailglass_deliveries WHERE delivered_at IS NOT NULL")
    assert linked[0].n == 5


def test_locked_queue_rows_are_skipped_not_waited_for(engine: Engine) -> None:
    """A concurrent sweep holding some queue rows: this sweep takes the others immediately."""
    _seed(engine, 4)
    with holding(
        engine,
        "SELECT 1 FROM mailglass_reconciliation_queue ORDER BY orphan_inserted_at LIMIT 2 FOR UPDATE",
    ):
        started = time.monotonic()
        first = sweep(engine, "t1", SweepConfig(grace_seconds=0, lock_timeout_ms=300))
        assert time.monotonic() - started < 1.0
        assert first.scanned == 3
    rest = sweep(engine, "t1", SweepConfig(grace_seconds=0))
    assert first.linked + rest.linked == 4
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_reconciliation_queue")[0].n == 1


def test_cli_gives_up_on_a_stuck_lock_with_one_line(engine: Engine, database_url: str) -> None:
    """The CLI's default lock timeout (5 s) bounds a run against a lock held forever."""
    ids = _seed(engine, 2)
    before = _state(engine)
    with holding(engine, "SELECT 1 FROM mailglass_deliveries WHERE id = :id FOR UPDATE", id=ids[0]):
        started = time.monotonic()
        proc = subprocess.run(
            [MAILGLASS, "reconcile", "--tenant-id", "t1", "--grace-seconds", "0"],
            env={**os.environ, "MAILGLASS_DATABASE_URL": database_url},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mailglass: database error:") and "lock timeout" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    # 5 s lock timeout plus the CLI's start-up, which takes several seconds on a loaded 2-core machine;
    # a CLI that waited on the lock would run into the 60 s subprocess timeout instead.
    assert elapsed < 5 + 25, elapsed
    assert _state(engine) == before
