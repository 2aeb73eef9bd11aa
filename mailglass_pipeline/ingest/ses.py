"""Amazon SES through SNS: the SNS envelope, RSA signatures, one event per recipient.

SES publishes its notifications (``notificationType``) and configuration-set
events (``eventType``) to an SNS topic; SNS POSTs an envelope whose
``Message`` field is the SES JSON as a *string*. Both families are handled.

**Signature.** SNS signs a canonical string built from the envelope fields
(``Message``, ``MessageId``, ``Subject`` if present, ``Timestamp``,
``TopicArn``, ``Type`` for notifications; ``Message``, ``MessageId``,
``SubscribeURL``, ``Timestamp``, ``Token``, ``TopicArn``, ``Type`` for
(un)subscribe confirmations; each as ``Name\\nvalue\\n``) with RSA PKCS#1 v1.5:
SHA-1 for ``SignatureVersion`` 1, SHA-256 for 2. The certificate normally
comes from ``SigningCertURL``; this service makes no outbound HTTP, so the
certificate is looked up in ``MAILGLASS_SNS_CERT_DIR`` (PEM), first as
``<dir>/<host>/<file name>``, then ``<dir>/<file name>`` (the file name of
the URL, e.g. ``SimpleNotificationService-<hash>.pem``). The URL must still
be ``https://sns.<region>.amazonaws.com/...pem``: a message naming any other
certificate is refused even if a file of that name exists. The certificate
must have been valid at the message's ``Timestamp``, and ``Timestamp`` must be
within 300 s of now. (SNS keeps the original ``Timestamp`` on retries, so an
HTTP delivery policy that retries for longer than 5 minutes will see its late
retries refused; they can be replayed with ``--no-verify`` after checking.)

``x-amz-sns-message-type`` / ``x-amz-sns-message-id``, when sent, must agree
with the body.

**Confirmations.** ``SubscriptionConfirmation`` / ``UnsubscribeConfirmation``
are verified and write nothing; the result carries ``subscribe_url`` so an
operator can confirm by hand.

**Events.** One per recipient (``bouncedRecipients``, ``complainedRecipients``,
``delivery.recipients``, ``delayedRecipients``, else ``mail.destination``,
as Anymail does: SES does not say which recipient opened or clicked).
``provider_message_id`` = ``mail.messageId`` (what SendEmail returns);
``provider_event_id`` = SNS ``MessageId`` + ``:`` + recipient index.
``occurred_at`` is the event object's own ``timestamp`` (``bounce.timestamp``,
``delivery.timestamp``...), else ``mail.timestamp``, else the SNS ``Timestamp``.

**Topic.** A validly signed message is accepted only from a topic listed in
``MAILGLASS_SES_TOPIC_ARNS`` (or the tenant's ``ses_topic_arns``): SNS signs
for every AWS account alike, so the signature alone proves nothing about
*whose* topic sent it. With no list configured, SES webhooks are refused as
a configuration error. ``verify=False`` skips this like the signature.

With verification off, a bare SES JSON document (no envelope, as the AWS
docs print them, or SNS "raw message delivery") is accepted too; its events
get a SHA-256 id over type, message id, event time and recipient.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    parse_time,
    require_secret,
    stable_id,
    text_or_none,
)
from mailglass_pipeline.ingest.errors import IngestConfigurationError, WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.ingest.sns_envelope import MAX_BODY_BYTES, NOT_ENVELOPE, load_envelope
from mailglass_pipeline.settings import SES_TOPIC_ARNS, SNS_CERT_DIR

PROVIDER = "ses"

NOTIFICATION = "Notification"
CONFIRMATIONS = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
OPTIONAL_FIELDS = frozenset({"Subject"})
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
#: SES's own test message after an SNS topic is attached to a configuration set.
SES_VALIDATION_MESSAGE = "Successfully validated SNS topic for Amazon SES event publishing."

SIMPLE_TYPES: dict[str, tuple[str, str | None]] = {
    "Send": ("sent", None),
    "Reject": ("rejected", "blocked"),
    "Delivery": ("delivered", None),
    "Complaint": ("complained", "spam"),
    "Open": ("opened", None),
    "Click": ("clicked", None),
    "Rendering Failure": ("failed", "other"),
    "DeliveryDelay": ("deferred", None),
}
#: Bounce ``bounceSubType`` -> reject_reason (default ``bounced``).
BOUNCE_SUBTYPES = {
    "ContentRejected": "blocked",
    "AttachmentRejected": "blocked",
    "MessageTooLarge": "invalid",
    "Undetermined": "other",
}
#: Permanent bounces SES generated without sending (the address is suppressed).
SUPPRESSED_SUBTYPES = frozenset({"Suppressed", "OnAccountSuppressionList"})
#: SES type -> (key of its event object, key of its recipient list, recipient list holds objects).
RECIPIENTS: dict[str, tuple[str, str, bool]] = {
    "Bounce": ("bounce", "bouncedRecipients", True),
    "Complaint": ("complaint", "complainedRecipients", True),
    "Delivery": ("delivery", "recipients", False),
    "DeliveryDelay": ("deliveryDelay", "delayedRecipients", True),
}
EVENT_OBJECTS = {
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Delivery": "delivery",
    "DeliveryDelay": "deliveryDelay",
    "Open": "open",
    "Click": "click",
    "Subscription": "subscription",
    "Reject": "reject",
    "Rendering Failure": "failure",
}


# -- signature ---------------------------------------------------------------------------


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The canonical string SNS signs (AWS: "Verifying the signatures of Amazon SNS messages")."""
    fields = NOTIFICATION_FIELDS if message.get("Type") == NOTIFICATION else CONFIRMATION_FIELDS
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None:
            if name in OPTIONAL_FIELDS:
                continue
            raise WebhookSignatureError(f"SNS message lacks {name}, which its signature covers")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def cert_location(url: str) -> tuple[str, str]:
    """``(host, file name)`` of a SigningCertURL that really points at SNS; anything else is refused."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    name = parts.path.rsplit("/", 1)[-1]
    if (
        parts.scheme != "https"
        or not CERT_HOST.match(host)
        or parts.port not in (None, 443)
        or parts.username
        or not name.endswith(".pem")
        or name in (".pem", "..pem")
    ):
        raise WebhookSignatureError(
            f"SNS SigningCertURL is not an https://sns.<region>.amazonaws.com/*.pem URL: {url!r}"
        )
    return host, name


@functools.lru_cache(maxsize=64)
def _load_certificate(path: str, mtime_ns: int, size: int) -> x509.Certificate:
    """Parsed once per file version (the key includes its mtime and size, so a replaced file is re-read)."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as exc:
        raise WebhookSignatureError(f"trusted SNS certificate {path} is not PEM X.509: {exc}") from None


