"""Postmark webhooks: HTTP Basic auth, one JSON event per request.

Postmark signs nothing; its documented protection is Basic authentication
in the webhook URL (``https://user:password@host/...``), which arrives as an
``Authorization: Basic`` header. We compare the decoded ``user:password``
with ``MAILGLASS_POSTMARK_WEBHOOK_AUTH`` in constant time. There is no signed
timestamp, so there is no tolerance window and no replay protection beyond
the ledger's idempotency.

Postmark events carry no event id (``ID`` exists only on bounces and spam
complaints, and is the bounce id). ``provider_event_id`` is therefore derived:
a SHA-256 over the fields that identify one occurrence (record type, message
id, bounce ID and Type, recipient, the event's own time, the clicked link and
the subscription change). A redelivered webhook has the same fields, hence the
same id; two opens or clicks differ in their time.

Event types follow Anymail: ``Bounce`` is refined by its ``Type`` (HardBounce
is ``bounced``, Transient and DnsError are ``deferred``, ...) and
``SubscriptionChange`` by ``SuppressSending``/``SuppressionReason``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from datetime import datetime
from typing import Any

from mailglass_pipeline.ingest.base import (
    Headers,
    IngestSettings,
    NormalizedEvent,
    ParsedWebhook,
    event_time,
    expect_object,
    load_json,
    normalized_event,
    require_secret,
    stable_id,
    text_or_none,
)
from mailglass_pipeline.ingest.errors import WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.settings import POSTMARK_WEBHOOK_AUTH

PROVIDER = "postmark"

RECORD_TYPES = {
    "Delivery": ("delivered", None),
    "Bounce": ("bounced", "bounced"),
    "SpamComplaint": ("complained", "spam"),
    "Open": ("opened", None),
    "Click": ("clicked", None),
    "SubscriptionChange": ("unsubscribed", "unsubscribed"),
}

#: Bounce ``Type`` (and SubscriptionChange ``SuppressionReason``) -> (event type, reject_reason).
BOUNCE_TYPES: dict[str, tuple[str, str | None]] = {
    "HardBounce": ("bounced", "bounced"),
    "SoftBounce": ("bounced", "bounced"),
    "Transient": ("deferred", None),
    "DnsError": ("deferred", None),
    "OpenRelayTest": ("deferred", None),
    "Unsubscribe": ("unsubscribed", "unsubscribed"),
    "Subscribe": ("subscribed", None),
    "AutoResponder": ("autoresponded", None),
    "AddressChange": ("autoresponded", None),
    "ChallengeVerification": ("autoresponded", None),
    "SpamNotification": ("complained", "spam"),
    "SpamComplaint": ("complained", "spam"),
    "VirusNotification": ("bounced", "other"),
    "BadEmailAddress": ("rejected", "invalid"),
    "ManuallyDeactivated": ("rejected", "blocked"),
    "Unconfirmed": ("rejected", "other"),
    "Blocked": ("rejected", "blocked"),
    "DMARCPolicy": ("rejected", "blocked"),
    "SMTPApiError": ("failed", "other"),
    "TemplateRenderingFailed": ("failed", "other"),
    "ManualSuppression": ("unsubscribed", "unsubscribed"),
    "Unknown": ("unknown", None),
}

TIME_FIELDS = ("DeliveredAt", "BouncedAt", "ReceivedAt", "ChangedAt")


def verify(headers: Headers, settings: IngestSettings) -> None:
    """Check the Basic auth credentials against ``MAILGLASS_POSTMARK_WEBHOOK_AUTH`` (``user:password``)."""
    expected = require_secret(settings.postmark_auth, POSTMARK_WEBHOOK_AUTH.env, PROVIDER)
    header = headers.first("authorization")
    if not header:
        raise WebhookSignatureError("postmark webhook has no Authorization header (Basic auth expected)")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials.strip():
        raise WebhookSignatureError("postmark webhook Authorization is not Basic auth")
    try:
        presented = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSignatureError("postmark webhook Authorization is not valid base64") from None
    if not hmac.compare_digest(presented, expected.encode("utf-8")):
        raise WebhookSignatureError("postmark webhook credentials do not match")


def classify(event: dict[str, Any]) -> tuple[str, str | None]:
    record_type = event.get("RecordType")
    if record_type not in RECORD_TYPES:
        return "unknown", None
    event_type, reason = RECORD_TYPES[record_type]
    if record_type in ("Bounce", "SpamComplaint"):
        event_type, reason = BOUNCE_TYPES.get(str(event.get("Type")), (event_type, reason))
    elif record_type == "SubscriptionChange":
        if event.get("SuppressSending") is False:
            event_type, reason = "subscribed", None
        else:
            event_type, reason = BOUNCE_TYPES.get(str(event.get("SuppressionReason")), (event_type, reason))
    return event_type, reason


def normalize(event: dict[str, Any], received_at: datetime) -> NormalizedEvent:
    event_type, reason = classify(event)
    time_field = next((name for name in TIME_FIELDS if event.get(name)), None)
    occurred_at = event_time(event.get(time_field)) if time_field else None
    recipient = text_or_none(event.get("Recipient")) or text_or_none(event.get("Email"))
    message_id = text_or_none(event.get("MessageID"))
    event_id = stable_id(
        PROVIDER,
        event.get("RecordType"),
        message_id,
        text_or_none(event.get("ID")),
        event.get("Type"),
        recipient,
        event.get(time_field) if time_field else None,
        event.get("OriginalLink"),
        event.get("SuppressSending"),
        event.get("SuppressionReason"),
    )
    extra: dict[str, Any] = {}
    if event.get("MessageStream"):
        extra["message_stream"] = event["MessageStream"]
    return normalized_event(
        occurred_at,
        received_at,
        extra,
        type=event_type,
        provider_event_id=event_id,
        provider_message_id=message_id,
        payload=event,
        provider_event=text_or_none(event.get("RecordType")),
        reject_reason=reason,
        recipient=recipient,
    )


def parse(
    body: bytes, headers: Headers, *, verify_signature: bool, settings: IngestSettings, now: datetime
) -> ParsedWebhook:
    if verify_signature:
        verify(headers, settings)
    event = expect_object(load_json(body), "postmark webhook body")
    if not isinstance(event.get("RecordType"), str) or not event["RecordType"]:
        raise WebhookPayloadError("not a postmark webhook: the body has no RecordType")
    return ParsedWebhook(PROVIDER, [normalize(event, now)], verified=verify_signature)
