"""mailglass-pipeline: keep a transactional-email delivery ledger in PostgreSQL correct.

The domain core (``db``, ``schema``, ``ledger``, ``deliveries``, ``projector``,
``reconcile``, ``ingest``) imports no Dagster; ``mailglass_pipeline.defs`` is
the thin Dagster layer over it.
"""

from __future__ import annotations

from mailglass_pipeline.errors import EventLedgerImmutableError, MailglassError

# The contract's function; its code lives in the `reconciliation` package, which no name here shadows.
from mailglass_pipeline.reconciliation.sweep import reconcile

__all__ = ["EventLedgerImmutableError", "MailglassError", "available", "reconcile"]
__version__ = "0.1.0"


def available() -> bool:
    """Whether the Dagster entrypoint (``mailglass_pipeline.definitions:defs``) can be loaded."""
    try:
        from mailglass_pipeline.definitions import defs  # noqa: F401
    except Exception:
        return False
    return True
