"""Dagster storage growth per scheduled sweep, per day, with and without retention; cost of one retention run.

    MAILGLASS_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.storage_growth [--runs 120] [--tenants-with-work 1]

What it does, honestly:

1. A fresh application database (migrated) and a fresh Dagster storage database on the same server
   (dagster-postgres, the production storage).
2. ``--runs`` REAL runs of ``reconcile_orphans`` (``execute_in_process`` into that instance: the
   same ops, events and materializations as a scheduled run; the run queue is not involved, it
   writes nothing per run). Each run has work: ``--orphans`` linkable orphans for its tenant, as in
   the scale issue's load (5 per tenant with work). Tables' row counts and
   ``pg_total_relation_size`` are read before and after, so the per-run growth is measured, not
   estimated. The scheduled all-tenant job (issue 9) was still being built when this was written: it
   records one materialization per tenant with work in one run, so its growth per tick is about
   ``run overhead + tenants-with-work x per-tenant events``; this benchmark measures today's
   one-tenant run, whose events are exactly those two parts for one tenant.
3. Per day at one scheduled run a minute: 1,440 x the per-run growth. Without retention that
   is forever linear; with ``prune_dagster_history`` (keep 14 days) the steady state is 14 days of
   runs plus what retention leaves behind (measured: rows left after deleting every seeded run).
4. Retention cost: all measured runs are moved 15 days back (``runs.create_timestamp``, the column
   the retention filter reads) and one ``prune_history`` deletes them; its wall time per run
   extrapolates to one day's 1,440 runs. The retention run keeps each partition's latest run and deletes
   the deleted runs' asset_check_executions rows too; rows still naming a deleted run are reported.

Machine load from other processes makes timings noisy; sizes and row counts are exact.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Engine, make_url

RUNS_PER_DAY = 24 * 60
KEEP_DAYS = 14


def table_stats(engine: Engine) -> dict[str, tuple[int, int]]:
    """{table: (rows, total bytes incl. indexes and TOAST)} for every table of Dagster's storage."""
    with engine.connect() as conn:
        tables = [
            r[0]
            for r in conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))
        ]
        stats = {}
        for table in tables:
            rows = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
            size = conn.execute(sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": table}).scalar()
            stats[table] = (int(rows), int(size))
        return stats


def diff(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {
        t: (after[t][0] - before.get(t, (0, 0))[0], after[t][1] - before.get(t, (0, 0))[1])
        for t in after
        if after[t] != before.get(t, (0, 0))
    }


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--orphans", type=int, default=5, help="linkable orphans per run's tenant")
    parser.add_argument("--tenants", type=int, default=20, help="distinct tenant partitions the runs cycle over")
    parser.add_argument(
        "--job",
        choices=["tenant", "sweep"],
        default="tenant",
        help="tenant: reconcile_orphans (one tenant a run); sweep: reconcile_due_tenants (the scheduled run)",
    )
    parser.add_argument(
        "--tenants-with-work", type=int, default=1000, help="sweep mode: tenants with due orphans in each run"
    )
    args = parser.parse_args()

    admin_url = os.environ.get("MAILGLASS_BENCH_DATABASE_URL") or os.environ.get("MAILGLASS_TEST_DATABASE_URL")
    if not admin_url:
        raise SystemExit("set MAILGLASS_BENCH_DATABASE_URL to a PostgreSQL admin URL")
    from mailglass_pipeline import deliveries, ledger, schema
    from mailglass_pipeline.dagster_devtools.dev import psycopg2_url
    from mailglass_pipeline.db import create_engine, normalize_url

    admin_url = normalize_url(admin_url)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    app_db, dagster_db = f"mg_bench_app_{uuid.uuid4().hex[:8]}", f"mg_bench_dagster_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{app_db}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{dagster_db}"'))
    app_url = make_url(admin_url).set(database=app_db).render_as_string(hide_password=False)
    storage_url = psycopg2_url(make_url(admin_url).set(database=dagster_db).render_as_string(hide_password=False))
    try:
        schema.upgrade(app_url)
        app = create_engine(app_url)
        home = tempfile.mkdtemp(prefix="mg_bench_home_")
        with open(os.path.join(home, "dagster.yaml"), "w") as fh:
            yaml.safe_dump(
                {"storage": {"postgres": {"postgres_url": storage_url}}, "telemetry": {"enabled": False}}, fh
            )
        from dagster import DagsterInstance

        from mailglass_pipeline.definitions import build_definitions
        from mailglass_pipeline.defs.resources import MailglassDatabase
        from mailglass_pipeline.defs.retention.jobs import prune_history

        instance = DagsterInstance.from_config(home)
        storage = sa.create_engine(storage_url, poolclass=sa.pool.NullPool)
        defs = build_definitions(MailglassDatabase(database_url=app_url))
        job = defs.resolve_job_def("reconcile_orphans")
        tenants = [f"bench-{i:03d}" for i in range(args.tenants)]
        instance.add_dynamic_partitions("tenants", tenants)
        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

        def seed(tenant: str | list[str], n: int) -> None:
            now = datetime.now(UTC)
            events = []
            for owner in [tenant] if isinstance(tenant, str) else tenant:
                events.extend(_events(owner, n, now))
            with app.begin() as conn:
                ledger.append_events(conn, events)
                for event in events:
                    deliveries.create(
                        conn,
                        tenant_id=event.tenant_id,
                        provider="postmark",
                        provider_message_id=event.metadata["provider_message_id"],
                        last_event_at=now - timedelta(hours=1),
                    )

        def _events(tenant: str, n: int, now: datetime) -> list:
            events = []
            for _ in range(n):
                message = f"m-{uuid.uuid4().hex[:12]}"
                events.append(
                    ledger.NewEvent(
                        tenant_id=tenant,
                        type="delivered",
                        occurred_at=now - timedelta(minutes=5),
                        inserted_at=now - timedelta(minutes=5),
                        idempotency_key=f"bench:{uuid.uuid4()}",
                        metadata={"provider": "postmark", "provider_message_id": message, "provider_event_id": message},
                        normalized_payload={},
                        needs_reconciliation=True,
                    )
                )
            return events

        evaluations: list[tuple[int, float]] = []  # sweep mode: (no_stale_orphans evaluations, seconds) per run
        # The storage write of each check evaluation, timed apart from the two reads that compute it.
        check_writes: list[float] = []
        store_event = instance.event_log_storage.store_event

        def timed_store_event(event):
            started = time.perf_counter()
            try:
                return store_event(event)
            finally:
                if event.dagster_event and event.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION":
                    check_writes.append(time.perf_counter() - started)

        instance.event_log_storage.store_event = timed_store_event
        if args.job == "sweep":
            job = defs.resolve_job_def("reconcile_due_tenants")
            tenants = [f"bench-{i:05d}" for i in range(args.tenants_with_work)]
            instance.add_dynamic_partitions("tenants", tenants)

            def one_run(_i: int):
                seed(tenants, args.orphans)
                result = job.execute_in_process(instance=instance, run_config=quiet)
                assert result.success
                [event] = [
                    e
                    for e in result.get_asset_materialization_events()
                    if e.asset_key.path[-1] == "reconciliation_sweep"
                ]
                metadata = event.materialization.metadata
                evaluations.append((metadata["checks_evaluated"].value, metadata["check_seconds"].value))
                return result.run_id, int(metadata["linked"].value)
        else:

            def one_run(i: int):
                tenant = tenants[i % len(tenants)]
                seed(tenant, args.orphans)
                result = job.execute_in_process(partition_key=tenant, instance=instance, run_config=quiet)
                assert result.success
                [event] = result.get_asset_materialization_events()
                return result.run_id, int(event.materialization.metadata["linked"].value)

        # Warm-up run: snapshots and asset keys are written once per job, not per run.
        one_run(0)
        before = table_stats(storage)
        run_ids, linked, started = [], 0, time.perf_counter()
        for i in range(args.runs):
            run_id, n = one_run(i)
            linked += n
            run_ids.append(run_id)
        run_seconds = time.perf_counter() - started
        after = table_stats(storage)
        grown = diff(after, before)
        rows = sum(r for r, _ in grown.values())
        size = sum(b for _, b in grown.values())
        per = f"{args.tenants_with_work} tenants x {args.orphans}" if args.job == "sweep" else f"{args.orphans}"
        print(f"job {job.name}: {args.runs} runs measured (each linking {per} orphans; {linked} linked in total)")
        print(f"mean run wall time: {run_seconds / args.runs:.2f} s (in process, machine shared)")
        if evaluations[1:]:  # the warm-up run's left out
            n, seconds = sum(e for e, _ in evaluations[1:]), sum(s for _, s in evaluations[1:])
            print(
                f"no_stale_orphans evaluations: {n / args.runs:.0f} per run in {seconds / args.runs:.2f} s "
                f"({seconds / max(n, 1) * 1000:.1f} ms each, one storage write each: decision D31)"
            )
            writes = sorted(check_writes)
            print(
                f"  of which the storage write: median {writes[len(writes) // 2] * 1000:.1f} ms, "
                f"p90 {writes[len(writes) * 9 // 10] * 1000:.1f} ms ({len(writes)} writes, warm-up included)"
            )
        print("growth per run, by table (rows, bytes incl. indexes):")
        for table, (r, b) in sorted(grown.items(), key=lambda kv: -kv[1][1]):
            print(f"  {table:32} {r / args.runs:8.1f} rows  {human(b / args.runs):>10}")
        per_run_rows, per_run_bytes = rows / args.runs, size / args.runs
        print(f"per run:  {per_run_rows:.1f} rows, {human(per_run_bytes)}")
        print(
            f"per day at one run a minute ({RUNS_PER_DAY} runs): {per_run_rows * RUNS_PER_DAY:,.0f} rows, "
            f"{human(per_run_bytes * RUNS_PER_DAY)}"
        )
        print(
            f"without retention after 365 days: {per_run_rows * RUNS_PER_DAY * 365:,.0f} rows, "
            f"{human(per_run_bytes * RUNS_PER_DAY * 365)} (linear, forever)"
        )

        # Retention: age every measured run past the window and delete them in one retention pass.
        with storage.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE runs SET create_timestamp = create_timestamp - interval '15 days' WHERE run_id = ANY(:r)"
                ),
                {"r": run_ids},
            )
        job_names = set(defs.get_repository_def().job_names)
        pruned = prune_history(instance, job_names, keep_days=KEEP_DAYS, batch_size=200, max_runs=10**6)
        left = table_stats(storage)
        # Rows that still name a deleted run: what retention leaves behind.
        with storage.connect() as conn:
            run_id_tables = [
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND column_name = 'run_id' AND table_name <> 'runs'"
                    )
                )
            ]
            residue_rows = {}
            for table in run_id_tables:
                n = conn.execute(
                    sa.text(
                        f'SELECT count(*) FROM "{table}" WHERE run_id = ANY(:r) '
                        "AND run_id NOT IN (SELECT run_id FROM runs)"
                    ),
                    {"r": run_ids},
                ).scalar_one()
                if n:
                    residue_rows[table] = int(n)
        print(
            f"retention: deleted {pruned['deleted_runs']} runs in {pruned['seconds']:.2f} s "
            f"({pruned['seconds'] / max(pruned['deleted_runs'], 1) * 1000:.1f} ms per run); kept "
            f"{pruned['kept_latest_materialization_runs']} run(s) holding a partition's latest materialization"
        )
        print(
            f"one day's retention run ({RUNS_PER_DAY} runs): about "
            f"{pruned['seconds'] / max(pruned['deleted_runs'], 1) * RUNS_PER_DAY:.0f} s"
        )
        deleted = max(pruned["deleted_runs"], 1)
        print(f"rows left behind by retention, over {pruned['deleted_runs']} deleted runs: {residue_rows or 'none'}")
        left_per_run = sum(residue_rows.values()) / deleted
        steady_rows = per_run_rows * RUNS_PER_DAY * KEEP_DAYS
        print(
            f"with retention (keep {KEEP_DAYS} days), steady state: {steady_rows:,.0f} rows, "
            f"{human(per_run_bytes * RUNS_PER_DAY * KEEP_DAYS)} of live data, plus {left_per_run:.1f} row(s) per run "
            f"left behind ({left_per_run * RUNS_PER_DAY:,.0f} per day)"
        )
        print(
            "note: PostgreSQL reuses the space of deleted rows after (auto)vacuum; pg_total_relation_size "
            f"does not shrink by itself (now {human(sum(b for _, b in left.values()))} total)"
        )
        instance.dispose()
        storage.dispose()
        app.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{app_db}" WITH (FORCE)'))
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
