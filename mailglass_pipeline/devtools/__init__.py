"""What starts or drives Dagster locally: ``mailglass dev``, ``run`` and ``stop``.

Tooling, not definitions: ``dev`` prepares the instance and supervises the webserver and the
daemon as processes; it imports nothing from Dagster itself (what touches Dagster's API, the pool
limit and ``mailglass run``'s in-process job, is in ``dagster_support``). The code location never
imports this.
"""
