"""Delivery projections: what a delivery row says after its events.

Rules (decision D6, docs/decisions.md), applied to a whole batch in one UPDATE:

* ``last_event_type``/``last_event_at`` advance together, only for an event
  strictly later than ``last_event_at``. Within a batch the latest event
  wins; on a tie the first in batch order wins, as applying the events one by
  one would give.
* ``dispatched_at``, ``delivered_at``, ``bounced_at``, ``complained_at``,
  ``suppressed_at`` are set once (the earliest such event), only while null.
* ``terminal`` latches to true and never goes back.
* each write adds 1 to ``lock_version`` and sets ``updated_at``, so an
  application using optimistic locking notices.

No lost update: the rows are first locked ``ORDER BY id`` (a fixed order, so
two sweeps locking overlapping sets cannot deadlock), then the UPDATE reads
the current row values under that lock. Callers retry the transaction on
40P01/40001 (``db.run_transaction``).

Announcements go out with ``pg_notify`` inside the same transaction:
PostgreSQL delivers them only if it commits, which is exactly "announce
after commit". A tenant id too long for a notification payload (pg_notify
refuses 8000 bytes or more) is sent as null rather than failing the sweep.

The rules' one home is the rule ``projection`` of ``sql/rules.sql`` (and
``notify`` for the announcement); the statements that project (the sweep's
``write``, the receiver's ``store_webhook`` and ``store_webhooks_grouped``)
hold marked copies of it, which tests/core/test_reconcile_sql.py compares
with it and with the constants below.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from mailglass_pipeline.queries import statement

NOTIFY_CHANNEL = "mailglass_delivery_updated"
#: pg_notify refuses payloads of 8000 bytes or more. Every other payload field
#: is a fixed-size UUID or word, so only the tenant id can push it over: above
#: this many bytes of JSON it is sent as null (the listener still has the
#: delivery id to look the tenant up).
MAX_NOTIFY_TENANT_BYTES = 7000

#: Event types after which a delivery is finished for good.
TERMINAL_TYPES = ("delivered", "bounced", "complained", "rejected", "failed", "suppressed")
#: Set-once timestamp column for each event type that has one.
SET_ONCE_COLUMNS = {
    "dispatched": "dispatched_at",
    "delivered": "delivered_at",
    "bounced": "bounced_at",
    "complained": "complained_at",
    "suppressed": "suppressed_at",
}


def lock(conn: Connection, delivery_ids: Iterable[uuid.UUID]) -> None:
    """Lock the deliveries ``FOR NO KEY UPDATE`` in id order: two writers locking overlapping sets cannot deadlock.

    NO KEY UPDATE (what the projection's UPDATE takes anyway) lets a Mailglass insert that references a
    delivery (its foreign key's KEY SHARE) through, which FOR UPDATE would block (decision D30).
    """
    ids = sorted(set(delivery_ids))
    if ids:
        # One array literal as text: the driver would otherwise dump a uuid[] element by element.
        conn.execute(statement("lock_deliveries"), {"ids": "{" + ",".join(map(str, ids)) + "}"})