def find_certificate(url: str, cert_dir: str) -> x509.Certificate:
    host, name = cert_location(url)
    base = Path(cert_dir)
    for candidate in (base / host / name, base / name):
        try:
            info = candidate.stat()
        except OSError:
            continue
        if candidate.is_file():
            return _load_certificate(str(candidate), info.st_mtime_ns, info.st_size)
    raise WebhookSignatureError(
        f"SNS signing certificate {url} is not in {SNS_CERT_DIR.env} ({cert_dir}); "
        f"download it once and save it as {base / host / name} to trust it"
    )


def signature_valid(message: dict[str, Any], certificate: x509.Certificate) -> bool:
    """Whether the envelope's ``Signature`` verifies under ``certificate`` (versions 1 and 2)."""
    algorithm = HASHES.get(str(message.get("SignatureVersion")))
    public_key = certificate.public_key()
    if algorithm is None or not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
        public_key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def check_topic(message: dict[str, Any], settings: IngestSettings) -> None:
    """Refuse a message from a topic not on the allowlist (any AWS account can get SNS to sign its own)."""
    allowed = settings.ses_topic_arns
    if not allowed:
        raise IngestConfigurationError(
            f"{SES_TOPIC_ARNS.env} is not set (nor ses_topic_arns for this tenant): "
            "cannot tell this tenant's SNS topics from anyone else's"
        )
    topic = message.get("TopicArn")
    if not isinstance(topic, str) or topic not in allowed:
        raise WebhookSignatureError(f"SNS TopicArn {topic!r:.200} is not an accepted topic for this tenant")


