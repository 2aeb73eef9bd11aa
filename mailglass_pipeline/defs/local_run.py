"""Run ``reconcile_orphans`` in this process, one tenant partition after another.

This is what the README's quick start and ``mailglass run`` call: the same job,
ops and metadata as the UI and the schedule, without a webserver or daemon.

The instance is the configured one (``$DAGSTER_HOME``) when there is one, so
the runs and their materializations show up in the UI's history; otherwise an
ephemeral in-memory instance. That is enough because the reconciler keeps all
of its state in the application database (the work queue and the ledger), not
in Dagster: nothing a later run needs is lost with the ephemeral instance, and
the quick start needs no Dagster storage at all. Runs here are sequential in one
process, so the run queue's limits (which ``execute_in_process`` bypasses) have
nothing to add; exactness never depended on them anyway (idempotency index).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import DagsterInstance

from mailglass_pipeline import db, reconciler
from mailglass_pipeline.defs.jobs import RECONCILE_JOB_NAME
from mailglass_pipeline.defs.ops import COUNT_KEYS
from mailglass_pipeline.defs.partitions import TENANTS_PARTITIONS_NAME, is_valid_tenant_key
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.errors import ConfigurationError

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
            found = reconciler.known_tenants(conn)
        unfit = [t for t in found if not is_valid_tenant_key(t)]
        if unfit:
            log.warning("skipping tenant id(s) unfit as partition keys: %r", unfit)
        tenant_ids = [t for t in found if is_valid_tenant_key(t)]
    else:
        unfit = [t for t in tenant_ids if not is_valid_tenant_key(t)]
        if unfit:
            raise ConfigurationError(f"tenant id(s) cannot be partition keys: {unfit!r}")

    job = build_definitions(MailglassDatabase(database_url=url)).resolve_job_def(RECONCILE_JOB_NAME)
    results: dict[str, dict[str, int]] = {}
    with local_instance() as instance:
        known = set(instance.get_dynamic_partitions(TENANTS_PARTITIONS_NAME))
        missing = [t for t in dict.fromkeys(tenant_ids) if t not in known]
        if missing:
            instance.add_dynamic_partitions(TENANTS_PARTITIONS_NAME, missing)
        for tenant in dict.fromkeys(tenant_ids):
            run = job.execute_in_process(partition_key=tenant, instance=instance, run_config=QUIET_RUN_CONFIG)
            [event] = run.get_asset_materialization_events()
            metadata = event.materialization.metadata
            results[tenant] = {key: int(metadata[key].value) for key in COUNT_KEYS}
    return results
