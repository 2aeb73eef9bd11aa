"""The Dagster layer: a thin adapter that exposes the reconciler as a code location.

Nothing here decides *what* a sweep does: that is ``mailglass_pipeline.reconciler``,
which imports no Dagster and is shared with the ``mailglass reconcile`` command.
This package only decides *when* and *how* it runs (partitions, schedule,
sensor, run tags for the run queue's concurrency limits) and what is recorded
(materialization metadata, the stale-orphan check). ``mailglass_pipeline.definitions``
merges the modules below into the ``defs`` object that ``workspace.yaml`` loads.
"""