def verify(message: dict[str, Any], headers: Headers, settings: IngestSettings, now: datetime) -> None:
    if not settings.ses_topic_arns:
        check_topic(message, settings)  # the configuration error, before any certificate work
    cert_dir = require_secret(settings.sns_cert_dir, SNS_CERT_DIR.env, PROVIDER)
    for header, field_name in (("x-amz-sns-message-type", "Type"), ("x-amz-sns-message-id", "MessageId")):
        sent = headers.first(header)
        if sent is not None and sent != message.get(field_name):
            raise WebhookSignatureError(f"SNS header {header} does not match the body's {field_name}")
    if str(message.get("SignatureVersion")) not in HASHES:
        raise WebhookSignatureError(f"unsupported SNS SignatureVersion {message.get('SignatureVersion')!r}")
    url = message.get("SigningCertURL") or message.get("SigningCertUrl")
    if not isinstance(url, str) or not message.get("Signature"):
        raise WebhookSignatureError("SNS message lacks Signature or SigningCertURL")
    certificate = find_certificate(url, cert_dir)
    signed_at = parse_time(message.get("Timestamp"), "SNS Timestamp")
    if signed_at is None:
        raise WebhookSignatureError("SNS message lacks Timestamp")
    if not (certificate.not_valid_before_utc <= signed_at <= certificate.not_valid_after_utc):
        raise WebhookSignatureError("SNS signing certificate was not valid at the message's Timestamp")
    if not signature_valid(message, certificate):
        raise WebhookSignatureError("SNS message signature does not verify")
    check_tolerance(message.get("Timestamp"), now, settings, "SNS Timestamp")
    check_topic(message, settings)


# -- normalization -----------------------------------------------------------------------


def classify(ses_type: str, ses: dict[str, Any]) -> tuple[str, str | None]:
    if ses_type == "Bounce":
        bounce = ses.get("bounce") if isinstance(ses.get("bounce"), dict) else {}
        subtype = str(bounce.get("bounceSubType") or "")
        if bounce.get("bounceType") == "Permanent" and subtype in SUPPRESSED_SUBTYPES:
            return "rejected", "bounced"
        return "bounced", BOUNCE_SUBTYPES.get(subtype, "bounced")
    if ses_type == "Subscription":
        sub = ses.get("subscription") if isinstance(ses.get("subscription"), dict) else {}
        new = sub.get("newTopicPreferences") if isinstance(sub.get("newTopicPreferences"), dict) else {}
        topics = new.get("topicSubscriptionStatus") if isinstance(new.get("topicSubscriptionStatus"), list) else []
        opted_out = new.get("unsubscribeAll") is True or any(
            isinstance(t, dict) and t.get("subscriptionStatus") == "OptOut" for t in topics
        )
        return ("unsubscribed", "unsubscribed") if opted_out else ("subscribed", None)
    return SIMPLE_TYPES.get(ses_type, ("unknown", None))


def recipients_of(ses_type: str, ses: dict[str, Any], mail: dict[str, Any]) -> list[str | None]:
    spec = RECIPIENTS.get(ses_type)
    found: list[Any] = []
    if spec:
        holder = ses.get(spec[0])
        listed = holder.get(spec[1]) if isinstance(holder, dict) else None
        if isinstance(listed, list):
            found = [r.get("emailAddress") if spec[2] and isinstance(r, dict) else r for r in listed]
    if not found and isinstance(mail.get("destination"), list):
        found = list(mail["destination"])
    return [text_or_none(r) for r in found] or [None]


