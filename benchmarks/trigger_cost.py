"""What the deliveries triggers add to the sending application's writes: ``python -m benchmarks.trigger_cost``.

Why it exists: the triggers on ``mailglass_deliveries`` run inside the sending application's INSERT and
UPDATE, on its hot path. This measures, in one run and on a scratch database, the same writes with

* ``none``: the product's delivery triggers disabled (the application alone);
* ``0004``: the triggers as migrations 0003/0004 made them, kept below as a frozen copy
  (:data:`REFERENCE_SQL`): they probed the queue and UPDATEd the matching rows in the writer's
  transaction;
* ``head``: the triggers the migrations make now (0006, decision D27): they copy the delivery's key
  into ``mailglass_reconciliation_wakes`` and nothing else; the sweep does the matching.

Cases: a 10,000-row ``INSERT ... SELECT`` with no delivery matching a pending orphan (the common case),
the same with 1,000 matching backed-off orphans, a single-row INSERT carrying a message id (timed over
a run of statements), and Mailglass's own shape: a single-row INSERT without the provider's id followed
by the dispatch UPDATE that sets it. Each runs in a transaction that is rolled back, so every repetition
sees the same tables: 20,000 pending orphans over 200 tenants and 20,000 deliveries. The sides
alternate within each repetition, so machine load hits them alike. Time is the database backend's own
CPU time when the server runs on this machine (``/proc/<pid>/schedstat``: what the trigger costs the
server, not what the load does to a wall clock), else the wall clock; figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from benchmarks.scratch import ScratchServer, engine_for
from mailglass_pipeline.db import resolve_database_url

BULK_ROWS = 10_000
SINGLE_ROWS = 300
HEAD_TRIGGERS = ("mailglass_deliveries_wake_orphans", "mailglass_deliveries_wake_orphans_on_rekey")
REFERENCE_TRIGGERS = ("bench_reference_wake_orphans", "bench_reference_wake_orphans_on_rekey")
SIDES = ("none", "0004", "head")

# The delivery triggers as migration 0004 left them (its functions, frozen here under other names).
_PROBE = """
    SELECT q.event_id
      FROM mailglass_reconciliation_queue q
     WHERE q.parked_at IS NULL
       AND q.tenant_id = {d}.tenant_id
       AND md5(CASE WHEN q.provider = 'sendgrid' THEN split_part(q.provider_message_id, '.', 1)
                    ELSE q.provider_message_id END)
         = md5(CASE WHEN {d}.provider = 'sendgrid' THEN split_part({d}.provider_message_id, '.', 1)
                    ELSE {d}.provider_message_id END)
       AND q.provider = {d}.provider
       AND {d}.provider_message_id IN (q.provider_message_id,
            CASE WHEN q.provider = 'sendgrid' THEN split_part(q.provider_message_id, '.filter', 1) END,
            CASE WHEN q.provider = 'sendgrid' THEN split_part(q.provider_message_id, '.', 1) END)
       AND (q.next_attempt_at IS NOT NULL OR q.linkable_at IS NULL)
    OFFSET 0
"""
REFERENCE_SQL = [
    f"""
CREATE FUNCTION bench_reference_wake_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET enable_seqscan = off AS $$
BEGIN
    UPDATE mailglass_reconciliation_queue q
       SET next_attempt_at = NULL, linkable_at = COALESCE(q.linkable_at, now())
     WHERE q.event_id = ANY (ARRAY(
            SELECT w.event_id
              FROM new_deliveries n
             CROSS JOIN LATERAL ({_PROBE.format(d="n")}) w
             WHERE n.provider IS NOT NULL AND n.provider_message_id IS NOT NULL))
       AND q.parked_at IS NULL
       AND (q.next_attempt_at IS NOT NULL OR q.linkable_at IS NULL);
    RETURN NULL;
END
$$""",
    f"""
CREATE FUNCTION bench_reference_wake_orphans_on_rekey() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp SET enable_seqscan = off AS $$
BEGIN
    IF NEW.provider IS NOT NULL AND NEW.provider_message_id IS NOT NULL THEN
        UPDATE mailglass_reconciliation_queue q
           SET next_attempt_at = NULL, linkable_at = COALESCE(q.linkable_at, now())
         WHERE q.event_id IN ({_PROBE.format(d="NEW")});
    END IF;
    RETURN NULL;
