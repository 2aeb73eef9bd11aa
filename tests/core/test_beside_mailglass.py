"""Invisible beside a Mailglass app (decisions D27, D30): its writes never wait on a sweep, its reset works, ids are v7.

Real rows on a real PostgreSQL: a sweep's transaction is held open between its find (the product's own
find statement, rows locked) and its write while Mailglass-shaped writes run under the application's
``lock_timeout``; then the next sweep must link what those writes made linkable.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import db
from mailglass_pipeline.ingest.core import ingest
from mailglass_pipeline.ingest.samples import build_webhook
from mailglass_pipeline.reconciliation.sweep import (
    absorb_wakes,
    append_reconciled_events,
    attempt_link,
    find_orphans,
    sweep,
)
from mailglass_pipeline.settings import SweepConfig
from tests.factories import QUEUE, make_delivery, make_orphan, rows, scalar

WAKES = "mailglass_reconciliation_wakes"
APP_LOCK_TIMEOUT = "100ms"


def _as_the_app(engine: Engine, work: Callable[[Connection], object]) -> float:
    """One application transaction under the application's lock_timeout; how long it took."""
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{APP_LOCK_TIMEOUT}'"))
        work(conn)
    return time.perf_counter() - started


def _mailglass_delivery(conn: Connection, tenant_id: str, message_id: str | None) -> uuid.UUID:
    """Mailglass's own insert: no provider message id until the adapter answers."""
    delivery_id = uuid.uuid4()
    conn.execute(
        sa.text(
            "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
            " provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)"
            " VALUES (:id, :t, 'M', 'transactional', 'a@b.example', 'b.example', :p, :m, 'queued',"
            " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"
        ),
        {"id": delivery_id, "t": tenant_id, "p": "postmark" if message_id else None, "m": message_id},
    )
    return delivery_id


def _append(conn: Connection, **event: object) -> None:
    """Mailglass's Events.append: every column given, UTC naive times."""
    values = {
        "id": uuid.uuid4(),
        "delivery_id": None,
        "idempotency_key": None,
        "metadata": "{}",
        "needs_reconciliation": False,
        **event,
    }
    conn.execute(
        sa.text(
            "INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key,"
            " normalized_payload, metadata, needs_reconciliation, inserted_at)"
            " VALUES (:id, :tenant_id, :delivery_id, :type, now() AT TIME ZONE 'UTC', :idempotency_key, '{}',"
            " CAST(:metadata AS jsonb), :needs_reconciliation, now() AT TIME ZONE 'UTC')"
        ),
        values,
    )


