"""The receiver benchmark's two lower bounds on storing its events (no HTTP, no verification).

- :func:`bare_insert_bound`: one bare multi-row INSERT per request into ``mailglass_events`` (with its
  statement trigger), 8 connections: the receiver benchmark's own bound;
- :func:`probe_bound`: one bare single-row INSERT per event into a copy of ``mailglass_events`` (no
  trigger), 8 connections: the bound the external probe used (issue 25). Both are reported side by side.

And :func:`cpu_seconds` / :func:`spent`: where the receiver's CPU went, per process.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

Request = tuple[str, bytes, dict[str, str]]


def bare_insert_bound(database_url: str, requests: list[Request], threads: int = 8) -> dict[str, Any]:
    """The same number of events, one bare multi-row INSERT per request, ``threads`` connections."""
    url = make_url(database_url).set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    rows = []
    for index, (path, body, _) in enumerate(requests):
        tenant = path.split("/")[2]
        payload = json.dumps({"body_bytes": len(body), "index": index})
        rows.append([(str(uuid.uuid4()), tenant, "delivered", f"bare:{uuid.uuid4()}", payload)])
    sql = (
        "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, idempotency_key, normalized_payload, "
        "metadata, needs_reconciliation, inserted_at) VALUES "
    )
    cursor = iter(rows)
    lock = threading.Lock()

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            while True:
                with lock:
                    batch = next(cursor, None)
                if batch is None:
                    return
                values = ", ".join(["(%s, %s, %s, now(), %s, %s::jsonb, '{}'::jsonb, true, now())"] * len(batch))
                conn.execute(sql + values, [v for row in batch for v in row])

    started = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"events": len(rows), "seconds": elapsed, "events_s": len(rows) / elapsed}


def probe_bound(
    database_url: str, requests: list[tuple[str, bytes, dict[str, str]]], threads: int = 8
) -> dict[str, Any]:
    """One bare single-row INSERT per event into a copy of ``mailglass_events``, ``threads`` connections.

    The copy (``LIKE ... INCLUDING ALL``) has the columns, defaults and indexes, not the ledger's trigger.
    """
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    table = f"bench_probe_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (LIKE mailglass_events INCLUDING ALL)")
    rows = []
    for index, (path, body, _) in enumerate(requests):
        payload = json.dumps({"body_bytes": len(body), "index": index})
        rows.append((str(uuid.uuid4()), path.split("/")[2], "delivered", f"probe:{uuid.uuid4()}", payload))
    sql = (
        f"INSERT INTO {table} (id, tenant_id, type, occurred_at, idempotency_key, normalized_payload, metadata, "
        "needs_reconciliation, inserted_at) VALUES (%s, %s, %s, now(), %s, %s::jsonb, '{}'::jsonb, true, now())"
    )
    cursor = iter(rows)
    lock = threading.Lock()

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            while True:
                with lock:
                    row = next(cursor, None)
                if row is None:
                    return
                conn.execute(sql, row)

    started = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {table}")
    return {"events": len(rows), "seconds": elapsed, "events_s": len(rows) / elapsed}


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU of each of ``pids`` still alive (Linux /proc)."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two readings by the processes alive at both (a backend that ended is left out)."""
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())