END
$$""",
    """
CREATE TRIGGER bench_reference_wake_orphans AFTER INSERT ON mailglass_deliveries
    REFERENCING NEW TABLE AS new_deliveries FOR EACH STATEMENT EXECUTE FUNCTION bench_reference_wake_orphans()""",
    """
CREATE TRIGGER bench_reference_wake_orphans_on_rekey
    AFTER UPDATE OF tenant_id, provider, provider_message_id ON mailglass_deliveries FOR EACH ROW
    WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.provider IS DISTINCT FROM NEW.provider
          OR OLD.provider_message_id IS DISTINCT FROM NEW.provider_message_id)
    EXECUTE FUNCTION bench_reference_wake_orphans_on_rekey()""",
]

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
    "TRUNCATE mailglass_reconciliation_wakes",
]

_COLUMNS = (
    "(id, tenant_id, mailable, stream, recipient, recipient_domain, provider, provider_message_id,"
    " last_event_type, last_event_at, inserted_at, updated_at)"
)
_BULK = sa.text(
    f"""
    INSERT INTO mailglass_deliveries {_COLUMNS}
    SELECT gen_random_uuid(), 't' || (g % 200), 'M', 'transactional', 'a@b.example', 'b.example', 'postmark',
           CASE WHEN g <= :matching THEN 'orphan-' || g ELSE 'bulk-' || g END, 'dispatched', now(), now(), now()
      FROM generate_series(1, :n) g
    """
)
_SINGLE = sa.text(
    f"""
    INSERT INTO mailglass_deliveries {_COLUMNS}
    VALUES (:id, :t, 'M', 'transactional', 'a@b.example', 'b.example', :p, :m, :e, now(), now(), now())
    """
)
_DISPATCH = sa.text(
    "UPDATE mailglass_deliveries SET provider = 'postmark', provider_message_id = :m, status = 'sent',"
    " lock_version = lock_version + 1 WHERE id = :id"
)


def _use(engine: Engine, side: str) -> None:
    with engine.begin() as conn:
        for name in HEAD_TRIGGERS:
            conn.exec_driver_sql(
                f"ALTER TABLE mailglass_deliveries {'ENABLE' if side == 'head' else 'DISABLE'} TRIGGER {name}"
            )
        for name in REFERENCE_TRIGGERS:
            conn.exec_driver_sql(
                f"ALTER TABLE mailglass_deliveries {'ENABLE' if side == '0004' else 'DISABLE'} TRIGGER {name}"
            )


def _backend_clock(conn: Connection) -> tuple[Callable[[], float], str]:
    """The backend's CPU time when the server is on this machine, else the wall clock."""
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    stat, cmdline = Path(f"/proc/{pid}/schedstat"), Path(f"/proc/{pid}/cmdline")
    try:
        if b"postgres" in cmdline.read_bytes():
            stat.read_text()
            return (lambda: int(stat.read_text().split()[0]) / 1e9), "backend CPU time"
    except OSError:
        pass
    return time.perf_counter, "wall clock"


def _rolled_back(engine: Engine, work: Callable[[Connection, Callable[[], float]], float]) -> float:
    with engine.connect() as conn:
        clock, _ = _backend_clock(conn)
        conn.commit()
        conn.begin()
        try:
            return work(conn, clock)
        finally:
            conn.rollback()


def _bulk(matching: int) -> Callable[[Connection, Callable[[], float]], float]:
    def work(conn: Connection, clock: Callable[[], float]) -> float:
        started = clock()
        assert conn.execute(_BULK, {"n": BULK_ROWS, "matching": matching}).rowcount == BULK_ROWS
        return clock() - started

    return work


def _single(conn: Connection, clock: Callable[[], float]) -> float:
    started = clock()
    for i in range(SINGLE_ROWS):
        conn.execute(_SINGLE, {"id": _uuid(i), "t": f"t{i % 200}", "p": "postmark", "m": f"single-{i}", "e": "sent"})
    return (clock() - started) / SINGLE_ROWS


