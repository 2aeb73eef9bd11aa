"""A Mailglass app's writes beside a busy reconciler: ``python -m benchmarks.beside_mailglass``.

Why it exists: the product shares Mailglass's tables with the sending application (decision D27). Eight
connections write as a Mailglass app does, each send three transactions under the application's
``lock_timeout``: the delivery INSERT (no provider id yet), the dispatch UPDATE that sets
``provider``/``provider_message_id``, and an event append. They run for ``--seconds`` alone, then as
long beside back-to-back all-tenant sweeps (``retry_all``, so every sweep locks the whole backlog)
over a backlog of orphans whose message ids are the ones the writers dispatch: every dispatch matches an
orphan a sweep may hold at that moment. Each phase starts from the same seeded copy. The same is run
with the delivery triggers of migration 0004 (``benchmarks.trigger_cost.REFERENCE_SQL``), which updated
the queue in the writer's transaction. Printed: per side, the write latency p50/p99 alone and beside the
sweeps, the ratio, and the writes that failed (lock timeout). Target: head's p99 beside / alone <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks.scratch import ScratchServer, engine_for
from benchmarks.trigger_cost import REFERENCE_SQL, REFERENCE_TRIGGERS
from mailglass_pipeline.db import create_engine, resolve_database_url
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig

WRITERS = 8
PER_WRITER = 1500  # backlog orphans per writer: more than a phase dispatches
HOPELESS = 4000  # never-matching orphans beside them: longer sweeps
APP_LOCK_TIMEOUT = "500ms"
HEAD_TRIGGERS = ("mailglass_deliveries_wake_orphans", "mailglass_deliveries_wake_orphans_on_rekey")

_SEED = [
    """
    INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation, inserted_at)
    SELECT gen_random_uuid(), 't' || w, 'delivered', now() AT TIME ZONE 'UTC',
           jsonb_build_object('provider', 'postmark', 'provider_message_id', 'w' || w || '-' || i), true,
           (now() - interval '10 minutes') AT TIME ZONE 'UTC'
      FROM generate_series(0, :writers - 1) w, generate_series(0, :per_writer - 1) i
    """,
    """
    INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation, inserted_at)
    SELECT gen_random_uuid(), 'h' || (g % 50), 'opened', now() AT TIME ZONE 'UTC',
           jsonb_build_object('provider', 'postmark', 'provider_message_id', 'never-' || g), true,
           (now() - interval '10 minutes') AT TIME ZONE 'UTC'
      FROM generate_series(1, :hopeless) g
    """,
]

_INSERT = sa.text(
    "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
    " last_event_type, last_event_at, inserted_at, updated_at)"
    " VALUES (:id, :t, 'M', 'transactional', 'a@b.example', 'b.example', 'queued',"
    " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"
)
_DISPATCH = sa.text(
    "UPDATE mailglass_deliveries SET provider = 'postmark', provider_message_id = :m, status = 'sent',"
    " last_event_type = 'dispatched', lock_version = lock_version + 1 WHERE id = :id"
)
_APPEND = sa.text(
    "INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key,"
    " normalized_payload, metadata, needs_reconciliation, inserted_at)"
    " VALUES (:id, :t, :d, 'dispatched', now() AT TIME ZONE 'UTC', :k, '{}', '{}', false, now() AT TIME ZONE 'UTC')"
)


def _writer(engine: Engine, w: int, stop: threading.Event, out: list[float], failed: list[int]) -> None:
    tenant = f"t{w}"
    i = 0
    with engine.connect() as conn:
        while not stop.is_set() and i < PER_WRITER:
            delivery = uuid.uuid4()
            for statement, params in (
                (_INSERT, {"id": delivery, "t": tenant}),
                (_DISPATCH, {"id": delivery, "m": f"w{w}-{i}"}),
                (_APPEND, {"id": uuid.uuid4(), "t": tenant, "d": delivery, "k": f"bench:{delivery}"}),
            ):
                started = time.perf_counter()
                try:
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{APP_LOCK_TIMEOUT}'"))
                    conn.execute(statement, params)
                    conn.commit()
                except sa.exc.OperationalError:
                    conn.rollback()
                    failed.append(1)
                out.append(time.perf_counter() - started)
            i += 1


def _sweeper(url: str, stop: threading.Event, counts: list[int], niced: list[bool]) -> None:
    """Back-to-back all-tenant sweeps on one connection, whose backend runs at the lowest CPU priority when
    the server is on this machine: what is measured is then the writes' waits on the product's locks, not
    two cores shared by nine busy backends."""
    config = SweepConfig(retry_all=True, max_total=20_000, limit=20_000)
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        try:
            if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.setpriority(os.PRIO_PROCESS, pid, 19)
                niced.append(True)
        except OSError:
            pass
        while not stop.is_set():
            counts.append(sweep(engine, None, config).scanned)
    finally:
        engine.dispose()


def _phase(url: str, seconds: float, with_sweeps: bool) -> dict[str, Any]:
    with engine_for(url) as engine:
        latencies: list[float] = []
        failed: list[int] = []
        sweeps: list[int] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_writer, args=(engine, w, stop, latencies, failed)) for w in range(WRITERS)]
        niced: list[bool] = []
        if with_sweeps:
            threads.append(threading.Thread(target=_sweeper, args=(url, stop, sweeps, niced)))
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    ordered = sorted(latencies)
    return {
        "writes": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000,
        "failed": len(failed),
        "sweeps": len(sweeps),
        "swept": sum(sweeps),
        "niced": bool(niced),
    }


def _seed(url: str, reference: bool) -> None:
    with engine_for(url) as engine:
        with engine.begin() as conn:
            if reference:
                for sql in REFERENCE_SQL:
                    conn.execute(sa.text(sql))
                for name in HEAD_TRIGGERS:
                    conn.exec_driver_sql(f"ALTER TABLE mailglass_deliveries DISABLE TRIGGER {name}")
            for sql in _SEED:
                conn.execute(sa.text(sql), {"writers": WRITERS, "per_writer": PER_WRITER, "hopeless": HOPELESS})
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    assert REFERENCE_TRIGGERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.beside_mailglass", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="server to create the scratch databases on (default: the app's)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--head-only", action="store_true", help="skip the 0004 triggers' run")
    args = parser.parse_args(argv)
    server = ScratchServer(resolve_database_url(args.database_url))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        server.create_template()
        for side in ("head",) if args.head_only else ("head", "0004"):
            seeded = server.clone(f"seed_{side.replace('0', 'r')}")
            _seed(seeded, reference=side == "0004")
            results[side] = {
                phase: _phase(
                    server.clone(f"{phase}_{side.replace('0', 'r')}", server.name_of(seeded)),
                    args.seconds,
                    phase == "beside",
                )
                for phase in ("alone", "beside")
            }
    finally:
        server.drop_all()
    print(
        f"Mailglass-shaped writes from {WRITERS} connections, {args.seconds:.0f} s per phase,"
        f" lock_timeout {APP_LOCK_TIMEOUT}; beside = back-to-back all-tenant sweeps over"
        f" {WRITERS * PER_WRITER + HOPELESS:,} pending orphans matching the dispatches"
    )
    print(f"  {'triggers':<8} {'phase':<7} {'writes':>7} {'p50 ms':>8} {'p99 ms':>9} {'failed':>7} {'sweeps':>7}")
    ok = True
    for side, phases in results.items():
        for phase, r in phases.items():
            print(
                f"  {side:<8} {phase:<7} {r['writes']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>9.2f} {r['failed']:>7}"
                f" {r['sweeps']:>7}"
            )
        ratio = phases["beside"]["p99_ms"] / phases["alone"]["p99_ms"]
        niced = "sweeper's backend at nice 19" if phases["beside"]["niced"] else "sweeper at normal priority"
        print(f"  {side:<8} write p99 beside sweeps / alone: {ratio:.2f}x ({niced})")
        if side == "head":
            ok = phases["beside"]["failed"] == 0 and phases["beside"]["sweeps"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
