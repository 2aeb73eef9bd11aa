"""mailglass-pipeline: keep a transactional-email delivery ledger in PostgreSQL correct.

The domain core (``db``, ``schema``, ``ledger``, ``deliveries``, ``projector``,
``reconcile``, ``ingest``) imports no Dagster; ``mailglass_pipeline.defs`` is
the thin Dagster layer over it.
"""

from __future__ import annotations

from mailglass_pipeline.errors import EventLedgerImmutableError, MailglassError

# The function, by contract: it is bound after the import of the `reconcile` package (which
# imports its subpackage first), so `mailglass_pipeline.reconcile` stays the function while
# `from mailglass_pipeline.reconcile import settings` still reaches the package (tests/core/test_reconcile_paths.py).
from mailglass_pipeline.reconciler import reconcile

__all__ = ["EventLedgerImmutableError", "MailglassError", "available", "reconcile"]
__version__ = "0.1.0"


def available() -> bool:
    """Whether the Dagster entrypoint (``mailglass_pipeline.definitions:defs``) can be loaded."""
    try:
        from mailglass_pipeline.definitions import defs  # noqa: F401
    except Exception:
        return False
    return True
