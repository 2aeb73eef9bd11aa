"""The SNS envelope scanner (ingest/sns_envelope.py): json.loads's answer on every envelope, refusals at once."""

from __future__ import annotations

import json

import pytest

from mailglass_pipeline.ingest.errors import WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.ingest.sns_envelope import MAX_ENVELOPE_FIELDS, load_envelope

ENVELOPE = {
    "Type": "Notification",
    "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
    "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
    "Subject": 'caf\u00e9 \u2603 "quoted" \\ back',
    "Message": json.dumps({"notificationType": "Delivery", "mail": {"messageId": "m", "destination": ["a@b"]}}),
    "Timestamp": "2012-05-02T00:54:06.655Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLEpH+...",
    "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
}


@pytest.mark.parametrize("indent", [None, 2])
def test_an_envelope_reads_as_json_loads_reads_it(indent: int | None) -> None:
    for document in (ENVELOPE, {**ENVELOPE, "MessageAttributes": {"a": {"Type": "String", "Value": "v"}}}, {}):
        body = json.dumps(document, indent=indent, ensure_ascii=indent is None).encode()
        assert load_envelope(body) == json.loads(body)
    assert load_envelope(b'\xef\xbb\xbf {"n": 1.5e3, "t": true, "z": null} ') == {"n": 1500.0, "t": True, "z": None}


@pytest.mark.parametrize(
    "body",
    [
        b'{"Type": "Notification", "x": [' + b"[]," * 100_000 + b"[]]}",
        b'{"Type": {"nested": 1}}',
        b"[1, 2]",
        b'"just a string"',
        json.dumps({f"k{i}": "v" for i in range(MAX_ENVELOPE_FIELDS + 1)}).encode(),
    ],
)
def test_anything_but_a_flat_object_is_not_an_envelope(body: bytes) -> None:
    with pytest.raises(WebhookSignatureError, match="not an SNS envelope"):
        load_envelope(body)


@pytest.mark.parametrize(
    "body", [b'{"Type": "N"', b'{"Type" "N"}', b'{"Type": "N"} trailing', b'{"n": 1' + b"9" * 5000 + b"}", b"\xff{}"]
)
def test_broken_json_is_a_payload_error(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError):
        load_envelope(body)
