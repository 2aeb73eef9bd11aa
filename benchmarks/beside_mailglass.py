"""A Mailglass app's writes beside a busy reconciler: ``python -m benchmarks.beside_mailglass``.

Why it exists: the product shares Mailglass's tables with the sending application (decisions D27, D30).
Eight connections write as a Mailglass app does, each send four transactions under the application's
``lock_timeout``: the delivery INSERT (no provider id yet), the dispatch UPDATE that sets
``provider``/``provider_message_id``, an event append, and the projector's UPDATE of the delivery
dispatched ``LAG`` sends earlier (a later webhook event), whose orphan a sweep is by then linking. They
run alone, then beside back-to-back all-tenant sweeps (``retry_all``, so every sweep locks and rewrites
the whole backlog) in a process of their own, over a backlog of orphans whose message ids are the ones
the writers dispatch. ``--rounds`` rounds of both phases in alternating order, each phase from the same
seeded copy, pooled per phase: a load that drifts during the run weighs on both alike.

Printed: per write kind, the latency p50/p99 alone and beside the sweeps and the p99 ratio (target:
at most 1.2), the writes that failed (lock timeout), and the CPU time and the time queued for a CPU of
the writers' backends (``/proc/<pid>/schedstat``, when the server is on this machine). ``--sample``
adds what the writes slower than alone's p99 were doing (``benchmarks.wait_sampler``); ``--backlog
unrelated`` runs the same sweeps over orphans no write matches (the cost of the sweeps without any
shared row). Unless ``--head-only``, the same runs again with migration 0004's delivery triggers
(``benchmarks.trigger_cost.REFERENCE_SQL``), which updated the queue in the writer's transaction.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from benchmarks import wait_sampler
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
           jsonb_build_object('provider', 'postmark',
                              'provider_message_id', CAST(:prefix AS text) || w || '-' || i), true,
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


# Mailglass's projector on a later webhook event ("delivered") of a delivery dispatched LAG sends earlier:
# by then a sweep has woken, or is linking, that delivery's orphan, and locks the delivery to project onto it.
_PROJECT = sa.text(
    "UPDATE mailglass_deliveries SET last_event_type = 'delivered', last_event_at = now() AT TIME ZONE 'UTC',"
    " delivered_at = now() AT TIME ZONE 'UTC', terminal = true, lock_version = lock_version + 1,"
    " updated_at = now() AT TIME ZONE 'UTC' WHERE id = :id"
)
LAG = 25
KINDS = ("insert", "dispatch", "append", "project")


Write = tuple[str, int, float, float]  # kind, backend pid, start, end (time.time())


def _writer(
    engine: Engine, w: int, go: threading.Barrier, stop: threading.Event, out: list[Write], failed: list[str]
) -> None:
    """One connection's sends, each write its own transaction."""
    tenant = f"t{w}"
    i = 0
    sent: list[uuid.UUID] = []
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SET application_name = 'bench-writer-{w}'")
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        conn.commit()
        out.append(("connected", pid, 0.0, 0.0))
        go.wait()
        while not stop.is_set() and i < PER_WRITER:
            delivery = uuid.uuid4()
            sent.append(delivery)
            for kind, statement, params in (
                ("insert", _INSERT, {"id": delivery, "t": tenant}),
                ("dispatch", _DISPATCH, {"id": delivery, "m": f"w{w}-{i}"}),
                ("append", _APPEND, {"id": uuid.uuid4(), "t": tenant, "d": delivery, "k": f"bench:{delivery}"}),
                ("project", _PROJECT, {"id": sent[max(0, i - LAG)]}),
            ):
                started = time.time()
                try:
                    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{APP_LOCK_TIMEOUT}'"))
                    conn.execute(statement, params)
                    conn.commit()
                except sa.exc.OperationalError:
                    conn.rollback()
                    failed.append(kind)
                out.append((kind, pid, started, time.time()))
            i += 1


def _sweeper_main(url: str, nice: int, retry_all: bool, stop: Any, counts: Any, ready: Any, pause: float = 0.0) -> None:
    """Back-to-back all-tenant sweeps on one connection, in a process of its own (as Dagster runs them: the
    sweep's Python shares no interpreter lock with the writers). ``nice`` > 0: its backend's CPU priority
    when the server is on this machine."""
    # retry_all: every sweep locks and rewrites the whole backlog; else the schedule's sweeps (what is due:
    # the backlog's first examination, then the orphans the dispatches woke).
    config = SweepConfig(retry_all=True, max_total=20_000, limit=20_000) if retry_all else SweepConfig()
    engine = create_engine(url, pool_size=1, max_overflow=0, connect_args={"application_name": "bench-sweeper"})
    try:
        with engine.connect() as conn:
            pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        if nice > 0:
            try:
                if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.setpriority(os.PRIO_PROCESS, pid, nice)
            except OSError:
                nice = 0
        ready.put(nice)
        while not stop.is_set():
            began, cpu = time.monotonic(), (wait_sampler.schedstat([pid])[0], time.process_time())
            result = sweep(engine, None, config)
            took = time.monotonic() - began
            with counts.get_lock():  # per sweep, in microseconds: wall, its backend's CPU, this process's CPU
                counts[0] += 1
                counts[1] += result.scanned
                counts[2] += result.linked
                counts[3] += int(took * 1e6)
                counts[4] += int((wait_sampler.schedstat([pid])[0] - cpu[0]) * 1e6)
                counts[5] += int((time.process_time() - cpu[1]) * 1e6)
            if pause:  # the sweep yields: idle for pause x the time it took
                stop.wait(pause * took)
    finally:
        engine.dispose()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] * 1000 if ordered else float("nan")