def ses_events(
    ses: dict[str, Any], sns_message_id: str | None, sns_timestamp: datetime | None, received_at: datetime
) -> list[NormalizedEvent]:
    ses_type = str(ses.get("eventType") or ses.get("notificationType") or "")
    event_type, reason = classify(ses_type, ses)
    mail = ses.get("mail") if isinstance(ses.get("mail"), dict) else {}
    message_id = text_or_none(mail.get("messageId"))
    holder = ses.get(EVENT_OBJECTS.get(ses_type, ""))
    own_time = holder.get("timestamp") if isinstance(holder, dict) else None
    occurred_at = event_time(own_time) or event_time(mail.get("timestamp")) or sns_timestamp
    events = []
    for index, recipient in enumerate(recipients_of(ses_type, ses, mail)):
        if sns_message_id:
            event_id = f"{sns_message_id}:{index}"
        else:
            event_id = stable_id(PROVIDER, ses_type, message_id, own_time or mail.get("timestamp"), recipient, index)
        extra: dict[str, Any] = {}
        if sns_message_id:
            extra["sns_message_id"] = sns_message_id
        events.append(
            normalized_event(
                occurred_at,
                received_at,
                extra,
                type=event_type,
                provider_event_id=event_id,
                provider_message_id=message_id,
                payload=ses,
                provider_event=ses_type or None,
                reject_reason=reason,
                recipient=recipient,
            )
        )
    return events


def is_envelope(document: dict[str, Any]) -> bool:
    return isinstance(document.get("Type"), str) and isinstance(document.get("MessageId"), str)


def is_ses_document(document: dict[str, Any]) -> bool:
    kind = document.get("eventType") or document.get("notificationType")
    return isinstance(kind, str) and isinstance(document.get("mail"), dict)


def parse(
    body: bytes, headers: Headers, *, verify_signature: bool, settings: IngestSettings, now: datetime
) -> ParsedWebhook:
    # SNS signs fields inside the JSON envelope, so the envelope is read first (flat: at the cost
    # of its size); nothing from the inner SES message is read before the signature is checked.
    if len(body) > MAX_BODY_BYTES:
        raise WebhookPayloadError(f"body is {len(body)} bytes, over SNS's {MAX_BODY_BYTES}-byte bound")
    document = load_envelope(body) if verify_signature else expect_object(load_json(body), "SNS message")
    if not is_envelope(document):
        if verify_signature:
            raise WebhookSignatureError(NOT_ENVELOPE)
        if not is_ses_document(document):
            raise WebhookPayloadError("body is neither an SNS envelope nor an SES event (eventType, mail)")
        return ParsedWebhook(PROVIDER, ses_events(document, None, None, now), verified=False)
    if verify_signature:
        verify(document, headers, settings, now)
    sns_type = document.get("Type")
    if sns_type in CONFIRMATIONS:
        notice = {
            "sns_type": sns_type,
            "topic_arn": document.get("TopicArn"),
            "subscribe_url": document.get("SubscribeURL"),
        }
        return ParsedWebhook(PROVIDER, [], verified=verify_signature, notice=notice)
    if sns_type != NOTIFICATION:
        raise WebhookPayloadError(f"unknown SNS message Type {sns_type!r}")
    sns_id = text_or_none(document.get("MessageId"))
    # Checked by verify() when verifying; otherwise, like any event time, unreadable is no time.
    sns_time = event_time(document.get("Timestamp"))
    inner = document.get("Message")
    if isinstance(inner, str) and inner.strip() == SES_VALIDATION_MESSAGE:
        return ParsedWebhook(PROVIDER, [], verified=verify_signature, notice={"sns_type": sns_type, "note": inner})
    try:
        ses = load_json(inner.encode("utf-8"), "SNS Message") if isinstance(inner, str) else None
    except WebhookPayloadError:
        ses = None
    if not isinstance(ses, dict):
        # Not an SES document (a test publish, another publisher on the topic): kept as `unknown`.
        payload = {k: document.get(k) for k in ("Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp")}
        event = NormalizedEvent(
            type="unknown",
            occurred_at=sns_time or now,
            provider_event_id=f"{sns_id}:0",
            provider_message_id=None,
            payload=payload,
            provider_event=None,
            extra_metadata={"sns_message_id": sns_id},
        )
        return ParsedWebhook(PROVIDER, [event], verified=verify_signature)
    return ParsedWebhook(PROVIDER, ses_events(ses, sns_id, sns_time, now), verified=verify_signature)
