"""Reconciliation: link orphan webhook events to the deliveries that committed after them.

Follow an orphan one module at a time:

* ``settings``: what a sweep may do, each setting defined once (defaults, bounds, the backoff);
* ``sweep``: find the due orphans, link them, write the outcome (``sql/sweep.sql``);
  ``sweep.reconcile`` is the contract's ``mailglass_pipeline.reconcile``;
* ``drain``: ``sweep_due_tenants``, a scheduled run's loop of bounded sweep transactions under a
  time budget;
* ``monitoring``: the reads behind the schedule, the sensor and the checks (``sql/monitoring.sql``);
* ``results``: what they report;
* ``statements``: the package's SQL.

Import each name from the module that defines it: this package re-exports nothing.
"""
