"""The Dagster layer: definitions only, grouped by feature, a thin adapter over the reconciler.

Nothing here decides *what* a sweep does: that is ``mailglass_pipeline.reconciliation``,
which imports no Dagster and is shared with the ``mailglass reconcile`` command.
This package only decides *when* and *how* it runs and what is recorded:

* ``tenant_reconciliation/``: the per-tenant partitioned graph asset, its ops, job,
  partition sensor and stale-orphan check;
* ``scheduled_sweep/``: the all-tenant sweep asset and job, the minute schedule, the lag check;
* ``retention/``: the daily job that bounds Dagster storage and parked queue rows;
* ``resources.py``: the database resource every feature uses.

``mailglass_pipeline.definitions`` merges them into the ``defs`` object that
``workspace.yaml`` loads. Helpers shared by the features live in
``mailglass_pipeline.dagster_support``; local tooling (``mailglass dev``/``run``/``stop``)
in ``mailglass_pipeline.dagster_devtools``.
"""
