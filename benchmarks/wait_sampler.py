"""What a benchmark's writers wait on: samples of ``pg_stat_activity`` and the kernel's run-queue delay.

Used by ``benchmarks.beside_mailglass --sample``. A sampler process (its own connection, so it shares no
interpreter lock with the writers) reads, every few milliseconds, each writer backend's state, wait event
and blockers (``pg_blocking_pids``). Joined with the writes' start and end times, the samples that fall
inside the slowest writes say what those writes were doing: waiting on a lock (whose holder: the sweeper
or another writer), on an LWLock or I/O (WAL), or running (no wait event: on a CPU or queued for one).
``/proc/<pid>/schedstat`` then splits the last into CPU time and time queued for a CPU (run delay).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_SAMPLE = sa.text(
    "SELECT a.pid, a.state, a.wait_event_type, a.wait_event,"
    " (SELECT string_agg(b.application_name, ',') FROM pg_stat_activity b"
    "   WHERE b.pid = ANY (pg_blocking_pids(a.pid))) AS blockers"
    " FROM pg_stat_activity a WHERE a.application_name LIKE 'bench-writer-%' AND a.datname = current_database()"
)


def sampler_main(url: str, interval: float, stop: Any, out: Any) -> None:
    """Sample until ``stop`` is set, then put the list of ``(t, pid, state)`` on ``out``."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    samples: list[tuple[float, int, str]] = []
    with engine.connect() as conn:
        conn.execute(sa.text("SET application_name = 'bench-sampler'"))
        conn.commit()
        out.put("ready")
        while not stop.is_set():
            t = time.time()
            for pid, state, wtype, wevent, blockers in conn.execute(_SAMPLE).all():
                samples.append((t, int(pid), describe(state, wtype, wevent, blockers)))
            conn.rollback()
            time.sleep(interval)
    engine.dispose()
    out.put(samples)


def describe(state: str | None, wtype: str | None, wevent: str | None, blockers: str | None) -> str:
    """One label per sample: ``Lock:transactionid by sweeper``, ``LWLock:WALWrite``, ``running``, ``client``."""
    if state != "active":
        return "client"  # idle / idle in transaction: the writer's own Python (or the network)
    if wtype is None:
        return "running"  # on a CPU, or queued for one
    label = f"{wtype}:{wevent}"
    if blockers:
        who = {"sweeper" if b.startswith("bench-sweeper") else "writer" for b in blockers.split(",")}
        label += " by " + "+".join(sorted(who))
    return label


def start(url: str, interval: float = 0.003) -> tuple[Any, Any, Any]:
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=sampler_main, args=(url, interval, stop, out), daemon=True)
    proc.start()
    assert out.get(timeout=60) == "ready"
    return proc, stop, out


def finish(handle: tuple[Any, Any, Any]) -> list[tuple[float, int, str]]:
    proc, stop, out = handle
    stop.set()
    samples: list[tuple[float, int, str]] = out.get(timeout=60)
    proc.join(timeout=10)
    return samples


def attribute(
    writes: list[tuple[str, int, float, float]], samples: list[tuple[float, int, str]], threshold: float
) -> dict[str, Counter[str]]:
    """Per write kind, the labels of the samples that fell inside a write slower than ``threshold`` s.

    ``writes``: ``(kind, backend pid, start, end)`` in ``time.time()`` seconds.
    """
    by_pid: dict[int, list[tuple[float, str]]] = {}
    for t, pid, label in samples:
        by_pid.setdefault(pid, []).append((t, label))
    result: dict[str, Counter[str]] = {}
    for kind, pid, began, ended in writes:
        if ended - began < threshold:
            continue
        counts = result.setdefault(kind, Counter())
        for t, label in by_pid.get(pid, ()):
            if began <= t <= ended:
                counts[label] += 1
    return result


def schedstat(pids: list[int]) -> tuple[float, float]:
    """Seconds on a CPU and seconds queued for one, summed over ``pids`` (0, 0 for a remote server)."""
    cpu = delay = 0.0
    for pid in pids:
        try:
            on_cpu, run_delay, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        cpu += int(on_cpu) / 1e9
        delay += int(run_delay) / 1e9
    return cpu, delay
