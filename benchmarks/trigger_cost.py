"""What the deliveries trigger adds to the sending application's inserts: ``python -m benchmarks.trigger_cost``.

Why it exists: ``mailglass_deliveries_wake_orphans`` (migration 0003) runs
inside the sending application's INSERT, on its hot path. This measures, in
one run and on a scratch database, the same inserts with the trigger enabled
and disabled (``ALTER TABLE ... DISABLE TRIGGER``), alternating, so machine
load hits both sides alike:

* a 10,000-row ``INSERT ... SELECT`` (a bulk load), none of whose deliveries
  match a pending orphan (the common case: the webhook did not race);
* the same with 1,000 of the rows matching a backed-off orphan (the trigger
  then also writes those queue rows);
* a single-row INSERT, timed over a run of single-row statements.

Each insert runs in a transaction that is rolled back, so every repetition
sees the same tables: 20,000 pending orphans over 200 tenants in the queue and
20,000 deliveries. Figures are medians of ``--reps`` repetitions; the ratio
with/without is what matters, absolute times move with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from benchmarks.scratch import ScratchServer, engine_for
from mailglass_pipeline.db import resolve_database_url

TRIGGER = "mailglass_deliveries_wake_orphans"
BULK_ROWS = 10_000
SINGLE_ROWS = 500

_SEED = [
    # Pending orphans that never match, examined once (backing off), over 200 tenants.
    """
    INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation, inserted_at)
    SELECT gen_random_uuid(), 't' || (g % 200), 'opened', now(),
           jsonb_build_object('provider', 'postmark', 'provider_message_id', 'orphan-' || g), true,
           now() - interval '10 minutes'
      FROM generate_series(1, 20000) g
    """,
    "UPDATE mailglass_reconciliation_queue SET attempts = 1, last_attempted_at = now(),"
    " next_attempt_at = now() + interval '1 hour'",
    """
    INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain, provider,
                                      provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)
    SELECT gen_random_uuid(), 't' || (g % 200), 'M', 'transactional', 'a@b.example', 'b.example', 'postmark',
           'seed-' || g, 'dispatched', now(), now(), now()
      FROM generate_series(1, 20000) g
    """,
]

_BULK = sa.text(
    """
    INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain, provider,
                                      provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)
    SELECT gen_random_uuid(), 't' || (g % 200), 'M', 'transactional', 'a@b.example', 'b.example', 'postmark',
           CASE WHEN g <= :matching THEN 'orphan-' || g ELSE 'bulk-' || g END, 'dispatched', now(), now(), now()
      FROM generate_series(1, :n) g
    """
)

_SINGLE = sa.text(
    """
    INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain, provider,
                                      provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)
    VALUES (gen_random_uuid(), :t, 'M', 'transactional', 'a@b.example', 'b.example', 'postmark', :m, 'dispatched',
            now(), now(), now())
    """
)


def _set_trigger(engine: Engine, enabled: bool) -> None:
    with engine.begin() as conn:
        action = "ENABLE" if enabled else "DISABLE"
        conn.execute(sa.text(f"ALTER TABLE mailglass_deliveries {action} TRIGGER {TRIGGER}"))


def _rolled_back(engine: Engine, work: Callable[[Connection], float]) -> float:
    with engine.connect() as conn:
        conn.begin()
        try:
            return work(conn)
        finally:
            conn.rollback()


def _bulk(matching: int) -> Callable[[Connection], float]:
    def work(conn: Connection) -> float:
        started = time.perf_counter()
        result = conn.execute(_BULK, {"n": BULK_ROWS, "matching": matching})
        elapsed = time.perf_counter() - started
        assert result.rowcount == BULK_ROWS
        return elapsed

    return work


def _single(conn: Connection) -> float:
    started = time.perf_counter()
    for i in range(SINGLE_ROWS):
        conn.execute(_SINGLE, {"t": f"t{i % 200}", "m": f"single-{i}"})
    return (time.perf_counter() - started) / SINGLE_ROWS


def _woken(engine: Engine) -> int:
    def work(conn: Connection) -> float:
        conn.execute(_BULK, {"n": BULK_ROWS, "matching": 1000})
        return float(
            conn.execute(
                sa.text("SELECT count(*) FROM mailglass_reconciliation_queue WHERE next_attempt_at IS NULL")
            ).scalar_one()
        )

    return int(_rolled_back(engine, work))


def measure(engine: Engine, reps: int) -> list[dict[str, Any]]:
    cases: list[tuple[str, Callable[[Connection], float], int]] = [
        (f"{BULK_ROWS:,}-row INSERT, no match", _bulk(0), BULK_ROWS),
        (f"{BULK_ROWS:,}-row INSERT, 1,000 match", _bulk(1000), BULK_ROWS),
        ("single-row INSERT", _single, 1),
    ]
    for _name, work, _rows in cases:  # warm-up: caches, plans, the pool's connection
        for enabled in (True, False):
            _set_trigger(engine, enabled)
            _rolled_back(engine, work)
    timings: dict[tuple[str, bool], list[float]] = {}
    for _ in range(reps):
        for enabled in (True, False):
            _set_trigger(engine, enabled)
            for name, work, _rows in cases:
                timings.setdefault((name, enabled), []).append(_rolled_back(engine, work))
    _set_trigger(engine, True)
    out = []
    for name, _work, rows in cases:
        on = statistics.median(timings[name, True])
        off = statistics.median(timings[name, False])
        out.append(
            {
                "case": name,
                "with_trigger_ms": on * 1000,
                "without_trigger_ms": off * 1000,
                "ratio": on / off,
                "added_us_per_row": (on - off) * 1e6 / rows,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trigger_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="server to create the scratch database on (default: the app's)")
    parser.add_argument("--reps", type=int, default=9, help="repetitions per case and side (median reported)")
    args = parser.parse_args(argv)
    server = ScratchServer(resolve_database_url(args.database_url))
    try:
        server.create_template()
        url = server.clone("trigger")
        with engine_for(url) as engine:
            with engine.begin() as conn:
                for sql in _SEED:
                    conn.execute(sa.text(sql))
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
            woken = _woken(engine)
            rows = measure(engine, args.reps)
    finally:
        server.drop_all()
    print(f"deliveries trigger cost (median of {args.reps}; queue 20,000 pending orphans, 20,000 deliveries)")
    print(f"  {'case':<34} {'with ms':>9} {'without ms':>11} {'ratio':>7} {'added us/row':>13}")
    for row in rows:
        print(
            f"  {row['case']:<34} {row['with_trigger_ms']:>9.3f} {row['without_trigger_ms']:>11.3f} "
            f"{row['ratio']:>6.2f}x {row['added_us_per_row']:>13.2f}"
        )
    print(f"  check: the 1,000-match insert made {woken:,} backed-off orphans due (expected 1,000)")
    return 0 if woken == 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
