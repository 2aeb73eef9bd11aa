"""Item 1: a sweep killed mid-transaction leaves all of its batch or none of it.

A large batch (one transaction of ~17k orphans) is swept by the real
``mailglass reconcile`` process. Once its transaction has written (its
``reconciled`` events are in and it waits to lock the deliveries it linked,
one of which the test holds, so the moment does not depend on the sweep's speed), the
process is killed with SIGKILL, or its backend is terminated with
``pg_terminate_backend``. Then: the ledger holds 0 or all of the batch's
``reconciled`` events, the queue and projections agree with that, the next
sweep completes, and the final state equals an uninterrupted run's on a twin
database holding the same rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.databases import create_database, drop_database, with_database
from tests.processes import MAILGLASS
from tests.reliability import bulk_support

pytestmark = pytest.mark.slow

TENANT = "crash"
N = int(os.environ.get("MAILGLASS_CRASH_ROWS", "15000"))
BATCH = N + N // 7 + 500  # every orphan in one batch, one transaction
#: Statements the sweep runs after its INSERT of reconciled events.
AFTER_INSERT = (
    "FOR NO KEY UPDATE",
    "mailglass_deliveries WHERE id = ANY",
    "UPDATE mailglass_deliveries",
    "pg_notify",
    "parked_at",
)


@pytest.fixture(scope="module")
def base_time() -> datetime:
    return datetime.now(UTC)


def _new_database(admin_url: str, admin_engine: Engine, template: str) -> tuple[str, str]:
    name = f"mg_crash_{uuid.uuid4().hex[:10]}"
    create_database(admin_engine, name, template=template)
    return name, with_database(admin_url, name)


@pytest.fixture(scope="module")
def expected(admin_url: str, admin_engine: Engine, template_database: str, base_time: datetime) -> Iterator[Any]:
    """The uninterrupted run: same rows, one sweep, on a twin database."""
    name, url = _new_database(admin_url, admin_engine, template_database)
    engine = create_engine(url)
    try:
        bulk_support.seed(engine, TENANT, N, base_time)
        result = sweep(engine, TENANT, SweepConfig(limit=BATCH, max_total=BATCH, grace_seconds=0))
        assert (result.scanned, result.linked, result.unmatched) == (BATCH, BATCH - 500, 500)
        yield bulk_support.snapshot(engine, TENANT)
    finally:
        engine.dispose()
        drop_database(admin_engine, name)


@pytest.fixture
def crash_db(admin_url: str, admin_engine: Engine, template_database: str, base_time: datetime) -> Iterator[Any]:
    name, url = _new_database(admin_url, admin_engine, template_database)
    engine = create_engine(url)
    bulk_support.seed(engine, TENANT, N, base_time)
    yield name, url, engine
    engine.dispose()
    drop_database(admin_engine, name)


def _start_sweep(url: str) -> subprocess.Popen[str]:
    # The whole batch in one transaction: max_total (10,000 by default) must not split it.
    one_batch = ["--batch-size", str(BATCH), "--max-total", str(BATCH)]
    return subprocess.Popen(
        [MAILGLASS, "reconcile", "--tenant-id", TENANT, "--grace-seconds", "0", *one_batch],
        env={**os.environ, "MAILGLASS_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _backend(admin_engine: Engine, database: str) -> Any:
    with admin_engine.connect() as conn:
        return conn.execute(
            sa.text(
                """
                SELECT pid, state, backend_xid IS NOT NULL AS wrote, query FROM pg_stat_activity
                 WHERE datname = :db AND application_name = 'mailglass'
                   AND state IN ('active', 'idle in transaction')
                """
            ),
            {"db": database},
        ).first()


@contextmanager
def _holding_a_delivery(url: str) -> Iterator[None]:
    """Hold the tenant's last delivery (by id) locked: the sweep, having written, waits to lock it.

    NO KEY UPDATE, the sweep's own lock: a stronger one would also stop the write's reconciled events,
    whose foreign key takes KEY SHARE on the delivery, before anything is written.

    The sweep locks the deliveries it linked in id order right after its write statement, so it stops
    there, its transaction open and written, until this lock goes: a deterministic moment to kill it,
    however fast the sweep is.
    """
    # Its own application_name: the test looks for the sweep's backend by the product's name.
    holder = create_engine(url, connect_args={"application_name": "crash-test-holder"})
    try:
        with holder.connect() as conn:
            last = "SELECT id FROM mailglass_deliveries WHERE tenant_id = :t ORDER BY id DESC LIMIT 1"
            conn.execute(sa.text(last + " FOR NO KEY UPDATE"), {"t": TENANT})
            try:
                yield
            finally:
                conn.rollback()
    finally:
        holder.dispose()


def _wait_until_written(admin_engine: Engine, database: str, proc: subprocess.Popen[str]) -> int:
    """The sweep's backend pid once its transaction has inserted the batch and moved past it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = _backend(admin_engine, database)
        if row is not None and row.wrote and any(marker in row.query for marker in AFTER_INSERT):
            return int(row.pid)
        if proc.poll() is not None:
            pytest.fail(f"sweep finished before it could be interrupted: {proc.communicate()}")
        time.sleep(0.005)
    pytest.fail("sweep never reached its projection step")


def _wait_backend_gone(admin_engine: Engine, pid: int) -> None:
    deadline = time.monotonic() + 120
    with admin_engine.connect() as conn:
        while conn.execute(sa.text("SELECT 1 FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).first():
            assert time.monotonic() < deadline, "backend of the killed sweep never ended"
            time.sleep(0.05)


def _assert_all_or_nothing(engine: Engine) -> int:
    """0 or the whole batch, and the queue and projections say the same."""
    count = bulk_support.reconciled_count(engine, TENANT)
    assert count in (0, BATCH - 500), f"partial batch: {count} reconciled events"
    with engine.connect() as conn:
        queued = conn.execute(sa.text("SELECT count(*) FROM mailglass_reconciliation_queue")).scalar_one()
        projected = conn.execute(
            sa.text("SELECT count(*) FROM mailglass_deliveries WHERE lock_version > 1")
        ).scalar_one()
    if count == 0:
        assert (queued, projected) == (BATCH, 0)
    else:
        assert (queued, projected) == (500, N)
    return count


def _finish_and_compare(url: str, engine: Engine, expected: Any, already: int) -> None:
    proc = _start_sweep(url)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["linked"] == BATCH - 500 - already
    assert bulk_support.snapshot(engine, TENANT) == expected


def test_kill_9_mid_sweep_keeps_all_or_nothing(crash_db: Any, admin_engine: Engine, expected: Any) -> None:
    name, url, engine = crash_db
    with _holding_a_delivery(url):
        proc = _start_sweep(url)
        pid = _wait_until_written(admin_engine, name, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    _wait_backend_gone(admin_engine, pid)
    already = _assert_all_or_nothing(engine)
    _finish_and_compare(url, engine, expected, already)


def test_pg_terminate_backend_mid_sweep_keeps_all_or_nothing(
    crash_db: Any, admin_engine: Engine, expected: Any
) -> None:
    name, url, engine = crash_db
    with _holding_a_delivery(url):
        proc = _start_sweep(url)
        pid = _wait_until_written(admin_engine, name, proc)
        with admin_engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert out == ""
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mailglass: ")
    _wait_backend_gone(admin_engine, pid)
    already = _assert_all_or_nothing(engine)
    assert already == 0  # terminated before COMMIT: nothing
    _finish_and_compare(url, engine, expected, already)
