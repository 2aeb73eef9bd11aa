"""Materialization metadata shared by the per-tenant runs and the scheduled sweep."""

from __future__ import annotations

from typing import Any

from mailglass_pipeline import orphans


def queue_state_metadata(conn: Any, tenants: list[str]) -> dict[str, dict[str, int]]:
    """Per tenant: its queued orphans by state, as ``queue_due`` ... ``queue_malformed`` (plotted per tenant)."""
    return {
        tenant: {f"queue_{state}": n for state, n in counts.items()}
        for tenant, counts in orphans.counts_by_state(conn, tenants).items()
    }
