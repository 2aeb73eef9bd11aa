"""The scheduled sweep: one run a minute over every tenant with due orphans.

The asset ``mailglass/reconciliation_sweep`` and its op (``assets``), its job ``reconcile_due_tenants``
(``jobs``), the minute schedule
(``schedules``) and the lag check that runs after each sweep (``checks``). It records
materializations of the tenant partitions of ``tenant_reconciliation``'s asset.
"""
