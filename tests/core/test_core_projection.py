"""Decision D6: projection rules applied to a delivery from its orphans' events."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import delivery, make_delivery, make_orphan, reconciled_events, reconciled_from

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
SET_ONCE = {
    "dispatched": "dispatched_at",
    "delivered": "delivered_at",
    "bounced": "bounced_at",
    "complained": "complained_at",
    "suppressed": "suppressed_at",
}
TERMINAL = {"delivered", "bounced", "complained", "rejected", "failed", "suppressed"}
ALL_TYPES = [
    "queued", "sent", "rejected", "failed", "bounced", "deferred", "delivered", "autoresponded", "opened",
    "clicked", "complained", "unsubscribed", "subscribed", "unknown", "dispatched", "suppressed",
]  # fmt: skip
PROJECTION = ["last_event_type", "last_event_at", "terminal", *SET_ONCE.values()]


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _orphan(engine: Engine, tenant: str, mid: str, etype: str, minutes: float, age_minutes: float = 5) -> uuid.UUID:
    return make_orphan(
        engine,
        tenant_id=tenant,
        message_id=mid,
        event_type=etype,
        occurred_at=_at(minutes),
        age=timedelta(minutes=age_minutes),
    )


def _projection(engine: Engine, delivery_id: uuid.UUID) -> dict[str, object]:
    row = delivery(engine, delivery_id)._mapping
    return {k: row[k] for k in PROJECTION}


def test_single_event_projection_and_reconciled_event(engine: Engine) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1", last_event_at=T0)
    before = delivery(engine, target)
    orphan = make_orphan(
        engine, tenant_id="t1", message_id=None, event_type="delivered", occurred_at=_at(10),
        metadata={"provider": "postmark", "provider_message_id": "m-1", "provider_event_id": "pe-1"},
    )  # fmt: skip
    assert sweep(engine, "t1", SweepConfig()).linked == 1
    after = delivery(engine, target)
    assert (after.last_event_type, after.last_event_at, after.delivered_at, after.terminal) == (
        "delivered", _at(10), _at(10), True
    )  # fmt: skip
    assert after.lock_version == before.lock_version + 1
    assert after.updated_at > before.updated_at
    [event] = reconciled_events(engine)
    assert (event.tenant_id, event.delivery_id, event.idempotency_key) == ("t1", target, f"reconciled:{orphan}")
    assert event.occurred_at == after.updated_at  # both are the sweep's transaction time
    assert event.metadata == {
        "reconciled_from_event_id": str(orphan),
        "reconciled_provider": "postmark",
        "reconciled_provider_event_id": "pe-1",
        "reconciled_event_type": "delivered",
    }
    # The orphan itself is untouched: the ledger is append-only.
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT delivery_id, needs_reconciliation FROM mailglass_events WHERE id = :i"), {"i": orphan}
        ).one()
    assert tuple(row) == (None, True)


def test_each_type_sets_only_its_column_and_terminal_latches_for_terminal_types(engine: Engine) -> None:
    targets = {}
    for i, etype in enumerate(ALL_TYPES):
        targets[etype] = make_delivery(
            engine, tenant_id="t1", message_id=f"m-{etype}", last_event_at=T0, last_event_type="queued"
        )
        _orphan(engine, "t1", f"m-{etype}", etype, 10 + i)
    assert sweep(engine, "t1", SweepConfig()).linked == len(ALL_TYPES)
    for i, etype in enumerate(ALL_TYPES):
        got = _projection(engine, targets[etype])
        assert got["last_event_type"] == etype
        assert got["last_event_at"] == _at(10 + i)
        assert got["terminal"] is (etype in TERMINAL), etype
        for column in SET_ONCE.values():
            assert got[column] == (_at(10 + i) if SET_ONCE.get(etype) == column else None), (etype, column)


@pytest.mark.parametrize("batched", [True, False], ids=["one-batch", "separate-sweeps"])
def test_set_once_timestamps_are_never_overwritten(engine: Engine, batched: bool) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1", last_event_at=T0)
    preset = make_delivery(engine, tenant_id="t1", message_id="m-2", last_event_at=T0)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE mailglass_deliveries SET bounced_at = :t WHERE id = :i"), {"t": _at(1), "i": preset}
        )
    _orphan(engine, "t1", "m-1", "delivered", 10, age_minutes=6)
    _orphan(engine, "t1", "m-2", "bounced", 10, age_minutes=6)
    if not batched:
        sweep(engine, "t1", SweepConfig())
    _orphan(engine, "t1", "m-1", "delivered", 20, age_minutes=5)
    _orphan(engine, "t1", "m-2", "bounced", 20, age_minutes=5)
    sweep(engine, "t1", SweepConfig())
    assert delivery(engine, target).delivered_at == _at(10)
    assert delivery(engine, preset).bounced_at == _at(1)
    assert delivery(engine, target).lock_version == (2 if batched else 3)


def test_terminal_never_goes_back(engine: Engine) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1", last_event_at=T0)
    was_terminal = make_delivery(engine, tenant_id="t1", message_id="m-2", last_event_at=T0)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mailglass_deliveries SET terminal = true WHERE id = :i"), {"i": was_terminal})
    _orphan(engine, "t1", "m-1", "bounced", 10, age_minutes=6)
    sweep(engine, "t1", SweepConfig())
    _orphan(engine, "t1", "m-1", "opened", 20, age_minutes=5)
    _orphan(engine, "t1", "m-2", "clicked", 20, age_minutes=5)
    sweep(engine, "t1", SweepConfig())
    assert (delivery(engine, target).terminal, delivery(engine, target).last_event_type) == (True, "opened")
    assert delivery(engine, was_terminal).terminal is True


def test_older_event_after_newer_one_does_not_move_last_event(engine: Engine) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1", last_event_at=T0)
    _orphan(engine, "t1", "m-1", "opened", 30, age_minutes=6)
    sweep(engine, "t1", SweepConfig())
    _orphan(engine, "t1", "m-1", "delivered", 20, age_minutes=5)  # arrives later, happened earlier
    sweep(engine, "t1", SweepConfig())
    row = delivery(engine, target)
    assert (row.last_event_type, row.last_event_at) == ("opened", _at(30))
    # The older event still counts for the set-once column and the latch.
    assert (row.delivered_at, row.terminal, row.lock_version) == (_at(20), True, 3)


def test_event_older_than_delivery_last_event_or_tied_does_not_advance(engine: Engine) -> None:
    older = make_delivery(engine, tenant_id="t1", message_id="m-old", last_event_at=_at(60), last_event_type="sent")
    tied = make_delivery(engine, tenant_id="t1", message_id="m-tie", last_event_at=_at(60), last_event_type="sent")
    _orphan(engine, "t1", "m-old", "opened", 30)
    _orphan(engine, "t1", "m-tie", "clicked", 60)
    sweep(engine, "t1", SweepConfig())
    for target in (older, tied):
        row = delivery(engine, target)
        assert (row.last_event_type, row.last_event_at, row.lock_version) == ("sent", _at(60), 2)


def test_tie_within_one_batch_keeps_the_first_arrival(engine: Engine) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1", last_event_at=T0)
    control = make_delivery(engine, tenant_id="t1", message_id="m-2", last_event_at=T0)
    # Same occurred_at; "clicked" arrived first for m-1, "opened" arrived first for m-2.
    _orphan(engine, "t1", "m-1", "clicked", 10, age_minutes=7)
    _orphan(engine, "t1", "m-1", "opened", 10, age_minutes=6)
    _orphan(engine, "t1", "m-2", "opened", 10, age_minutes=7)
    _orphan(engine, "t1", "m-2", "clicked", 10, age_minutes=6)
    sweep(engine, "t1", SweepConfig())
    assert delivery(engine, target).last_event_type == "clicked"
    assert delivery(engine, control).last_event_type == "opened"


# (type, occurred minutes, arrival age minutes): arrival order differs from occurrence order, with a tie.
HISTORY = [
    ("sent", 5, 20),
    ("dispatched", 2, 19),
    ("opened", 40, 18),
    ("delivered", 30, 17),
    ("clicked", 40, 16),
    ("bounced", 35, 15),
    ("deferred", 1, 14),
    ("complained", 50, 13),
    ("unsubscribed", 45, 12),
]


def test_one_batch_equals_applying_events_one_by_one(engine: Engine) -> None:
    # Same history for two deliveries: tenant "batch" reconciles in one sweep, tenant "step" one orphan per sweep.
    batch = make_delivery(engine, tenant_id="batch", message_id="m-batch", last_event_at=T0)
    step = make_delivery(engine, tenant_id="step", message_id="m-step", last_event_at=T0)
    untouched = make_delivery(engine, tenant_id="batch", message_id="m-none", last_event_at=T0)
    untouched_before = delivery(engine, untouched)
    for etype, minutes, age in HISTORY:
        _orphan(engine, "batch", "m-batch", etype, minutes, age_minutes=age)
        _orphan(engine, "step", "m-step", etype, minutes, age_minutes=age)
    assert sweep(engine, "batch", SweepConfig()).linked == len(HISTORY)
    for _ in HISTORY:
        assert sweep(engine, "step", SweepConfig(limit=1)).linked == 1
    assert _projection(engine, batch) == _projection(engine, step)
    # And equal to the rules worked out by hand.
    assert _projection(engine, batch) == {
        "last_event_type": "complained",
        "last_event_at": _at(50),
        "terminal": True,
        "dispatched_at": _at(2),
        "delivered_at": _at(30),
        "bounced_at": _at(35),
        "complained_at": _at(50),
        "suppressed_at": None,
    }
    # lock_version: +1 per write. One write for the batch, one per sweep for the step-by-step delivery.
    assert delivery(engine, batch).lock_version == 2
    assert delivery(engine, step).lock_version == 1 + len(HISTORY)
    assert delivery(engine, untouched) == untouched_before
    assert len(reconciled_from(engine)) == 2 * len(HISTORY)


def test_projection_does_not_lose_a_concurrent_application_update(engine: Engine) -> None:
    target = make_delivery(engine, tenant_id="t1", message_id="m-1", last_event_at=T0)
    _orphan(engine, "t1", "m-1", "delivered", 10)
    result: list[object] = []
    with engine.connect() as app:
        app.begin()
        # The application (optimistic locking) updates the row and holds it while the sweep runs.
        app.execute(
            sa.text(
                "UPDATE mailglass_deliveries SET status = 'app-status', metadata = '{\"k\": 1}',"
                " lock_version = lock_version + 1 WHERE id = :i"
            ),
            {"i": target},
        )
        worker = threading.Thread(target=lambda: result.append(sweep(engine, "t1", SweepConfig())))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive()  # waiting on the application's row lock
        app.commit()
    worker.join(30)
    assert result and result[0].linked == 1  # type: ignore[attr-defined]
    row = delivery(engine, target)
    assert (row.status, row.metadata, row.lock_version) == ("app-status", {"k": 1}, 3)
    assert (row.delivered_at, row.terminal, row.last_event_type) == (_at(10), True, "delivered")
