"""Decisions D1 and D2: the append-only ledger (SQLSTATE 45A01) and idempotent appends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import mailglass_pipeline
from mailglass_pipeline import ledger
from mailglass_pipeline.errors import MailglassError
from tests.databases import libpq_url
from tests.factories import make_delivery, make_orphan, rows, snapshot

MESSAGE = "mailglass_events is append-only; UPDATE and DELETE are forbidden"

STATEMENTS = {
    "UPDATE": "UPDATE mailglass_events SET type = 'opened' WHERE id = :id",
    "DELETE": "DELETE FROM mailglass_events WHERE id = :id",
}


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE"])
def test_raw_driver_sees_sqlstate_45a01(database_url: str, engine: Engine, operation: str) -> None:
    event_id = make_orphan(engine, tenant_id="t1", message_id="m-1")
    with psycopg.connect(libpq_url(database_url)) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(STATEMENTS[operation].replace(":id", "%(id)s"), {"id": event_id})
        assert info.value.sqlstate == "45A01"
        assert info.value.diag.message_primary == MESSAGE
        conn.rollback()
    assert rows(engine, "SELECT type FROM mailglass_events WHERE id = :i", i=event_id) == [("delivered",)]


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE"])
def test_engine_raises_event_ledger_immutable_error(engine: Engine, operation: str) -> None:
    event_id = make_orphan(engine, tenant_id="t1", message_id="m-1")
    make_delivery(engine, tenant_id="t1", message_id="m-2")
    before = snapshot(engine)
    new_event = ledger.NewEvent(tenant_id="t1", type="opened", occurred_at=datetime.now(UTC), idempotency_key="k")
    with pytest.raises(mailglass_pipeline.EventLedgerImmutableError) as info, engine.begin() as conn:
        # Work done earlier in the same transaction must vanish with it.
        ledger.append_events(conn, [new_event])
        conn.execute(sa.text("UPDATE mailglass_deliveries SET status = 'changed'"))
        conn.execute(sa.text(STATEMENTS[operation]), {"id": event_id})
    assert info.value.operation == operation
    assert isinstance(info.value, MailglassError)
    assert str(info.value).startswith(MESSAGE)
    assert snapshot(engine) == before


def test_update_of_every_row_is_refused(engine: Engine) -> None:
    for i in range(3):
        make_orphan(engine, tenant_id="t1", message_id=f"m-{i}")
    before = snapshot(engine)
    with pytest.raises(mailglass_pipeline.EventLedgerImmutableError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE mailglass_events SET needs_reconciliation = false"))
    with pytest.raises(mailglass_pipeline.EventLedgerImmutableError), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM mailglass_events"))
    assert snapshot(engine) == before


def _event(key: str | None, **kw: object) -> ledger.NewEvent:
    return ledger.NewEvent(
        tenant_id="t1",
        type="delivered",
        occurred_at=datetime.now(UTC),
        idempotency_key=key,
        **kw,  # type: ignore[arg-type]
    )


def test_same_idempotency_key_twice_stores_one_row(engine: Engine) -> None:
    first, second = _event("webhook:1"), _event("webhook:1")
    with engine.begin() as conn:
        assert ledger.append_events(conn, [first]) == {first.id}
    with engine.begin() as conn:
        assert ledger.append_events(conn, [second]) == set()
    assert rows(engine, "SELECT id FROM mailglass_events") == [(first.id,)]


def test_duplicates_within_one_batch_store_one_row(engine: Engine) -> None:
    batch = [_event("dup"), _event("other"), _event("dup"), _event(None), _event(None)]
    with engine.begin() as conn:
        inserted = ledger.append_events(conn, batch)
    stored = {r[0] for r in rows(engine, "SELECT id FROM mailglass_events")}
    assert inserted == stored
    assert len(stored) == 4  # one "dup", "other", and both events without a key
    assert rows(engine, "SELECT count(*) FROM mailglass_events WHERE idempotency_key = 'dup'") == [(1,)]
    assert {batch[1].id, batch[3].id, batch[4].id} <= stored


def test_concurrent_duplicate_appends_store_one_row(engine: Engine) -> None:
    # Two open transactions append the same key: the second waits for the first and then skips.
    a, b = _event("race"), _event("race")
    with engine.connect() as c1, engine.connect() as c2:
        c1.begin()
        assert ledger.append_events(c1, [a]) == {a.id}
        c2.begin()
        c2.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(sa.exc.OperationalError):  # blocked on c1's uncommitted key
            ledger.append_events(c2, [b])
        c2.rollback()
        c1.commit()
        c2.begin()
        assert ledger.append_events(c2, [b]) == set()
        c2.commit()
    assert rows(engine, "SELECT id FROM mailglass_events") == [(a.id,)]


def test_appended_rows_keep_every_field(engine: Engine) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    delivery_id = uuid.uuid4()
    event = ledger.NewEvent(
        tenant_id="t9",
        type="bounced",
        occurred_at=when,
        delivery_id=delivery_id,
        idempotency_key="k-1",
        reject_reason="mailbox full",
        normalized_payload={"a": [1, 2]},
        metadata={"provider": "ses"},
        trace_id="trace",
        inserted_at=when,
    )
    with engine.begin() as conn:
        ledger.append_events(conn, [event])
    row = rows(
        engine,
        "SELECT id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason, normalized_payload,"
        " metadata, trace_id, needs_reconciliation, inserted_at FROM mailglass_events",
    )
    assert row == [
        (event.id, "t9", delivery_id, "bounced", when, "k-1", "mailbox full", {"a": [1, 2]}, {"provider": "ses"},
         "trace", False, when)
    ]  # fmt: skip


# Mailglass v1.0.0's own function (lib/mailglass/migrations/postgres/v01.ex): same name, no DETAIL line.
MAILGLASS_FUNCTION = """
CREATE OR REPLACE FUNCTION mailglass_raise_immutability()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
  RAISE SQLSTATE '45A01'
    USING MESSAGE = 'mailglass_events is append-only; UPDATE and DELETE are forbidden';
END;
$$;
"""


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE"])
def test_operation_is_named_when_mailglass_owns_the_trigger_function(engine: Engine, operation: str) -> None:
    event_id = make_orphan(engine, tenant_id="t1", message_id="m-1")
    with engine.begin() as conn:
        conn.execute(sa.text(MAILGLASS_FUNCTION))
    before = snapshot(engine)
    with pytest.raises(mailglass_pipeline.EventLedgerImmutableError) as info, engine.begin() as conn:
        conn.execute(sa.text(STATEMENTS[operation]), {"id": event_id})
    assert info.value.operation == operation
    assert snapshot(engine) == before
