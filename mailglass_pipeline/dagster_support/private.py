"""Every non-public Dagster name the package uses, imported or called, in one place.

Dagster 1.13 offers no public API for these; each is pinned by
tests/dagster_support/test_private_dagster.py, so an upgrade that renames or
changes one fails there first. No other module of the package imports ``dagster._``
or calls a non-public Dagster method (tests/test_layering.py). Only what the package
itself uses is here: what only tests and benchmarks need is in tests/dagster_private.py,
which does not ship (decision D12).

Used by the code location and ``mailglass dev``/``run``:

* ``log_materializations_in_batches``: many materializations of another asset's
  partitions from one step, stored in batches (``DAGSTER_EVENT_BATCH_SIZE`` and
  ``DagsterEventBatchMetadata``: Dagster's own path for a partition-range output).
* ``delete_check_executions``: ``DagsterInstance.delete_run`` leaves the
  ``asset_check_executions`` rows of a run behind; no public API deletes them.
* ``run_pools``, ``add_run_tags``, ``ensure_default_pool_limit``: a run's concurrency pools, tags
  added to a started run, the instance's default pool limit.
* ``latest_materialization_ids_by_partition``: the retention job keeps each partition's latest.
* ``job_by_name``, ``materialization_metadata``, ``job_names``, ``config_schema``: a definitions'
  job with its asset jobs resolved, an in-process run's one materialization, every job of a code
  location, a pythonic ``Config`` class as a ``config_mapping``'s schema (methods not marked
  ``@public``; the tests and benchmarks call the first two directly, see
  ``NON_PUBLIC_ATTRIBUTES_TESTS_CALL`` in tests/dagster_private.py).
* ``DAEMON_MODULE``: ``mailglass dev`` starts the daemon as ``python -m dagster._daemon`` where its
  ``dagster-daemon`` script is not beside the interpreter.
* ``target_materializations_of_run``: the materializations a check evaluation logged by the sweep
  targets (``AssetCheckEvaluationTargetMaterializationData`` is not exported; decision D31).
* ``check_partition_infos``, ``partitions_with_check_in_flight``: a partitioned check's latest
  execution per partition, as the UI's status reads it (``get_asset_check_partition_info``), and the
  partitions whose check another run planned and has not finished (decision D31).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetMaterialization,
    Config,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    Definitions,
    ExecuteInProcessResult,
    JobDefinition,
    OpExecutionContext,
    RunsFilter,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

#: What a check evaluation names as the materialization it checked (not exported by Dagster).
MaterializationTarget = AssetCheckEvaluationTargetMaterializationData

__all__ = [
    "DAEMON_MODULE",
    "EVENT_BATCH_SIZE",
    "EVENT_BATCH_SIZE_ENV",
    "MaterializationTarget",
    "add_run_tags",
    "check_partition_infos",
    "config_schema",
    "delete_check_executions",
    "ensure_default_pool_limit",
    "event_batching",
    "job_by_name",
    "job_names",
    "latest_materialization_ids_by_partition",
    "log_materializations_in_batches",
    "materialization_metadata",
    "partitions_with_check_in_flight",
    "run_pools",
    "target_materializations_of_run",
]

#: ``python -m`` target of the daemon (its ``dagster-daemon`` script runs this module's ``main``).
DAEMON_MODULE = "dagster._daemon"

#: Read by ``DagsterInstance.handle_new_event``: events with batch metadata are stored this many at a time.
EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
#: Events per storage write when the environment sets no size.
EVENT_BATCH_SIZE = 1000


@contextmanager
def event_batching() -> Iterator[None]:
    """Turn on Dagster's batched event writes for this block unless the environment already chose a size."""
    if os.environ.get(EVENT_BATCH_SIZE_ENV):
        yield
        return
    os.environ[EVENT_BATCH_SIZE_ENV] = str(EVENT_BATCH_SIZE)
    try:
        yield
    finally:
        os.environ.pop(EVENT_BATCH_SIZE_ENV, None)


def log_materializations_in_batches(
    context: OpExecutionContext, materializations: Sequence[AssetMaterialization]
) -> int:
    """Log ``materializations`` from this step, stored in batches (one INSERT per batch in dagster-postgres)."""
    if not materializations:
        return 0
    step_context = context.get_step_execution_context()
    batch_id = generate_event_batch_id()
    last = len(materializations) - 1
    with event_batching():
        for i, materialization in enumerate(materializations):
            # Logs the event with its batch metadata: stored when the batch is full or ends.
            DagsterEvent.asset_materialization(
                step_context, materialization, DagsterEventBatchMetadata(batch_id, i == last)
            )
    return len(materializations)


