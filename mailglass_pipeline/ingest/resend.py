"""Resend webhooks: one JSON event per request, signed by Svix.

Svix scheme: headers ``svix-id``, ``svix-timestamp``, ``svix-signature``
(also accepted under the Standard Webhooks names ``webhook-id`` etc.). The
signed content is ``f"{svix-id}.{svix-timestamp}.".encode() + body`` and the
key is the base64 part of the ``whsec_...`` secret
(``MAILGLASS_RESEND_WEBHOOK_SECRET``). ``svix-signature`` is a space-separated
list of ``v1,<base64 HMAC-SHA256>`` entries (several during key rotation);
one matching entry suffices. ``svix-timestamp`` must be within 300 s.

``provider_event_id`` is ``svix-id``: Svix keeps it across retries of the
same event. A capture replayed without its headers falls back to a SHA-256
of the event's type, email id and ``created_at`` (the event's time; the
payload's ``data.created_at`` is when the *email* was created).
``provider_message_id`` is ``data.email_id``, the id ``POST /emails`` returns.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime
from typing import Any

from mailglass_pipeline.ingest.base import (
    Headers,
    IngestSettings,
    NormalizedEvent,
    ParsedWebhook,
    check_tolerance,
    event_time,
    expect_object,
    load_json,
    normalized_event,
    require_secret,
    stable_id,
    text_or_none,
)
from mailglass_pipeline.ingest.errors import IngestConfigurationError, WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.settings import RESEND_WEBHOOK_SECRET

PROVIDER = "resend"
SECRET_PREFIX = "whsec_"

EVENT_TYPES: dict[str, tuple[str, str | None]] = {
    "email.scheduled": ("queued", None),
    "email.sent": ("sent", None),
    "email.delivered": ("delivered", None),
    "email.delivery_delayed": ("deferred", None),
    "email.bounced": ("bounced", "bounced"),
    "email.complained": ("complained", "spam"),
    "email.opened": ("opened", None),
    "email.clicked": ("clicked", None),
    "email.failed": ("failed", "other"),
    # Resend refused to send to an address on its suppression list.
    "email.suppressed": ("rejected", "blocked"),
}


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret."""
    encoded = secret.strip()
    if encoded.startswith(SECRET_PREFIX):
        encoded = encoded[len(SECRET_PREFIX) :]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise IngestConfigurationError(f"{RESEND_WEBHOOK_SECRET.env} is not a whsec_<base64> secret") from None


def sign(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``v1,<base64>`` signature Svix sends for this content."""
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_valid(secret: str, msg_id: str, timestamp: str, body: bytes, signature_header: str) -> bool:
    """Whether any ``v1,`` entry of ``signature_header`` matches."""
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    for entry in signature_header.split():
        version, _, value = entry.partition(",")
        if version == "v1" and value and hmac.compare_digest(expected, entry.encode("utf-8", "replace")):
            return True
    return False


def headers_of(headers: Headers) -> tuple[str | None, str | None, str | None]:
    return (
        headers.first("svix-id", "webhook-id"),
        headers.first("svix-timestamp", "webhook-timestamp"),
        headers.first("svix-signature", "webhook-signature"),
    )


def verify(body: bytes, headers: Headers, settings: IngestSettings, now: datetime) -> None:
    secret = require_secret(settings.resend_webhook_secret, RESEND_WEBHOOK_SECRET.env, PROVIDER)
    msg_id, timestamp, signature = headers_of(headers)
    if not msg_id or not timestamp or not signature:
        raise WebhookSignatureError("resend webhook lacks svix-id, svix-timestamp or svix-signature")
    if not signature_valid(secret, msg_id, timestamp, body, signature):
        raise WebhookSignatureError("resend webhook signature does not verify")
    check_tolerance(timestamp, now, settings, "resend svix-timestamp")


def normalize(event: dict[str, Any], svix_id: str | None, received_at: datetime) -> NormalizedEvent:
    kind = text_or_none(event.get("type"))
    event_type, reason = EVENT_TYPES.get(kind or "", ("unknown", None))
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    email_id = text_or_none(data.get("email_id"))
    occurred_at = event_time(event.get("created_at"))
    extra: dict[str, Any] = {}
    rfc_message_id = text_or_none(data.get("message_id"))
    if rfc_message_id:
        extra["rfc_message_id"] = rfc_message_id
    if kind == "email.bounced" and isinstance(data.get("bounce"), dict):
        bounce = data["bounce"]
        extra["bounce_type"] = bounce.get("type")
        if bounce.get("type") == "Temporary":
            event_type, reason = "deferred", None
    recipients = data.get("to")
    recipient = text_or_none(recipients[0]) if isinstance(recipients, list) and recipients else None
    return normalized_event(
        occurred_at,
        received_at,
        extra,
        type=event_type,
        provider_event_id=svix_id or stable_id(PROVIDER, kind, email_id, event.get("created_at")),
        provider_message_id=email_id,
        payload=event,
        provider_event=kind,
        reject_reason=reason,
        recipient=recipient,
    )


def parse(
    body: bytes, headers: Headers, *, verify_signature: bool, settings: IngestSettings, now: datetime
) -> ParsedWebhook:
    if verify_signature:
        verify(body, headers, settings, now)
    event = expect_object(load_json(body), "resend webhook body")
    if not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
        raise WebhookPayloadError("not a resend webhook: the body needs a 'type' string and a 'data' object")
    svix_id = headers_of(headers)[0]
    return ParsedWebhook(PROVIDER, [normalize(event, svix_id, now)], verified=verify_signature)
