"""The raw record of each webhook, in Mailglass's ``mailglass_webhook_events``, as Mailglass writes it.

Mailglass keeps one row per webhook request beside the ledger: the parsed
body (``raw_payload``) for audit, GDPR erasure and replay, written in the
same transaction as the request's ledger events, so a webhook is in both or
in neither. Mailglass inserts it ``processing`` and flips it to
``succeeded`` (with ``processed_at``) at the end of that transaction; the
committed result is one row ``succeeded``, which is what this writes.

Row keys, as Mailglass derives them (``UNIQUE (provider,
provider_event_id)``, insert ``ON CONFLICT DO NOTHING``, so a redelivered
webhook adds nothing):

- SendGrid (a batch): the first 32 hex digits of SHA-256 over the raw body;
- Postmark, Mailgun, Resend (one event per request): that event's id
  (Mailgun's with its timestamp, as in the ledger key: its ids repeat
  across days);
- SES: the SNS ``MessageId`` (one notification, one event per recipient).

``raw_payload``: a JSON object as is, an array as ``{"_batch": [...]}``,
anything else as ``{"_raw": text}``; with the NUL/NaN transformation of
:mod:`.storable` applied. ``event_type_raw`` / ``event_type_normalized``: the
distinct provider kinds / taxonomy types of the request's events, joined by
commas. Timestamps are ``timestamp`` without time zone holding UTC (Ecto's
``:utc_datetime_usec``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mailglass_pipeline.deliveries import lookup_lateral
from mailglass_pipeline.ingest.base import NormalizedEvent, ParsedWebhook
from mailglass_pipeline.ingest.storable import bounded_key, needs_sanitizing, storable

# The row's insert rides on the events' delivery lookup (``deliveries.lookup``'s rule, embedded):
# one round trip for both, on the hot path of every webhook.
_RECORD_AND_LOOKUP = sa.text(
    f"""
    WITH webhook AS (
        INSERT INTO mailglass_webhook_events
            (id, tenant_id, provider, provider_event_id, event_type_raw, event_type_normalized, status,
             raw_payload, received_at, processed_at, inserted_at, updated_at)
        VALUES (:id, :tenant_id, :provider, :provider_event_id, :event_type_raw, :event_type_normalized,
                'succeeded', CAST(:raw_payload AS jsonb), :received_at,
                now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')
        ON CONFLICT (provider, provider_event_id) DO NOTHING
    )
    SELECT k.ord, d.id
      FROM unnest(CAST(:tenant_ids AS text[]), CAST(:providers AS text[]), CAST(:message_ids AS text[]))
           WITH ORDINALITY AS k(tenant_id, provider, message_id, ord)
      LEFT JOIN {lookup_lateral("k")} d ON true
     ORDER BY k.ord
    """
)


def webhook_key(parsed: ParsedWebhook, body: bytes, events: list[NormalizedEvent]) -> str:
    """``provider_event_id`` of the request's row (see the module doc)."""
    if parsed.provider == "sendgrid" or not events:
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
    """The request body again from a stored ``raw_payload`` (for replay)."""
    if isinstance(payload, dict) and set(payload) == {"_batch"}:
        payload = payload["_batch"]
    elif isinstance(payload, dict) and set(payload) == {"_raw"} and isinstance(payload["_raw"], str):
        return payload["_raw"].encode("utf-8")
    return json.dumps(payload).encode("utf-8")


def _joined(values: list[str | None]) -> str:
    return ",".join(dict.fromkeys(value for value in values if value)) or "unknown"


def record_and_lookup(
    conn: Connection,
    parsed: ParsedWebhook,
    events: list[NormalizedEvent],
    tenant_id: str,
    body: bytes,
    *,
    received_at: datetime | None = None,
    key: str | None = None,
) -> list[uuid.UUID | None]:
    """Insert the request's row (nothing if a row with its key exists); returns each event's delivery id.

    The delivery ids are what ``deliveries.lookup`` returns for ``events``.
    """
    payload = raw_payload(body)
    if needs_sanitizing(payload):
        payload = storable(payload)
    moment = (received_at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    rows = conn.execute(
        _RECORD_AND_LOOKUP,
        {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "provider": parsed.provider,
            "provider_event_id": bounded_key(storable(key or webhook_key(parsed, body, events)), parsed.provider),
            "event_type_raw": storable(_joined([event.provider_event for event in events])),
            "event_type_normalized": _joined([event.type for event in events]),
            "raw_payload": json.dumps(payload, allow_nan=False, default=str),
            "received_at": moment,
            "tenant_ids": [tenant_id] * len(events),
            "providers": [parsed.provider] * len(events),
            "message_ids": [event.provider_message_id for event in events],
        },
    ).all()
    return [row[1] for row in rows]
