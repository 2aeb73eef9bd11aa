"""Tenant partitions and the run tags derived from a tenant.

A tenant id becomes a dynamic partition key only if it matches
``TENANT_KEY_PATTERN``: letters, digits and ``_ . @ -``, 1 to 64 characters.
Commas, brackets and whitespace are excluded because the UI's backfill and
partition-range syntax splits on them (``[a...b]``, ``a,b``), and a key that
cannot be selected in the UI is worse than a key that is reported and left out.
Such a tenant is still reconciled by ``mailglass reconcile``; it just has no
partition.

Every run of the job carries ``RECONCILE_TAG`` and ``TENANT_TAG=<tenant>``:
``dagster.yaml`` limits both, so the run queue admits one reconciliation at a
time and never two for one tenant, whatever launched the run.
"""

from __future__ import annotations

import re

from dagster import DynamicPartitionsDefinition

TENANTS_PARTITIONS_NAME = "tenants"
TENANT_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

RECONCILE_TAG = "mailglass/reconcile"
TENANT_TAG = "mailglass/tenant"
RECONCILE_TAGS = {RECONCILE_TAG: "true"}

tenants_partitions = DynamicPartitionsDefinition(name=TENANTS_PARTITIONS_NAME)


def is_valid_tenant_key(tenant_id: object) -> bool:
    """Whether ``tenant_id`` can be a partition key (see the module doc for the rule)."""
    return isinstance(tenant_id, str) and TENANT_KEY_PATTERN.fullmatch(tenant_id) is not None


def tags_for_tenant(tenant_id: str) -> dict[str, str]:
    """Run tags of a run reconciling ``tenant_id``."""
    return {**RECONCILE_TAGS, TENANT_TAG: tenant_id}
