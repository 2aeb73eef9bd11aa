from datetime import timedelta

from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import fetch, make_delivery, make_orphan


def test_orphan_links_to_later_delivery(engine):
    orphan = make_orphan(engine, tenant_id="t1", message_id="m-1")
    delivery = make_delivery(engine, tenant_id="t1", message_id="m-1")
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked) == (1, 1)
    rows = fetch(engine, "SELECT delivery_id, metadata FROM mailglass_events WHERE type='reconciled'")
    assert rows[0].delivery_id == delivery
    assert rows[0].metadata["reconciled_from_event_id"] == str(orphan)
    again = sweep(engine, "t1", SweepConfig())
    assert (again.scanned, again.linked) == (0, 0)
    make_orphan(engine, tenant_id="t1", message_id="m-2", age=timedelta(seconds=5))
    assert sweep(engine, None, SweepConfig()).scanned == 0
