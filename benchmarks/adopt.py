"""Adopting a busy Mailglass database: how long ``mailglass migrate`` takes, and what a writer feels.

Builds a Mailglass V07 database (Mailglass's DDL and stamp, as ``mailglass_ddl`` writes them) holding
``--rows`` ledger rows, ``--orphans`` of them pending orphans, then runs a writer that inserts
deliveries and events exactly as a Mailglass app does (its own plain connection, only the columns
Ecto sends, one transaction per send). The writer runs ``--baseline`` seconds alone, then
``schema.upgrade`` (what ``mailglass migrate`` runs) adopts the database while it keeps writing.

Printed: rows, time to adopt, and the writer's p50 / p99 / longest transaction and longest gap
between two commits, without the migration and during it (same run, same writer), plus a check that
every pending orphan ended up queued. Goal: no writer stall over 1 s.

    .venv/bin/python -m benchmarks.adopt --url postgresql://postgres@127.0.0.1:5432/postgres --rows 10000000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa

from benchmarks.scratch import with_database
from mailglass_pipeline import schema
from mailglass_pipeline.db import normalize_url
from mailglass_pipeline.migrations import mailglass_ddl as mg

CHUNK = 1_000_000


def build_mailglass_v07(url: str, rows: int, orphans: int) -> None:
    """Mailglass's V07 schema and stamp, then ``rows`` ledger rows (``orphans`` of them pending orphans)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS citext")
        for table in mg.TABLE_BODIES:
            conn.exec_driver_sql(mg.create_table_sql(table, "public", "citext"))
        conn.exec_driver_sql(mg.RAISE_IMMUTABILITY.format(schema='"public"'))
        conn.exec_driver_sql(mg.IMMUTABLE_TRIGGER.format(schema='"public"'))
    deliveries = max(rows // 10, 1)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                " provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at, status)"
                " SELECT gen_random_uuid(), 't' || (g % 1000), 'M', 'transactional', 'a@b.example', 'b.example',"
                " 'postmark', 'msg-' || g, 'delivered', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC',"
                " now() AT TIME ZONE 'UTC', 'sent' FROM generate_series(1, :n) g"
            ),
            {"n": deliveries},
        )
    linked = rows - orphans
    for start in range(0, linked, CHUNK):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key,"
                    " metadata, needs_reconciliation, inserted_at)"
                    " SELECT gen_random_uuid(), 't' || (g % 1000), gen_random_uuid(), 'delivered',"
                    " (now() AT TIME ZONE 'UTC') - make_interval(secs => g % 600000), 'postmark:e' || g,"
                    ' \'{"provider": "postmark"}\', false,'
                    " (now() AT TIME ZONE 'UTC') - make_interval(secs => g % 600000)"
                    " FROM generate_series(:a, :b) g"
                ),
                {"a": start + 1, "b": min(start + CHUNK, linked)},
            )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, idempotency_key, metadata,"
                " needs_reconciliation, inserted_at)"
                " SELECT gen_random_uuid(), 't' || (g % 1000), 'opened', now() AT TIME ZONE 'UTC', 'postmark:o' || g,"
                " jsonb_build_object('provider', 'postmark', 'message_id', 'late-' || g), true,"
                " (now() AT TIME ZONE 'UTC') - make_interval(secs => g % 86400) FROM generate_series(1, :n) g"
            ),
            {"n": orphans},
        )
    with engine.begin() as conn:
        for name in mg.INDEXES:
            conn.exec_driver_sql(mg.create_index_sql(name, "public", concurrently=False))
        conn.exec_driver_sql(mg.stamp_sql("public"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


@dataclass
class Writer:
    """A Mailglass app sending mail: a delivery, then its dispatched event; every tenth send also an orphan."""

    url: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (finished at, seconds taken)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    started = time.perf_counter()
                    self._send(conn, n)
                    finished = time.perf_counter()
                    self.samples.append((finished, finished - started))
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            engine.dispose()

    def _send(self, conn: sa.Connection, n: int) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        delivery = uuid.uuid4()
        with conn.begin():
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                    " adapter_ref, provider, provider_message_id, last_event_type, last_event_at, terminal, metadata,"
                    " lock_version, idempotency_key, status, inserted_at, updated_at) VALUES (:d, 'w', 'M',"
                    " 'transactional', 'w@b.example', 'b.example', '__default__', 'postmark', :m, 'dispatched',"
                    " :now, false, '{}', 1, :k, 'sent', :now, :now)"
                ),
                {"d": delivery, "m": f"w-{delivery}", "k": f"k-{delivery}", "now": now},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key,"
                    " normalized_payload, metadata, needs_reconciliation) VALUES (gen_random_uuid(), 'w', :d,"
                    " 'dispatched', :now, NULL, '{}', '{}', false)"
                ),
                {"d": delivery, "now": now},
            )
            if n % 10 == 0:
                conn.execute(
                    sa.text(
                        "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, idempotency_key,"
                        " normalized_payload, metadata, needs_reconciliation) VALUES (gen_random_uuid(), 'w',"
                        " 'delivered', :now, :k, '{}', jsonb_build_object('provider', 'postmark', 'message_id',"
                        " CAST(:m AS text)), true) ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL"
                        " DO NOTHING"
                    ),
                    {"now": now, "k": f"postmark:w{n}", "m": f"never-{n}"},
                )