def test_mailglass_writes_never_wait_on_a_held_sweep_and_the_next_sweep_links(engine: Engine) -> None:
    inserted = make_orphan(engine, tenant_id="t1", message_id="m-insert")
    dispatched = make_orphan(engine, tenant_id="t1", message_id="m-dispatch")
    reconciled_by_mailglass = make_orphan(engine, tenant_id="t1", message_id="m-elsewhere")
    with engine.begin() as conn:
        sending = _mailglass_delivery(conn, "t1", None)
    assert sweep(engine, "t1", SweepConfig()).unmatched == 3  # all three back off

    retry_all = SweepConfig(retry_all=True)
    with engine.connect() as held:
        held.begin()
        # The sweep's own find, its rows locked until this transaction ends, and its lookup (nothing yet).
        batch = find_orphans(held, "t1", retry_all, lock=True)
        assert set(batch["id"]) == {inserted, dispatched, reconciled_by_mailglass}
        linked = attempt_link(held, batch)
        assert linked["delivery_id"].isna().all()
        assert scalar(engine, f"SELECT count(*) FROM {QUEUE} WHERE event_id = :o", o=inserted) == 1

        other = uuid.uuid4()
        waited = {
            "delivery insert": _as_the_app(engine, lambda c: _mailglass_delivery(c, "t1", "m-insert")),
            "dispatch update": _as_the_app(
                engine,
                lambda c: c.execute(
                    sa.text(
                        "UPDATE mailglass_deliveries SET provider = 'postmark', provider_message_id = 'm-dispatch',"
                        " status = 'sent', lock_version = lock_version + 1 WHERE id = :d"
                    ),
                    {"d": sending},
                ),
            ),
            "event append": _as_the_app(
                engine,
                lambda c: (
                    _append(c, tenant_id="t1", type="dispatched", delivery_id=sending),
                    _append(
                        c,
                        id=other,
                        tenant_id="t1",
                        type="opened",
                        needs_reconciliation=True,
                        metadata=json.dumps({"provider": "postmark", "provider_message_id": "m-new"}),
                    ),
                ),
            ),
            # Mailglass's reconciler links the orphan its own way (here: a delivery of another tenant).
            "mailglass reconciled": _as_the_app(
                engine,
                lambda c: _append(
                    c,
                    tenant_id="t1",
                    type="reconciled",
                    delivery_id=_mailglass_delivery(c, "t2", "m-elsewhere"),
                    idempotency_key=f"reconciled:{reconciled_by_mailglass}",
                    metadata=json.dumps(
                        {
                            "reconciled_from_event_id": str(reconciled_by_mailglass),
                            "reconciled_provider": "postmark",
                            "reconciled_provider_event_id": None,
                        }
                    ),
                ),
            ),
            "webhook row": _as_the_app(
                engine,
                lambda c: c.execute(
                    sa.text(
                        "INSERT INTO mailglass_webhook_events (id, tenant_id, provider, provider_event_id,"
                        " event_type_raw, status, raw_payload, received_at, inserted_at, updated_at)"
                        " VALUES (gen_random_uuid(), 't1', 'postmark', 'evt-held', 'Delivery', 'succeeded', '{}',"
                        " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"
                    )
                ),
            ),
        }
        # None failed under the 100 ms lock_timeout (a wait on the held rows would have); the held sweep has
        # not ended, so none waited for it (the bound is loose for a loaded machine, not a lock's measure).
        assert all(seconds < 5.0 for seconds in waited.values()), waited
        # The sweep writes what it saw (no delivery) and commits: its three orphans back off again.
        result = append_reconciled_events(held, linked, "t1", retry_all)
        held.commit()
    assert (result.linked, result.unmatched) == (0, 3)

    # The next sweep, not the backoff, links the two whose deliveries committed meanwhile; the orphan
    # Mailglass reconciled leaves the queue without a second reconciled event.
    after = sweep(engine, "t1", SweepConfig())
    assert after.linked == 2, after.as_dict()
    won = rows(engine, "SELECT metadata ->> 'reconciled_from_event_id' FROM mailglass_events WHERE type = 'reconciled'")
    assert sorted(r[0] for r in won) == sorted(map(str, (inserted, dispatched, reconciled_by_mailglass)))
    pending = {r[0] for r in rows(engine, f"SELECT event_id FROM {QUEUE}")}
    assert pending == {other}
    assert scalar(engine, f"SELECT count(*) FROM {WAKES}") == 0


def test_a_delivery_the_sweep_links_is_locked_only_at_its_end_and_never_against_a_reference(
    engine: Engine,
) -> None:
    """Decision D30: the sweep locks a delivery it links only for its last statement (the projection) and
    the commit. While its write statement runs, Mailglass updates that delivery under the 100 ms
    lock_timeout; after the projection, before the commit, Mailglass still inserts a row that references
    it (an outbound payload: its foreign key takes KEY SHARE, which FOR UPDATE would block)."""
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    delivery = make_delivery(engine, tenant_id="t1", message_id="m-1")
    version = scalar(engine, "SELECT lock_version FROM mailglass_deliveries WHERE id = :d", d=delivery)
    waited: dict[str, float] = {}

    def mailglass_update(c: Connection) -> None:
        c.execute(
            sa.text("UPDATE mailglass_deliveries SET status = 'sent', lock_version = lock_version + 1 WHERE id = :d"),
            {"d": delivery},
        )

    def payload_insert(c: Connection) -> None:
        c.execute(
            sa.text(
                "INSERT INTO mailglass_outbound_payloads (id, tenant_id, delivery_id, envelope_version,"
                " envelope_digest, envelope, inserted_at, updated_at)"
                " VALUES (gen_random_uuid(), 't1', :d, 1, 'x', '{}',"
                " now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')"
            ),
            {"d": delivery},
        )

    def after_statement(*args: object) -> None:
        if (
            "'reconciled:' ||" in str(args[2]) and "update during the write" not in waited
        ):  # the write statement just ran
            waited["update during the write"] = _as_the_app(engine, mailglass_update)

    config = SweepConfig()
    with engine.connect() as held:
        sa.event.listen(held, "after_cursor_execute", after_statement)
        held.begin()
        linked = attempt_link(held, find_orphans(held, "t1", config, lock=True))
        result = append_reconciled_events(held, linked, "t1", config)
        waited["reference after the projection"] = _as_the_app(engine, payload_insert)
        held.commit()
    # Both ran under the 100 ms lock_timeout (a wait on the held delivery would have failed them).
    assert set(waited) == {"update during the write", "reference after the projection"}, waited
    assert all(seconds < 5.0 for seconds in waited.values()), waited
    assert result.linked == 1
    after = rows(engine, "SELECT lock_version, last_event_type FROM mailglass_deliveries WHERE id = :d", d=delivery)
    assert after[0][0] == version + 2  # Mailglass's update, then the projection over it: neither lost