def _mailglass_send(conn: Connection, clock: Callable[[], float]) -> float:
    """Mailglass's order: the delivery without the provider's id, then the dispatch UPDATE that sets it."""
    started = clock()
    for i in range(SINGLE_ROWS):
        conn.execute(_SINGLE, {"id": _uuid(i), "t": f"t{i % 200}", "p": None, "m": None, "e": "queued"})
        conn.execute(_DISPATCH, {"id": _uuid(i), "m": f"sent-{i}"})
    return (clock() - started) / SINGLE_ROWS


def _uuid(i: int) -> str:
    return f"00000000-0000-7000-8000-{i:012d}"


def _woken(engine: Engine, side: str) -> int:
    """Orphans the 1,000-match insert makes due (for head: once a sweep absorbed the signals)."""
    _use(engine, side)

    def work(conn: Connection, _clock: Callable[[], float]) -> float:
        conn.execute(_BULK, {"n": BULK_ROWS, "matching": 1000})
        if side == "head":
            conn.execute(sa.text("SELECT * FROM mailglass_reconciliation_absorb()"))
        due = "SELECT count(*) FROM mailglass_reconciliation_queue WHERE next_attempt_at IS NULL"
        return float(conn.execute(sa.text(due)).scalar_one())

    return int(_rolled_back(engine, work))


CASES: list[tuple[str, Callable[[Connection, Callable[[], float]], float], int]] = [
    (f"{BULK_ROWS:,}-row INSERT, no match", _bulk(0), BULK_ROWS),
    (f"{BULK_ROWS:,}-row INSERT, 1,000 match", _bulk(1000), BULK_ROWS),
    ("single-row INSERT with message id", _single, 1),
    ("Mailglass send: INSERT, then dispatch", _mailglass_send, 1),
]


def measure(engine: Engine, reps: int) -> list[dict[str, Any]]:
    for side in SIDES:  # warm-up: caches, plans, the pool's connection
        _use(engine, side)
        for _name, work, _rows in CASES:
            _rolled_back(engine, work)
    timings: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for side in SIDES:
            _use(engine, side)
            for name, work, _rows in CASES:
                timings.setdefault((name, side), []).append(_rolled_back(engine, work))
    _use(engine, "head")
    out = []
    for name, _work, rows in CASES:
        none, old, new = (statistics.median(timings[name, side]) for side in SIDES)
        out.append(
            {
                "case": name,
                "none_ms": none * 1000,
                "old_added_us_per_row": (old - none) * 1e6 / rows,
                "new_added_us_per_row": (new - none) * 1e6 / rows,
                "old_ratio": old / none,
                "new_ratio": new / none,
                "new_over_old_overhead": (new - none) / (old - none) if old > none else float("nan"),
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
                for sql in (*REFERENCE_SQL, *_SEED):
                    conn.execute(sa.text(sql))
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
                clock = _backend_clock(conn)[1]
            woken = {side: _woken(engine, side) for side in ("0004", "head")}
            rows = measure(engine, args.reps)
    finally:
        server.drop_all()
    print(f"deliveries triggers: 0004's (frozen copy) vs head's, median of {args.reps}, {clock}")
    print("  queue 20,000 pending orphans over 200 tenants, 20,000 deliveries; 'added' = side - no trigger")
    print(
        f"  {'case':<40} {'alone ms':>9} {'0004 +us/row':>13} {'head +us/row':>13}"
        f" {'0004':>6} {'head':>6} {'head/0004 added':>16}"
    )
    for row in rows:
        print(
            f"  {row['case']:<40} {row['none_ms']:>9.3f} {row['old_added_us_per_row']:>13.2f}"
            f" {row['new_added_us_per_row']:>13.2f} {row['old_ratio']:>5.2f}x {row['new_ratio']:>5.2f}x"
            f" {row['new_over_old_overhead']:>15.2f}x"
        )
    print(
        f"  check: the 1,000-match insert made {woken['0004']:,} (0004) and {woken['head']:,} (head, once absorbed)"
        " backed-off orphans due (expected 1,000 each)"
    )
    return 0 if set(woken.values()) == {1000} else 1


if __name__ == "__main__":
    sys.exit(main())
