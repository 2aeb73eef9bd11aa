"""The ingest path against a real PostgreSQL: orphans born right, links, idempotency, no partial writes.

The end-to-end test runs for each provider on its documented delivery
sample, signed with keys made here: a wrong signature writes nothing; the
webhook arrives before its delivery (orphan with exactly the metadata the
reconciler reads); a redelivery is a duplicate; the delivery commits; a sweep
links the orphan; the delivery's projection carries the provider's event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.engine import Engine

from mailglass_pipeline.db import get_engine
from mailglass_pipeline.ingest import (
    IngestSettings,
    WebhookPayloadError,
    WebhookSignatureError,
    ingest,
)
from mailglass_pipeline.ingest.core import parse_webhook
from mailglass_pipeline.ingest.errors import TenantConflictError
from mailglass_pipeline.ingest.resend import sign as svix_sign
from mailglass_pipeline.ingest.samples import SNS_TOPIC_ARN, SampleKeys, build_webhook, sign_sns
from mailglass_pipeline.reconciliation.sweep import reconcile
from tests.factories import count_events, delivery, events, make_delivery
from tests.ingest.ingest_support import fixture_bytes, fixture_json, store_one

Documented = tuple[bytes, dict[str, str], str, datetime]


def documented_delivery(provider: str, keys: SampleKeys) -> Documented:
    """The provider's documented *delivered* sample, signed now: (body, headers, message id, event time)."""
    ts = str(int(time.time()))
    if provider == "postmark":
        assert keys.postmark_auth
        auth = "Basic " + base64.b64encode(keys.postmark_auth.encode()).decode()
        return (
            fixture_bytes("postmark/delivered.json"),
            {"Authorization": auth},
            "883953f4-6105-42a2-a16a-77a8eac79483",
            datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC),
        )
    if provider == "sendgrid":
        assert keys.sendgrid_private_key
        body = fixture_bytes("sendgrid/delivered.json")
        sig = keys.sendgrid_private_key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }
        # The sender stored the send response's X-Message-Id, without sg_message_id's ".filter..." suffix.
        return body, headers, "14c5d75ce93.dfd.64b469", datetime.fromtimestamp(1513299569, tz=UTC)
    if provider == "mailgun":
        assert keys.mailgun_signing_key
        data = fixture_json("mailgun/delivered_full_body__anymail.json")["event-data"]
        token = uuid.uuid4().hex + uuid.uuid4().hex[:18]
        sig = hmac.new(keys.mailgun_signing_key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
        body = json.dumps({"signature": {"timestamp": ts, "token": token, "signature": sig}, "event-data": data})
        return (
            body.encode(),
            {"Content-Type": "application/json"},
            "20180812211713.1.DF5966851B4BAA99@example.org",
            datetime.fromtimestamp(1534108637.153125, tz=UTC),
        )
    if provider == "ses":
        assert keys.sns_private_key
        message = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": SNS_TOPIC_ARN,
            "Message": fixture_bytes("amazon_ses/notification_delivery.json").decode(),
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "SignatureVersion": "1",
            "SigningCertURL": keys.sns_cert_url,
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }
        signed = sign_sns(message, keys.sns_private_key)
        headers = {"x-amz-sns-message-type": "Notification", "x-amz-sns-message-id": message["MessageId"]}
        return (
            json.dumps(signed).encode(),
            headers,
            "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
            datetime(2016, 1, 27, 14, 59, 38, 237000, tzinfo=UTC),
        )
    assert keys.resend_webhook_secret
    body = fixture_bytes("resend/delivered.json")
    msg_id = "msg_" + uuid.uuid4().hex
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": ts,
        "svix-signature": svix_sign(keys.resend_webhook_secret, msg_id, ts, body),
    }
    return body, headers, "56761188-7520-42d8-8898-ff6fc54ce618", datetime(2024, 2, 22, 23, 41, 12, 126000, tzinfo=UTC)


def queue_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM mailglass_reconciliation_queue")).scalar_one())


