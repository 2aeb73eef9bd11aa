"""Concurrent sweeps (threads, processes, Dagster-style split): one reconciled event per orphan, exact projections."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import ledger
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.results import SweepResult
from mailglass_pipeline.reconciliation.sweep import append_reconciled_events, attempt_link, find_orphans, sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import QUEUE, make_delivery, reconciled_events, reconciled_from, rows

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
TYPES = ["delivered", "opened", "clicked", "opened", "clicked"]  # one set-once/terminal type per delivery


def _seed(engine: Engine, tenant: str, deliveries: int, per_delivery: int) -> dict[uuid.UUID, list[ledger.NewEvent]]:
    """``deliveries`` deliveries with ``per_delivery`` orphans each, interleaved in arrival order."""
    targets = [
        make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-m-{d}", last_event_at=T0)
        for d in range(deliveries)
    ]
    plan: dict[uuid.UUID, list[ledger.NewEvent]] = {t: [] for t in targets}
    events = []
    now = datetime.now(UTC)
    for k in range(per_delivery):
        for d, target in enumerate(targets):
            n = k * deliveries + d
            event = ledger.NewEvent(
                tenant_id=tenant,
                type=TYPES[k % len(TYPES)],
                occurred_at=T0 + timedelta(seconds=1 + n),  # distinct: the latest is unambiguous
                inserted_at=now - timedelta(minutes=30) + timedelta(milliseconds=n),
                idempotency_key=f"seed:{n}:{uuid.uuid4()}",
                metadata={
                    "provider": "postmark",
                    "provider_message_id": f"{tenant}-m-{d}",
                    "provider_event_id": f"e{n}",
                },
                needs_reconciliation=True,
            )
            events.append(event)
            plan[target].append(event)
    with engine.begin() as conn:
        ledger.append_events(conn, events)
    return plan


def _check_outcome(engine: Engine, plan: dict[uuid.UUID, list[ledger.NewEvent]]) -> None:
    expected = {e.id: target for target, evs in plan.items() for e in evs}
    assert reconciled_from(engine) == expected  # exactly one reconciled event per orphan, right delivery
    assert rows(engine, f"SELECT count(*) FROM {QUEUE}") == [(0,)]
    events = reconciled_events(engine)
    assert len({e.idempotency_key for e in events}) == len(expected)
    # Projection writes per delivery = transactions that appended reconciled events for it (same xmin).
    writes = Counter()
    for target, xids in _group(events).items():
        writes[target] = len(xids)
    for target, evs in plan.items():
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM mailglass_deliveries WHERE id = :i"), {"i": target}).one()
        latest = max(evs, key=lambda e: e.occurred_at)
        delivered = [e.occurred_at for e in evs if e.type == "delivered"]
        assert (row.last_event_type, row.last_event_at) == (latest.type, latest.occurred_at)
        assert row.delivered_at == min(delivered)
        assert row.terminal is True
        assert row.lock_version == 1 + writes[target]
    assert sweep(engine, None, SweepConfig()).as_dict() | {"tenants": {}} == SweepResult().as_dict()


def _group(events: list[sa.Row[object]]) -> dict[uuid.UUID, set[str]]:
    grouped: dict[uuid.UUID, set[str]] = {}
    for e in events:
        grouped.setdefault(e.delivery_id, set()).add(e.xid)
    return grouped


def test_eight_concurrent_thread_sweeps(database_url: str, engine: Engine) -> None:
    plan = _seed(engine, "t1", deliveries=100, per_delivery=5)
    workers = 8
    barrier = threading.Barrier(workers)
    linked: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        own = create_engine(database_url, poolclass=sa.pool.NullPool)
        total = 0
        try:
            barrier.wait()
            while True:
                result = sweep(own, "t1", SweepConfig(limit=20))
                total += result.linked
                if result.scanned == 0:
                    break
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()
            linked.append(total)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sum(linked) == 500
    assert sum(1 for n in linked if n) > 1  # the work really was shared
    _check_outcome(engine, plan)


_CHILD = textwrap.dedent(
    """
    import json, sys
    import mailglass_pipeline
    url = sys.argv[1]
    print("ready", flush=True)
    sys.stdin.readline()
    totals = {"linked": 0, "sweeps": 0}
    while True:
        result = mailglass_pipeline.reconcile(None, 20, database_url=url)
        totals["linked"] += result["linked"]
        totals["sweeps"] += 1
        if result["scanned"] == 0:
            break
    print(json.dumps(totals), flush=True)
    """
)


def test_eight_concurrent_process_sweeps(database_url: str, engine: Engine) -> None:
    plan = _seed(engine, "t1", deliveries=100, per_delivery=5)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, database_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        for child in children:  # all imported and connected-ready before any starts
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert [c.returncode for c in children] == [0] * 8
    totals = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert sum(t["linked"] for t in totals) == 500
    _check_outcome(engine, plan)


def test_dagster_style_split_with_two_concurrent_appends(engine: Engine) -> None:
    plan = _seed(engine, "t1", deliveries=40, per_delivery=5)
    config = SweepConfig()
    with engine.begin() as conn:
        orphans = find_orphans(conn, "t1", config, lock=False)
    with engine.begin() as conn:
        linked = attempt_link(conn, orphans)
    assert len(linked) == 200 and linked["delivery_id"].notna().all()
    barrier = threading.Barrier(2)
    results: list[SweepResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with engine.connect() as conn:
                conn.begin()
                barrier.wait()
                results.append(append_reconciled_events(conn, linked.copy(), "t1", config))
                conn.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r.linked for r in results) == 200
    assert sum(r.already_reconciled for r in results) == 200
    assert all(r.scanned == 200 for r in results)
    _check_outcome(engine, plan)


def test_concurrent_upgrades_from_processes(blank_database_url: str) -> None:
    code = "import sys; from mailglass_pipeline import schema; print(schema.upgrade(sys.argv[1])[1])"
    children = [
        subprocess.Popen([sys.executable, "-c", code, blank_database_url], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [c.communicate(timeout=120)[0].strip() for c in children]
    from mailglass_pipeline import schema

    assert [c.returncode for c in children] == [0, 0, 0]
    assert set(outs) == {schema.head_revision()}
