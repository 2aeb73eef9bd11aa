"""SendGrid Event Webhook: a JSON array batch, signed with ECDSA P-256.

Signature (SendGrid "Signed Event Webhook"): the request carries
``X-Twilio-Email-Event-Webhook-Signature`` (base64 DER ECDSA signature) and
``X-Twilio-Email-Event-Webhook-Timestamp``; the signed bytes are the
timestamp followed by the raw body, hashed with SHA-256. The verification key
is the account's public key as base64 DER (``MAILGLASS_SENDGRID_VERIFICATION_KEY``).
Verification runs on the raw bytes, before any parsing.

**Message id rule.** The sender stores the ``X-Message-Id`` of the send
response (say ``14c5d75ce93.dfd.64b469`` or ``LRzXl_NHStOGhQ4kofSm_A``); the
events carry ``sg_message_id`` = that id plus a routing suffix
(``.filter0001.16648...`` in old ids, ``.filterdrecv-...`` in current ones).
Cutting at the *first dot* is wrong for old ids, whose X-Message-Id itself
contains dots. So ``provider_message_id`` is, in order:

1. the local part of ``smtp-id`` (``<X-Message-Id@host>``; SendGrid documents
   that sg_message_id's first half is pulled from it) when sg_message_id
   starts with it (or there is no sg_message_id);
2. otherwise sg_message_id cut before ``.filter`` (covers both suffixes);
3. otherwise sg_message_id as is.

The untouched ``sg_message_id`` is kept in the event metadata too.

``provider_event_id`` is ``sg_event_id``; the docs' oldest samples lack it,
and then it is a SHA-256 of the event object (stable across redelivery).

Each element of a batch is one provider event with its own raw record
(``source_key``, see :mod:`.webhook_events`): its ``sg_event_id``, or else the
first 32 hex digits of SHA-256 over the element's canonical JSON.

**One bad element never costs the batch.** SendGrid retries a refused batch
with the same bytes until it gives up, so refusing it for one element would
lose every event in it. An element whose ``timestamp`` cannot be read
(``"yesterday"``, ``true``, ``1e20``) is stored at its received time, marked
``occurred_at_estimated``; an element that is not an event at all (``42``, no
``event`` string, none of SendGrid's keys) is kept as a raw record with status
``failed`` and counted as ``malformed`` in the answer and the metrics
(:class:`~.base.MalformedElement`). Only unverified input of which no element
is an event (a wrong file fed by hand) is refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mailglass_pipeline.ingest.base import (
    Headers,
    IngestSettings,
    MalformedElement,
    NormalizedEvent,
    ParsedWebhook,
    check_tolerance,
    event_time,
    load_json,
    normalized_event,
    require_secret,
    stable_id,
    text_or_none,
)
from mailglass_pipeline.ingest.errors import IngestConfigurationError, WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.settings import SENDGRID_VERIFICATION_KEY

PROVIDER = "sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

EVENT_TYPES = {
    "processed": "queued",
    "deferred": "deferred",
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "dropped": "rejected",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "group_resubscribe": "subscribed",
}

#: Every SendGrid event has at least one of these (other providers' events have none).
SENDGRID_KEYS = frozenset({"email", "sg_event_id", "sg_message_id", "smtp-id"})

#: ``bounce`` events: ``type`` -> reject_reason (``blocked`` is SendGrid's temporary refusal, not retried).
BOUNCE_REASONS = {"bounce": "bounced", "blocked": "blocked", "expired": "timed_out"}
#: ``dropped`` events: lower-cased ``reason`` -> reject_reason.
DROP_REASONS = {
    "bounced address": "bounced",
    "unsubscribed address": "unsubscribed",
    "spam reporting address": "spam",
    "invalid": "invalid",
    "invalid smtpapi header": "invalid",
    "expired": "timed_out",
}


@functools.lru_cache(maxsize=256)
def load_public_key(encoded: str) -> ec.EllipticCurvePublicKey:
    """The verification key from base64 DER (PEM armour tolerated); must be ECDSA P-256 (parsed once per key)."""
    lines = [line.strip() for line in encoded.strip().splitlines() if line.strip() and "-----" not in line]
    try:
        key = load_der_public_key(base64.b64decode("".join(lines), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise IngestConfigurationError(
            f"{SENDGRID_VERIFICATION_KEY.env} is not a base64 DER public key: {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IngestConfigurationError(f"{SENDGRID_VERIFICATION_KEY.env} must be an ECDSA P-256 public key")
    return key


def signature_valid(public_key: str, signature: str, timestamp: str, body: bytes) -> bool:
    """Whether ``signature`` (base64 DER) signs ``timestamp + body`` under ``public_key`` (base64 DER)."""
    key = load_public_key(public_key)
    try:
        raw_signature = base64.b64decode(signature.strip(), validate=True)
        key.verify(raw_signature, timestamp.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def verify(body: bytes, headers: Headers, settings: IngestSettings, now: datetime) -> None:
    key = require_secret(settings.sendgrid_verification_key, SENDGRID_VERIFICATION_KEY.env, PROVIDER)
    signature = headers.first(SIGNATURE_HEADER)
    timestamp = headers.first(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise WebhookSignatureError(f"sendgrid webhook lacks {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
    if not signature_valid(key, signature, timestamp, body):
        raise WebhookSignatureError("sendgrid webhook signature does not verify")
    check_tolerance(timestamp, now, settings, f"sendgrid {TIMESTAMP_HEADER}")


def send_side_message_id(sg_message_id: str | None, smtp_id: str | None) -> str | None:
    """The id the sender stored (the send response's X-Message-Id); see the module doc for the rule."""
    local_part = None
    if smtp_id:
        local_part = smtp_id.strip().strip("<>").partition("@")[0] or None
    if sg_message_id is None:
        return local_part
    if local_part and (sg_message_id == local_part or sg_message_id.startswith(local_part + ".")):
        return local_part
    head, found, _ = sg_message_id.partition(".filter")
    if found and head:
        return head
    return sg_message_id


def element_key(event: dict[str, Any]) -> str:
    """The key of a batch element's raw record: ``sg_event_id``, else a digest of its canonical JSON."""
    sg_event_id = text_or_none(event.get("sg_event_id"))
    if sg_event_id:
        return sg_event_id
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def element_problem(event: Any, index: int) -> str | None:
    """Why batch element ``index`` is not a SendGrid event we can read, or None when it is one."""
    if not isinstance(event, dict):
        return f"sendgrid batch element {index} is not a JSON object"
    if not isinstance(event.get("event"), str) or not SENDGRID_KEYS.intersection(event):
        return f"not a sendgrid event: batch element {index} needs 'event' and one of {sorted(SENDGRID_KEYS)}"
    return None


def normalize(event: dict[str, Any], index: int, received_at: datetime) -> NormalizedEvent:
    """Batch element ``index`` (one that :func:`element_problem` accepts) as a normalized event."""
    kind = text_or_none(event.get("event"))
    event_type = EVENT_TYPES.get(kind or "", "unknown")
    reason: str | None = None
    if kind == "bounce":
        reason = BOUNCE_REASONS.get(str(event.get("type") or "bounce").lower(), "bounced")
    elif kind == "dropped":
        cause = str(event.get("type") or event.get("reason") or "").lower()
        reason = DROP_REASONS.get(cause, "other")
    elif kind == "spamreport":
        reason = "spam"
    elif event_type == "unsubscribed":
        reason = "unsubscribed"
    occurred_at = event_time(event.get("timestamp"))
    sg_message_id = text_or_none(event.get("sg_message_id"))
    smtp_id = text_or_none(event.get("smtp-id"))
    extra: dict[str, Any] = {}
    if sg_message_id:
        extra["sg_message_id"] = sg_message_id
    return normalized_event(
        occurred_at,
        received_at,
        extra,
        type=event_type,
        provider_event_id=text_or_none(event.get("sg_event_id")) or stable_id(PROVIDER, event),
        source_key=element_key(event),
        provider_message_id=send_side_message_id(sg_message_id, smtp_id),
        payload=event,
        provider_event=kind,
        reject_reason=reason,
        recipient=text_or_none(event.get("email")),
    )


def parse(
    body: bytes, headers: Headers, *, verify_signature: bool, settings: IngestSettings, now: datetime
) -> ParsedWebhook:
    if verify_signature:
        verify(body, headers, settings, now)
    batch = load_json(body)
    if isinstance(batch, dict):  # a single event posted bare (hand-made captures)
        batch = [batch]
    if not isinstance(batch, list):
        raise WebhookPayloadError("sendgrid webhook body must be a JSON array of events")
    events: list[NormalizedEvent] = []
    malformed: list[MalformedElement] = []
    for index, element in enumerate(batch):
        problem = element_problem(element, index)
        if problem is None:
            events.append(normalize(element, index, now))
        else:
            kind = element.get("event") if isinstance(element, dict) else None
            malformed.append(MalformedElement(index, problem, element, kind if isinstance(kind, str) else None))
    if malformed and not events and not verify_signature:
        # Unverified input (a capture fed by hand) none of which is a SendGrid event: the wrong file or
        # provider, said so. An authentic batch is never refused for its content: its elements are kept.
        raise WebhookPayloadError(malformed[0].reason)
    return ParsedWebhook(PROVIDER, events, verified=verify_signature, malformed=tuple(malformed))