PROVIDERS = ["postmark", "sendgrid", "mailgun", "ses", "resend"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_end_to_end_orphan_reconciles(
    provider: str, database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    tenant = f"tenant-{provider}"
    body, headers, message_id, occurred_at = documented_delivery(provider, keys)

    # A wrong signature writes nothing.
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    wrong = IngestSettings(
        postmark_auth="user:other",
        sendgrid_verification_key=base64.b64encode(
            other_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        ).decode(),
        mailgun_signing_key="key-other",
        resend_webhook_secret="whsec_" + base64.b64encode(b"x" * 24).decode(),
        sns_cert_dir=str(settings.sns_cert_dir) + "-nowhere",
        ses_topic_arns=settings.ses_topic_arns,
    )
    with pytest.raises(WebhookSignatureError):
        ingest(provider, body, headers, tenant_id=tenant, database_url=database_url, settings=wrong)
    assert count_events(engine) == 0

    # The webhook arrives before its delivery: an orphan the reconciler can read.
    result = ingest(provider, body, headers, tenant_id=tenant, database_url=database_url, settings=settings)
    assert (result["events"], result["orphans"], result["linked"], result["duplicates"]) == (1, 1, 0, 0)
    (orphan,) = events(engine, tenant)
    assert orphan.delivery_id is None and orphan.needs_reconciliation is True
    assert orphan.type == "delivered" and orphan.occurred_at == occurred_at
    assert orphan.metadata["provider"] == provider
    assert orphan.metadata["provider_message_id"] == message_id
    assert orphan.metadata["provider_event_id"]
    assert orphan.idempotency_key.startswith(f"{provider}:")
    assert isinstance(orphan.normalized_payload, dict) and orphan.normalized_payload
    assert queue_size(engine) == 1

    # The same webhook again stores nothing new.
    again = ingest(provider, body, headers, tenant_id=tenant, database_url=database_url, settings=settings)
    assert (again["events"], again["duplicates"]) == (0, 1)
    assert count_events(engine) == 1

    # The delivery commits; a sweep links the orphan; the projection carries the provider's event.
    delivery_id = make_delivery(engine, tenant_id=tenant, provider=provider, message_id=message_id, dispatched=True)
    sweep = reconcile(tenant, database_url=database_url, grace_seconds=0)
    assert (sweep["scanned"], sweep["linked"]) == (1, 1)
    row = delivery(engine, delivery_id)
    assert row.delivered_at == occurred_at
    assert row.terminal is True
    assert row.lock_version == 2
    reconciled = [e for e in events(engine, tenant) if e.type == "reconciled"]
    assert len(reconciled) == 1 and reconciled[0].delivery_id == delivery_id
    assert reconciled[0].metadata["reconciled_provider"] == provider
    assert reconciled[0].metadata["reconciled_event_type"] == "delivered"
    assert reconcile(tenant, database_url=database_url, grace_seconds=0)["linked"] == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_event_for_existing_delivery_links_and_projects(
    provider: str, database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    delivery_id = make_delivery(engine, tenant_id="t1", provider=provider, message_id="msg-linked", dispatched=True)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    body, headers = build_webhook(provider, "msg-linked", "delivered", occurred_at=at, keys=keys)
    result = ingest(provider, body, headers, tenant_id="t1", database_url=database_url, settings=settings)
    assert (result["events"], result["linked"], result["orphans"]) == (1, 1, 0)
    (event,) = events(engine, "t1")
    assert event.delivery_id == delivery_id and event.needs_reconciliation is False
    row = delivery(engine, delivery_id)
    assert (row.last_event_type, row.last_event_at, row.delivered_at, row.terminal) == ("delivered", at, at, True)
    assert row.lock_version == 2
    # A duplicate is not projected twice.
    body2, headers2 = build_webhook(provider, "msg-linked", "delivered", occurred_at=at, keys=keys)
    assert (
        ingest(provider, body2, headers2, tenant_id="t1", database_url=database_url, settings=settings)["duplicates"]
        == 1
    )
    assert delivery(engine, delivery_id).lock_version == 2
    assert queue_size(engine) == 0


def test_lookup_never_crosses_tenants(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    other = make_delivery(engine, tenant_id="tenant-a", provider="postmark", message_id="shared-id", dispatched=True)
    body, headers = build_webhook("postmark", "shared-id", "bounced", keys=keys)
    result = ingest("postmark", body, headers, tenant_id="tenant-b", database_url=database_url, settings=settings)
    assert result["orphans"] == 1
    (event,) = events(engine, "tenant-b")
    assert event.delivery_id is None and event.reject_reason == "bounced"
    assert delivery(engine, other).bounced_at is None


def test_sendgrid_batch_is_one_transaction(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    make_delivery(engine, tenant_id="t1", provider="sendgrid", message_id="qNwBLgPQQjW6DJvKQwSAbw", dispatched=True)
    body = fixture_json("sendgrid/signature_vector_multi.json")["body"].encode()
    result = ingest("sendgrid", body, {}, tenant_id="t1", database_url=database_url, verify=False)
    assert (result["received"], result["events"], result["linked"]) == (2, 2, 2)
    assert result["verified"] is False
    rows = events(engine, "t1")
    assert {r.type for r in rows} == {"queued", "bounced"}
    assert all(r.metadata["verified"] is False for r in rows)
    # One element that is not an event (issue 25): the rest of the batch is stored, in the same transaction,
    # and the element is kept as a raw record with status failed, counted as malformed.
    bad = json.dumps([{"event": "delivered", "timestamp": 1, "sg_event_id": "new", "sg_message_id": "x"}, 7]).encode()
    result = ingest("sendgrid", bad, {}, tenant_id="t1", database_url=database_url, verify=False)
    assert (result["received"], result["events"], result["malformed"]) == (2, 1, 1)
    assert count_events(engine) == 3
    with engine.connect() as conn:
        failed = (
            conn.execute(sa.text("SELECT raw_payload FROM mailglass_webhook_events WHERE status = 'failed'"))
            .scalars()
            .all()
        )
    assert failed == [{"_batch": [7]}]
    # Unverified input of which no element is an event is the wrong file: refused, nothing written.
    with pytest.raises(WebhookPayloadError):
        ingest("sendgrid", b"[7, 8]", {}, tenant_id="t1", database_url=database_url, verify=False)
    assert count_events(engine) == 3


def test_a_batch_projects_by_the_rules_in_its_own_transaction(database_url: str, engine: Engine) -> None:
    """The transaction path (store_webhook, then projector.project: lock, then projection): one write per delivery,
    the latest event wins, a tie keeps the first in the webhook's order, set-once times and terminal as D6 says."""
    first = make_delivery(engine, tenant_id="t1", provider="sendgrid", message_id="m-a")
    second = make_delivery(engine, tenant_id="t1", provider="sendgrid", message_id="m-b")
    at = int(time.time()) - 60
    elements = [
        ("m-a", "open", at + 10),
        ("m-a", "click", at + 10),  # tied with the open before it: the open stays
        ("m-a", "delivered", at + 5),  # earlier: sets delivered_at and terminal, not the last event
        ("m-b", "click", at + 10),
        ("m-b", "open", at + 10),
    ]
    body = json.dumps(
        [
            {"event": kind, "timestamp": ts, "sg_event_id": f"ev-{i}", "sg_message_id": mid, "email": "a@b.example"}
            for i, (mid, kind, ts) in enumerate(elements)
        ]
    ).encode()
    result = ingest("sendgrid", body, {}, tenant_id="t1", database_url=database_url, verify=False)
    assert (result["events"], result["linked"]) == (5, 5)
    stamp = datetime.fromtimestamp(at, UTC)
    a, b = delivery(engine, first), delivery(engine, second)
    assert (a.last_event_type, a.last_event_at, a.delivered_at, a.terminal) == (
        "opened", stamp + timedelta(seconds=10), stamp + timedelta(seconds=5), True
    )  # fmt: skip
    assert (b.last_event_type, b.terminal, b.delivered_at) == ("clicked", False, None)
    assert (a.lock_version, b.lock_version) == (2, 2)  # one write each
    # The same batch again: duplicates, nothing projected.
    assert ingest("sendgrid", body, {}, tenant_id="t1", database_url=database_url, verify=False)["duplicates"] == 5
    assert (delivery(engine, first).lock_version, delivery(engine, second).lock_version) == (2, 2)


def test_mailgun_token_replay_refused(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    body, headers = build_webhook("mailgun", "mg-1", "delivered", keys=keys)
    assert (
        ingest("mailgun", body, headers, tenant_id="t1", database_url=database_url, settings=settings)["orphans"] == 1
    )
    # Mailgun redelivers the very same request: an idempotent duplicate, not an error.
    assert (
        ingest("mailgun", body, headers, tenant_id="t1", database_url=database_url, settings=settings)["duplicates"]
        == 1
    )
    # Its signature block pasted onto another event: refused, nothing written.
    envelope = json.loads(body)
    forged, _ = build_webhook("mailgun", "mg-2", "bounced", keys=keys)
    forged_envelope = {**json.loads(forged), "signature": envelope["signature"]}
    with pytest.raises(WebhookSignatureError, match="replay"):
        ingest(
            "mailgun",
            json.dumps(forged_envelope).encode(),
            {},
            tenant_id="t1",
            database_url=database_url,
            settings=settings,
        )
    # The same request replayed to another tenant: refused as a cross-tenant conflict (409), never "duplicate".
    with pytest.raises(TenantConflictError, match="another tenant"):
        ingest("mailgun", body, headers, tenant_id="t2", database_url=database_url, settings=settings)
    assert count_events(engine) == 1


def test_mailgun_one_statement_claims_its_token(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    # The one-statement path claims Mailgun's token with the event; a replayed token fails it whole.
    body, headers = build_webhook("mailgun", "mg-once", "delivered", keys=keys)
    pool = get_engine(database_url, pre_ping=False)
    first = store_one(pool, parse_webhook("mailgun", body, headers, settings=settings), "t1")
    assert first is not None and first["orphans"] == 1

    def tokens() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM mailglass_webhook_tokens WHERE tenant_id = 't1'")
            ).scalar_one()

    assert tokens() == 1
    forged, _ = build_webhook("mailgun", "mg-once-2", "bounced", keys=keys)
    envelope = {**json.loads(forged), "signature": json.loads(body)["signature"]}
    parsed = parse_webhook("mailgun", json.dumps(envelope).encode(), {}, settings=settings)
    assert store_one(pool, parsed, "t1") is None
    assert (count_events(engine), tokens()) == (1, 1)


def test_events_without_message_id_are_kept_but_not_queued(database_url: str, engine: Engine) -> None:
    body = fixture_bytes("sendgrid/opened_category_array.json")
    result = ingest("sendgrid", body, {}, tenant_id="t1", database_url=database_url, verify=False)
    assert (result["events"], result["orphans"], result["unlinkable"]) == (2, 0, 2)
    assert queue_size(engine) == 0
    assert all(not r.needs_reconciliation and r.delivery_id is None for r in events(engine, "t1"))


def test_unknown_kind_is_an_unknown_orphan(database_url: str, engine: Engine) -> None:
    body = b'{"type": "email.teleported", "created_at": "2024-01-01T00:00:00Z", "data": {"email_id": "rs-9"}}'
    result = ingest("resend", body, {"svix-id": "msg_x"}, tenant_id="t1", database_url=database_url, verify=False)
    assert result["orphans"] == 1
    (event,) = events(engine, "t1")
    assert (event.type, event.metadata["provider_message_id"], event.metadata["provider_event"]) == (
        "unknown",
        "rs-9",
        "email.teleported",
    )


def test_sns_subscription_confirmation_writes_nothing(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    message: dict[str, Any] = {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "tok",
        "TopicArn": SNS_TOPIC_ARN,
        "Message": "You have chosen to subscribe.",
        "SubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=tok",
        "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "SignatureVersion": "2",
        "SigningCertURL": keys.sns_cert_url,
    }
    assert keys.sns_private_key is not None
    body = json.dumps(sign_sns(message, keys.sns_private_key)).encode()
    result = ingest("ses", body, {}, tenant_id="t1", database_url=database_url, settings=settings)
    assert (result["events"], result["orphans"], result["duplicates"]) == (0, 0, 0)
    assert result["subscribe_url"] == message["SubscribeURL"]
    assert count_events(engine) == 0


def test_ses_one_event_per_recipient(database_url: str, engine: Engine) -> None:
    body = fixture_bytes("amazon_ses/notification_bounce_permanent_no_dsn.json")
    result = ingest("ses", body, {}, tenant_id="t1", database_url=database_url, verify=False)
    assert result["orphans"] == 2
    assert sorted(r.metadata["recipient"] for r in events(engine, "t1")) == ["jane@example.com", "richard@example.com"]


def test_bad_arguments(database_url: str) -> None:
    from mailglass_pipeline.ingest.errors import InvalidTenantIdError

    for bad in ("", " t", "t\n", "t\x00", "x" * 256):
        with pytest.raises(InvalidTenantIdError):
            ingest("postmark", b"{}", {}, tenant_id=bad, database_url=database_url, verify=False)
    with pytest.raises(ValueError):
        ingest("nope", b"{}", {}, tenant_id="t", database_url=database_url, verify=False)
