"""The raw record of each provider event, in Mailglass's ``mailglass_webhook_events``.

Every provider event gets its row beside the ledger: the parsed payload
(``raw_payload``) for audit, GDPR erasure and replay, written in the same
transaction as its ledger events, so an event is in both or in neither.
Mailglass inserts a row ``processing`` and flips it to ``succeeded`` (with
``processed_at``) at the end of that transaction; the committed result is one
row ``succeeded``, which is what this writes.

**Per provider event, not per request.** Mailglass's own ingest writes one row
per *request*, so a SendGrid batch of 1,000 events is one row keyed by a
digest of the body. We write one row per provider event (the contract): a
SendGrid batch of N events gets N rows. Why: SendGrid retries and re-batches
as it likes, so the same event arrives in batches of different bytes; a
per-request row would record it again under each batch's digest, and the
record of one event (to audit, erase or replay it) would be buried in
whichever batch carried it first. Keyed per event, a redelivered or
re-batched event adds no row, and a batch overlapping an earlier one adds
rows only for its new events. Mailglass can still read the rows: a SendGrid
row's ``raw_payload`` is a batch of one, exactly the shape Mailglass stores
for a batch, and every other provider's row is what Mailglass writes.

Row keys (``UNIQUE (provider, provider_event_id)``, insert ``ON CONFLICT DO
NOTHING``, so a redelivered event adds nothing):

- SendGrid, each element of the batch: its ``sg_event_id``, or else the first
  32 hex digits of SHA-256 over the element's canonical JSON (the event's
  ``source_key``, set by :mod:`.sendgrid`);
- Postmark, Mailgun, Resend (one event per request): that event's id
  (Mailgun's with its timestamp, as in the ledger key: its ids repeat
  across days);
- SES: the SNS ``MessageId`` (one notification is one provider event, even
  when it becomes one ledger event per recipient);
- a batch element that is not an event (:class:`~.base.MalformedElement`):
  ``malformed:<batch digest>:<index>``, status ``failed``, no ledger event.

``raw_payload``: a SendGrid element as ``{"_batch": [element]}``; for the
other providers the request body: a JSON object as is, anything else as
``{"_raw": text}``; with the NUL/NaN transformation of :mod:`.storable`
applied. ``event_type_raw`` / ``event_type_normalized``: the distinct
provider kinds / taxonomy types of the row's ledger events, joined by commas.
Timestamps are ``timestamp`` without time zone holding UTC (Ecto's
``:utc_datetime_usec``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from mailglass_pipeline.ingest.base import NormalizedEvent, ParsedWebhook
from mailglass_pipeline.ingest.storable import bounded_key, needs_sanitizing, storable


def webhook_key(parsed: ParsedWebhook, body: bytes, events: list[NormalizedEvent]) -> str:
    """``provider_event_id`` of a request that is one provider event (see the module doc)."""
    if not events:
        return hashlib.sha256(body).hexdigest()[:32]
    first = events[0]
    if parsed.provider == "ses":
        sns_id = first.extra_metadata.get("sns_message_id")
        if isinstance(sns_id, str) and sns_id:
            return sns_id
    key = first.idempotency_key or f"{parsed.provider}:{first.provider_event_id}"
    return key.split(":", 1)[1] if key.startswith(parsed.provider + ":") else key


def raw_payload(body: bytes) -> Any:
    try:
        value = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {"_raw": body.decode("utf-8", "replace")}
    if isinstance(value, list):
        return {"_batch": value}
    return value if isinstance(value, dict) else {"_raw": body.decode("utf-8", "replace")}


def body_of(payload: Any) -> bytes:
    """The request body again from a stored ``raw_payload`` (for replay; a SendGrid row: a batch of one)."""
    if isinstance(payload, dict) and set(payload) == {"_batch"}:
        payload = payload["_batch"]
    elif isinstance(payload, dict) and set(payload) == {"_raw"} and isinstance(payload["_raw"], str):
        return payload["_raw"].encode("utf-8")
    return json.dumps(payload).encode("utf-8")


def _joined(values: list[str | None]) -> str:
    return ",".join(dict.fromkeys(value for value in values if value)) or "unknown"


def provider_events(
    parsed: ParsedWebhook, events: list[NormalizedEvent], body: bytes, key: str | None = None
) -> list[tuple[str, Any, list[NormalizedEvent]]]:
    """The request's provider events as ``(row key, raw payload, their ledger events)``, in request order.

    ``key`` pins a single row for the whole request (a replay reuses its stored row's key,
    since the body it rebuilds is not byte-identical).
    """
    groups: dict[str | None, list[NormalizedEvent]] = {}
    for event in events:
        groups.setdefault(None if key is not None else event.source_key, []).append(event)
    found = []
    for source_key, members in groups.items():
        if source_key is None:
            payload = raw_payload(body)
            if needs_sanitizing(payload):
                payload = storable(payload)
            row_key = key or webhook_key(parsed, body, members)
        else:
            # The element itself (already made storable with its event): a batch of one.
            payload, row_key = {"_batch": [dict(members[0].payload)]}, source_key
        found.append((bounded_key(storable(row_key), parsed.provider), payload, members))
    return found


def rows(
    parsed: ParsedWebhook, events: list[NormalizedEvent], body: bytes, key: str | None = None
) -> list[dict[str, Any]]:
    """The rows of the store statements' ``webhooks`` document, one per provider event (before JSON encoding).

    Then one per malformed batch element (:func:`malformed_rows`), with status ``failed``.
    """
    found = [
        {
            "id": str(uuid.uuid4()),
            "provider_event_id": row_key,
            "event_type_raw": storable(_joined([event.provider_event for event in members])),
            "event_type_normalized": _joined([event.type for event in members]),
            "raw_payload": payload,
        }
        for row_key, payload, members in provider_events(parsed, events, body, key)
    ]
    return found + malformed_rows(parsed, body)


def malformed_rows(parsed: ParsedWebhook, body: bytes) -> list[dict[str, Any]]:
    """The raw records of ``parsed``'s malformed batch elements: kept, with status ``failed``.

    Mailglass's own status for a webhook event it could not process (its
    index ``(tenant_id, status) WHERE status IN ('failed', 'dead')`` finds them);
    no taxonomy type (``event_type_normalized`` NULL, as Mailglass leaves it
    until classified). Keyed by the batch's digest and the element's place, so
    the provider's retry of the same bytes adds nothing, and a malformed
    element never takes the key of a real event.
    """
    if not parsed.malformed:
        return []
    digest = hashlib.sha256(body).hexdigest()[:32]
    return [
        {
            "id": str(uuid.uuid4()),
            "provider_event_id": f"malformed:{digest}:{element.index}",
            "event_type_raw": storable(element.kind) if element.kind else "malformed",
            "event_type_normalized": None,
            "status": "failed",
            "raw_payload": {"_batch": [storable(element.payload)]},
        }
        for element in parsed.malformed
    ]


def received_at_parameter(received_at: datetime | None = None) -> datetime:
    """``:webhooks_received_at``: when the webhook arrived (default now), as UTC without zone (Ecto's type)."""
    return (received_at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)


def encode(webhooks: list[dict[str, Any]]) -> str:
    """``:webhooks``: the rows as one JSON document (non-finite floats were made storable before)."""
    return json.dumps(webhooks, allow_nan=False, default=str)


def parameters(
    parsed: ParsedWebhook,
    events: list[NormalizedEvent],
    body: bytes,
    *,
    received_at: datetime | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """The ``webhooks`` parameters of statement ``store_webhook`` (``sql/store.sql``): a row per provider event."""
    return {
        "webhooks": encode(rows(parsed, events, body, key)),
        "webhooks_received_at": received_at_parameter(received_at),
    }
