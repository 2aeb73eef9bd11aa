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

One home: the statement ``project`` of ``sql/deliveries.sql``, run by
:func:`project` and by nothing else. Every writer of an event that has a
delivery calls it in the transaction that appended the event, before the
commit, so a crash cannot commit an event without its projection: the sweep
(``reconciliation/sweep.py``, after its write statement), the receiver's
transaction (``ingest/core.py``, after ``store_webhook``) and its group
statement (``ingest/grouped.py``, after ``store_webhooks_grouped``).

No lost update, no deadlock: the rows are first locked ``ORDER BY id``
(:func:`lock`; the group statement takes the same lock itself, ``SKIP
LOCKED``), so two writers locking overlapping sets wait in one order, then the
UPDATE reads the current row values under that lock. Callers retry the
transaction on 40P01/40001 (``db.run_transaction``). The lock is ``FOR NO KEY
UPDATE`` (decision D30): the ledger insert before it takes only the foreign
key's ``KEY SHARE`` on a delivery, which does not conflict with it.

The sweep announces what it linked with ``pg_notify`` inside the same
transaction (the function ``mailglass_reconciliation_notify`` of migration
0007): PostgreSQL delivers it only if it commits, which is exactly "announce
after commit". A tenant id too long for a notification payload (pg_notify
refuses 8000 bytes or more) is sent as null rather than failing the sweep.
tests/core/test_reconcile_sql.py holds the statement and the function to the
constants below.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from mailglass_pipeline.db import RawStatement, driver_cursor
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


#: The projection (``sql/deliveries.sql``), sent as is by psycopg's raw cursor: the receiver runs it per request.
_PROJECT = RawStatement.of(statement("project"))


def project(conn: Connection, won: Sequence[Mapping[str, Any]], *, locked: bool = False) -> None:
    """Lock the deliveries of the ledger events ``won`` (:func:`lock`), then apply the projection rules to them,
    inside the caller's transaction.

    ``won``: one mapping per event as it was appended: ``delivery_id``, ``type``, ``occurred_at`` (for the
    sweep, the type and time of the orphan it linked) and ``ord`` (its place in the batch, which breaks a
    tie of ``occurred_at``). Nothing is read from the ledger: the receiver's role may read only a few of
    its columns (``sql/grants_receiver.sql``). ``locked``: this transaction holds those deliveries already
    (the group statement's own ``SKIP LOCKED`` lock), so no lock statement. Returns nothing, so in a
    pipeline (:func:`.db.pipelined_transaction`) it goes out with the COMMIT instead of waiting alone; no
    statement at all for an empty ``won``.
    """
    if not won:
        return
    if not locked:
        lock(conn, (w["delivery_id"] for w in won))
    rows = [{k: w[k] for k in ("delivery_id", "type", "occurred_at", "ord")} for w in won]
    document = json.dumps(rows, default=str, separators=(",", ":"))
    with driver_cursor(conn) as cursor:
        cursor.execute(_PROJECT.text, _PROJECT.values({"won": document}))
