"""The reconciliation pool: one reconciliation at a time, whatever launched it.

Every reconciliation op (the per-tenant graph's three, the scheduled sweep's
asset) declares ``pool=RECONCILE_POOL``; ``dagster.yaml`` sets that pool to run
granularity with a limit of 1, so the run queue admits at most one run holding
the pool at a time (unlike run tags, a pool holds on the asset page's implicit
asset job too). Runs that never pass through the queue (``mailglass run``, i.e.
``execute_in_process``) are covered by ``wait_for_pool_turn``: a run sweeps only
once no run that started before it still holds the pool.
"""

from __future__ import annotations

import time

from dagster import DagsterRun, DagsterRunStatus, Failure, OpExecutionContext, RunsFilter

from mailglass_pipeline.dagster_support.private import run_pools

RECONCILE_POOL = "mailglass_reconcile"

#: Statuses in which a run may be sweeping (a QUEUED run is the run queue's business).
SWEEPING_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
#: How long a run waits for an older run holding the pool before it fails (longer than any healthy sweep).
POOL_WAIT_TIMEOUT_SECONDS = 900.0
POOL_POLL_SECONDS = 0.5

POOL_HELD_MESSAGE = f"sweeping: pool {RECONCILE_POOL} is this run's"


def holds_reconcile_pool(run: DagsterRun) -> bool:
    """Whether ``run`` has a step in ``RECONCILE_POOL``."""
    return RECONCILE_POOL in run_pools(run)


def older_pool_runs(context: OpExecutionContext) -> list[str]:
    """Ids of other started runs holding the pool that started before this one (ties: by run id)."""
    records = context.instance.get_run_records(RunsFilter(statuses=SWEEPING_STATUSES))
    mine = next((r for r in records if r.dagster_run.run_id == context.run_id), None)
    mine_key = (mine.start_time, context.run_id) if mine is not None and mine.start_time else None
    older = []
    for record in records:
        run = record.dagster_run
        if run.run_id == context.run_id or not holds_reconcile_pool(run) or not record.start_time:
            continue  # a run not started yet will start after us and wait for us here
        if mine_key is None or (record.start_time, run.run_id) < mine_key:
            older.append(run.run_id)
    return older


def wait_for_pool_turn(context: OpExecutionContext) -> float:
    """Wait until no run that started earlier still holds ``RECONCILE_POOL``; return the seconds waited.

    The run queue already keeps two pool runs apart (run granularity, limit 1), so
    a queued launch never waits here. What this closes is the path around the queue:
    an ``execute_in_process`` run (``mailglass run``) counts as in progress for the
    queue only once it has started, and the daemon may launch a run meanwhile.
    Both runs then meet here, and the order of their start times (then run ids),
    which both read from the same run storage, lets exactly one sweep first: a run
    that started later sees the earlier one as started and waits; the earlier one
    sees the later one either not yet started or started after it. A run that
    waits longer than ``POOL_WAIT_TIMEOUT_SECONDS`` fails and names the run it waited for (a crashed
    worker's run is failed by run monitoring, which frees the pool).
    """
    started = time.monotonic()
    announced = False
    while True:
        older = older_pool_runs(context)
        if not older:
            waited = time.monotonic() - started
            context.log.info(f"{POOL_HELD_MESSAGE} (waited {waited:.1f} s)")
            return waited
        if not announced:
            context.log.info(f"waiting for run(s) {older} holding pool {RECONCILE_POOL} to finish")
            announced = True
        if time.monotonic() - started > POOL_WAIT_TIMEOUT_SECONDS:
            raise Failure(
                description=(
                    f"waited {POOL_WAIT_TIMEOUT_SECONDS:.0f} s for run(s) {older} holding pool {RECONCILE_POOL}; "
                    "terminate or fail them in the UI (Runs) and launch again"
                ),
                allow_retries=False,
            )
        time.sleep(POOL_POLL_SECONDS)
