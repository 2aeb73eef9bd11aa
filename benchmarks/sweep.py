"""The sweep benchmark: ``python -m benchmarks.sweep [--quick] [--database-url URL]``.

Why it exists: the reconciler runs every minute for every tenant, forever, so
its cost must follow the backlog, not the ledger's history. This command
measures that claim, in one run and on scratch databases, against two fixed
points: a faithful port of the original per-orphan algorithm
(:mod:`benchmarks.reference`) and a one-statement-per-batch lower bound
(:mod:`benchmarks.lower_bound`). Ratios between figures of the same run are
what matters; absolute figures move with the machine and its load.

Sections (each prints one table and lands in ``results.json``):

* **throughput**: linked orphans per second draining 10k and 100k matchable
  orphans over 10 tenants, batch 1000, for (a) the reconciler, (b) the
  reference, (c) the lower bound. Each contender gets its own clone of the same
  loaded database. (b) runs within a time budget; when the budget ends before
  the backlog, its throughput is what it reached on the part it linked, and the
  output says how much that was.
* **history**: one sweep of 1,000 pending orphans while the same tenant's
  window also holds 0, 100k and 1M reconciled orphans and their reconciled
  events; beside it, the original's find query on the same data. Plotted to
  ``sweep_vs_history.png``.
* **memory**: peak RSS of the process running (a) on 100k orphans (a child
  process, ``ru_maxrss``), and its RSS before the first sweep.
* **tick**: ``tenants_with_due_orphans`` with 5,000 tenants that
  have due orphans (wall time and server execution time).
* **dagster**: one tenant partition run in process vs the bare core sweep, on
  identical tenants of one database.

Scratch databases ``mailglass_bench_<random>*`` are created on the server of
``--database-url`` / ``MAILGLASS_DATABASE_URL`` / the embedded default and
dropped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks import contenders, datasets, reference
from benchmarks.dagster_overhead import partition_runner, time_call
from benchmarks.scratch import ScratchServer, engine_for
from mailglass_pipeline import queries
from mailglass_pipeline.db import describe_url, resolve_database_url
from mailglass_pipeline.reconciliation.monitoring import tenants_with_due_orphans
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import DEFAULT_GRACE_SECONDS, DEFAULT_MAX_AGE_MINUTES, SweepConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO_ROOT / "benchmarks" / "results"
LIMIT = 1000
HISTORY_TENANT = "hist"


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between full and quick mode."""

    throughput: tuple[int, ...] = (10_000, 100_000)
    tenants: int = 10
    reference_budget_s: tuple[float, ...] = (120.0, 60.0)
    history: tuple[int, ...] = (0, 100_000, 1_000_000)
    pending: int = 1000
    history_reps: int = 5
    reference_find_reps: int = 3
    tick_tenants: int = 5000
    tick_orphans_per_tenant: int = 20
    tick_reps: int = 5
    dagster_reps: int = 3
    dagster_orphans: int = 1000


FULL = Sizes()
QUICK = Sizes(
    throughput=(1_000, 2_000),
    reference_budget_s=(10.0, 5.0),
    history=(0, 2_000, 10_000),
    pending=200,
    history_reps=2,
    reference_find_reps=1,
    tick_tenants=200,
    tick_orphans_per_tenant=2,
    tick_reps=2,
    dagster_reps=1,
    dagster_orphans=100,
)


@dataclass
class Report:
    mode: str
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    tick: dict[str, Any] = field(default_factory=dict)
    dagster: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    setup_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0


