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

This module is the one home of these rules. They are exported as SQL
fragments (:func:`projection_ctes`, :func:`notify_select`) so that the
reconciler can run them inside its single write statement over the events it
just appended, while :func:`apply` runs the very same projection SQL over
Python values (ingest's directly linked events).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

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


@dataclass(frozen=True)
class ProjectedEvent:
    """An event to fold into a delivery's projection."""

    delivery_id: uuid.UUID
    type: str
    occurred_at: datetime


_LOCK = sa.text("SELECT id FROM mailglass_deliveries WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE")

_set_once_aggs = ",\n".join(
    f"min(occurred_at) FILTER (WHERE type = '{etype}') AS {column}" for etype, column in SET_ONCE_COLUMNS.items()
)
_set_once_assignments = ",\n".join(
    f"{column} = COALESCE(d.{column}, a.{column})" for column in SET_ONCE_COLUMNS.values()
)
_terminal_list = ", ".join(f"'{t}'" for t in TERMINAL_TYPES)


def projection_ctes(source: str) -> str:
    """The projection rules as two CTE definitions over the relation named ``source``.

    ``source`` must have the columns ``delivery_id``, ``type``, ``occurred_at``
    and ``ord`` (batch order: on an ``occurred_at`` tie the lowest ``ord``
    wins). The result defines ``proj_agg`` (one row per delivery) and
    ``proj_upd`` (the UPDATE, ``RETURNING d.id``), to be placed after ``WITH``
    and the CTE that defines ``source``. This is the one home of the rules:
    :func:`apply` and the reconciler's single write statement both embed it,
    so they cannot drift apart. The deliveries must already be locked in id
    order (:func:`lock`) for the no-deadlock guarantee.
    """
    return f"""
    proj_agg AS (
        SELECT delivery_id,
               (array_agg(type ORDER BY occurred_at DESC, ord ASC))[1] AS latest_type,
               max(occurred_at) AS latest_at,
               {_set_once_aggs},
               bool_or(type IN ({_terminal_list})) AS terminal
          FROM {source} GROUP BY delivery_id
    ), proj_upd AS (
        UPDATE mailglass_deliveries d SET
            last_event_type = CASE WHEN a.latest_at > d.last_event_at THEN a.latest_type ELSE d.last_event_type END,
            last_event_at = GREATEST(d.last_event_at, a.latest_at),
            {_set_once_assignments},
            terminal = d.terminal OR a.terminal,
            lock_version = d.lock_version + 1,
            updated_at = now()
          FROM proj_agg a
         WHERE d.id = a.delivery_id
        RETURNING d.id
    )"""


def locked_projection_ctes(source: str) -> str:
    """:func:`projection_ctes` over ``source`` with the deliveries locked in id order first, in the same statement.

    For a single statement that finds and appends the events itself (ingest's
    store). ``proj_locked`` locks ``source``'s deliveries ``ORDER BY id`` (the
    LockRows node sits above the sort, so the locks are taken in id order);
    ``proj_src`` lets ``source``'s rows through only after an uncorrelated
    count over ``proj_locked``, an InitPlan that runs once, to completion,
    before the first row reaches the projection: every lock is held before
    the UPDATE touches a row, as with :func:`lock` then :func:`apply`.
    """
    return f"""
    proj_locked AS MATERIALIZED (
        SELECT d.id FROM mailglass_deliveries d
         WHERE d.id IN (SELECT delivery_id FROM {source})
         ORDER BY d.id FOR UPDATE OF d
    ), proj_src AS (
        SELECT * FROM {source} WHERE (SELECT count(*) FROM proj_locked) >= 0
    ), {projection_ctes("proj_src")}"""


_UPDATE = sa.text(
    f"""
    WITH ev AS (
        SELECT * FROM unnest(CAST(:delivery_id AS uuid[]), CAST(:type AS text[]),
                             CAST(:occurred_at AS timestamptz[]))
               WITH ORDINALITY AS e(delivery_id, type, occurred_at, ord)
    ), {projection_ctes("ev")}
    SELECT id FROM proj_upd
    """
)


def lock(conn: Connection, delivery_ids: Iterable[uuid.UUID]) -> None:
    """Lock the deliveries ``FOR UPDATE`` in id order: two writers locking overlapping sets cannot deadlock."""
    ids = sorted(set(delivery_ids))
    if ids:
        # One array literal as text: the driver would otherwise dump a uuid[] element by element.
        conn.execute(_LOCK, {"ids": "{" + ",".join(map(str, ids)) + "}"})


def apply(conn: Connection, events: Sequence[ProjectedEvent]) -> set[uuid.UUID]:
    """Fold ``events`` into their deliveries; returns the ids of the deliveries written.

    Two statements whatever the batch size: lock in id order, then update.
    """
    if not events:
        return set()
    lock(conn, (e.delivery_id for e in events))
    rows = conn.execute(
        _UPDATE,
        {
            "delivery_id": [e.delivery_id for e in events],
            "type": [e.type for e in events],
            "occurred_at": [e.occurred_at for e in events],
        },
    )
    return {row[0] for row in rows}


def notify_select(source: str) -> str:
    """A SELECT queueing one notification per row of the relation named ``source``.

    ``source`` has the columns ``tenant_id``, ``delivery_id``, ``event_type``,
    ``event_id`` and ``from_id``. Used by the reconciler's single write
    statement and by the lower-bound benchmark, so the payload has one definition.
    A SELECT in a CTE runs only if the statement reads it: embed it where its
    rows are consumed (e.g. counted).
    """
    return f"""
    SELECT pg_notify('{NOTIFY_CHANNEL}', json_build_object(
               'tenant_id', CASE WHEN octet_length(to_json(n.tenant_id)::text) > {MAX_NOTIFY_TENANT_BYTES}
                                 THEN NULL ELSE n.tenant_id END,
               'delivery_id', n.delivery_id, 'event_type', n.event_type,
               'event_id', n.event_id, 'reconciled_from_event_id', n.from_id)::text) AS notified
      FROM {source} AS n"""
