"""Decision D13: the per-tenant graph's steps and the schedule's sweep run the same statements.

The steps cannot hold the sweep's row locks from one step to the next, so the
find releases them at once and correctness rests on the idempotency key.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy.engine import Engine

import mailglass_pipeline
from mailglass_pipeline.reconciliation.sweep import (
    append_reconciled_events,
    attempt_link,
    find_orphans,
    reconcile,
    sweep,
)
from mailglass_pipeline.settings import SweepConfig
from tests.factories import make_delivery, make_orphan, pending_orphans, reconciled_from


def _seed(engine: Engine, tenant: str, n: int) -> None:
    for i in range(n):
        make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-m-{i}", age=timedelta(minutes=10 + i))
        make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-m-{i}")


def test_the_package_keeps_the_contract_function() -> None:
    from mailglass_pipeline import settings

    assert mailglass_pipeline.reconcile is reconcile and callable(reconcile)
    assert settings.SweepConfig is SweepConfig


def test_an_unlocked_find_holds_no_lock_a_sweep_would_skip(engine: Engine) -> None:
    _seed(engine, "t1", 4)
    with engine.connect() as conn:
        conn.begin()
        batch = find_orphans(conn, "t1", SweepConfig(), lock=False)
        assert len(batch) == 4 and "delivery_id" not in batch.columns
        done: list[int] = []
        worker = threading.Thread(target=lambda: done.append(sweep(engine, "t1", SweepConfig()).linked))
        worker.start()
        worker.join(20)
        # Still inside the find's transaction: a locking find would have made the sweep skip all four.
        assert done == [4]
        conn.rollback()


def test_a_stale_batch_written_after_the_sweep_links_nothing_twice(engine: Engine) -> None:
    """The graph's steps racing the schedule: the later write finds every orphan already reconciled."""
    _seed(engine, "t1", 5)
    config = SweepConfig()
    with engine.begin() as conn:
        batch = find_orphans(conn, "t1", config)
    with engine.begin() as conn:
        linked = attempt_link(conn, batch)
    assert linked["delivery_id"].notna().all()
    assert sweep(engine, "t1", config).linked == 5  # the schedule's locked core, in between
    with engine.begin() as conn:
        late = append_reconciled_events(conn, linked, "t1", config)
    assert (late.scanned, late.linked, late.already_reconciled) == (5, 0, 5)
    assert len(reconciled_from(engine)) == 5 and not pending_orphans(engine)


def test_the_batch_survives_ids_and_missing_values_as_text(engine: Engine) -> None:
    """One representation: a batch whose ids came back as text and whose gaps are NaN still writes."""
    _seed(engine, "t1", 3)
    make_orphan(engine, tenant_id="t1", message_id="nobody", age=timedelta(minutes=5))
    config = SweepConfig()
    with engine.begin() as conn:
        linked = attempt_link(conn, find_orphans(conn, "t1", config))
    as_text = linked.astype({"id": str, "delivery_id": object})
    as_text["delivery_id"] = [str(d) if d is not None else float("nan") for d in linked["delivery_id"]]
    as_text["provider_event_id"] = float("nan")
    with engine.begin() as conn:
        result = append_reconciled_events(conn, as_text, "t1", config)
    assert (result.scanned, result.linked, result.unmatched) == (4, 3, 1)
