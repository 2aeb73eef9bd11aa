"""The three contenders of the throughput figures, driven the same way.

Each drains the backlog of a set of tenants batch by batch, round robin (one
batch per tenant per round, like a schedule tick), and drops a tenant once a
batch comes back short of ``limit`` (its backlog is drained). Every contender
runs on its own clone of the same loaded database.

* ``ours``: :func:`mailglass_pipeline.reconciliation.sweep.sweep` per tenant batch;
* ``reference``: :mod:`benchmarks.reference`, the original per-orphan algorithm;
* ``lower_bound``: :mod:`benchmarks.lower_bound`, one SQL statement per batch;
* ``ours_all`` / ``lower_bound_all``: the same two as all-tenant sweeps (what
  the schedule runs each tick): every tenant at once, ``limit`` per tenant,
  until a sweep finds nothing due.

``python -m benchmarks.contenders ours URL --tenants a,b --limit 1000`` runs
one contender in a fresh process and prints one JSON object, including the
process's peak resident set size (``ru_maxrss``) before and after the sweeps:
that is how the benchmark measures the memory of a 100k-orphan sweep without
counting the parent's own data.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from sqlalchemy.engine import Engine

from benchmarks import lower_bound, reference
from benchmarks.scratch import engine_for
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig


@dataclass
class RunResult:
    contender: str
    scanned: int = 0
    linked: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    complete: bool = True
    peak_rss_kib: int | None = None
    baseline_rss_kib: int | None = None

    @property
    def per_second(self) -> float:
        return self.linked / self.elapsed_s if self.elapsed_s else 0.0


BatchFn = Callable[[Engine, str, int, float | None], tuple[int, int]]


def _ours(engine: Engine, tenant: str, limit: int, deadline: float | None) -> tuple[int, int]:
    result = sweep(engine, tenant, SweepConfig(limit=limit))
    return result.scanned, result.linked


def _reference(engine: Engine, tenant: str, limit: int, deadline: float | None) -> tuple[int, int]:
    stats = reference.sweep_tenant(engine, tenant, limit, deadline=deadline)
    return stats.scanned, stats.linked


def _lower_bound(engine: Engine, tenant: str, limit: int, deadline: float | None) -> tuple[int, int]:
    return lower_bound.sweep_tenant(engine, tenant, limit)


def _ours_all(engine: Engine, limit: int) -> tuple[int, int]:
    result = sweep(engine, None, SweepConfig(limit=limit))
    return result.scanned, result.linked


def _lower_bound_all(engine: Engine, limit: int) -> tuple[int, int]:
    return lower_bound.sweep_all(engine, limit)


CONTENDERS: dict[str, BatchFn] = {"ours": _ours, "reference": _reference, "lower_bound": _lower_bound}
#: All-tenant sweeps (one per schedule tick): every due tenant at once, ``limit`` each, fair total cap.
ALL_TENANT_CONTENDERS: dict[str, Callable[[Engine, int], tuple[int, int]]] = {
    "ours_all": _ours_all,
    "lower_bound_all": _lower_bound_all,
}


def drain(engine: Engine, contender: str, tenants: list[str], limit: int, budget_s: float | None = None) -> RunResult:
    """Sweep ``tenants`` round robin until drained (or ``budget_s`` elapsed); timed end to end.

    An all-tenant contender instead sweeps every tenant at once until a sweep finds nothing due.
    """
    result = RunResult(contender)
    if contender in ALL_TENANT_CONTENDERS:
        sweep_all = ALL_TENANT_CONTENDERS[contender]
        start = time.perf_counter()
        while True:
            scanned, linked = sweep_all(engine, limit)
            result.batches += 1
            result.scanned += scanned
            result.linked += linked
            if scanned == 0:
                break
        result.elapsed_s = time.perf_counter() - start
        return result
    batch = CONTENDERS[contender]
    active = list(tenants)
    start = time.perf_counter()
    deadline = start + budget_s if budget_s is not None else None
    while active:
        for tenant in list(active):
            if deadline is not None and time.perf_counter() >= deadline:
                result.complete = False
                active = []
                break
            scanned, linked = batch(engine, tenant, limit, deadline)
            result.batches += 1
            result.scanned += scanned
            result.linked += linked
            if scanned < limit:
                active.remove(tenant)
    result.elapsed_s = time.perf_counter() - start
    return result


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("contender", choices=sorted([*CONTENDERS, *ALL_TENANT_CONTENDERS]))
    parser.add_argument("url")
    parser.add_argument("--tenants", required=True, help="comma-separated tenant ids")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--budget-s", type=float, default=None)
    args = parser.parse_args(argv)
    with engine_for(args.url) as engine:
        with engine.connect():  # open the pool's connection before the baseline
            pass
        baseline = _max_rss_kib()
        result = drain(engine, args.contender, args.tenants.split(","), args.limit, args.budget_s)
        result.baseline_rss_kib = baseline
        result.peak_rss_kib = _max_rss_kib()
    json.dump(asdict(result), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
