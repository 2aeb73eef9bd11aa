"""Every private Dagster name the runtime relies on, in one place.

Dagster 1.13 offers no public API for these; each is pinned by
tests/dagster_support/test_private_dagster.py, so an upgrade that renames or
changes one fails there first. Nothing outside ``mailglass_pipeline.dagster_support``
may import ``dagster._`` (tests/test_layering.py).

* ``ASSET_PARTITION_RANGE_START_TAG`` / ``_END_TAG``: an asset backfill's run of
  one partition carries its key only in these tags (no partition key).
* ``log_materializations_in_batches``: many materializations of another asset's
  partitions from one step, stored in batches (``DAGSTER_EVENT_BATCH_SIZE`` and
  ``DagsterEventBatchMetadata``: Dagster's own path for a partition-range output).
* ``delete_check_executions``: ``DagsterInstance.delete_run`` leaves the
  ``asset_check_executions`` rows of a run behind; no public API deletes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dagster import AssetMaterialization, DagsterInstance, OpExecutionContext
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "EVENT_BATCH_SIZE",
    "EVENT_BATCH_SIZE_ENV",
    "delete_check_executions",
    "event_batching",
    "log_materializations_in_batches",
]

#: Read by ``DagsterInstance.handle_new_event``: events with batch metadata are stored this many at a time.
EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
#: Events per storage write when the environment sets no size.
EVENT_BATCH_SIZE = 1000


@contextmanager
def event_batching(size: int = EVENT_BATCH_SIZE) -> Iterator[None]:
    """Turn on Dagster's batched event writes for this block unless the environment already chose a size."""
    if os.environ.get(EVENT_BATCH_SIZE_ENV):
        yield
        return
    os.environ[EVENT_BATCH_SIZE_ENV] = str(size)
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
