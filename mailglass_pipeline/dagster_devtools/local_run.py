"""Run ``reconcile_orphans`` in this process, one tenant partition after another.

This is what the README's quick start and ``mailglass run`` call: the same job,
ops and metadata as the UI and the schedule, without a webserver or daemon.

``mailglass run`` first prepares the instance ``mailglass dev`` uses
(``dev.prepare_dev_environment``: ``$DAGSTER_HOME``, else ``.dagster_home/``
with its storage in a ``dagster`` database beside the application database), so
its runs and materializations are in the UI afterwards. Called as a library with
no ``DAGSTER_HOME``, ``materialize_tenants`` uses an ephemeral instance: the
reconciler keeps all of its state in the application database, so nothing a
later run needs is lost with it.

``execute_in_process`` bypasses the run queue, so the one-at-a-time limit is kept
here in two steps: before each run, wait until no run holding ``RECONCILE_POOL``
is active (``wait_for_free_pool``); once started, the run counts as in progress
for the queue (its record carries the pool), and its first op waits for any
run holding the pool that started earlier (``dagster_support.pool.wait_for_pool_turn``), which settles the
moment where the daemon launched a run just before this one started.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import DagsterInstance, RunsFilter

from mailglass_pipeline import db, orphans
from mailglass_pipeline.dagster_support.pool import (
    POOL_POLL_SECONDS,
    POOL_WAIT_TIMEOUT_SECONDS,
    SWEEPING_STATUSES,
    holds_reconcile_pool,
)
from mailglass_pipeline.dagster_support.private import job_by_name, materialization_metadata
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.tenant_reconciliation.jobs import RECONCILE_JOB_NAME
from mailglass_pipeline.defs.tenant_reconciliation.ops import COUNT_KEYS
from mailglass_pipeline.defs.tenant_reconciliation.partitions import TENANTS_PARTITIONS_NAME, is_valid_tenant_key
from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.reconciliation.monitoring import known_tenants

log = logging.getLogger(__name__)

#: Only warnings and errors on the console: the quick start prints the counts itself.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@contextmanager
def local_instance() -> Iterator[DagsterInstance]:
    """``$DAGSTER_HOME``'s instance when set, else an ephemeral one (see the module doc)."""
    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            yield instance
    else:
        with DagsterInstance.ephemeral() as instance:
            yield instance


def wait_for_free_pool(instance: DagsterInstance, timeout: float = POOL_WAIT_TIMEOUT_SECONDS) -> float:
    """Wait until no active run holds ``RECONCILE_POOL``; return the seconds waited (raises after ``timeout``)."""
    started = time.monotonic()
    announced = False
    while True:
        records = instance.get_run_records(RunsFilter(statuses=SWEEPING_STATUSES))
        busy = [r.dagster_run.run_id for r in records if holds_reconcile_pool(r.dagster_run)]
        if not busy:
            return time.monotonic() - started
        if not announced:
            log.warning("waiting for run(s) %s to finish: one reconciliation at a time", busy)
            announced = True
        if time.monotonic() - started > timeout:
            raise ConfigurationError(f"run(s) {busy} still hold the reconcile pool after {timeout:.0f} s")
        time.sleep(POOL_POLL_SECONDS)


def materialize_tenants(
    tenant_ids: list[str] | None = None, *, database_url: str | None = None
) -> dict[str, dict[str, int]]:
    """Materialize ``mailglass/webhook_reconciliation`` for each tenant; return each run's counts.

    ``tenant_ids`` None means every tenant in the database (ids unfit as partition
    keys are logged and skipped; ``mailglass reconcile`` still handles them). An
    explicit unfit id raises ``ValueError`` before anything runs. A failed run
    raises. Returns ``{tenant: {"scanned", "linked", "unmatched", "malformed",
    "already_reconciled", "remaining_orphans", "stale_orphans"}}``.
    """
    from mailglass_pipeline.definitions import build_definitions

    url = db.resolve_database_url(database_url)
    if tenant_ids is None:
        with db.connect(db.get_engine(url)) as conn:
            found = known_tenants(conn)
        unfit = [t for t in found if not is_valid_tenant_key(t)]
        if unfit:
            log.warning("skipping tenant id(s) unfit as partition keys: %r", unfit)
        tenant_ids = [t for t in found if is_valid_tenant_key(t)]
    else:
        unfit = [t for t in tenant_ids if not is_valid_tenant_key(t)]
        if unfit:
            raise ConfigurationError(f"tenant id(s) cannot be partition keys: {unfit!r}")
        # A typo must not become a permanent partition (every later "All" backfill would run it):
        # a tenant no delivery or orphan has is skipped, no partition and no run.
        with db.connect(db.get_engine(url)) as conn:
            unknown = [t for t in tenant_ids if not orphans.tenant_known(conn, t)]
        if unknown:
            log.warning("skipping tenant id(s) no delivery or orphan has: %r", unknown)
        tenant_ids = [t for t in tenant_ids if t not in unknown]

    job = job_by_name(build_definitions(MailglassDatabase(database_url=url)), RECONCILE_JOB_NAME)
    results: dict[str, dict[str, int]] = {}
    with local_instance() as instance:
        known = set(instance.get_dynamic_partitions(TENANTS_PARTITIONS_NAME))
        missing = [t for t in dict.fromkeys(tenant_ids) if t not in known]
        if missing:
            instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, missing)
        for tenant in dict.fromkeys(tenant_ids):
            wait_for_free_pool(instance)
            run = job.execute_in_process(partition_key=tenant, instance=instance, run_config=QUIET_RUN_CONFIG)
            metadata = materialization_metadata(run)
            results[tenant] = {key: int(metadata[key].value) for key in COUNT_KEYS}
    return results
