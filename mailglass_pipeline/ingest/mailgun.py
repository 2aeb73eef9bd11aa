"""Mailgun webhooks: one JSON event per request, HMAC-SHA256 over timestamp + token.

Body: ``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``.
The signature is ``hex(HMAC-SHA256(signing key, timestamp + token))``: it
covers **neither the body nor the URL**, so a captured request's signature
block could be pasted onto any other event-data. Two defences, both needed:
the 300 s tolerance on ``timestamp``, and refusing a token seen before. Seen
tokens are recorded durably in ``mailglass_webhook_tokens`` (migration
``0002_ingest``) inside the ingest transaction, with the body's SHA-256 and
the tenant: the *same* request redelivered (same token, same body, same
tenant) is an idempotent duplicate, anything else carrying a known token is
refused as a replay. A per-process cache would let a replay through a second
worker or after a restart.

``provider_message_id`` is ``event-data.message.headers.message-id`` without
angle brackets (the send API returns it as ``<...>`` in ``id``: a sender must
store it without the brackets, the RFC 5322 id proper). ``provider_event_id``
is ``event-data.id``, which Mailgun guarantees unique only within a day, so
the idempotency key also carries the event's timestamp.

Bodies without the envelope (bare ``event-data``, as the docs print them)
are accepted only when verification is off (replaying captures).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
from datetime import datetime
from typing import Any

from mailglass_pipeline.ingest.base import (
    Headers,
    IngestSettings,
    NormalizedEvent,
    ParsedWebhook,
    ReplayToken,
    body_digest,
    check_tolerance,
    event_time,
    expect_object,
    load_json,
    normalized_event,
    require_secret,
    stable_id,
    text_or_none,
)
from mailglass_pipeline.ingest.errors import WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.settings import MAILGUN_SIGNING_KEY

PROVIDER = "mailgun"

SIMPLE_TYPES = {
    "accepted": "queued",
    "rejected": "rejected",
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "unsubscribed": "unsubscribed",
    "complained": "complained",
}

#: ``failed`` events: ``reason`` -> reject_reason.
FAILURE_REASONS = {
    "bounce": "bounced",
    "suppress-bounce": "bounced",
    "suppress-unsubscribe": "unsubscribed",
    "suppress-complaint": "spam",
    "espblock": "blocked",
    "old": "timed_out",
    "generic": "other",
}


def expected_signature(signing_key: str, timestamp: str, token: str) -> str:
    return hmac.new(signing_key.encode("utf-8"), (timestamp + token).encode("utf-8"), hashlib.sha256).hexdigest()


def signature_valid(signing_key: str, timestamp: str, token: str, signature: str) -> bool:
    """Whether ``signature`` (hex) is Mailgun's HMAC of ``timestamp + token``."""
    expected = expected_signature(signing_key, timestamp, token)
    return hmac.compare_digest(expected.encode("ascii"), signature.strip().lower().encode("utf-8", "replace"))


#: Where a signature block may begin in the raw body; the first few are checked before the body is parsed.
_SIGNATURE_BLOCK = re.compile(rb'"signature"\s*:\s*\{')
MAX_SIGNATURE_CANDIDATES = 8
#: A real block is about 150 bytes; a candidate is decoded from at most this many.
SIGNATURE_BLOCK_BYTES = 2048
_DECODER = json.JSONDecoder()


def verify_before_parse(body: bytes, settings: IngestSettings, now: datetime) -> None:
    """Refuse a body none of whose ``"signature": {...}`` blocks verifies, without parsing the body.

    Mailgun's signature sits inside the JSON, and a general parse of a forged
    megabyte costs up to a second of CPU for some shapes (decision D25). The
    blocks are found by a byte search and only they are decoded; the HMAC and
    the time tolerance are checked on them. The body is then parsed and
    :func:`verify` checks the top-level block as before: a block that verifies
    elsewhere in the body buys a parse, not an acceptance.
    """
    key = require_secret(settings.mailgun_signing_key, MAILGUN_SIGNING_KEY.env, PROVIDER)
    found = False
    for match in itertools.islice(_SIGNATURE_BLOCK.finditer(body), MAX_SIGNATURE_CANDIDATES):
        start = match.end() - 1
        try:
            block, _ = _DECODER.raw_decode(body[start : start + SIGNATURE_BLOCK_BYTES].decode("utf-8", "replace"))
        except ValueError:
            continue
        found = True
        fields = [block.get(name) for name in ("timestamp", "token", "signature")]
        if all(isinstance(value, (str, int)) and str(value) for value in fields):
            timestamp, token, signature = (str(value) for value in fields)
            if signature_valid(key, timestamp, token, signature):
                check_tolerance(timestamp, now, settings, "mailgun signature.timestamp")
                return
    if not found:
        raise WebhookSignatureError("mailgun webhook has no signature object")
    raise WebhookSignatureError("mailgun webhook signature does not verify")


