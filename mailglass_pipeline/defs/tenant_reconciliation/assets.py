"""The graph-backed asset ``mailglass/webhook_reconciliation``, one partition per tenant.

What it "materializes" is the reconciled state of a tenant's ledger: a run
appends the ``reconciled`` events due now, and its materialization records how
many orphans were scanned and linked and how many are left. It stores no value
(its last op's output is ``Nothing``): the data is the ledger itself, and the
batch DataFrames never leave the run.

No backfill policy, on purpose: without one Dagster's asset backfill launches one run per
partition with that partition KEY (``build_run_requests_with_backfill_policies``), like every other
launch path. A policy (even ``multi_run(1)``) gives each run a partition RANGE instead, and Dagster
then records the partitioned check's evaluation without a partition while it planned one for it
(``AssetCheckResult.to_asset_check_evaluation`` reads only ``has_partition_key``): the check read
"Skipped" for every tenant of such a backfill (issue 24, decision D21).
"""

from __future__ import annotations

from dagster import AssetKey, graph_asset

from mailglass_pipeline.defs.tenant_reconciliation.ops import (
    append_reconciled_events,
    attempt_link,
    find_orphans,
    reconcile_config_mapping,
)
from mailglass_pipeline.defs.tenant_reconciliation.partitions import tenants_partitions

WEBHOOK_RECONCILIATION_KEY = AssetKey(["mailglass", "webhook_reconciliation"])


@graph_asset(
    key=WEBHOOK_RECONCILIATION_KEY,
    partitions_def=tenants_partitions,
    config=reconcile_config_mapping,
    group_name="mailglass",
    kinds={"postgres", "python"},
    description=(
        "Orphan webhook events of one tenant linked to the deliveries that committed after them: "
        "find_orphans -> attempt_link -> append_reconciled_events."
    ),
)
def webhook_reconciliation():
    return append_reconciled_events(attempt_link(find_orphans()))
