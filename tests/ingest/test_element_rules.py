"""Per-element rules of every normalizer (issue 25), without a database.

An unreadable event time never costs an event: it is stored at its received
time, marked ``occurred_at_estimated`` (NaN's rule). A SendGrid element that is
not an event is kept aside as malformed, the rest of an authentic batch parsed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.base import event_time, stable_id
from mailglass_pipeline.ingest.core import parse_webhook
from mailglass_pipeline.ingest.errors import WebhookPayloadError
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from mailglass_pipeline.ingest.storable import needs_sanitizing, storable
from tests.ingest.ingest_support import signed_sendgrid

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BAD_TIMES: list[Any] = ["yesterday", True, 1e20, -1e20, "2026-13-45", [], {}, "1e400"]


def bodies(value: Any) -> dict[str, Any]:
    return {
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


@pytest.mark.parametrize("value", BAD_TIMES, ids=[repr(v)[:20] for v in BAD_TIMES])
def test_an_unreadable_event_time_is_an_estimated_time_for_every_provider(value: Any) -> None:
    assert event_time(value) is None
    for provider, body in bodies(value).items():
        parsed = parse_webhook(provider, json.dumps(body).encode(), {}, verify=False, now=NOW)
        (event,) = parsed.events
        assert event.occurred_at == NOW, provider
        assert event.extra_metadata["occurred_at_estimated"] is True, provider


def test_a_readable_time_is_kept() -> None:
    for provider, body in bodies("2025-12-31T23:00:00Z").items():
        (event,) = parse_webhook(provider, json.dumps(body).encode(), {}, verify=False, now=NOW).events
        assert event.occurred_at == datetime(2025, 12, 31, 23, tzinfo=UTC), provider
        assert "occurred_at_estimated" not in event.extra_metadata, provider


def test_an_authentic_batch_keeps_its_malformed_elements_aside(keys: SampleKeys, settings: IngestSettings) -> None:
    body, headers = build_webhook("sendgrid", "sg-1", "delivered", keys=keys)
    elements = json.loads(body)
    spoiled = [*elements, 42, {"email": "x@example.com", "sg_event_id": "no-kind"}, {**elements[0], "event": 5}]
    # Re-signed: the malformed elements are part of the signed bytes.
    raw = json.dumps(spoiled).encode()
    parsed = parse_webhook("sendgrid", raw, signed_sendgrid(keys, raw), settings=settings)
    assert len(parsed.events) == len(elements)
    first = len(elements)
    assert [(m.index, m.kind) for m in parsed.malformed] == [(first, None), (first + 1, None), (first + 2, None)]
    assert "not a JSON object" in parsed.malformed[0].reason and "needs 'event'" in parsed.malformed[1].reason
    assert parsed.malformed[0].payload == 42
    assert headers  # the sample itself was signed too


def test_unverified_input_of_which_nothing_is_an_event_is_still_refused() -> None:
    # A capture fed by hand (verify=False) with no SendGrid event in it is the wrong file: said so.
    with pytest.raises(WebhookPayloadError, match="not a JSON object"):
        parse_webhook("sendgrid", b"[1, 2]", {}, verify=False)
    # One event beside them: the batch is parsed, the rest kept aside.
    parsed = parse_webhook(
        "sendgrid", json.dumps([{"event": "open", "sg_event_id": "e", "timestamp": 1}, 7]).encode(), {}, verify=False
    )
    assert (len(parsed.events), len(parsed.malformed)) == (1, 1)


def test_a_lone_surrogate_does_not_break_an_element_id() -> None:
    assert stable_id("sendgrid", {"email": "\ud800"}).startswith("sha256-")


def test_a_lone_surrogate_is_made_storable_and_an_emoji_is_left_alone() -> None:
    assert not needs_sanitizing({"useragent": "Mozilla \U0001f600"})
    assert needs_sanitizing({"email": "a\ud800"}) and needs_sanitizing({"\udc00": 1})
    assert storable({"email": "a\ud800\U0001f600"}) == {"email": "a\ufffd\U0001f600"}
