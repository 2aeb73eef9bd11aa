"""One ``mailglass_webhook_events`` row per provider event: keys, idempotency, overlap, replay.

A SendGrid batch of N events is N provider events, so N rows (Mailglass's own
ingest writes one per request); an SES notification is one provider event
whatever its recipients. Replaying the rows re-ingests every event and adds no row.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.db import get_engine
from mailglass_pipeline.ingest import ingest
from mailglass_pipeline.ingest.core import parse_webhook
from mailglass_pipeline.ingest.replay import replay
from tests.factories import count_events
from tests.ingest.ingest_support import store_one


def element(tag: str, kind: str = "delivered", *, event_id: bool = True) -> dict[str, Any]:
    found: dict[str, Any] = {
        "email": f"{tag}@example.com",
        "timestamp": 1764000000,
        "event": kind,
        "sg_message_id": f"{tag}.filterdrecv-1",
    }
    if event_id:
        found["sg_event_id"] = f"ev-{tag}"
    return found


def canonical_key(value: dict[str, Any]) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def rows(engine: Engine, tenant_id: str) -> dict[str, sa.Row[Any]]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT * FROM mailglass_webhook_events WHERE tenant_id = :t"), {"t": tenant_id}
        ).all()
    return {row.provider_event_id: row for row in found}


def send(database_url: str, tenant_id: str, provider: str, body: Any) -> dict[str, Any]:
    return ingest(provider, json.dumps(body).encode(), {}, tenant_id=tenant_id, database_url=database_url, verify=False)


def test_sendgrid_batch_one_row_per_event(database_url: str, engine: Engine) -> None:
    batch = [element("a"), element("b", "bounce"), element("c"), element("d", "open"), element("e", event_id=False)]
    result = send(database_url, "per-event", "sendgrid", batch)
    assert (result["received"], result["events"]) == (5, 5)

    stored = rows(engine, "per-event")
    expected = {"ev-a", "ev-b", "ev-c", "ev-d", canonical_key(batch[4])}
    assert set(stored) == expected
    for item in batch:
        row = stored[item.get("sg_event_id") or canonical_key(item)]
        assert row.provider == "sendgrid" and row.status == "succeeded" and row.processed_at is not None
        assert row.raw_payload == {"_batch": [item]}  # a batch of one: a SendGrid body, for Mailglass and replay
        assert row.event_type_raw == item["event"]
    assert (stored["ev-b"].event_type_normalized, stored["ev-d"].event_type_normalized) == ("bounced", "opened")
    assert len({row.received_at for row in stored.values()}) == 1

    # Redelivered as is: nothing new. Re-batched with new events: rows only for the new ones.
    again = send(database_url, "per-event", "sendgrid", batch)
    assert (again["events"], again["duplicates"]) == (0, 5)
    assert set(rows(engine, "per-event")) == expected
    overlap = send(database_url, "per-event", "sendgrid", [batch[3], element("f"), batch[4], element("g")])
    assert (overlap["events"], overlap["duplicates"]) == (2, 2)
    assert set(rows(engine, "per-event")) == expected | {"ev-f", "ev-g"}
    # The same event twice in one batch is one provider event: one row, one ledger event.
    twice = send(database_url, "per-event", "sendgrid", [element("h"), element("h")])
    assert (twice["events"], twice["duplicates"]) == (1, 1)
    assert len(rows(engine, "per-event")) == 8 and count_events(engine, "per-event") == 8

    # Replaying the range re-ingests nothing (all stored) and adds no row.
    totals = replay("per-event", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC), database_url=database_url)
    assert (totals["webhooks"], totals["replayed"], totals["failed"], totals["events"]) == (8, 8, 0, 0)
    assert len(rows(engine, "per-event")) == 8 and count_events(engine, "per-event") == 8


def test_ses_notification_is_one_provider_event(database_url: str, engine: Engine) -> None:
    ses = {
        "notificationType": "Delivery",
        "mail": {"messageId": "ses-1", "timestamp": "2026-12-01T10:00:00.000Z", "destination": ["a@x.io", "b@x.io"]},
        "delivery": {"timestamp": "2026-12-01T10:00:01.000Z", "recipients": ["a@x.io", "b@x.io"]},
    }
    envelope = {"Type": "Notification", "MessageId": "sns-msg-1", "Message": json.dumps(ses)}
    result = send(database_url, "ses-rows", "ses", envelope)
    assert result["events"] == 2
    (row,) = rows(engine, "ses-rows").values()
    assert (row.provider_event_id, row.raw_payload, row.event_type_normalized) == ("sns-msg-1", envelope, "delivered")


def test_replay_reingests_every_event_of_stored_rows(database_url: str, engine: Engine) -> None:
    # Rows whose events never reached the ledger: three per-event SendGrid rows (ours) and one
    # per-request row of a three-event batch (Mailglass's, keyed by the body's digest).
    received = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=3)
    ours = [element(f"lost-{i}") for i in range(3)]
    theirs = [element(f"old-{i}") for i in range(3)]
    theirs_body = json.dumps(theirs).encode()
    stored = [(item["sg_event_id"], {"_batch": [item]}) for item in ours]
    stored.append((hashlib.sha256(theirs_body).hexdigest()[:32], {"_batch": theirs}))
    with engine.begin() as conn:
        for key, payload in stored:
            conn.execute(
                sa.text(
                    """
                    INSERT INTO mailglass_webhook_events (id, tenant_id, provider, provider_event_id,
                        event_type_raw, status, raw_payload, received_at, inserted_at, updated_at)
                    VALUES (:id, 'lost', 'sendgrid', :key, 'delivered', 'failed', CAST(:payload AS jsonb),
                            :at, :at, :at)
                    """
                ),
                {"id": uuid.uuid4(), "key": key, "payload": json.dumps(payload), "at": received},
            )
    since, until = received - timedelta(minutes=1), datetime.now(UTC)

    first = replay("lost", since, until, database_url=database_url)
    assert (first["webhooks"], first["replayed"], first["failed"], first["events"]) == (4, 4, 0, 6)
    assert count_events(engine, "lost") == 6
    after = rows(engine, "lost")
    assert set(after) == {key for key, _ in stored}  # no second row for any replayed event
    assert {row.status for row in after.values()} == {"succeeded"}
    with engine.connect() as conn:
        times = conn.execute(
            sa.text("SELECT DISTINCT inserted_at FROM mailglass_events WHERE tenant_id = 'lost'")
        ).scalars()
        assert [abs((t.replace(tzinfo=None) - received).total_seconds()) < 1 for t in times] == [True]

    second = replay("lost", since, until, database_url=database_url)
    assert (second["replayed"], second["events"], second["duplicates"]) == (4, 0, 6)
    assert count_events(engine, "lost") == 6 and len(rows(engine, "lost")) == 4


def test_one_event_at_once_writes_all_or_nothing(database_url: str, engine: Engine) -> None:
    # The one-statement path of a one-event request writes the raw record only with its ledger event;
    # when the event is already stored it writes nothing and the ordinary transaction answers.
    body = json.dumps([element("once")]).encode()
    parsed = parse_webhook("sendgrid", body, {}, verify=False)
    pool = get_engine(database_url, pre_ping=False)
    first = store_one(pool, parsed, "once")
    assert first is not None and (first["events"], first["orphans"]) == (1, 1)
    assert set(rows(engine, "once")) == {"ev-once"} and count_events(engine, "once") == 1

    with engine.begin() as conn:  # the raw record lost, the event kept (say, Mailglass's row had another key)
        conn.execute(sa.text("DELETE FROM mailglass_webhook_events WHERE tenant_id = 'once'"))
    assert store_one(pool, parsed, "once") is None
    assert rows(engine, "once") == {} and count_events(engine, "once") == 1
    again = ingest("sendgrid", body, {}, tenant_id="once", database_url=database_url, verify=False)
    assert (again["events"], again["duplicates"]) == (0, 1)
    assert set(rows(engine, "once")) == {"ev-once"}  # the transaction path records it, as before
    assert store_one(pool, parsed, "someone-else") is None and rows(engine, "someone-else") == {}
    pool.dispose()
