"""Tenant reconciliation: the partitioned graph asset ``mailglass/webhook_reconciliation``.

One dynamic partition per tenant (``partitions``, added by the sensor in ``sensors``), the three
ops of a per-tenant run (``ops``), the graph asset (``assets``), its job (``jobs``) and the
per-tenant check ``no_stale_orphans`` (``checks``).
"""
