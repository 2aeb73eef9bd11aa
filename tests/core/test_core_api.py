"""docs/contract.md section 5 (Python API) and behaviour under database failures."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import mailglass_pipeline
from mailglass_pipeline import reconcile
from mailglass_pipeline.errors import MailglassError
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import make_delivery, make_orphan, pending_orphans, reconciled_from, snapshot

NOWHERE = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
BAD_ARGS = [
    {"limit": 0},
    {"limit": -1},
    {"limit": 1.5},
    {"limit": "10"},
    {"limit": True},
    {"limit": None},
    {"tenant_id": ""},
    {"tenant_id": 7},
]


@pytest.mark.parametrize("kwargs", BAD_ARGS, ids=[repr(k) for k in BAD_ARGS])
def test_bad_arguments_raise_value_error_without_a_database(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        reconcile(database_url=NOWHERE, **kwargs)  # type: ignore[arg-type]


def test_bad_arguments_write_nothing(database_url: str, engine: Engine) -> None:
    make_orphan(engine, tenant_id="t1", message_id="m-1")
    make_delivery(engine, tenant_id="t1", message_id="m-1")
    before = snapshot(engine)
    for kwargs in BAD_ARGS:
        with pytest.raises(ValueError):
            reconcile(database_url=database_url, **kwargs)  # type: ignore[arg-type]
    assert snapshot(engine) == before


def test_unreachable_database_is_a_mailglass_error_not_a_value_error() -> None:
    with pytest.raises(MailglassError) as info:
        reconcile(database_url=NOWHERE)
    assert not isinstance(info.value, ValueError)


def test_reconcile_public_api(database_url: str, engine: Engine) -> None:
    o1 = make_orphan(engine, tenant_id="t1", message_id="m-1")
    o2 = make_orphan(engine, tenant_id="t2", message_id="m-2")
    d1 = make_delivery(engine, tenant_id="t1", message_id="m-1")
    d2 = make_delivery(engine, tenant_id="t2", message_id="m-2")
    scoped = reconcile("t1", database_url=database_url)
    assert type(scoped["scanned"]) is int and type(scoped["linked"]) is int
    assert (scoped["scanned"], scoped["linked"]) == (1, 1)
    everything = reconcile(database_url=database_url, limit=5)
    assert (everything["scanned"], everything["linked"]) == (1, 1)
    assert reconciled_from(engine) == {o1: d1, o2: d2}
    again = reconcile(database_url=database_url)
    assert (again["scanned"], again["linked"]) == (0, 0)


def test_available_returns_a_bool() -> None:
    assert isinstance(mailglass_pipeline.available(), bool)
    assert issubclass(mailglass_pipeline.EventLedgerImmutableError, Exception)


# -- failures midway leave the database as it was -------------------------------------------------


def _seed(engine: Engine) -> None:
    make_delivery(engine, tenant_id="t1", message_id="m-1")
    make_delivery(engine, tenant_id="t1", message_id="m-2")
    for mid in ("m-1", "m-2", "m-unmatched"):
        make_orphan(engine, tenant_id="t1", message_id=mid)
    make_orphan(engine, tenant_id="t1", message_id=None)  # malformed: would be parked
    make_orphan(engine, tenant_id="t1", message_id="m-old", age=timedelta(days=8))  # stale: would be parked


def test_lock_timeout_midway_rolls_everything_back(engine: Engine) -> None:
    _seed(engine)
    before = snapshot(engine)
    with engine.connect() as app:
        app.begin()
        app.execute(sa.text("SELECT id FROM mailglass_deliveries WHERE provider_message_id = 'm-2' FOR UPDATE"))
        with pytest.raises(sa.exc.OperationalError) as info:
            sweep(engine, "t1", SweepConfig(lock_timeout_ms=200))
        assert getattr(info.value.orig, "sqlstate", None) == "55P03"
        assert snapshot(engine) == before
        app.rollback()
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.unmatched, result.malformed, result.stale_orphans) == (4, 2, 1, 1, 1)
    assert len(reconciled_from(engine)) == 2


def test_constraint_violation_midway_rolls_everything_back(engine: Engine) -> None:
    _seed(engine)
    # Reject the projection write (it latches terminal): fails after the reconciled events were appended.
    with engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE mailglass_deliveries ADD CONSTRAINT test_never_terminal CHECK (NOT terminal)")
        )
    before = snapshot(engine)
    with pytest.raises(sa.exc.IntegrityError):
        sweep(engine, "t1", SweepConfig())
    assert snapshot(engine) == before
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE mailglass_deliveries DROP CONSTRAINT test_never_terminal"))
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked) == (4, 2)
    assert len(pending_orphans(engine)) == 1


def test_sweep_does_not_wait_for_orphans_another_sweep_holds(engine: Engine) -> None:
    # A long sweep holding its batch does not block a second sweep: it takes the other orphans.
    for i in range(4):
        make_orphan(engine, tenant_id="t1", message_id=f"m-{i}", age=timedelta(minutes=10 - i))
        make_delivery(engine, tenant_id="t1", message_id=f"m-{i}")
    from mailglass_pipeline.reconciliation.sweep import find_orphans

    with engine.connect() as first:
        first.begin()
        held = set(find_orphans(first, "t1", SweepConfig(limit=2), lock=True)["id"])
        done: list[int] = []
        worker = threading.Thread(target=lambda: done.append(sweep(engine, "t1", SweepConfig()).linked))
        worker.start()
        worker.join(10)
        assert done == [2]
        first.rollback()
    assert held.isdisjoint(reconciled_from(engine))
    assert sweep(engine, "t1", SweepConfig()).linked == 2


def test_tenant_and_stale_helpers(engine: Engine) -> None:
    from mailglass_pipeline.reconciliation.monitoring import known_tenants, stale_orphans, tenants_with_due_orphans

    make_delivery(engine, tenant_id="only-deliveries", message_id="m-0")
    make_orphan(engine, tenant_id="due", message_id="m-1", age=timedelta(minutes=5))
    make_orphan(engine, tenant_id="young", message_id="m-2", age=timedelta(seconds=5))
    make_orphan(engine, tenant_id="old", message_id="m-3", age=timedelta(days=8))
    make_orphan(engine, tenant_id="old", message_id="m-4", age=timedelta(days=9))
    with engine.connect() as conn:
        assert tenants_with_due_orphans(conn) == ["due"]
        assert known_tenants(conn) == ["due", "old", "only-deliveries", "young"]
        count, oldest = stale_orphans(conn, "old")
        assert count == 2 and oldest is not None and abs(oldest - 9 * 86400) < 120
        assert stale_orphans(conn, "due") == (0, None)
    sweep(engine, None, SweepConfig())  # parks the stale ones; they are still reported
    with engine.connect() as conn:
        assert stale_orphans(conn)[0] == 2
        assert tenants_with_due_orphans(conn) == []  # examined, unmatched: backs off for a minute


def test_missing_provider_event_id_as_nan_is_stored_as_json_null(engine: Engine) -> None:
    # A batch that went through pandas (or a Dagster IO manager) may carry NaN for a missing value;
    # json.dumps would write NaN, which PostgreSQL refuses.
    from mailglass_pipeline.reconciliation.sweep import append_reconciled_events, attempt_link, find_orphans

    make_delivery(engine, tenant_id="t1", message_id="m-1")
    orphan = make_orphan(
        engine, tenant_id="t1", message_id="m-1", metadata={"provider": "postmark", "provider_message_id": "m-1"}
    )
    with engine.begin() as conn:
        linked = attempt_link(conn, find_orphans(conn, "t1", SweepConfig()))
        linked["provider_event_id"] = float("nan")
        assert append_reconciled_events(conn, linked, "t1").linked == 1
    with engine.connect() as conn:
        metadata = conn.execute(
            sa.text("SELECT metadata FROM mailglass_events WHERE idempotency_key = :k"), {"k": f"reconciled:{orphan}"}
        ).scalar_one()
    assert metadata == {
        "reconciled_from_event_id": str(orphan),
        "reconciled_provider": "postmark",
        "reconciled_provider_event_id": None,
        "reconciled_event_type": "delivered",
    }