def log(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def tenants(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(count)]


# -- throughput and memory ------------------------------------------------------------


def run_child(contender: str, url: str, tenant_ids: list[str], budget_s: float | None = None) -> dict[str, Any]:
    """Run one contender in a fresh interpreter: its peak RSS is then the sweep's alone."""
    command = [sys.executable, "-m", "benchmarks.contenders", contender, url, "--tenants", ",".join(tenant_ids)]
    command += ["--limit", str(LIMIT)]
    if budget_s is not None:
        command += ["--budget-s", str(budget_s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} child failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_throughput(server: ScratchServer, sizes: Sizes, report: Report) -> None:
    tenant_ids = tenants("t", sizes.tenants)
    for size, budget in zip(sizes.throughput, sizes.reference_budget_s, strict=True):
        per_tenant = size // sizes.tenants
        source = server.clone(f"tp{size}")
        started = time.perf_counter()
        with engine_for(source) as engine:
            with engine.begin() as conn:
                datasets.load_matchable(conn, tenant_ids, per_tenant, label=f"tp{size}")
            datasets.analyze(engine)
        report.setup_s[f"load_throughput_{size}"] = round(time.perf_counter() - started, 2)
        runs: dict[str, dict[str, Any]] = {}
        for contender in ("lower_bound", "ours", "lower_bound_all", "ours_all", "reference"):
            url = server.clone(f"tp{size}_{contender}", source=server.name_of(source))
            log(f"throughput {size:,}: {contender}")
            if contender == "ours":
                run = run_child(contender, url, tenant_ids)
            else:
                with engine_for(url) as engine:
                    run = asdict(
                        contenders.drain(
                            engine, contender, tenant_ids, LIMIT, budget if contender == "reference" else None
                        )
                    )
            run["per_second"] = run["linked"] / run["elapsed_s"] if run["elapsed_s"] else 0.0
            runs[contender] = run
            server.drop(url)
        server.drop(source)
        ours, ref, low = runs["ours"], runs["reference"], runs["lower_bound"]
        ours_all, low_all = runs["ours_all"], runs["lower_bound_all"]
        report.throughput.append(
            {
                "orphans": size,
                "tenants": sizes.tenants,
                "batch": LIMIT,
                "ours": ours,
                "reference": ref,
                "lower_bound": low,
                "ours_over_reference": ours["per_second"] / ref["per_second"] if ref["per_second"] else None,
                "lower_bound_over_ours": low["per_second"] / ours["per_second"] if ours["per_second"] else None,
                "ours_all": ours_all,
                "lower_bound_all": low_all,
                "ours_all_over_reference": ours_all["per_second"] / ref["per_second"] if ref["per_second"] else None,
                "lower_bound_all_over_ours_all": (
                    low_all["per_second"] / ours_all["per_second"] if ours_all["per_second"] else None
                ),
            }
        )
        if size == max(sizes.throughput):
            report.memory = {
                "orphans": size,
                "batch": LIMIT,
                "what": "peak RSS (ru_maxrss) of a fresh process draining the backlog with sweep",
                "baseline_rss_mib": ours["baseline_rss_kib"] / 1024,
                "peak_rss_mib": ours["peak_rss_kib"] / 1024,
                "growth_mib": (ours["peak_rss_kib"] - ours["baseline_rss_kib"]) / 1024,
            }


# -- history --------------------------------------------------------------------------


def _time_reference_find(engine: sa.Engine, limit: int) -> tuple[float, int]:
    with engine.connect() as conn:
        started = time.perf_counter()
        rows = reference.find_orphans(conn, HISTORY_TENANT, limit)
        elapsed = time.perf_counter() - started
        conn.rollback()
    return elapsed, len(rows)


def _reconciled_in_window(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM mailglass_events WHERE tenant_id = :t AND type = 'reconciled' "
                    "AND inserted_at > now() - interval '7 days'"
                ),
                {"t": HISTORY_TENANT},
            ).scalar_one()
        )


def bench_history(server: ScratchServer, sizes: Sizes, report: Report) -> None:
    url = server.clone("history")
    loaded = 0
    config = SweepConfig(limit=LIMIT)
    with engine_for(url) as engine:
        # Warm-up (untimed): the first sweep in a new database pays connection and catalog set-up.
        with engine.begin() as conn:
            datasets.load_matchable(conn, [HISTORY_TENANT], sizes.pending, label="warmup", newest_age_s=120)
        datasets.analyze(engine)
        sweep(engine, HISTORY_TENANT, config)
        for level in sizes.history:
            if level > loaded:
                log(f"history: loading reconciled orphans {loaded + 1:,}..{level:,}")
                started = time.perf_counter()
                datasets.load_history(engine, HISTORY_TENANT, loaded + 1, level)
                report.setup_s[f"load_history_to_{level}"] = round(time.perf_counter() - started, 2)
                loaded = level
            started = time.perf_counter()
            datasets.vacuum_analyze(engine)
            report.setup_s[f"vacuum_analyze_at_{level}"] = round(time.perf_counter() - started, 2)
            in_window = _reconciled_in_window(engine)
            sweeps: list[float] = []
            finds: list[float] = []
            linked: list[int] = []
            for rep in range(sizes.history_reps):
                with engine.begin() as conn:
                    datasets.load_matchable(
                        conn, [HISTORY_TENANT], sizes.pending, label=f"p{level}r{rep}", newest_age_s=120
                    )
                # Fresh statistics before every timed sweep, as autovacuum's ANALYZE keeps them: with
                # stale ones the planner misjudges the small, fast-growing tables of the first level.
                datasets.analyze(engine)
                if rep < sizes.reference_find_reps:
                    elapsed, _found = _time_reference_find(engine, LIMIT)
                    finds.append(elapsed)
                started = time.perf_counter()
                result = sweep(engine, HISTORY_TENANT, config)
                sweeps.append(time.perf_counter() - started)
                linked.append(result.linked)
            report.history.append(
                {
                    "reconciled_in_window": in_window,
                    "nominal_history": level,
                    "pending": sizes.pending,
                    "sweep_s_median": statistics.median(sweeps),
                    "sweep_s_all": sweeps,
                    "linked_per_sweep": linked,
                    "reference_find_s_median": statistics.median(finds),
                    "reference_find_s_all": finds,
                }
            )
            log(f"history {level:,}: sweep {statistics.median(sweeps) * 1000:.0f} ms")
    server.drop(url)
    base = report.history[0]
    for row in report.history:
        row["sweep_ratio_vs_empty"] = row["sweep_s_median"] / base["sweep_s_median"]
        row["reference_find_ratio_vs_empty"] = row["reference_find_s_median"] / base["reference_find_s_median"]


