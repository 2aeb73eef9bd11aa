"""Signatures: the published vectors verify and their negative cases fail; real keys for the rest.

Pure tests (no database). Published vectors carry fixed, old timestamps, so
the tolerance is checked with the clock pinned (``now=``) next to them, and
shown to refuse them with the real clock.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailglass_pipeline.errors import MailglassError
from mailglass_pipeline.ingest import (
    IngestConfigurationError,
    IngestError,
    IngestSettings,
    WebhookPayloadError,
    WebhookSignatureError,
    parse_webhook,
)
from mailglass_pipeline.ingest import mailgun as mailgun_mod
from mailglass_pipeline.ingest import resend as resend_mod
from mailglass_pipeline.ingest import sendgrid as sendgrid_mod
from mailglass_pipeline.ingest import ses as ses_mod
from mailglass_pipeline.ingest.samples import SAMPLE_KINDS, SampleKeys, build_webhook, sign_sns
from tests.ingest.ingest_support import fixture_bytes, fixture_json


def test_error_hierarchy() -> None:
    assert issubclass(WebhookSignatureError, IngestError)
    assert issubclass(WebhookPayloadError, IngestError)
    assert issubclass(IngestError, MailglassError)
    assert issubclass(IngestConfigurationError, ValueError)


# -- SendGrid: published ECDSA vectors ---------------------------------------------------------


@pytest.mark.parametrize("name", ["sendgrid/signature_vector_single.json", "sendgrid/signature_vector_multi.json"])
def test_sendgrid_published_vector_verifies(name: str) -> None:
    vector = fixture_json(name)
    sig = vector["headers"]["X-Twilio-Email-Event-Webhook-Signature"]
    ts = vector["headers"]["X-Twilio-Email-Event-Webhook-Timestamp"]
    body = vector["body"].encode()
    assert sendgrid_mod.signature_valid(vector["public_key"], sig, ts, body)
    config = IngestSettings(sendgrid_verification_key=vector["public_key"])
    at = datetime.fromtimestamp(int(ts), tz=UTC) + timedelta(seconds=5)
    lower = {k.lower(): v for k, v in vector["headers"].items()}  # header names are case-insensitive
    parsed = parse_webhook("sendgrid", body, lower, settings=config, now=at)
    assert parsed.verified and parsed.events
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        parse_webhook("sendgrid", body, vector["headers"], settings=config)  # real clock: years late


def test_sendgrid_published_negative_cases_fail() -> None:
    vector = fixture_json("sendgrid/signature_vector_single.json")
    sig = vector["headers"]["X-Twilio-Email-Event-Webhook-Signature"]
    ts = vector["headers"]["X-Twilio-Email-Event-Webhook-Timestamp"]
    body = vector["body"].encode()
    negative = vector["negative_cases_from_source"]
    assert not sendgrid_mod.signature_valid(negative["wrong_public_key"], sig, ts, body)
    assert not sendgrid_mod.signature_valid(vector["public_key"], negative["wrong_signature"], ts, body)
    assert not sendgrid_mod.signature_valid(vector["public_key"], sig, ts, negative["wrong_body"].encode())
    assert not sendgrid_mod.signature_valid(vector["public_key"], sig, negative["wrong_timestamp"], body)
    assert not sendgrid_mod.signature_valid(vector["public_key"], "not base64!", ts, body)
    config = IngestSettings(sendgrid_verification_key=negative["wrong_public_key"])
    at = datetime.fromtimestamp(int(ts), tz=UTC)
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        parse_webhook("sendgrid", body, vector["headers"], settings=config, now=at)


def test_sendgrid_key_must_be_p256() -> None:
    with pytest.raises(IngestConfigurationError):
        sendgrid_mod.load_public_key("bm90IGEga2V5")


# -- Mailgun: published HMAC vector ------------------------------------------------------------


def test_mailgun_published_vector() -> None:
    v = fixture_json("mailgun/signature_vector.json")
    assert mailgun_mod.signature_valid(v["signing_key"], v["timestamp"], v["token"], v["signature"])
    bad = v["negative_case_from_source"]
    assert not mailgun_mod.signature_valid(v["signing_key"], bad["timestamp"], bad["token"], bad["signature"])
    assert not mailgun_mod.signature_valid("another-key", v["timestamp"], v["token"], v["signature"])


def test_mailgun_published_vector_through_parse() -> None:
    v = fixture_json("mailgun/signature_vector.json")
    event_data = fixture_json("mailgun/delivered.json")
    block = {"timestamp": v["timestamp"], "token": v["token"], "signature": v["signature"]}
    body = json.dumps({"signature": block, "event-data": event_data}).encode()
    config = IngestSettings(mailgun_signing_key=v["signing_key"])
    at = datetime.fromtimestamp(int(v["timestamp"]), tz=UTC) + timedelta(seconds=299)
    parsed = parse_webhook("mailgun", body, {}, settings=config, now=at)
    assert parsed.replay_token is not None and parsed.replay_token.token == v["token"]
    assert [e.type for e in parsed.events] == ["delivered"]
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        parse_webhook("mailgun", body, {}, settings=config, now=at + timedelta(seconds=2))
    bad = v["negative_case_from_source"]
    forged = json.dumps({"signature": {**block, "token": bad["token"]}, "event-data": event_data}).encode()
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        parse_webhook("mailgun", forged, {}, settings=config, now=at)
    # The docs' bare event-data has no signature block: refused when verifying.
    with pytest.raises(WebhookSignatureError, match="no signature"):
        parse_webhook("mailgun", fixture_bytes("mailgun/delivered.json"), {}, settings=config, now=at)


# -- Resend / Svix: published vectors ----------------------------------------------------------


def svix_headers(v: dict[str, Any], signature: str | None = None) -> dict[str, str]:
    headers = dict(v["headers"])
    if signature is not None:
        headers["svix-signature"] = signature
    return headers


def test_svix_published_vector() -> None:
    v = fixture_json("resend/signature_vector_svix.json")
    h = v["headers"]
    body = v["body"].encode()
    assert resend_mod.sign(v["secret"], h["svix-id"], h["svix-timestamp"], body) == h["svix-signature"]
    assert resend_mod.signature_valid(v["secret"], h["svix-id"], h["svix-timestamp"], body, h["svix-signature"])
    # Negative cases: other body, id, timestamp, secret; unknown version; truncated signature.
    assert not resend_mod.signature_valid(
        v["secret"], h["svix-id"], h["svix-timestamp"], body + b" ", h["svix-signature"]
    )
    assert not resend_mod.signature_valid(v["secret"], "msg_other", h["svix-timestamp"], body, h["svix-signature"])
    assert not resend_mod.signature_valid(v["secret"], h["svix-id"], "1614265331", body, h["svix-signature"])
    other_secret = "whsec_" + base64.b64encode(b"another secret of 24 byt").decode()
    assert not resend_mod.signature_valid(other_secret, h["svix-id"], h["svix-timestamp"], body, h["svix-signature"])
    v2 = h["svix-signature"].replace("v1,", "v2,")
    assert not resend_mod.signature_valid(v["secret"], h["svix-id"], h["svix-timestamp"], body, v2)
    assert not resend_mod.signature_valid(
        v["secret"], h["svix-id"], h["svix-timestamp"], body, h["svix-signature"][:-4]
    )


def test_svix_several_signatures_in_one_header() -> None:
    v = fixture_json("resend/signature_vector_svix.json")
    h = v["headers"]
    body = v["body"].encode()
    header = f"v1,Zm9vYmFy v1a,xyz {h['svix-signature']} v2,abc"
    assert resend_mod.signature_valid(v["secret"], h["svix-id"], h["svix-timestamp"], body, header)
    at = datetime.fromtimestamp(int(h["svix-timestamp"]), tz=UTC) - timedelta(seconds=60)
    config = IngestSettings(resend_webhook_secret=v["secret"])
    # The signature verifies, but the vector's body is {"test": ...}, not a Resend event: refused as such.
    with pytest.raises(WebhookPayloadError, match="not a resend webhook"):
        parse_webhook("resend", body, svix_headers(v, header), settings=config, now=at)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        parse_webhook("resend", body, svix_headers(v), settings=config)


@pytest.mark.parametrize("length", ["262143", "262144", "1048576"])
def test_svix_large_payload_vectors(length: str) -> None:
    v = fixture_json("resend/signature_vector_svix.json")["large_payload_vectors"]
    body = b"a" * int(length)
    expected = v["expected_signature_by_length"][length]
    assert resend_mod.sign(v["secret"], v["svix-id"], v["svix-timestamp"], body) == expected
    assert resend_mod.signature_valid(v["secret"], v["svix-id"], v["svix-timestamp"], body, expected)
    assert not resend_mod.signature_valid(v["secret"], v["svix-id"], v["svix-timestamp"], body + b"a", expected)


# -- SNS: published RSA vectors ----------------------------------------------------------------


@pytest.fixture
def sns_vector_dir(tmp_path: Path) -> Path:
    vectors = fixture_json("amazon_ses/sns_signature_vectors.json")
    url = vectors["messages"][0]["fields"]["SigningCertURL"]
    host, name = ses_mod.cert_location(url)
    (tmp_path / host).mkdir()
    (tmp_path / host / name).write_text(vectors["signing_cert_pem"])
    return tmp_path


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_sns_published_vectors_verify(index: int, sns_vector_dir: Path) -> None:
    vectors = fixture_json("amazon_ses/sns_signature_vectors.json")
    vector = vectors["messages"][index]
    fields = vector["fields"]
    assert ses_mod.string_to_sign(fields) == vector["string_to_sign"].encode()
    certificate = ses_mod.find_certificate(fields["SigningCertURL"], str(sns_vector_dir))
    assert ses_mod.signature_valid(fields, certificate)
    # Negative cases: altered message, altered subject, swapped SignatureVersion.
    assert not ses_mod.signature_valid({**fields, "Message": "Hello world!"}, certificate)
    assert not ses_mod.signature_valid({**fields, "Subject": "Goodbye"}, certificate)
    other = "2" if fields["SignatureVersion"] == "1" else "1"
    assert not ses_mod.signature_valid({**fields, "SignatureVersion": other}, certificate)
    # Through the parser, clock pinned next to the signed Timestamp.
    config = IngestSettings(sns_cert_dir=str(sns_vector_dir), ses_topic_arns=(fields["TopicArn"],))
    at = datetime.fromisoformat(fields["Timestamp"]) + timedelta(seconds=30)
    headers = {"X-Amz-Sns-Message-Type": "Notification", "X-Amz-Sns-Message-Id": fields["MessageId"]}
    parsed = parse_webhook("ses", json.dumps(fields).encode(), headers, settings=config, now=at)
    (event,) = parsed.events
    assert (event.type, event.provider_message_id, event.provider_event_id) == (
        "unknown",
        None,
        f"{fields['MessageId']}:0",
    )
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        parse_webhook("ses", json.dumps(fields).encode(), headers, settings=config)
    tampered = json.dumps({**fields, "Message": "Hello world?"}).encode()
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        parse_webhook("ses", tampered, headers, settings=config, now=at)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem",
        "https://sns.us-east-2.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
        "https://evil.example/sns.us-east-2.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.us-east-2.amazonaws.com@evil.example/x.pem",
        "https://s3.us-east-2.amazonaws.com/SimpleNotificationService-x.pem",
        "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-x.crt",
        "https://sns.us-east-2.amazonaws.com:8443/SimpleNotificationService-x.pem",
    ],
)
def test_sns_cert_url_must_be_sns(url: str, sns_vector_dir: Path) -> None:
    with pytest.raises(WebhookSignatureError, match="SigningCertURL"):
        ses_mod.find_certificate(url, str(sns_vector_dir))


def test_sns_placeholder_doc_signature_fails(sns_vector_dir: Path) -> None:
    body = fixture_bytes("amazon_ses/sns_notification.json")
    config = IngestSettings(sns_cert_dir=str(sns_vector_dir), ses_topic_arns=(json.loads(body)["TopicArn"],))
    with pytest.raises(WebhookSignatureError, match="not in MAILGLASS_SNS_CERT_DIR"):
        parse_webhook("ses", body, {}, settings=config, now=datetime(2012, 5, 2, 0, 54, 30, tzinfo=UTC))


# -- Postmark: Basic auth as documented ----------------------------------------------------------


def test_postmark_basic_auth_as_documented() -> None:
    doc = fixture_json("postmark/auth_basic.json")
    config = IngestSettings(postmark_auth=f"{doc['username']}:{doc['password']}")
    body = fixture_bytes("postmark/delivered.json")
    parsed = parse_webhook("postmark", body, {"authorization": doc["derived_authorization_header"]}, settings=config)
    assert parsed.verified and parsed.events[0].type == "delivered"
    for header in ("Basic " + base64.b64encode(b"user:wrong").decode(), "Bearer dXNlcjpwYXNz", "Basic %%%", ""):
        with pytest.raises(WebhookSignatureError):
            parse_webhook("postmark", body, {"Authorization": header}, settings=config)
    with pytest.raises(WebhookSignatureError, match="no Authorization"):
        parse_webhook("postmark", body, {}, settings=config)


# -- real keys made here, every provider ----------------------------------------------------------

SIGNED_CASES = [(provider, kind) for provider, kinds in SAMPLE_KINDS.items() for kind in kinds]


@pytest.mark.parametrize(("provider", "event_type"), SIGNED_CASES)
def test_signed_samples_verify(provider: str, event_type: str, keys: SampleKeys, settings: IngestSettings) -> None:
    body, headers = build_webhook(provider, "msg-42", event_type, keys=keys)
    (event,) = parse_webhook(provider, body, headers, settings=settings).events
    assert (event.type, event.provider_message_id) == (event_type, "msg-42")


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses", "resend"])
def test_wrong_key_is_refused(provider: str, keys: SampleKeys, settings: IngestSettings, tmp_path: Path) -> None:
    from mailglass_pipeline.ingest.samples import generate_keys

    other_keys, _ = generate_keys(tmp_path)
    body, headers = build_webhook(provider, "msg-42", "delivered", keys=other_keys)
    with pytest.raises(WebhookSignatureError):
        parse_webhook(provider, body, headers, settings=settings)


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "ses", "resend"])
def test_stale_and_future_timestamps_are_refused(provider: str, keys: SampleKeys, settings: IngestSettings) -> None:
    for skew in (timedelta(seconds=-301), timedelta(seconds=301)):
        signed_at = datetime.now(UTC) + skew
        body, headers = build_webhook(provider, "msg-42", "delivered", keys=keys, signed_at=signed_at)
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            parse_webhook(provider, body, headers, settings=settings)
    body, headers = build_webhook(
        provider, "msg-42", "delivered", keys=keys, signed_at=datetime.now(UTC) - timedelta(seconds=290)
    )
    assert parse_webhook(provider, body, headers, settings=settings).verified


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "resend"])
def test_missing_signature_headers_are_refused(provider: str, keys: SampleKeys, settings: IngestSettings) -> None:
    body, _ = build_webhook(provider, "msg-42", "delivered", keys=keys)
    with pytest.raises(WebhookSignatureError):
        parse_webhook(provider, body, {"Content-Type": "application/json"}, settings=settings)


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses", "resend"])
def test_tampered_body_is_refused(provider: str, keys: SampleKeys, settings: IngestSettings) -> None:
    body, headers = build_webhook(provider, "msg-42", "delivered", keys=keys)
    tampered = body.replace(b"msg-42", b"msg-43")
    if provider in ("postmark", "mailgun"):
        # Neither signs the body: Postmark has only Basic auth, Mailgun signs timestamp+token;
        # the tampered body passes here and Mailgun's token claim refuses it at storage time.
        assert parse_webhook(provider, tampered, headers, settings=settings).verified
        return
    with pytest.raises(WebhookSignatureError):
        parse_webhook(provider, tampered, headers, settings=settings)


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses", "resend"])
def test_missing_secret_is_a_configuration_error(provider: str, keys: SampleKeys) -> None:
    body, headers = build_webhook(provider, "msg-42", "delivered", keys=keys)
    with pytest.raises(IngestConfigurationError, match="MAILGLASS_"):
        parse_webhook(provider, body, headers, settings=IngestSettings())
    assert parse_webhook(provider, body, headers, settings=IngestSettings(), verify=False).events


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signature_versions_with_own_certificate(version: str, keys: SampleKeys, settings: IngestSettings) -> None:
    own = SampleKeys(sns_private_key=keys.sns_private_key, sns_signature_version=version)
    body, headers = build_webhook("ses", "ses-msg-1", "bounced", keys=own)
    assert json.loads(body)["SignatureVersion"] == version
    (event,) = parse_webhook("ses", body, headers, settings=settings).events
    assert (event.type, event.provider_message_id, event.reject_reason) == ("bounced", "ses-msg-1", "bounced")


def test_sns_signature_version_3_is_refused(keys: SampleKeys, settings: IngestSettings) -> None:
    body, headers = build_webhook("ses", "ses-msg-1", "delivered", keys=keys)
    message = {**json.loads(body), "SignatureVersion": "3"}
    with pytest.raises(WebhookSignatureError, match="SignatureVersion"):
        parse_webhook("ses", json.dumps(message).encode(), headers, settings=settings)


def test_sns_header_must_match_body(keys: SampleKeys, settings: IngestSettings) -> None:
    body, headers = build_webhook("ses", "ses-msg-1", "delivered", keys=keys)
    with pytest.raises(WebhookSignatureError, match="x-amz-sns-message-id"):
        parse_webhook("ses", body, {**headers, "x-amz-sns-message-id": "other"}, settings=settings)


def test_sns_subscription_confirmation_signed(keys: SampleKeys, settings: IngestSettings) -> None:
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e2425c464de",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:MyTopic",
        "Message": "You have chosen to subscribe to the topic arn:aws:sns:us-east-1:123456789012:MyTopic.",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37fb687f5d51",
        "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "SignatureVersion": "1",
        "SigningCertURL": keys.sns_cert_url,
    }
    assert keys.sns_private_key is not None
    signed = sign_sns(message, keys.sns_private_key)
    # Validly signed, but MyTopic is not on the allowlist: refused like a bad signature.
    with pytest.raises(WebhookSignatureError, match="TopicArn"):
        parse_webhook("ses", json.dumps(signed).encode(), {}, settings=settings)
    settings = dataclasses.replace(settings, ses_topic_arns=(message["TopicArn"],))
    parsed = parse_webhook("ses", json.dumps(signed).encode(), {}, settings=settings)
    assert parsed.events == [] and parsed.notice["subscribe_url"] == message["SubscribeURL"]
    forged = {**signed, "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=evil"}
    with pytest.raises(WebhookSignatureError):
        parse_webhook("ses", json.dumps(forged).encode(), {}, settings=settings)


def test_bare_ses_json_needs_no_verify(settings: IngestSettings) -> None:
    body = fixture_bytes("amazon_ses/event_delivery.json")
    with pytest.raises(WebhookSignatureError, match="not an SNS envelope"):
        parse_webhook("ses", body, {}, settings=settings)
    assert parse_webhook("ses", body, {}, settings=settings, verify=False).events


def test_signed_but_malformed_body_is_a_payload_error(keys: SampleKeys, settings: IngestSettings) -> None:
    import time

    from mailglass_pipeline.ingest.resend import sign

    body = b'{"type": "email.delivered", '
    ts = str(int(time.time()))
    assert keys.resend_webhook_secret is not None
    headers = {
        "svix-id": "msg_1",
        "svix-timestamp": ts,
        "svix-signature": sign(keys.resend_webhook_secret, "msg_1", ts, body),
    }
    with pytest.raises(WebhookPayloadError):
        parse_webhook("resend", body, headers, settings=settings)


def test_unknown_provider() -> None:
    with pytest.raises(IngestConfigurationError, match="unknown provider"):
        parse_webhook("sparkpost", b"{}", {})