def test_a_signal_for_an_orphan_another_sweep_holds_waits_for_the_next_sweep(engine: Engine) -> None:
    orphan = make_orphan(engine, tenant_id="t1", message_id="m-1")
    assert sweep(engine, "t1", SweepConfig()).unmatched == 1
    make_delivery(engine, tenant_id="t1", message_id="m-1")
    with engine.connect() as held:
        held.begin()
        held.execute(sa.text(f"SELECT 1 FROM {QUEUE} WHERE event_id = :o FOR UPDATE"), {"o": orphan})
        assert db.run_transaction(engine, absorb_wakes) == (0, 0)  # held elsewhere: the signal stays
        assert scalar(engine, f"SELECT count(*) FROM {WAKES}") == 1
        held.rollback()
    assert db.run_transaction(engine, absorb_wakes) == (1, 0)
    assert sweep(engine, "t1", SweepConfig()).linked == 1


def test_truncate_as_mailglass_resets_and_the_queue_follows(engine: Engine) -> None:
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    make_orphan(engine, tenant_id="t1", message_id="m-2")
    make_delivery(engine, tenant_id="t1", message_id="m-1")  # a signal too
    assert scalar(engine, f"SELECT count(*) FROM {QUEUE}") == 2
    assert scalar(engine, f"SELECT count(*) FROM {WAKES}") == 1
    # Mailglass's own reset (test/mailglass/properties/idempotency_convergence_test.exs), autocommitted.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("TRUNCATE TABLE mailglass_events CASCADE"))
    assert scalar(engine, "SELECT count(*) FROM mailglass_events") == 0
    assert scalar(engine, f"SELECT count(*) FROM {QUEUE}") == 0
    assert scalar(engine, f"SELECT count(*) FROM {WAKES}") == 0
    # And the product goes on: a new orphan is queued and linked.
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    assert sweep(engine, "t1", SweepConfig()).linked == 1


def _version_7_in_time_order(ids_by_time: list[uuid.UUID]) -> None:
    assert ids_by_time and {i.version for i in ids_by_time} == {7}, ids_by_time
    assert ids_by_time == sorted(ids_by_time, key=lambda i: i.bytes)


def test_every_id_the_product_writes_is_uuidv7_in_time_order(engine: Engine) -> None:
    for n in range(3):
        make_orphan(engine, tenant_id="t1", message_id=f"m-{n}")
        make_delivery(engine, tenant_id="t1", message_id=f"m-{n}")
        assert sweep(engine, "t1", SweepConfig()).linked == 1  # one sweep each: ids made seconds apart
    with engine.connect() as conn:
        reconciled = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT id FROM mailglass_events WHERE type = 'reconciled' ORDER BY inserted_at")
            )
        ]
        made = [r[0] for r in conn.execute(sa.text("SELECT id FROM mailglass_deliveries ORDER BY inserted_at"))]
        orphans = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT id FROM mailglass_events WHERE type <> 'reconciled' ORDER BY inserted_at")
            )
        ]
    _version_7_in_time_order(reconciled)
    _version_7_in_time_order(made)
    _version_7_in_time_order(orphans)
    # The receiver's rows: the ledger events and Mailglass's webhook rows.
    for n in range(2):
        body, headers = build_webhook("postmark", f"m-hook-{n}")
        ingest("postmark", body, headers, tenant_id="t1", verify=False, engine=engine)
    with engine.connect() as conn:
        hooks = [
            r[0]
            for r in conn.execute(sa.text("SELECT id FROM mailglass_webhook_events ORDER BY inserted_at, received_at"))
        ]
        stored = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT id FROM mailglass_events WHERE idempotency_key LIKE 'postmark:%' ORDER BY inserted_at")
            )
        ]
    _version_7_in_time_order(hooks)
    _version_7_in_time_order(stored)
    assert min(i.bytes for i in stored) > max(i.bytes for i in orphans)