# -- tick -----------------------------------------------------------------------------


def bench_tick(server: ScratchServer, sizes: Sizes, report: Report) -> None:
    url = server.clone("tick")
    tenant_ids = tenants("tenant-", sizes.tick_tenants)
    with engine_for(url) as engine:
        started = time.perf_counter()
        with engine.begin() as conn:
            datasets.load_orphans_only(conn, tenant_ids, sizes.tick_orphans_per_tenant, label="tick")
        datasets.vacuum_analyze(engine)
        report.setup_s["load_tick"] = round(time.perf_counter() - started, 2)
        walls: list[float] = []
        found = 0
        for _ in range(sizes.tick_reps):
            with engine.connect() as conn:
                started = time.perf_counter()
                found = len(tenants_with_due_orphans(conn))
                walls.append(time.perf_counter() - started)
        with engine.connect() as conn:
            plan = conn.execute(
                sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + queries.statement("due_tenants").text),
                {
                    "grace_seconds": DEFAULT_GRACE_SECONDS,
                    "max_age_minutes": DEFAULT_MAX_AGE_MINUTES,
                    "tenant_id": None,
                    "retry_all": False,
                    "run_started": None,
                },
            ).scalar_one()
    server.drop(url)
    report.tick = {
        "tenants": sizes.tick_tenants,
        "orphans": sizes.tick_tenants * sizes.tick_orphans_per_tenant,
        "tenants_found": found,
        "wall_s_median": statistics.median(walls),
        "wall_s_all": walls,
        "server_execution_s": plan[0]["Execution Time"] / 1000,
        "queries": 1,
    }


# -- dagster --------------------------------------------------------------------------


def bench_dagster(server: ScratchServer, sizes: Sizes, report: Report) -> None:
    url = server.clone("dagster")
    bare = tenants("bare-", sizes.dagster_reps)
    dag = tenants("dag-", sizes.dagster_reps)
    with engine_for(url) as engine:
        with engine.begin() as conn:
            datasets.load_matchable(conn, ["warmup", *bare, *dag], sizes.dagster_orphans, label="dg")
        datasets.analyze(engine)
        try:
            run_partition, how = partition_runner(url)
        except Exception as exc:  # the Dagster layer is optional for the rest of the benchmark
            report.dagster = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
            server.drop(url)
            return
        config = SweepConfig(limit=LIMIT)
        run_partition("warmup")  # first run pays imports and storage set-up; not what a tick costs
        bare_s = [time_call(lambda t=t: sweep(engine, t, config))[0] for t in bare]
        dag_runs = [time_call(lambda t=t: run_partition(t)) for t in dag]
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM mailglass_reconciliation_queue WHERE tenant_id = ANY(:t)"),
                {"t": dag},
            ).scalar_one()
    server.drop(url)
    bare_median = statistics.median(bare_s)
    dag_median = statistics.median(s for s, _ in dag_runs)
    report.dagster = {
        "available": True,
        "how": how,
        "orphans_per_partition": sizes.dagster_orphans,
        "bare_sweep_s_median": bare_median,
        "dagster_run_s_median": dag_median,
        "overhead_s": dag_median - bare_median,
        "ratio": dag_median / bare_median,
        "dagster_left_in_queue": int(left),
    }


# -- output ---------------------------------------------------------------------------


