"""Every documented provider sample parses to the event type and message id the provider documents.

Pure tests (no database): ``parse_webhook(..., verify=False)`` on the bytes
exactly as published. The table below is checked against SOURCES.md, so a
fixture added there without an expectation here fails.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from mailglass_pipeline.ingest import WebhookPayloadError, parse_webhook
from tests.ingest.ingest_support import FOLDERS, fixture_bytes, fixture_json, sources_files

PM_ID = "883953f4-6105-42a2-a16a-77a8eac79483"
PM_ZERO = "00000000-0000-0000-0000-000000000000"
SG_ID = "14c5d75ce93.dfd.64b469"  # X-Message-Id the sender stored; sg_message_id adds ".filter0001..."
SES_EX = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
RS_ID = "56761188-7520-42d8-8898-ff6fc54ce618"

#: file -> (event types in order, provider_message_id of every event, reject_reason of the first event)
EXPECTED: dict[str, tuple[list[str], str | None, str | None]] = {
    "postmark/delivered.json": (["delivered"], PM_ID, None),
    "postmark/bounced_hard.json": (["bounced"], PM_ID, "bounced"),
    "postmark/opened.json": (["opened"], PM_ID, None),
    "postmark/clicked.json": (["clicked"], PM_ZERO, None),
    "postmark/complained.json": (["complained"], PM_ZERO, "spam"),
    # Anymail: a suppression after a hard bounce reports the bounce.
    "postmark/subscription_change_hard_bounce.json": (["bounced"], PM_ID, "bounced"),
    "postmark/delivered__postmark-skills.json": (["delivered"], PM_ID, None),
    "postmark/bounced_hard__postmark-skills.json": (["bounced"], PM_ID, "bounced"),
    "postmark/complained__postmark-skills.json": (["complained"], PM_ID, "spam"),
    "postmark/opened__postmark-skills.json": (["opened"], PM_ID, None),
    "postmark/clicked__postmark-skills.json": (["clicked"], PM_ID, None),
    "postmark/unsubscribed__postmark-skills.json": (["unsubscribed"], PM_ID, "unsubscribed"),
    "sendgrid/all_events_batch.json": (
        [
            "queued",
            "deferred",
            "delivered",
            "opened",
            "clicked",
            "bounced",
            "rejected",
            "complained",
            "unsubscribed",
            "unsubscribed",
            "subscribed",
        ],
        "sg_message_id",
        None,
    ),
    "sendgrid/processed.json": (["queued"], SG_ID, None),
    "sendgrid/dropped.json": (["rejected"], SG_ID, "bounced"),
    "sendgrid/delivered.json": (["delivered"], SG_ID, None),
    "sendgrid/deferred.json": (["deferred"], SG_ID, None),
    "sendgrid/bounced_hard.json": (["bounced"], SG_ID, "bounced"),
    "sendgrid/bounced_blocked.json": (["bounced"], SG_ID, "blocked"),
    "sendgrid/opened.json": (["opened"], SG_ID, None),
    "sendgrid/clicked.json": (["clicked"], SG_ID, None),
    "sendgrid/complained.json": (["complained"], SG_ID, "spam"),
    "sendgrid/unsubscribed.json": (["unsubscribed"], SG_ID, "unsubscribed"),
    "sendgrid/group_unsubscribe.json": (["unsubscribed"], SG_ID, "unsubscribed"),
    "sendgrid/group_resubscribe.json": (["subscribed"], SG_ID, None),
    "sendgrid/opened_category_array.json": (["opened", "opened"], None, None),
    "sendgrid/clicked_unique_args.json": (["clicked"], "sendgrid_internal_message_id", None),
    "sendgrid/clicked_detailed.json": (["clicked"], "sendgrid_internal_message_id", None),
    "mailgun/accepted.json": (["queued"], "20260203192638.000be97f99f8cea1@sample.mailgun.com", None),
    "mailgun/delivered.json": (["delivered"], "20260203192030.53383e583ab41f62@sample.mailgun.com", None),
    "mailgun/opened.json": (["opened"], "20260205213049.8e3a7bf607f78309@sample.mailgun.com", None),
    "mailgun/clicked.json": (["clicked"], "20260205213049.8e3a7bf607f78309@sample.mailgun.com", None),
    "mailgun/failed_permanent.json": (["bounced"], "20260212174255.58bbb7ce85a423e5@mailgun.com", "bounced"),
    "mailgun/failed_temporary.json": (["deferred"], "20260212180106.5c8f35804ae3fd54@sample.mailgun.com", None),
    "mailgun/unsubscribed.json": (
        ["unsubscribed"],
        "20260205213049.8e3a7bf607f78309@sample.mailgun.com",
        "unsubscribed",
    ),
    "mailgun/complained.json": (["complained"], "20260212182531.0d5ed3254c319957@sample.mailgun.com", "spam"),
    # Never attempted (on the suppression list): rejected, because of an earlier bounce.
    "mailgun/failed_permanent_suppress_bounce.json": (
        ["rejected"],
        "20180622211249.1.2A6098970A380E12@example.org",
        "bounced",
    ),
    "mailgun/delivered_full_body__anymail.json": (["delivered"], "20180812211713.1.DF5966851B4BAA99@example.org", None),
    "amazon_ses/notification_bounce_permanent_with_dsn.json": (
        ["bounced"],
        "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
        "bounced",
    ),
    "amazon_ses/notification_bounce_permanent_no_dsn.json": (
        ["bounced", "bounced"],  # two bounced recipients: one event each
        "00000137860315fd-34208509-5b74-41f3-95c5-22c1edc3c924-000000",
        "bounced",
    ),
    "amazon_ses/notification_complaint_with_feedback_report.json": (
        ["complained"],
        "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
        "spam",
    ),
    "amazon_ses/notification_complaint_no_feedback_report.json": (
        ["complained"],
        "0000013786031775-163e3910-53eb-4c8e-a04a-f29debf88a84-000000",
        "spam",
    ),
    "amazon_ses/notification_delivery.json": (
        ["delivered"],
        "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
        None,
    ),
    "amazon_ses/event_bounce.json": (["bounced"], SES_EX, "bounced"),
    "amazon_ses/event_complaint.json": (["complained"], SES_EX, "spam"),
    "amazon_ses/event_delivery.json": (["delivered"], SES_EX, None),
    "amazon_ses/event_send.json": (["sent"], SES_EX, None),
    "amazon_ses/event_reject.json": (["rejected"], SES_EX, "blocked"),
    "amazon_ses/event_open.json": (["opened"], SES_EX, None),
    "amazon_ses/event_click.json": (["clicked"], SES_EX, None),
    "amazon_ses/event_rendering_failure.json": (["failed"], SES_EX, "other"),
    "amazon_ses/event_delivery_delay.json": (["deferred"], SES_EX, None),
    "amazon_ses/event_subscription.json": (
        ["unsubscribed"],
        "EXAMPLEe4bccb684-777bc8de-afa7-4970-92b0-f515137b1497-000000",
        "unsubscribed",
    ),
    # The SNS doc envelope carries "Hello world!", not SES JSON: kept as one `unknown` event.
    "amazon_ses/sns_notification.json": (["unknown"], None, None),
    "amazon_ses/sns_subscription_confirmation.json": ([], None, None),
    "amazon_ses/sns_unsubscribe_confirmation.json": ([], None, None),
    "resend/sent.json": (["sent"], RS_ID, None),
    "resend/delivered.json": (["delivered"], RS_ID, None),
    "resend/delivery_delayed.json": (["deferred"], RS_ID, None),
    "resend/bounced.json": (["bounced"], RS_ID, "bounced"),
    "resend/complained.json": (["complained"], RS_ID, "spam"),
    "resend/opened.json": (["opened"], RS_ID, None),
    "resend/clicked.json": (["clicked"], RS_ID, None),
    "resend/failed.json": (["failed"], RS_ID, "other"),
    "resend/scheduled.json": (["queued"], RS_ID, None),
    "resend/suppressed.json": (["rejected"], RS_ID, "blocked"),
    "resend/delivered__2026.json": (["delivered"], RS_ID, None),
    "resend/opened__2026.json": (["opened"], RS_ID, None),
    "resend/bounced__2026.json": (["bounced"], RS_ID, "bounced"),
    "resend/suppressed__2026.json": (["rejected"], RS_ID, "blocked"),
}

#: Files of SOURCES.md that are not event payloads; each is exercised by another test.
NOT_PAYLOADS = {
    "postmark/auth_basic.json": "test_ingest_signatures::test_postmark_basic_auth_as_documented",
    "sendgrid/signature_vector_single.json": "test_ingest_signatures (published ECDSA vector)",
    "sendgrid/signature_vector_multi.json": "test_ingest_signatures (published ECDSA vector)",
    "mailgun/signature_vector.json": "test_ingest_signatures (published HMAC vector)",
    "mailgun/rejected.as_published.txt": "test_mailgun_rejected_as_published",
    "amazon_ses/sns_signature_vectors.json": "test_ingest_signatures (published RSA vectors)",
    "amazon_ses/sns_notification.headers.json": "test_sns_doc_headers_agree_with_bodies",
    "amazon_ses/sns_subscription_confirmation.headers.json": "test_sns_doc_headers_agree_with_bodies",
    "amazon_ses/sns_unsubscribe_confirmation.headers.json": "test_sns_doc_headers_agree_with_bodies",
    "resend/signature_vector_svix.json": "test_ingest_signatures (published Svix vector)",
}


def provider_of(name: str) -> str:
    return FOLDERS[name.split("/", 1)[0]]


def test_every_sources_file_is_covered() -> None:
    named = set(sources_files())
    assert len(named) >= 80
    assert named == set(EXPECTED) | set(NOT_PAYLOADS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_sample_parses(name: str) -> None:
    types, message_id, reason = EXPECTED[name]
    parsed = parse_webhook(provider_of(name), fixture_bytes(name), {}, verify=False)
    assert [e.type for e in parsed.events] == types
    assert all(e.provider_message_id == message_id for e in parsed.events)
    if parsed.events:
        assert parsed.events[0].reject_reason == reason
    for event in parsed.events:
        assert event.occurred_at.tzinfo is not None
        assert event.provider_event_id
        assert isinstance(event.payload, dict)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_event_ids_are_stable_and_distinct(name: str) -> None:
    body = fixture_bytes(name)
    first = parse_webhook(provider_of(name), body, {}, verify=False).events
    again = parse_webhook(provider_of(name), body, {}, verify=False).events
    assert [e.provider_event_id for e in first] == [e.provider_event_id for e in again]
    if name != "sendgrid/all_events_batch.json":  # the docs use the placeholder sg_event_id everywhere
        assert len({e.provider_event_id for e in first}) == len(first)


def test_occurred_at_is_the_providers_event_time() -> None:
    cases = {
        "postmark/delivered.json": datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC),  # DeliveredAt
        "sendgrid/delivered.json": datetime.fromtimestamp(1513299569, tz=UTC),
        "mailgun/delivered.json": datetime.fromtimestamp(1770146431.6585283, tz=UTC),
        "amazon_ses/event_delivery.json": datetime(2016, 10, 19, 23, 21, 4, 133000, tzinfo=UTC),  # delivery.timestamp
        "amazon_ses/event_open.json": datetime(2017, 8, 9, 22, 0, 19, 652000, tzinfo=UTC),  # open.timestamp
        "resend/delivered.json": datetime(2024, 2, 22, 23, 41, 12, 126000, tzinfo=UTC),  # created_at, not data.*
    }
    for name, expected in cases.items():
        (event,) = parse_webhook(provider_of(name), fixture_bytes(name), {}, verify=False).events
        assert event.occurred_at == expected, name


def test_postmark_bounce_id_beyond_2_53_is_kept_exactly() -> None:
    (event,) = parse_webhook("postmark", fixture_bytes("postmark/bounced_hard.json"), {}, verify=False).events
    assert event.payload["ID"] == 4323372036854775807


def test_sendgrid_signature_vector_bodies_parse() -> None:
    single = fixture_json("sendgrid/signature_vector_single.json")["body"].encode()
    multi = fixture_json("sendgrid/signature_vector_multi.json")["body"].encode()
    (dropped,) = parse_webhook("sendgrid", single, {}, verify=False).events
    assert (dropped.type, dropped.reject_reason, dropped.provider_message_id) == (
        "rejected",
        "bounced",
        "LRzXl_NHStOGhQ4kofSm_A",
    )
    assert dropped.extra_metadata["sg_message_id"].startswith("LRzXl_NHStOGhQ4kofSm_A.filterdrecv-")
    processed, blocked = parse_webhook("sendgrid", multi, {}, verify=False).events
    assert (processed.type, blocked.type, blocked.reject_reason) == ("queued", "bounced", "blocked")
    assert {processed.provider_message_id, blocked.provider_message_id} == {"qNwBLgPQQjW6DJvKQwSAbw"}


@pytest.mark.parametrize(
    ("sg_message_id", "smtp_id", "expected"),
    [
        ("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", "<14c5d75ce93.dfd.64b469@ismtpd-555>", SG_ID),
        ("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", None, SG_ID),  # no smtp-id on engagement events
        ("LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0", None, "LRzXl_NHStOGhQ4kofSm_A"),
        ("abc.recvd-5f9c-1.0", "<abc@ismtpd0001p1lon1.sendgrid.net>", "abc"),
        ("plainid", None, "plainid"),
        (None, "<only-smtp@host>", "only-smtp"),
    ],
)
def test_sendgrid_message_id_rule(sg_message_id: str | None, smtp_id: str | None, expected: str) -> None:
    from mailglass_pipeline.ingest.sendgrid import send_side_message_id

    assert send_side_message_id(sg_message_id, smtp_id) == expected


def test_mailgun_rejected_as_published() -> None:
    published = fixture_bytes("mailgun/rejected.as_published.txt")
    with pytest.raises(WebhookPayloadError, match="not valid JSON"):
        parse_webhook("mailgun", published, {}, verify=False)
    repaired = published.replace(b'"event": "rejected"\n', b'"event": "rejected",\n', 1)
    (event,) = parse_webhook("mailgun", repaired, {}, verify=False).events
    assert event.type == "rejected"
    assert event.provider_message_id == (
        "20180622220256.1.B31A451A2E5422BB@sandbox55887fac92de874df5ae0023b75fd62f1d.mailgun.org"
    )


def test_sns_doc_headers_agree_with_bodies() -> None:
    for stem in ("sns_notification", "sns_subscription_confirmation", "sns_unsubscribe_confirmation"):
        meta = fixture_json(f"amazon_ses/{stem}.headers.json")
        body = fixture_bytes(f"amazon_ses/{meta['body_file']}")
        parsed = parse_webhook("ses", body, meta["headers"], verify=False)
        document = json.loads(body)
        assert meta["headers"]["x-amz-sns-message-id"] == document["MessageId"]
        if document["Type"] != "Notification":
            assert parsed.notice["subscribe_url"] == document["SubscribeURL"]
            assert parsed.events == []


def test_unknown_kinds_become_unknown_events() -> None:
    cases = {
        "postmark": b'{"RecordType": "Inbound?", "MessageID": "m-1", "ReceivedAt": "2024-01-01T00:00:00Z"}',
        "sendgrid": b'[{"event": "brand_new", "timestamp": 1700000000, "sg_event_id": "e1", "sg_message_id": "m-1"}]',
        "mailgun": b'{"event": "stored", "id": "x", "timestamp": 1700000000,'
        b' "message": {"headers": {"message-id": "m-1"}}}',
        "ses": b'{"eventType": "SomethingNew", "mail": {"messageId": "m-1", "timestamp": "2024-01-01T00:00:00Z"}}',
        "resend": b'{"type": "email.received", "created_at": "2024-01-01T00:00:00Z", "data": {"email_id": "m-1"}}',
    }
    for provider, body in cases.items():
        (event,) = parse_webhook(provider, body, {}, verify=False).events
        assert (event.type, event.provider_message_id) == ("unknown", "m-1"), provider


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses", "resend"])
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe\x00garbage", b"", b'"a string"', b"[1, 2]"],
    ids=["malformed", "not-utf8", "empty", "scalar", "wrong-shape"],
)
def test_unparseable_bodies_are_payload_errors(provider: str, body: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        parse_webhook(provider, body, {}, verify=False)


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses", "resend"])
def test_oversize_body_is_refused_before_anything(provider: str) -> None:
    from mailglass_pipeline.ingest import IngestSettings

    with pytest.raises(WebhookPayloadError, match="limit"):
        parse_webhook(
            provider, b"[" + b" " * 2048 + b"]", {}, verify=True, settings=IngestSettings(max_body_bytes=1024)
        )


def test_bad_timestamp_value_is_an_estimated_time() -> None:
    # Issue 25: an unreadable event time no longer refuses the batch (which the provider would retry until
    # it gives up); the event is kept at its received time, marked estimated, as with NaN.
    body = b'[{"event": "delivered", "email": "a@example.com", "timestamp": "yesterday"}]'
    now = datetime(2026, 1, 2, tzinfo=UTC)
    (event,) = parse_webhook("sendgrid", body, {}, verify=False, now=now).events
    assert (event.occurred_at, event.extra_metadata["occurred_at_estimated"]) == (now, True)


ODD_TIMES: list[Any] = [
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    1e300,
    -1e300,
    "1e400",
    10**30,
    "2026-13-45",
    True,
    [],
    {},
    "",
    "0001-01-01",
]


@pytest.mark.parametrize("value", ODD_TIMES, ids=[repr(v)[:30] for v in ODD_TIMES])
def test_odd_timestamps_are_events_or_payload_errors(value: Any) -> None:
    bodies = {
        "sendgrid": [{"event": "delivered", "email": "a@example.com", "sg_event_id": "x", "timestamp": value}],
        "postmark": {"RecordType": "Delivery", "MessageID": "m", "DeliveredAt": value},
        "mailgun": {"event": "delivered", "id": "i", "timestamp": value, "recipient": "r@example.com"},
        "resend": {"type": "email.delivered", "created_at": value, "data": {"email_id": "e"}},
        "ses": {
            "eventType": "Delivery",
            "mail": {"messageId": "m", "timestamp": value},
            "delivery": {"timestamp": value},
        },
    }
    for provider, body in bodies.items():
        try:
            parsed = parse_webhook(provider, json.dumps(body).encode(), {}, verify=False)
        except WebhookPayloadError:
            continue  # refused cleanly (HTTP 400), never another exception (HTTP 500)
        assert all(event.occurred_at.tzinfo is not None for event in parsed.events)
