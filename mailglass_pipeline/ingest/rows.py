"""The rows the ingest's store statements take, and what their results count.

Shared by the transaction's statement (``store_webhook``) and the
one-statement path (``store_webhooks_grouped``, :mod:`.grouped`), both in
``sql/store.sql``: the ledger records with the metadata the reconciler reads,
and the counts an answer reports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from mailglass_pipeline import ledger
from mailglass_pipeline.ingest.base import NormalizedEvent, ParsedWebhook
from mailglass_pipeline.ingest.storable import bounded_key


def _metadata(parsed: ParsedWebhook, event: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "provider_event": event.provider_event,
        "recipient": event.recipient,
        "verified": parsed.verified,
        "source": "mailglass_pipeline.ingest",
    }
    metadata.update(event.extra_metadata)
    # The three keys the reconciler reads come last so nothing can shadow them.
    metadata["provider"] = parsed.provider
    metadata["provider_event_id"] = event.provider_event_id
    metadata["provider_message_id"] = event.provider_message_id
    return {key: value for key, value in metadata.items() if value is not None}


def ledger_rows(
    parsed: ParsedWebhook, events: list[NormalizedEvent], tenant_id: str, received_at: datetime | None
) -> list[dict[str, Any]]:
    """The rows of the store statements' ``rows``: one ledger record per event, with provider, message id, order."""
    rows = []
    for ord_, event in enumerate(events):
        row = ledger.record(
            ledger.NewEvent(
                tenant_id=tenant_id,
                type=event.type,
                occurred_at=event.occurred_at,
                idempotency_key=bounded_key(
                    event.idempotency_key or f"{parsed.provider}:{event.provider_event_id}", parsed.provider
                ),
                reject_reason=event.reject_reason,
                normalized_payload=event.payload,
                metadata=_metadata(parsed, event),
                inserted_at=received_at,
            )
        )
        row.update(provider=parsed.provider, message_id=event.provider_message_id, ord=ord_)
        rows.append(row)
    return rows


def counts_of(results: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The result of the store statement's rows: (id, delivery_id, needs_reconciliation, inserted)."""
    written = [(event_id, delivery_id, orphan) for event_id, delivery_id, orphan, inserted in results if inserted]
    return {
        "events": len(written),
        "linked": sum(1 for _, delivery_id, _ in written if delivery_id is not None),
        "orphans": sum(1 for _, _, orphan in written if orphan),
        "unlinkable": sum(1 for _, delivery_id, orphan in written if delivery_id is None and not orphan),
        "duplicates": len(results) - len(written),
        "event_ids": [str(event_id) for event_id, _, _ in written],
    }