def evaluate_targets(report: Report) -> None:
    targets = report.targets
    for row in report.throughput:
        ratio = row["ours_over_reference"] or 0.0
        targets.append(
            {
                "target": f"(a) >= 30x (b) at {row['orphans']:,} orphans",
                "measured": f"{ratio:.1f}x",
                "met": ratio >= 30,
            }
        )
        gap = row["lower_bound_over_ours"] or float("inf")
        targets.append(
            {
                "target": f"(a) within 2x of (c) at {row['orphans']:,} orphans",
                "measured": f"(c) is {gap:.2f}x (a)",
                "met": gap <= 2,
            }
        )
        ratio = row["ours_all_over_reference"] or 0.0
        targets.append(
            {
                "target": f"all-tenant sweep >= 10x (b) at {row['orphans']:,} orphans",
                "measured": f"{ratio:.1f}x",
                "met": ratio >= 10,
            }
        )
        gap = row["lower_bound_all_over_ours_all"] or float("inf")
        targets.append(
            {
                "target": f"all-tenant sweep within 1.5x of its one-statement lower bound at {row['orphans']:,}",
                "measured": f"lower bound is {gap:.2f}x ours",
                "met": gap <= 1.5,
            }
        )
    if report.history:
        last = report.history[-1]
        targets.append(
            {
                "target": f"sweep with {last['nominal_history']:,} reconciled <= 1.5x sweep with none",
                "measured": f"{last['sweep_ratio_vs_empty']:.2f}x",
                "met": last["sweep_ratio_vs_empty"] <= 1.5,
            }
        )
    if report.tick:
        targets.append(
            {
                "target": f"tick with {report.tick['tenants']:,} tenants < 2 s database time, one query",
                "measured": f"{report.tick['wall_s_median'] * 1000:.1f} ms wall, "
                f"{report.tick['server_execution_s'] * 1000:.1f} ms server",
                "met": report.tick["wall_s_median"] < 2 and report.tick["tenants_found"] == report.tick["tenants"],
            }
        )


