"""Realistic provider webhooks built on demand, signed or not.

Why this exists: ``mailglass demo`` must seed its orphans through the real
ingest path (so demo orphans look exactly like production ones), and the
tests need signed requests for providers that publish no reusable vector.
:func:`build_webhook` returns ``(body, headers)`` shaped as each provider
documents them; with :class:`SampleKeys` it also signs them the way the
provider does, so ``ingest(..., verify=True)`` accepts them.

:func:`generate_keys` makes throwaway keys: an ECDSA P-256 pair (SendGrid),
an RSA key with a self-signed certificate written into an SNS certificate
directory (SES), HMAC secrets for Mailgun and Resend, Basic-auth credentials
for Postmark; it returns the matching :class:`IngestSettings` too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from mailglass_pipeline.ingest import resend, ses
from mailglass_pipeline.ingest.base import PROVIDERS, IngestSettings

SNS_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-mailglass-sample.pem"
SNS_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:mailglass-ses-events"

#: Taxonomy type -> the provider's own event kind, for the kinds each provider has.
SAMPLE_KINDS: dict[str, dict[str, str]] = {
    "postmark": {
        "delivered": "Delivery",
        "bounced": "HardBounce",
        "deferred": "Transient",
        "opened": "Open",
        "clicked": "Click",
        "complained": "SpamComplaint",
        "unsubscribed": "ManualSuppression",
        "rejected": "Blocked",
    },
    "sendgrid": {
        "queued": "processed",
        "delivered": "delivered",
        "bounced": "bounce",
        "deferred": "deferred",
        "opened": "open",
        "clicked": "click",
        "complained": "spamreport",
        "unsubscribed": "unsubscribe",
        "rejected": "dropped",
    },
    "mailgun": {
        "queued": "accepted",
        "delivered": "delivered",
        "bounced": "failed/permanent",
        "deferred": "failed/temporary",
        "opened": "opened",
        "clicked": "clicked",
        "complained": "complained",
        "unsubscribed": "unsubscribed",
        "rejected": "rejected",
    },
    "ses": {
        "sent": "Send",
        "delivered": "Delivery",
        "bounced": "Bounce",
        "deferred": "DeliveryDelay",
        "opened": "Open",
        "clicked": "Click",
        "complained": "Complaint",
        "unsubscribed": "Subscription",
        "rejected": "Reject",
    },
    "resend": {
        "queued": "email.scheduled",
        "sent": "email.sent",
        "delivered": "email.delivered",
        "bounced": "email.bounced",
        "deferred": "email.delivery_delayed",
        "opened": "email.opened",
        "clicked": "email.clicked",
        "complained": "email.complained",
        "rejected": "email.suppressed",
        "failed": "email.failed",
    },
}


@dataclass(frozen=True)
class SampleKeys:
    """Signing material; only the fields of the provider being built are needed."""

    postmark_auth: str | None = None
    sendgrid_private_key: ec.EllipticCurvePrivateKey | None = None
    mailgun_signing_key: str | None = None
    resend_webhook_secret: str | None = None
    sns_private_key: rsa.RSAPrivateKey | None = None
    sns_cert_url: str = SNS_CERT_URL
    sns_signature_version: str = "2"


def generate_keys(sns_cert_dir: Path) -> tuple[SampleKeys, IngestSettings]:
    """Fresh keys for every provider; the SNS certificate is saved where ``MAILGLASS_SNS_CERT_DIR`` finds it."""
    sendgrid_key = ec.generate_private_key(ec.SECP256R1())
    sendgrid_public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = self_signed_certificate(sns_key)
    host, name = ses.cert_location(SNS_CERT_URL)
    target = Path(sns_cert_dir) / host / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keys = SampleKeys(
        postmark_auth=f"mailglass:{secrets.token_urlsafe(12)}",
        sendgrid_private_key=sendgrid_key,
        mailgun_signing_key=f"key-{secrets.token_hex(16)}",
        resend_webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii"),
        sns_private_key=sns_key,
    )
    settings = IngestSettings(
        postmark_auth=keys.postmark_auth,
        sendgrid_verification_key=base64.b64encode(sendgrid_public).decode("ascii"),
        mailgun_signing_key=keys.mailgun_signing_key,
        resend_webhook_secret=keys.resend_webhook_secret,
        sns_cert_dir=str(sns_cert_dir),
        ses_topic_arns=(SNS_TOPIC_ARN,),
    )
    return keys, settings


def self_signed_certificate(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start = datetime.now(UTC) - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def _stable_uuid(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mailglass-sample:" + "|".join(str(p) for p in parts)))


def _iso(moment: datetime, digits: int = 3) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text[: len(text) - (6 - digits)] + "Z"


def _postmark(kind: str, message_id: str, at: datetime, recipient: str, event_id: str) -> dict[str, Any]:
    base: dict[str, Any] = {"MessageID": message_id, "ServerID": 23, "MessageStream": "outbound", "Tag": "demo"}
    if kind == "Delivery":
        return {"RecordType": "Delivery", **base, "Recipient": recipient, "DeliveredAt": _iso(at, 7), "Details": "OK"}
    if kind in ("Open", "Click"):
        event = {"RecordType": kind, **base, "Recipient": recipient, "ReceivedAt": _iso(at, 7), "Platform": "WebMail"}
        if kind == "Click":
            event["OriginalLink"] = "https://example.com/welcome"
        return event
    if kind == "ManualSuppression":
        return {
            "RecordType": "SubscriptionChange",
            **base,
            "Recipient": recipient,
            "ChangedAt": _iso(at, 7),
            "Origin": "Recipient",
            "SuppressSending": True,
            "SuppressionReason": "ManualSuppression",
        }
    record = "SpamComplaint" if kind == "SpamComplaint" else "Bounce"
    bounce_id = int(hashlib.sha256(event_id.encode()).hexdigest()[:15], 16)
    return {"RecordType": record, "ID": bounce_id, "Type": kind, **base, "Email": recipient, "BouncedAt": _iso(at, 7)}


def _sendgrid(kind: str, message_id: str, at: datetime, recipient: str, event_id: str) -> list[dict[str, Any]]:
    event: dict[str, Any] = {
        "email": recipient,
        "event": kind,
        "sg_event_id": base64.urlsafe_b64encode(hashlib.sha256(event_id.encode()).digest()[:18]).decode(),
        "sg_message_id": f"{message_id}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
        "smtp-id": f"<{message_id}@ismtpd0039p1iad1.sendgrid.net>",
        "timestamp": int(at.timestamp()),
    }
    if kind == "bounce":
        event.update(type="bounce", reason="550 5.1.1 unknown recipient", status="5.1.1")
    elif kind == "dropped":
        event.update(reason="Bounced Address", status="5.0.0")
    elif kind == "deferred":
        event.update(response="421 try again later", attempt="1")
    elif kind == "delivered":
        event["response"] = "250 OK"
    elif kind == "click":
        event["url"] = "https://example.com/welcome"
    return [event]


def _mailgun(kind: str, message_id: str, at: datetime, recipient: str, event_id: str) -> dict[str, Any]:
    name, _, severity = kind.partition("/")
    data: dict[str, Any] = {
        "event": name,
        "id": base64.urlsafe_b64encode(hashlib.sha256(event_id.encode()).digest()[:16]).decode().rstrip("="),
        "timestamp": round(at.timestamp(), 6),
        "recipient": recipient,
        "message": {"headers": {"message-id": message_id, "to": recipient}},
    }
    if severity:
        data.update(severity=severity, reason="bounce" if severity == "permanent" else "generic")
        data["delivery-status"] = {"code": 550 if severity == "permanent" else 421}
    return data


def _ses(kind: str, message_id: str, at: datetime, recipient: str) -> dict[str, Any]:
    sent_at = at - timedelta(seconds=2)
    event: dict[str, Any] = {
        "eventType": kind,
        "mail": {
            "timestamp": _iso(sent_at),
            "source": "sender@example.com",
            "messageId": message_id,
            "destination": [recipient],
        },
    }
    stamp = _iso(at)
    if kind == "Delivery":
        event["delivery"] = {"timestamp": stamp, "recipients": [recipient], "smtpResponse": "250 2.6.0 OK"}
    elif kind == "Bounce":
        event["bounce"] = {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": recipient, "status": "5.1.1"}],
            "timestamp": stamp,
            "feedbackId": _stable_uuid("ses-feedback", message_id, stamp),
        }
    elif kind == "Complaint":
        event["complaint"] = {"complainedRecipients": [{"emailAddress": recipient}], "timestamp": stamp}
    elif kind == "DeliveryDelay":
        event["deliveryDelay"] = {
            "timestamp": stamp,
            "delayType": "TransientCommunicationFailure",
            "delayedRecipients": [{"emailAddress": recipient, "status": "4.4.1"}],
        }
    elif kind in ("Open", "Click"):
        event[kind.lower()] = {"timestamp": stamp, "ipAddress": "192.0.2.1", "userAgent": "Mozilla/5.0"}
        if kind == "Click":
            event["click"]["link"] = "https://example.com/welcome"
    elif kind == "Subscription":
        event["subscription"] = {"timestamp": stamp, "newTopicPreferences": {"unsubscribeAll": True}}
    elif kind == "Reject":
        event["reject"] = {"reason": "Bad content"}
    elif kind == "Send":
        event["mail"]["timestamp"] = stamp
    return event


def _resend(kind: str, message_id: str, at: datetime, recipient: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "created_at": _iso(at - timedelta(seconds=2), 6).replace("Z", "+00:00"),
        "email_id": message_id,
        "from": "Acme <onboarding@example.com>",
        "to": [recipient],
        "subject": "Welcome",
    }
    if kind == "email.bounced":
        data["bounce"] = {"type": "Permanent", "subType": "General", "message": "hard bounce"}
    elif kind == "email.clicked":
        data["click"] = {"link": "https://example.com/welcome", "timestamp": _iso(at)}
    elif kind == "email.failed":
        data["failed"] = {"reason": "reached_daily_quota"}
    return {"type": kind, "created_at": _iso(at), "data": data}


def build_webhook(
    provider: str,
    message_id: str,
    event_type: str = "delivered",
    *,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    recipient: str = "someone@example.com",
    keys: SampleKeys | None = None,
    signed_at: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A webhook request ``(body, headers)`` reporting ``event_type`` for ``message_id``.

    ``message_id`` is what the *sender* stored (SendGrid: the X-Message-Id; the
    webhook then carries the longer ``sg_message_id``). ``event_id`` seeds the
    provider's event id (default: derived from the other arguments, so a
    rebuilt request is the same event and ingests as a duplicate). With
    ``keys`` the request is signed for ``verify=True``; without, ingest it
    with ``verify=False``. ``signed_at`` is the signing time (default now).
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    kinds = SAMPLE_KINDS[provider]
    if event_type not in kinds:
        raise ValueError(f"{provider} samples support {', '.join(kinds)}; not {event_type!r}")
    kind = kinds[event_type]
    at = (occurred_at or datetime.now(UTC)).astimezone(UTC)
    seed = event_id or _stable_uuid(provider, message_id, event_type, at.isoformat(), recipient)
    signed = (signed_at or datetime.now(UTC)).astimezone(UTC)
    timestamp = str(int(signed.timestamp()))
    headers: dict[str, str] = {"Content-Type": "application/json"}

    if provider == "postmark":
        body = _dumps(_postmark(kind, message_id, at, recipient, seed))
        if keys and keys.postmark_auth:
            headers["Authorization"] = "Basic " + base64.b64encode(keys.postmark_auth.encode()).decode()
    elif provider == "sendgrid":
        body = _dumps(_sendgrid(kind, message_id, at, recipient, seed)) + b"\r\n"
        if keys and keys.sendgrid_private_key:
            signature = keys.sendgrid_private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
            headers["X-Twilio-Email-Event-Webhook-Signature"] = base64.b64encode(signature).decode()
            headers["X-Twilio-Email-Event-Webhook-Timestamp"] = timestamp
    elif provider == "mailgun":
        token = hashlib.sha256(f"token|{seed}|{timestamp}".encode()).hexdigest()[:50]
        key = (keys.mailgun_signing_key if keys else None) or "unsigned"
        digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
        envelope = {
            "signature": {"timestamp": timestamp, "token": token, "signature": digest},
            "event-data": _mailgun(kind, message_id, at, recipient, seed),
        }
        body = _dumps(envelope)
    elif provider == "ses":
        body, headers = _sns_request(_ses(kind, message_id, at, recipient), seed, signed, keys)
    else:
        body = _dumps(_resend(kind, message_id, at, recipient))
        msg_id = "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:24]
        headers.update({"svix-id": msg_id, "svix-timestamp": timestamp})
        if keys and keys.resend_webhook_secret:
            headers["svix-signature"] = resend.sign(keys.resend_webhook_secret, msg_id, timestamp, body)
    return body, headers


def _sns_request(
    ses_event: dict[str, Any], seed: str, signed: datetime, keys: SampleKeys | None
) -> tuple[bytes, dict[str, str]]:
    version = keys.sns_signature_version if keys else "1"
    message: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": _stable_uuid("sns", seed),
        "TopicArn": SNS_TOPIC_ARN,
        "Message": json.dumps(ses_event, separators=(",", ":")),
        "Timestamp": _iso(signed),
        "SignatureVersion": version,
        "Signature": "",
        "SigningCertURL": keys.sns_cert_url if keys else SNS_CERT_URL,
        "UnsubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={SNS_TOPIC_ARN}:1",
    }
    if keys and keys.sns_private_key:
        message = sign_sns(message, keys.sns_private_key)
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": message["Type"],
        "x-amz-sns-message-id": message["MessageId"],
        "x-amz-sns-topic-arn": SNS_TOPIC_ARN,
    }
    return _dumps(message), headers


def sign_sns(message: dict[str, Any], key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """``message`` with ``Signature`` set as SNS computes it (SignatureVersion 1: SHA-1, 2: SHA-256)."""
    algorithm = hashes.SHA1() if str(message.get("SignatureVersion")) == "1" else hashes.SHA256()
    signature = key.sign(ses.string_to_sign(message), padding.PKCS1v15(), algorithm)
    return replace_field(message, "Signature", base64.b64encode(signature).decode("ascii"))


def replace_field(message: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    updated = dict(message)
    updated[name] = value
    return updated


def _dumps(value: Any) -> bytes:
    return json.dumps(value, indent=2).encode("utf-8")


__all__ = ["SAMPLE_KINDS", "SampleKeys", "build_webhook", "generate_keys", "sign_sns"]
