"""Helpers the Dagster definitions share, and the one home of Dagster's non-public names.

``mailglass_pipeline.defs`` holds definitions only (assets, ops, jobs, schedules,
sensors, checks), grouped by feature. What more than one feature needs lives here:

* ``private``: every non-public Dagster name (a ``dagster._*`` import or a non-public
  method) the package uses (the tests' own are in tests/dagster_private.py), each pinned by a test
  (tests/dagster_support/test_private_dagster.py) so a Dagster upgrade that
  changes one fails a test instead of a production run;
* ``database``: the retry policy and the one-line failure for an unreachable database;
* ``pool``: the reconciliation pool and the wait that keeps runs outside the queue apart;
* ``metadata``: queue-state counts shared by the per-tenant and the scheduled sweep;
* ``config_errors``: a bad Launchpad value refused with one line naming the field and its bound.

Nothing here imports ``defs`` or ``dagster_devtools``, and no module but ``private`` imports ``dagster._``
or calls a non-public Dagster method (tests/test_layering.py checks both).
"""