def verify(envelope: dict[str, Any], body: bytes, settings: IngestSettings, now: datetime) -> ReplayToken:
    key = require_secret(settings.mailgun_signing_key, MAILGUN_SIGNING_KEY.env, PROVIDER)
    block = envelope.get("signature")
    if not isinstance(block, dict):
        raise WebhookSignatureError("mailgun webhook has no signature object")
    fields = [block.get(name) for name in ("timestamp", "token", "signature")]
    if not all(isinstance(value, (str, int)) and str(value) for value in fields):
        raise WebhookSignatureError("mailgun signature needs timestamp, token and signature")
    timestamp, token, signature = (str(value) for value in fields)
    if not signature_valid(key, timestamp, token, signature):
        raise WebhookSignatureError("mailgun webhook signature does not verify")
    check_tolerance(timestamp, now, settings, "mailgun signature.timestamp")
    if "\x00" in token:  # validly signed, yet no database can record it: a permanent 400, not a retryable 503
        raise WebhookPayloadError("mailgun signature.token contains a NUL character")
    return ReplayToken(PROVIDER, token, body_digest(body))


def classify(data: dict[str, Any]) -> tuple[str, str | None]:
    kind = data.get("event")
    if kind == "failed":
        reason = FAILURE_REASONS.get(str(data.get("reason") or ""), "other")
        severity = data.get("severity")
        if severity == "temporary":
            return "deferred", None
        if str(data.get("reason") or "").startswith("suppress-"):
            return "rejected", reason  # never attempted: on a suppression list
        if severity == "permanent":
            return "bounced", reason
        return "failed", reason
    event_type = SIMPLE_TYPES.get(str(kind), "unknown")
    if event_type == "rejected":
        return event_type, FAILURE_REASONS.get(str(data.get("reason") or ""), "other")
    if event_type == "complained":
        return event_type, "spam"
    if event_type == "unsubscribed":
        return event_type, "unsubscribed"
    return event_type, None


def message_id_of(data: dict[str, Any]) -> str | None:
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    raw = text_or_none(headers.get("message-id")) if isinstance(headers, dict) else None
    if raw and raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].strip() or None
    return raw


def normalize(data: dict[str, Any], received_at: datetime) -> NormalizedEvent:
    event_type, reason = classify(data)
    occurred_at = event_time(data.get("timestamp"))
    event_id = text_or_none(data.get("id"))
    provider_event_id = event_id or stable_id(PROVIDER, data)
    idempotency_key = None
    if event_id:
        # Mailgun ids are unique within a day only: pin the key to the event's own time.
        idempotency_key = f"{PROVIDER}:{event_id}:{data.get('timestamp')}"
    extra: dict[str, Any] = {}
    for name in ("severity", "reason"):
        if isinstance(data.get(name), str):
            extra[f"mailgun_{name}"] = data[name]
    return normalized_event(
        occurred_at,
        received_at,
        extra,
        type=event_type,
        provider_event_id=provider_event_id,
        provider_message_id=message_id_of(data),
        payload=data,
        provider_event=text_or_none(data.get("event")),
        reject_reason=reason,
        recipient=text_or_none(data.get("recipient")),
        idempotency_key=idempotency_key,
    )


def parse(
    body: bytes, headers: Headers, *, verify_signature: bool, settings: IngestSettings, now: datetime
) -> ParsedWebhook:
    # The signature sits inside the JSON, so the body must be parsed to find it; nothing
    # from event-data is used before the signature is checked.
    if verify_signature:
        verify_before_parse(body, settings, now)
    envelope = expect_object(load_json(body), "mailgun webhook body")
    token = verify(envelope, body, settings, now) if verify_signature else None
    if "event-data" in envelope:
        data = expect_object(envelope["event-data"], "mailgun event-data")
    elif verify_signature or "event" not in envelope:
        raise WebhookPayloadError("mailgun webhook body has no event-data object")
    else:
        data = envelope
    if not isinstance(data.get("event"), str) or not ("id" in data or "recipient" in data):
        raise WebhookPayloadError("not a mailgun event: event-data needs 'event' and 'id' or 'recipient'")
    return ParsedWebhook(PROVIDER, [normalize(data, now)], verified=verify_signature, replay_token=token)
