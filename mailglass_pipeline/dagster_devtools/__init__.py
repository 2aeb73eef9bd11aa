"""What starts or drives Dagster locally: ``mailglass dev``, ``run`` and ``stop``.

Tooling, not definitions: ``dev`` prepares the instance (its pool limit included) and supervises
the webserver and the daemon as processes; ``local_run`` runs the per-tenant job in process for
``mailglass run``. Both may use ``defs`` and ``dagster_support``; the code location never imports
this package (tests/test_layering.py).
"""
