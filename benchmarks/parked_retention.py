"""Work-queue size after a year of steady traffic, with and without the parked-row retention.

    MAILGLASS_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.parked_retention [--orphans-per-day 1000000] [--stale 0.01] \\
        [--malformed 0.001] [--days 60]

Measured here, on a scratch database dropped at the end: the bytes one parked queue row costs
(table and every index, ``pg_total_relation_size``), and what one retention run costs (rows
deleted a second, the longest batch: how long any row lock is held). ``--days`` days of parked
rows at the given daily rate are loaded queue-only (as they are once their orphans are parked),
then ``orphans.prune_parked`` runs with the default 30-day period.

Computed from those: the queue's size after 365 days. An orphan that links leaves the queue when
it links (minutes); a stale one stays pending 7 days, then parked; a malformed one is parked at
once. Without retention every parked row stays forever; with it, a parked row lives 30 days. The
traffic rates are inputs (defaults: a large sender's million orphans a day, 1 % never matching,
0.1 % malformed), not measurements of anyone's traffic.
"""

from __future__ import annotations

import argparse
import os
import time

import sqlalchemy as sa

from benchmarks.scratch import ScratchServer, engine_for

PENDING_DAYS = 7
YEAR = 365


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orphans-per-day", type=int, default=1_000_000)
    parser.add_argument("--stale", type=float, default=0.01, help="fraction of orphans that never match")
    parser.add_argument("--malformed", type=float, default=0.001, help="fraction without provider or message id")
    parser.add_argument("--days", type=int, default=60, help="days of parked rows loaded for the measurement")
    parser.add_argument("--retention-days", type=int, default=30)
    args = parser.parse_args()
    admin_url = os.environ.get("MAILGLASS_BENCH_DATABASE_URL") or os.environ.get("MAILGLASS_TEST_DATABASE_URL")
    if not admin_url:
        raise SystemExit("set MAILGLASS_BENCH_DATABASE_URL to a PostgreSQL admin URL")
    from mailglass_pipeline import orphans

    stale_per_day = round(args.orphans_per_day * args.stale)
    malformed_per_day = round(args.orphans_per_day * args.malformed)
    parked_per_day = stale_per_day + malformed_per_day
    server = ScratchServer(admin_url)
    try:
        server.create_template()
        url = server.clone("parked")
        with engine_for(url) as engine:
            loaded = parked_per_day * args.days
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        """
                        INSERT INTO mailglass_reconciliation_queue
                            (event_id, tenant_id, orphan_inserted_at, attempts, parked_at, parked_reason)
                        SELECT gen_random_uuid(), 't' || (g % 100),
                               now() - g * make_interval(secs => 86400.0 / :per_day)
                                     - CASE WHEN g % :n_all < :n_stale THEN interval '7 days' ELSE interval '0' END,
                               340, now() - g * make_interval(secs => 86400.0 / :per_day),
                               CASE WHEN g % :n_all < :n_stale THEN 'stale' ELSE 'malformed' END
                          FROM generate_series(1, :loaded) AS g
                        """
                    ),
                    {
                        "per_day": parked_per_day,
                        "n_all": parked_per_day,
                        "n_stale": stale_per_day,
                        "loaded": loaded,
                    },
                )
            load_s = time.perf_counter() - started
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE mailglass_reconciliation_queue"))
                size = conn.execute(sa.text("SELECT pg_total_relation_size('mailglass_reconciliation_queue')")).scalar()
            bytes_per_row = size / loaded
            batch_times: list[float] = []
            started = time.perf_counter()
            result = orphans.prune_parked(engine, args.retention_days, batch_size=1000)
            prune_s = time.perf_counter() - started
            deleted = result["deleted_stale"] + result["deleted_malformed"]
            with engine.connect() as conn:
                left = conn.execute(sa.text("SELECT count(*) FROM mailglass_reconciliation_queue")).scalar_one()
            # The longest single batch: one more run over a fresh day of expired rows, batch by batch.
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE mailglass_reconciliation_queue SET parked_at = parked_at - interval '1 day',"
                        " orphan_inserted_at = orphan_inserted_at - interval '1 day'"
                        " WHERE parked_at < now() - make_interval(days => :d)"
                    ),
                    {"d": args.retention_days - 1},
                )
            while True:
                t0 = time.perf_counter()
                one = orphans.prune_parked(engine, args.retention_days, batch_size=1000, max_rows=1000)
                batch_times.append(time.perf_counter() - t0)
                if one["deleted_stale"] + one["deleted_malformed"] < 1000:
                    break
    finally:
        server.drop_all()

    def year(retention: bool) -> int:
        stale_rows = stale_per_day * (PENDING_DAYS + (args.retention_days if retention else YEAR - PENDING_DAYS))
        malformed_rows = malformed_per_day * (args.retention_days if retention else YEAR)
        return stale_rows + malformed_rows

    print(
        f"traffic: {args.orphans_per_day:,} orphans/day, {stale_per_day:,} never match, {malformed_per_day:,} malformed"
    )
    print(f"measured: {loaded:,} parked rows loaded in {load_s:.1f} s; {bytes_per_row:.0f} bytes/row (table + indexes)")
    print(
        f"measured: retention deleted {deleted:,} rows ({args.days - args.retention_days} days' worth) in "
        f"{prune_s:.2f} s = {deleted / prune_s:,.0f} rows/s, {result['batches']} batches; {left:,} rows kept"
    )
    print(
        f"measured: a daily run over one day's {parked_per_day:,} expired rows: {sum(batch_times):.2f} s, "
        f"longest batch (longest row-lock hold) {max(batch_times) * 1000:.0f} ms"
    )
    for retention in (False, True):
        rows = year(retention)
        label = f"with {args.retention_days}-day retention" if retention else "without retention"
        print(f"after {YEAR} days {label}: {rows:,} queue rows (+ the minutes-old pending ones), "
              f"~{rows * bytes_per_row / 2**20:,.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