def _figures(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    window = [(t, d) for t, d in samples if start <= t <= end]
    if len(window) < 2:
        return {"count": len(window), "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                "gap_ms": float("nan")}  # fmt: skip
    took = sorted(d for _, d in window)
    ends = [t for t, _ in window]
    gaps = [b - a for a, b in zip([start, *ends], [*ends, end], strict=True)]
    return {
        "count": len(window),
        "per_s": len(window) / (end - start),
        "p50_ms": statistics.median(took) * 1000,
        "p99_ms": took[min(len(took) - 1, int(len(took) * 0.99))] * 1000,
        "max_ms": took[-1] * 1000,
        "gap_ms": max(gaps) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres", help="any database")
    parser.add_argument("--rows", type=int, default=10_000_000, help="ledger rows (default 10,000,000)")
    parser.add_argument("--orphans", type=int, default=100_000, help="pending orphans among them")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds the writer runs alone first")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    admin_url = normalize_url(args.url)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"mailglass_bench_adopt_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    try:
        began = time.perf_counter()
        build_mailglass_v07(url, args.rows, args.orphans)
        print(f"built Mailglass V07: {args.rows:,} ledger rows, {args.orphans:,} pending orphans"
              f" in {time.perf_counter() - began:.0f} s")  # fmt: skip
        writer = Writer(url)
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        time.sleep(args.baseline)
        t1 = time.perf_counter()
        schema.upgrade(url)
        t2 = time.perf_counter()
        time.sleep(2.0)
        writer.stop.set()
        thread.join(30)
        if writer.error is not None:
            raise writer.error
        alone, during = _figures(writer.samples, t0 + 1.0, t1), _figures(writer.samples, t1, t2)
        print(f"adoption (mailglass migrate): {t2 - t1:.1f} s")
        print(f"{'writer':<22}{'sends':>8}{'per s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'max gap ms':>12}")
        for label, f in (("alone", alone), ("during adoption", during)):
            print(
                f"{label:<22}{f['count']:>8}{f.get('per_s', 0):>8.0f}{f['p50_ms']:>9.1f}{f['p99_ms']:>9.1f}"
                f"{f['max_ms']:>9.1f}{f['gap_ms']:>12.1f}"
            )
        stall = max(during["max_ms"], during["gap_ms"]) / 1000
        ratio = during["p99_ms"] / alone["p99_ms"]
        print(f"p99 during / alone: {ratio:.2f}x; longest stall during adoption: {stall:.2f} s (goal < 1 s)")
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            pending = conn.exec_driver_sql(
                "SELECT count(*) FROM mailglass_events e WHERE e.needs_reconciliation AND e.delivery_id IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM mailglass_events r WHERE r.idempotency_key = 'reconciled:' || e.id)"
            ).scalar()
            queued = conn.exec_driver_sql("SELECT count(*) FROM mailglass_reconciliation_queue").scalar()
            stamp = conn.exec_driver_sql("SELECT obj_description('mailglass_events'::regclass)").scalar()
        engine.dispose()
        print(f"pending orphans in the ledger: {pending:,}; queued: {queued:,}; Mailglass stamp still {stamp!r}")
        return 0 if pending == queued and stamp == "7" else 1
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
