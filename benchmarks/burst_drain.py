"""The core of a scheduled run on a burst, without Dagster: ``sweep_due_tenants`` over the scale scenario.

Prints figures, not a test. Loads the data of ``benchmarks.scale`` (10% of the
tenants with 5 linkable orphans, 30% with 3 never-matching ones, 5% with 2
whose deliveries are not there yet) into a fresh database, then runs one
``sweep_due_tenants`` per ``--cap`` (fresh data each) and prints each transaction's
time and what it did, the run's total and its rate. Answers: how long does a
burst take to drain, how long does one transaction hold its locks, and does
a transaction get slower as the run goes on.
"""

from __future__ import annotations

import argparse
import time
import uuid
import warnings
from datetime import UTC, datetime

import sqlalchemy as sa

from benchmarks import scale, scratch
from mailglass_pipeline import schema
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.drain import sweep_due_tenants
from mailglass_pipeline.reconciliation.results import SweepResult
from mailglass_pipeline.settings import DEFAULT_MAX_TOTAL, SweepConfig


def run_once(admin_url: str, tenants: int, cap: int, budget: float) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"mg_burst_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = scratch.with_database(admin_url, name)
    try:
        schema.upgrade(url)
        engine = create_engine(url)
        started = time.perf_counter()
        scale.load_scenario(engine, scale.Groups.of(tenants))
        loaded = time.perf_counter() - started
        steps: list[tuple[int, int, float]] = []
        mark = [time.perf_counter()]

        def record(part: SweepResult) -> None:
            now = time.perf_counter()
            steps.append((part.scanned, part.linked, now - mark[0]))
            mark[0] = now

        result = sweep_due_tenants(engine, budget, SweepConfig(max_total=cap), on_transaction=record)
        print(f"\n{tenants} tenants, cap {cap} per transaction, budget {budget:g} s (loaded in {loaded:.1f} s)")
        for i, (scanned, linked, took) in enumerate(steps, 1):
            print(f"  transaction {i:2d}: {took:5.2f} s, scanned {scanned}, linked {linked}")
        rate = result.scanned / result.elapsed_seconds if result.elapsed_seconds else 0.0
        longest = max((s[2] for s in steps), default=0.0)
        print(
            f"  run: {result.transactions} transactions in {result.elapsed_seconds:.1f} s ({result.stopped_by}); "
            f"scanned {result.scanned}, linked {result.linked}; {rate:,.0f} orphans/s; "
            f"longest transaction {longest:.2f} s"
        )
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="any database on the server (admin connection)")
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--cap", type=int, action="append", help="orphans per transaction (repeatable)")
    parser.add_argument("--budget", type=float, default=300.0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print(f"benchmarks.burst_drain at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (shared machine)")
    for cap in args.cap or [DEFAULT_MAX_TOTAL, 2 * DEFAULT_MAX_TOTAL]:
        run_once(args.database_url, args.tenants, cap, args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
