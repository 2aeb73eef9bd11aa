"""Dagster overhead: one tenant partition run in process vs the bare core sweep on the same data.

The partition run goes through the real job (``reconcile_orphans``: the three
ops, the resource, the IO manager, run and event storage) on an ephemeral
Dagster instance, which is what ``mailglass_pipeline.dagster_devtools.local_run`` uses.
The database URL reaches the code location the way it does in production,
through ``MAILGLASS_DATABASE_URL``. Kept apart from :mod:`benchmarks.sweep`
because Dagster is slow to import and is being written concurrently: when the
code location cannot be loaded, the benchmark reports that instead of failing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from mailglass_pipeline import settings


def partition_runner(database_url: str) -> tuple[Callable[[str], dict[str, Any]], str]:
    """A function running one tenant partition through Dagster in process, and how it does it.

    Raises ImportError (or whatever the code location raises) when Dagster's
    definitions are not loadable.
    """
    os.environ[settings.DATABASE_URL.env] = database_url
    try:
        from mailglass_pipeline.dagster_devtools.local_run import materialize_tenants  # type: ignore[import-not-found]
    except ImportError:
        materialize_tenants = None
    if materialize_tenants is not None:

        def run_helper(tenant: str) -> dict[str, Any]:
            return {"result": materialize_tenants([tenant], database_url=database_url)}

        return run_helper, "mailglass_pipeline.dagster_devtools.local_run.materialize_tenants"

    from dagster import DagsterInstance

    from mailglass_pipeline.definitions import defs  # type: ignore[import-not-found]

    job = defs.get_job_def("reconcile_orphans")
    instance = DagsterInstance.ephemeral()

    def run_job(tenant: str) -> dict[str, Any]:
        instance.add_dynamic_partitions("tenants", [tenant])
        result = job.execute_in_process(partition_key=tenant, instance=instance)
        return {"success": result.success}

    return run_job, "defs.get_job_def('reconcile_orphans').execute_in_process (ephemeral instance)"


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value
