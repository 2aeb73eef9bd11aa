"""Decision D7: one `mailglass_delivery_updated` notification per linked delivery, only after commit."""

from __future__ import annotations

import uuid

from sqlalchemy.engine import Engine

from mailglass_pipeline.reconciliation.sweep import append_reconciled_events, attempt_link, find_orphans, sweep
from mailglass_pipeline.settings import SweepConfig
from tests.core.core_support import drain, listener
from tests.factories import make_delivery, make_orphan, reconciled_events

KEYS = {"tenant_id", "delivery_id", "event_type", "event_id", "reconciled_from_event_id"}


def test_one_notification_per_linked_delivery_matching_the_rows(database_url: str, engine: Engine) -> None:
    a = make_delivery(engine, tenant_id="t1", message_id="m-a")
    b = make_delivery(engine, tenant_id="t2", message_id="m-b")
    make_delivery(engine, tenant_id="t1", message_id="m-idle")
    a_orphans = {make_orphan(engine, tenant_id="t1", message_id="m-a", event_type=t) for t in ("delivered", "opened")}
    b_orphan = make_orphan(engine, tenant_id="t2", message_id="m-b")
    make_orphan(engine, tenant_id="t1", message_id="m-nothing")  # unmatched: no notification
    make_orphan(engine, tenant_id="t1", message_id=None)  # malformed: no notification
    with listener(database_url) as conn:
        assert sweep(engine, None, SweepConfig()).linked == 3
        notes = drain(conn)
        assert drain(conn, timeout=0.2) == []
    assert len(notes) == 2
    by_delivery = {uuid.UUID(n["delivery_id"]): n for n in notes}
    assert set(by_delivery) == {a, b}
    events = {e.id: e for e in reconciled_events(engine)}
    for note in notes:
        assert set(note) == KEYS
        assert note["event_type"] == "reconciled"
        event = events[uuid.UUID(note["event_id"])]
        assert str(event.delivery_id) == note["delivery_id"]
        assert event.tenant_id == note["tenant_id"]
        assert event.metadata["reconciled_from_event_id"] == note["reconciled_from_event_id"]
    assert by_delivery[a]["tenant_id"] == "t1" and uuid.UUID(by_delivery[a]["reconciled_from_event_id"]) in a_orphans
    assert by_delivery[b]["tenant_id"] == "t2" and uuid.UUID(by_delivery[b]["reconciled_from_event_id"]) == b_orphan


def test_no_notification_before_commit_or_after_rollback(database_url: str, engine: Engine) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1")
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    with listener(database_url) as listen, engine.connect() as conn:
        trans = conn.begin()
        linked = attempt_link(conn, find_orphans(conn, "t1", SweepConfig()))
        assert append_reconciled_events(conn, linked, "t1").linked == 1
        assert drain(listen, timeout=0.3) == []  # not before commit
        trans.rollback()
        assert drain(listen, timeout=0.5) == []  # nor after a rollback
        assert reconciled_events(engine) == []
        # The same work committed does announce (the listener works).
        trans = conn.begin()
        linked = attempt_link(conn, find_orphans(conn, "t1", SweepConfig()))
        append_reconciled_events(conn, linked, "t1")
        assert drain(listen, timeout=0.2) == []
        trans.commit()
        notes = drain(listen)
    assert [uuid.UUID(n["delivery_id"]) for n in notes] == [target]


def test_no_notification_when_nothing_links(database_url: str, engine: Engine) -> None:
    make_delivery(engine, tenant_id="t1", message_id="m-1")
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    sweep(engine, "t1", SweepConfig())
    make_orphan(engine, tenant_id="t1", message_id="m-unknown")
    with listener(database_url) as listen:
        result = sweep(engine, "t1", SweepConfig())
        assert (result.scanned, result.linked) == (1, 0)
        assert drain(listen, timeout=0.5) == []


def test_tenant_id_too_long_for_a_notification_is_sent_as_null(database_url: str, engine: Engine) -> None:
    # pg_notify refuses payloads of 8000 bytes or more: the sweep must still commit and announce.
    from mailglass_pipeline.projector import MAX_NOTIFY_TENANT_BYTES

    long_tenant = "t" * 7500
    short = make_delivery(engine, tenant_id="t1", message_id="m-short")
    long = make_delivery(engine, tenant_id=long_tenant, message_id="m-long")
    make_orphan(engine, tenant_id="t1", message_id="m-short")
    make_orphan(engine, tenant_id=long_tenant, message_id="m-long")
    with listener(database_url) as listen:
        assert sweep(engine, None, SweepConfig()).linked == 2
        notes = {uuid.UUID(n["delivery_id"]): n for n in drain(listen)}
    assert set(notes) == {short, long}
    assert notes[short]["tenant_id"] == "t1"
    assert notes[long]["tenant_id"] is None
    assert len(long_tenant) > MAX_NOTIFY_TENANT_BYTES
