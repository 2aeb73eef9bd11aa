"""What starts or drives Dagster locally: ``mailglass dev``, ``run`` and ``stop``.

Tooling, not definitions: ``dev`` prepares the instance and supervises the webserver and the
daemon; ``local_run`` runs the per-tenant job in process. The code location never imports this.
"""
