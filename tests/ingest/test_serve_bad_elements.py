"""An authentic batch is never refused for its content (issue 25): over real HTTP against ``mailglass serve``.

A signed SendGrid batch of 100 whose element 50 is spoiled: its timestamp
unreadable (stored at an estimated time, as NaN already was), or not an event
at all (kept as a raw record with status ``failed``, counted ``malformed``);
the other 99 are stored either way, and the answer is 200.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys
from tests.factories import count_events, events, fetch
from tests.ingest.ingest_support import signed_sendgrid
from tests.processes import run_receiver, secrets_env

#: Element 50 of the batch, spoiled as the probe did; True: not an event at all (malformed).
SPOILERS: dict[str, tuple[Callable[[dict[str, Any]], Any], bool]] = {
    "yesterday": (lambda element: {**element, "timestamp": "yesterday"}, False),
    "true": (lambda element: {**element, "timestamp": True}, False),
    "1e20": (lambda element: {**element, "timestamp": 1e20}, False),
    "42": (lambda element: 42, True),
    "no-event": (lambda element: {k: v for k, v in element.items() if k != "event"}, True),
    "event-5": (lambda element: {**element, "event": 5}, True),
    # Valid JSON ("\ud800" without its pair) that PostgreSQL cannot hold as text: stored as U+FFFD.
    "surrogate": (lambda element: {**element, "email": "a\ud800@example.com"}, False),
}


def batch(tag: str, spoil: Callable[[dict[str, Any]], Any]) -> list[Any]:
    now = int(time.time()) - 60
    elements: list[Any] = [
        {
            "email": f"user{index}@example.com",
            "timestamp": now,
            "event": "delivered",
            "smtp-id": f"<{tag}-{index}@example.com>",
            "sg_event_id": f"{tag}-{index}",
            "sg_message_id": f"{tag}-{index}.filter0001",
        }
        for index in range(100)
    ]
    elements[50] = spoil(elements[50])
    return elements


def malformed_metric(text: str) -> float:
    pattern = r'mailglass_webhook_events_total\{[^}]*outcome="malformed"[^}]*\} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_one_bad_element_never_costs_an_authentic_batch(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    sent: dict[str, list[Any]] = {}
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        for name, (spoil, malformed) in SPOILERS.items():
            sent[name] = elements = batch(name, spoil)
            body = json.dumps(elements).encode()
            reply = receiver.post(f"/sendgrid/{name}", body, signed_sendgrid(keys, body))
            assert reply.status == 200, (name, reply.body)
            result = reply.json()
            assert (result["received"], result["events"], result["malformed"]) == (
                100,
                99 if malformed else 100,
                1 if malformed else 0,
            ), (name, result)
            # The provider's retry of the same bytes: nothing new, the same answer about the bad element.
            again = receiver.post(f"/sendgrid/{name}", body, signed_sendgrid(keys, body))
            assert again.status == 200 and again.json()["events"] == 0, again.body
            retried = (again.json()["duplicates"], again.json()["malformed"])
            assert retried == (99 if malformed else 100, result["malformed"])
        # Counted in its own outcome of the events metric (each request that carried one).
        assert malformed_metric(receiver.request("GET", "/metrics").body.decode()) == 6
    for name, (_, malformed) in SPOILERS.items():
        assert count_events(engine, name) == (99 if malformed else 100), name
        raw = fetch(
            engine,
            "SELECT provider_event_id, status, event_type_raw, event_type_normalized, raw_payload "
            "FROM mailglass_webhook_events WHERE tenant_id = :t",
            t=name,
        )
        assert len(raw) == 100, name  # every element kept, the malformed one too, once
        failed = [row for row in raw if row.status != "succeeded"]
        if not malformed:
            assert failed == []
            (spoiled,) = [row for row in events(engine, name) if row.metadata["provider_event_id"] == f"{name}-50"]
            if name == "surrogate":
                assert spoiled.normalized_payload["email"] == "a\ufffd@example.com"
                assert spoiled.metadata["payload_sanitized"] is True
                continue
            # An unreadable time is no time: stored at its received time, marked estimated, the value kept.
            assert spoiled.metadata["occurred_at_estimated"] is True
            assert abs(spoiled.occurred_at - datetime.now(UTC)) < timedelta(minutes=5)
            assert spoiled.normalized_payload["timestamp"] == sent[name][50]["timestamp"]
            continue
        (row,) = failed
        assert row.status == "failed" and row.event_type_normalized is None
        assert row.raw_payload == {"_batch": [sent[name][50]]}
        assert row.provider_event_id.startswith("malformed:") and row.provider_event_id.endswith(":50")
        assert row.event_type_raw == "malformed"