def _phase(url: str, seconds: float, with_sweeps: bool, args: argparse.Namespace) -> dict[str, Any]:
    nice, sample, retry_all = args.sweeper_nice, args.sample, args.sweeps == "retry-all"
    ctx = mp.get_context("spawn")
    stop_sweeps, counts, ready = ctx.Event(), ctx.Array("q", 6), ctx.Queue()
    sweeper = ctx.Process(
        target=_sweeper_main, args=(url, nice, retry_all, stop_sweeps, counts, ready, args.sweep_pause), daemon=True
    )
    niced = 0
    if with_sweeps:
        sweeper.start()
        niced = ready.get(timeout=60)
    sampler = wait_sampler.start(url) if sample else None
    with engine_for(url) as engine:
        writes: list[Write] = []
        failed: list[str] = []
        stop, go = threading.Event(), threading.Barrier(WRITERS + 1)
        threads = [threading.Thread(target=_writer, args=(engine, w, go, stop, writes, failed)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        go.wait()  # every writer connected (and the sampler sampling): their CPU and run-queue delay from here
        pids = [pid for kind, pid, _, _ in writes if kind == "connected"]
        before, wal_before = wait_sampler.schedstat(pids), _wal_bytes(engine)
        time.sleep(seconds)
        after, wal_after = wait_sampler.schedstat(pids), _wal_bytes(engine)
        stop.set()
        for t in threads:
            t.join()
    samples = wait_sampler.finish(sampler) if sampler else []
    if with_sweeps:
        stop_sweeps.set()
        sweeper.join(timeout=120)
        if sweeper.exitcode != 0:
            raise RuntimeError(f"the sweeper failed (exit code {sweeper.exitcode}): see its traceback above")
    return {
        "writes": [w for w in writes if w[0] != "connected"],
        "samples": samples,
        "failed": len(failed),
        "sweeps": int(counts[0]),
        "swept": int(counts[1]),
        "linked": int(counts[2]),
        "sweep_us": [int(counts[3]), int(counts[4]), int(counts[5])],
        "niced": niced,
        "cpu_s": after[0] - before[0],
        "queued_s": after[1] - before[1],
        "wal_bytes": wal_after - wal_before,
        "seconds": seconds,
    }


def _wal_bytes(engine: Engine) -> int:
    """The server's WAL written so far (the whole server's: other databases' writes count too)."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT wal_bytes FROM pg_stat_wal").scalar_one())


def _merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's rounds as one: writes and samples pooled, counts summed, percentiles over the pool."""
    merged: dict[str, Any] = {
        key: sum((r[key] for r in rounds), [] if isinstance(rounds[0][key], list) else 0) for key in rounds[0]
    }
    merged["niced"] = rounds[0]["niced"]
    merged["sweep_us"] = [sum(r["sweep_us"][i] for r in rounds) for i in range(3)]
    writes = merged["writes"]
    by_kind = {k: [e - s for kind, _, s, e in writes if kind == k] for k in KINDS}
    by_kind["all"] = [e - s for _, _, s, e in writes]
    merged["kinds"] = {
        k: {"n": len(v), "p50": _percentile(v, 0.5), "p99": _percentile(v, 0.99)} for k, v in by_kind.items()
    }
    return merged


def _seed(url: str, reference: bool, backlog: str) -> None:
    with engine_for(url) as engine:
        with engine.begin() as conn:
            if reference:
                for sql in REFERENCE_SQL:
                    conn.execute(sa.text(sql))
                for name in HEAD_TRIGGERS:
                    conn.exec_driver_sql(f"ALTER TABLE mailglass_deliveries DISABLE TRIGGER {name}")
            for sql in _SEED:
                conn.execute(
                    sa.text(sql),
                    {
                        "writers": WRITERS,
                        "per_writer": PER_WRITER,
                        "hopeless": HOPELESS,
                        # unrelated: the same backlog under message ids no write dispatches
                        "prefix": "w" if backlog == "matching" else "u",
                    },
                )
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    assert REFERENCE_TRIGGERS


def _report(side: str, phases: dict[str, dict[str, Any]], sample: bool) -> float:
    alone, beside = phases["alone"], phases["beside"]
    for name, r in phases.items():
        for kind in (*KINDS, "all"):
            k = r["kinds"][kind]
            print(f"  {side:<8} {name:<7} {kind:<9} {k['n']:>7} {k['p50']:>8.2f} {k['p99']:>9.2f}", end="")
            print(f" {r['failed']:>7} {r['sweeps']:>7}" if kind == "all" else "")
    ratios = {kind: beside["kinds"][kind]["p99"] / alone["kinds"][kind]["p99"] for kind in (*KINDS, "all")}
    niced = f"sweeper's backend at nice {beside['niced']}" if beside["niced"] else "sweeper at normal priority"
    print(
        f"  {side:<8} write p99 beside sweeps / alone: "
        + ", ".join(f"{kind} {ratios[kind]:.2f}x" for kind in KINDS)
        + f"; all {ratios['all']:.2f}x ({niced}; {beside['linked']} orphans linked by {beside['sweeps']} sweeps)"
    )
    if beside["sweeps"]:
        wall, backend, python = (us / beside["sweeps"] / 1e6 for us in beside["sweep_us"])
        print(
            f"  {side:<8} beside  per sweep: {wall:.2f} s, of which {backend:.2f} s its backend on a CPU and"
            f" {python:.2f} s its Python on one"
        )
    for name, r in phases.items():
        n = max(1, r["kinds"]["all"]["n"])
        print(
            f"  {side:<8} {name:<7} writers' backends: {r['cpu_s'] * 1e6 / n:.0f} us on a CPU and"
            f" {r['queued_s'] * 1e6 / n:.0f} us queued for one per write; the server wrote"
            f" {r['wal_bytes'] / r['seconds'] / 1e6:.1f} MB/s of WAL"
        )
    if sample:
        for kind in KINDS:
            threshold = alone["kinds"][kind]["p99"] / 1000
            for name, r in phases.items():
                counts = wait_sampler.attribute([w for w in r["writes"] if w[0] == kind], r["samples"], threshold).get(
                    kind
                )
                slow = sum(1 for k, _, s, e in r["writes"] if k == kind and e - s >= threshold)
                if not counts:
                    print(f"  {side:<8} {name:<7} {kind:<9} {slow} writes >= alone p99: no sample inside")
                    continue
                total = sum(counts.values())
                top = ", ".join(f"{label} {n * 100 / total:.0f}%" for label, n in counts.most_common(6))
                print(f"  {side:<8} {name:<7} {kind:<9} {slow} writes >= alone p99 ({total} samples): {top}")
    return ratios["all"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.beside_mailglass", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="server to create the scratch databases on (default: the app's)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase of a round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (alone, beside), alternating order")
    parser.add_argument("--head-only", action="store_true", help="skip the 0004 triggers' run")
    parser.add_argument("--sweeper-nice", type=int, default=0, help="CPU priority of the sweeper's backend (0: as is)")
    parser.add_argument(
        "--backlog",
        choices=("matching", "unrelated"),
        default="matching",
        help="orphans the writes' dispatches match (default), or the same backlog under other message ids",
    )
    parser.add_argument(
        "--sweeps",
        choices=("retry-all", "due"),
        default="retry-all",
        help="each sweep examines the whole backlog (default), or only what is due, as the schedule's do",
    )
    parser.add_argument(
        "--sweep-pause", type=float, default=0.0, help="after each sweep, idle this many times as long as it took"
    )
    parser.add_argument("--sample", action="store_true", help="sample what the slow writes wait on")
    args = parser.parse_args(argv)
    server = ScratchServer(resolve_database_url(args.database_url))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        server.create_template()
        for side in ("head",) if args.head_only else ("head", "0004"):
            seeded = server.clone(f"seed_{side.replace('0', 'r')}")
            _seed(seeded, reference=side == "0004", backlog=args.backlog)
            runs: dict[str, list[dict[str, Any]]] = {"alone": [], "beside": []}
            # Alternating order (alone first, then beside first, ...): a load that drifts during the run
            # weighs on both phases alike.
            for r in range(args.rounds):
                for phase in ("alone", "beside") if r % 2 == 0 else ("beside", "alone"):
                    url = server.clone(f"{phase}{r}_{side.replace('0', 'r')}", server.name_of(seeded))
                    runs[phase].append(_phase(url, args.seconds, phase == "beside", args))
                    server.drop(url)
            results[side] = {phase: _merge(r) for phase, r in runs.items()}
    finally:
        server.drop_all()
    print(
        f"Mailglass-shaped writes from {WRITERS} connections, {args.rounds} rounds of {args.seconds:.0f} s per phase,"
        f" lock_timeout {APP_LOCK_TIMEOUT}; beside = back-to-back all-tenant {args.sweeps} sweeps over"
        f" {WRITERS * PER_WRITER + HOPELESS:,} pending orphans"
        + (" matching the dispatches" if args.backlog == "matching" else " that no dispatch matches")
    )
    print(
        f"  {'triggers':<8} {'phase':<7} {'write':<9} {'writes':>7} {'p50 ms':>8} {'p99 ms':>9}"
        f" {'failed':>7} {'sweeps':>7}"
    )
    ok = True
    for side, phases in results.items():
        _report(side, phases, args.sample)
        if side == "head":
            ok = phases["beside"]["failed"] == 0 and phases["beside"]["sweeps"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
