"""The rows the ingest's store statements take, and what their results count.

Shared by the transaction's statement (:func:`.core.store_statement`) and the
one-statement path (:mod:`.grouped`): the CTE ``found`` (each event's ledger
row and its delivery, by ``deliveries.lookup``'s rule), the ledger records
with the metadata the reconciler reads, and the counts an answer reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mailglass_pipeline import ledger
from mailglass_pipeline.deliveries import lookup_lateral
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


def found_cte(extra: Sequence[tuple[str, str]] = (), where: str | None = None) -> str:
    """The CTE ``found``: the ledger rows of ``:rows``, each with its delivery if there is one.

    The delivery lookup is ``deliveries.lookup``'s rule, embedded. ``extra``:
    more ``(column, type)`` of each row, carried along; rows are kept where
    the SQL condition ``where`` holds (default: all).
    """
    condition = f"WHERE {where}" if where else ""
    declared = "".join(f", {name} {kind}" for name, kind in extra)
    carried = "".join(f", r.{name}" for name, _ in extra)
    return f"""found AS (
        SELECT r.id, r.tenant_id, d.id AS delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
               r.normalized_payload, r.metadata, r.trace_id,
               d.id IS NULL AND r.message_id IS NOT NULL AS needs_reconciliation,
               r.inserted_at, r.ord, r.provider{carried}
          FROM json_to_recordset(CAST(:rows AS json))
               AS r({ledger.RECORD_COLUMNS}, provider text, message_id text, ord integer{declared})
          LEFT JOIN {lookup_lateral("r")} d ON true
         {condition}
    )"""


def ledger_rows(
    parsed: ParsedWebhook, events: list[NormalizedEvent], tenant_id: str, received_at: datetime | None
) -> list[dict[str, Any]]:
    """The rows of ``:rows`` (the CTE ``found``): one ledger record per event, with provider, message id, order."""
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
