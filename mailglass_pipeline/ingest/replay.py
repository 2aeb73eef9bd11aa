"""Re-run the ingest of stored webhooks: one tenant, one time range, idempotent.

After a fix to a provider's normalization (or to recover events a bug kept
out of the ledger), an operator replays the raw payloads Mailglass keeps in
``mailglass_webhook_events``. Each stored row goes through the same
parse and store as a live request, with verification off (the payload was
verified when it arrived; its signature headers are not kept), its original
``received_at`` and its own row key. A row is one provider event, so a
SendGrid row (``{"_batch": [element]}``) replays as a batch of one; a
per-request row Mailglass wrote replays its whole batch, under its own key.
So a replay:

- appends only ledger events not already there (the ledger's idempotency
  keys), never a second copy, and writes no second webhook row (the row's
  key is pinned, whatever events the payload holds);
- cannot change an event already in the append-only ledger: a corrected
  classification of an event that *was* stored needs a new event, not a replay;
- commits webhook by webhook, so one unreadable payload (counted, reported)
  does not hold back the others, and a second replay of the same range
  writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from mailglass_pipeline.db import get_engine, run_transaction
from mailglass_pipeline.ingest.base import PROVIDERS
from mailglass_pipeline.ingest.core import parse_webhook, store
from mailglass_pipeline.ingest.errors import IngestConfigurationError, IngestError
from mailglass_pipeline.ingest.tenants import check_tenant_id
from mailglass_pipeline.ingest.webhook_events import body_of
from mailglass_pipeline.queries import statement


def headers_of(row: Any) -> dict[str, str]:
    """Headers a payload needs back: Resend's event id travels in ``svix-id``, kept as the row's key."""
    if row.provider == "resend":
        return {"svix-id": row.provider_event_id}
    return {}


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def replay(
    tenant_id: str,
    since: datetime,
    until: datetime,
    *,
    provider: str | None = None,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Replay ``tenant_id``'s stored webhooks received in ``[since, until)``; returns the totals.

    Naive datetimes are read as UTC. Returns ``{"tenant_id", "since", "until",
    "webhooks", "replayed", "failed", "events", "duplicates", "errors"}``
    where ``events`` counts ledger rows this replay added.
    """
    check_tenant_id(tenant_id)
    if provider is not None and provider not in PROVIDERS:
        raise IngestConfigurationError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    start, end = _naive_utc(since), _naive_utc(until)
    if start >= end:
        raise IngestConfigurationError(f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})")
    engine = get_engine(database_url)
    with engine.connect() as conn:
        params = {"tenant_id": tenant_id, "since": start, "until": end, "provider": provider}
        rows = list(conn.execute(statement("stored_webhooks"), params))
    totals: dict[str, Any] = {
        "tenant_id": tenant_id,
        "since": start.isoformat(),
        "until": end.isoformat(),
        "webhooks": len(rows),
        "replayed": 0,
        "failed": 0,
        "events": 0,
        "duplicates": 0,
        "errors": [],
    }
    for row in rows:
        try:
            parsed = parse_webhook(row.provider, body_of(row.raw_payload), headers_of(row), verify=False)
        except IngestError as exc:
            totals["failed"] += 1
            totals["errors"].append({"webhook_event_id": str(row.id), "error": str(exc)})
            continue
        received_at = row.received_at.replace(tzinfo=UTC)

        def work(conn: sa.Connection, parsed: Any = parsed, row: Any = row, received_at: datetime = received_at) -> Any:
            counts = store(conn, parsed, tenant_id, received_at=received_at, webhook_key=row.provider_event_id)
            conn.execute(statement("mark_replayed"), {"id": row.id})
            return counts

        try:
            counts = run_transaction(engine, work)
        except IngestError as exc:
            totals["failed"] += 1
            totals["errors"].append({"webhook_event_id": str(row.id), "error": str(exc)})
            continue
        totals["replayed"] += 1
        totals["events"] += counts["events"]
        totals["duplicates"] += counts["duplicates"]
    return totals