def render(report: Report) -> str:
    m = report.machine
    lines = [
        f"mailglass sweep benchmark ({report.mode} mode, {report.started_at})",
        f"machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}",
        f"postgresql: {m['postgresql']} at {m['server']}",
        "",
        f"throughput: linked orphans/s, {report.throughput[0]['tenants'] if report.throughput else 0} tenants, "
        f"batch {LIMIT}",
        f"  {'orphans':>9} {'(a) ours':>11} {'(b) reference':>14} {'(c) lower bound':>16} {'a/b':>8} {'c/a':>6}",
    ]
    for row in report.throughput:
        ref = row["reference"]
        lines.append(
            f"  {row['orphans']:>9,} {row['ours']['per_second']:>11,.0f} {ref['per_second']:>14,.0f} "
            f"{row['lower_bound']['per_second']:>16,.0f} {row['ours_over_reference']:>7.1f}x "
            f"{row['lower_bound_over_ours']:>5.2f}x"
        )
    lines += [
        "",
        f"all-tenant sweeps (one per tick, limit {LIMIT} per tenant): linked orphans/s",
        f"  {'orphans':>9} {'(a) ours':>11} {'(c) lower bound':>16} {'a/b':>8} {'c/a':>6} {'sweeps':>7}",
    ]
    for row in report.throughput:
        lines.append(
            f"  {row['orphans']:>9,} {row['ours_all']['per_second']:>11,.0f} "
            f"{row['lower_bound_all']['per_second']:>16,.0f} {row['ours_all_over_reference']:>7.1f}x "
            f"{row['lower_bound_all_over_ours_all']:>5.2f}x {row['ours_all']['batches']:>7}"
        )
    for row in report.throughput:
        ref = row["reference"]
        if not ref["complete"]:
            lines.append(
                f"  note: (b) at {row['orphans']:,}: measured on {ref['linked']:,} of {row['orphans']:,} orphans "
                f"({ref['elapsed_s']:.0f} s budget), not extrapolated"
            )
    lines += [
        "",
        f"history: one sweep, {report.history[0]['pending'] if report.history else 0:,} pending orphans, same tenant",
        f"  {'reconciled in window':>21} {'sweep ms':>9} {'vs none':>8} {'orig. find ms':>14} {'vs none':>8}",
    ]
    for row in report.history:
        lines.append(
            f"  {row['reconciled_in_window']:>21,} {row['sweep_s_median'] * 1000:>9.1f} "
            f"{row['sweep_ratio_vs_empty']:>7.2f}x {row['reference_find_s_median'] * 1000:>14.1f} "
            f"{row['reference_find_ratio_vs_empty']:>7.2f}x"
        )
    mem = report.memory
    if mem:
        lines += [
            "",
            f"memory: {mem['orphans']:,}-orphan sweep (batch {mem['batch']}): peak RSS {mem['peak_rss_mib']:.0f} MiB, "
            f"{mem['baseline_rss_mib']:.0f} MiB before the first sweep (+{mem['growth_mib']:.0f} MiB)",
        ]
    tick = report.tick
    if tick:
        lines.append(
            f"tick: tenants_with_due_orphans, {tick['tenants']:,} tenants / {tick['orphans']:,} due orphans: "
            f"{tick['wall_s_median'] * 1000:.1f} ms wall (median), {tick['server_execution_s'] * 1000:.1f} ms "
            f"server, {tick['queries']} query, {tick['tenants_found']:,} tenants found"
        )
    dag = report.dagster
    if dag.get("available"):
        lines.append(
            f"dagster: one partition run ({dag['orphans_per_partition']:,} orphans) "
            f"{dag['dagster_run_s_median'] * 1000:.0f} ms vs bare sweep {dag['bare_sweep_s_median'] * 1000:.0f} ms: "
            f"+{dag['overhead_s'] * 1000:.0f} ms ({dag['ratio']:.1f}x)"
        )
    elif dag:
        lines.append(f"dagster: not measured, code location not loadable ({dag['error']})")
    lines += ["", "targets:"]
    for target in report.targets:
        lines.append(f"  [{'MET ' if target['met'] else 'MISS'}] {target['target']}: {target['measured']}")
    return "\n".join(lines)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [row["reconciled_in_window"] for row in report.history]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(xs, [r["sweep_s_median"] * 1000 for r in report.history], "o-", label="sweep (work queue), median")
    ax.plot(
        xs,
        [r["reference_find_s_median"] * 1000 for r in report.history],
        "s--",
        label="original find_orphans query alone (ledger scan + anti-join)",
    )
    ax.set_xscale("symlog", linthresh=max(1, min((x for x in xs if x), default=1)))
    ax.set_yscale("log")
    ax.set_xlabel("reconciled orphans in the 7-day window (same tenant)")
    ax.set_ylabel("ms (log scale)")
    pending = report.history[0]["pending"] if report.history else 0
    short = str(report.machine["postgresql_short"]).split(" (")[0]
    ax.set_title(f"One sweep of {pending:,} pending orphans vs history ({short})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep",
        description="Measure the reconciler's sweep against the original algorithm and a lower bound.",
    )
    parser.add_argument("--database-url", help="server to create scratch databases on (default: the app's)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures")
    parser.add_argument("--output-dir", type=Path, help="where results.json and the plot go")
    parser.add_argument("--skip-dagster", action="store_true", help="leave out the Dagster overhead figure")
    parser.add_argument("--replot", type=Path, metavar="DIR", help="redraw DIR/sweep_vs_history.png from its results")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads((args.replot / "results.json").read_text())
        plot(Report(**saved), args.replot / "sweep_vs_history.png")
        return 0

    sizes = QUICK if args.quick else FULL
    began = time.perf_counter()
    now = datetime.now(UTC)
    out_dir = args.output_dir or RESULTS_ROOT / now.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(mode="quick" if args.quick else "full", started_at=now.isoformat(timespec="seconds"))

    server = ScratchServer(resolve_database_url(args.database_url))
    try:
        facts = server.server_facts()
        report.machine = {
            "cpus": os.cpu_count(),
            "platform": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(),
            "postgresql": facts["version"],
            "postgresql_short": f"PostgreSQL {str(facts['server_version']).split()[0]}",
            "server": f"{facts['host']} ({describe_url(server.admin_url)})",
            "scratch_prefix": server.prefix,
        }
        log(f"scratch databases {server.prefix}* on {facts['host']}, {facts['server_version']}")
        server.create_template()
        bench_throughput(server, sizes, report)
        bench_history(server, sizes, report)
        bench_tick(server, sizes, report)
        if not args.skip_dagster:
            log("dagster overhead")
            bench_dagster(server, sizes, report)
    finally:
        server.drop_all()

    evaluate_targets(report)
    report.total_s = time.perf_counter() - began
    png = out_dir / "sweep_vs_history.png"
    plot(report, png)
    (out_dir / "results.json").write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    print(render(report))
    print(f"\nresults: {out_dir / 'results.json'}")
    print(f"plot: {png}")
    print(f"total: {report.total_s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