def delete_check_executions(instance: DagsterInstance, run_ids: list[str]) -> int:
    """Delete the ``asset_check_executions`` rows of deleted runs; return how many.

    ``delete_run`` leaves them (Dagster 1.13 has no per-run API for them): one ~2 kB row per
    check evaluation, so without this a minute schedule still grows storage by ~1,440 rows a day.
    SQL event-log storages only (PostgreSQL in production); another storage is left as it is.
    """
    storage = getattr(instance, "event_log_storage", None)
    if not run_ids or storage is None or not hasattr(storage, "index_connection"):
        return 0
    with storage.index_connection() as conn:
        result = conn.execute(AssetCheckExecutionsTable.delete().where(AssetCheckExecutionsTable.c.run_id.in_(run_ids)))
        return int(result.rowcount or 0)


def run_pools(run: DagsterRun) -> frozenset[str]:
    """The concurrency pools of ``run``'s steps, as recorded when the run was created."""
    concurrency = run.run_op_concurrency
    return frozenset(concurrency.all_pools or ()) if concurrency else frozenset()


def add_run_tags(instance: DagsterInstance, run_id: str, tags: dict[str, str]) -> None:
    """Add ``tags`` to a run that already exists (its launcher did not set them)."""
    instance.add_run_tags(run_id, tags)


def ensure_default_pool_limit(home: Path, pool: str) -> int | None:
    """Write ``dagster.yaml``'s default pool limit for ``pool`` into the instance at ``home``; return the limit.

    Idempotent, and a no-op when the pool already has a limit set by hand
    (``dagster instance concurrency set``), which then wins.
    """
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        current = next((p for p in storage.get_pool_limits() if p.name == pool), None)
        default = instance.global_op_concurrency_default_limit
        if default is not None and (current is None or (current.from_default and current.limit != default)):
            storage.initialize_concurrency_limit_to_default(pool)
            return default
        return current.limit if current else None


def latest_materialization_ids_by_partition(instance: DagsterInstance, key: AssetKey) -> dict[str, int]:
    """Each partition of ``key`` with the event storage id of its latest materialization."""
    return instance.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION)


def target_materializations_of_run(
    instance: DagsterInstance, run_id: str, key: AssetKey
) -> dict[str, MaterializationTarget]:
    """Each partition of ``key`` this run materialized, as the target a check evaluation names (one read)."""
    targets: dict[str, MaterializationTarget] = {}
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:  # ascending: a partition materialized twice keeps its latest
        event = record.event_log_entry.dagster_event
        if event is None or event.asset_key != key or event.partition is None:
            continue
        targets[event.partition] = AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=run_id, timestamp=record.event_log_entry.timestamp
        )
    return targets


def check_partition_infos(instance: DagsterInstance, key: AssetCheckKey, partitions: list[str] | None = None) -> list:
    """Per partition, ``key``'s latest execution (by row id) against the partition's latest materialization.

    What the UI's per-partition status is computed from (``AssetCheckState``): a partition shows its
    latest execution's outcome only when ``is_current`` (that execution targets the latest
    materialization); otherwise it reads "Missing".
    """
    return list(instance.event_log_storage.get_asset_check_partition_info([key], partition_keys=partitions))


def partitions_with_check_in_flight(instance: DagsterInstance, key: AssetCheckKey, partitions: list[str]) -> set[str]:
    """The partitions whose latest execution of ``key`` is planned by a run not finished yet (two reads).

    Dagster takes a partition's latest execution by row id, and a run's rows are made when the run is
    created, before it is launched or waits for the reconcile pool: an evaluation inserted meanwhile
    would outrank the one that run writes later for its later materialization, and the partition
    would read "Missing".
    """
    if not partitions:
        return set()
    planned = {
        info.partition_key: info.latest_planned_run_id
        for info in check_partition_infos(instance, key, partitions)
        if info.partition_key is not None and info.latest_execution_status == AssetCheckExecutionRecordStatus.PLANNED
    }
    if not planned:
        return set()
    runs = instance.get_runs(RunsFilter(run_ids=sorted(set(planned.values()))))
    unfinished = {run.run_id for run in runs if not run.is_finished}
    return {partition for partition, run_id in planned.items() if run_id in unfinished}


def job_by_name(definitions: Definitions, name: str) -> JobDefinition:
    """The job ``name``, an asset job resolved (the public ``get_job_def`` warns on an unresolved asset job)."""
    return definitions.resolve_job_def(name)


def materialization_metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    """The metadata of the one asset materialization an in-process run recorded."""
    [event] = result.get_asset_materialization_events()
    return dict(event.materialization.metadata)


def job_names(definitions: Definitions) -> set[str]:
    """Every job of the code location, the implicit asset job(s) of the asset page included."""
    return set(definitions.get_repository_def().job_names)


def config_schema(config_class: type[Config]) -> Any:
    """A pythonic ``Config`` class as the ``config_schema`` a ``config_mapping`` takes."""
    return config_class.to_config_schema()
