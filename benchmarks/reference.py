"""REFERENCE IMPLEMENTATION, for measurement only: the original per-orphan algorithm.

This is a deliberately faithful port of the shape of Mailglass v1.0.0's
``Mailglass.Webhook.Reconciler`` sweep, kept so the benchmark can measure the
project's reconciler against it. It is not used by the package and must not be.

What makes it the original:

* ``find_orphans`` scans the ledger itself: every orphan of the tenant in the
  7-day window, oldest first. The ledger is append-only, so an orphan that was
  reconciled long ago still matches ``needs_reconciliation AND delivery_id IS
  NULL``; the scan walks past all of them and filters each one out with a
  ``NOT EXISTS`` probe for its ``reconciled`` event. (Without that probe the
  oldest 1000 reconciled orphans would fill every batch forever; with it the
  cost of a batch grows with the history in the window. This is the query the
  design document measured at 13 to 27 times slower with 500k reconciled
  orphans in the window.)
* ``attempt_link`` runs once per orphan: one round trip to look the delivery
  up, then one transaction that inserts the ``reconciled`` event (``ON
  CONFLICT DO NOTHING``), updates the delivery's projection (``lock_version +
  1``) and sends the notification.

The projection rules and event contents are the same as the project's, so
both sides do the same work per linked orphan; only the access pattern differs.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline.projector import NOTIFY_CHANNEL, SET_ONCE_COLUMNS, TERMINAL_TYPES

FIND_ORPHANS = sa.text(
    """
    SELECT e.id, e.tenant_id, e.type, e.occurred_at, e.metadata, e.normalized_payload
      FROM mailglass_events e
     WHERE e.needs_reconciliation
       AND e.delivery_id IS NULL
       AND e.tenant_id = :tenant_id
       AND e.inserted_at <= now() - make_interval(secs => :grace_seconds)
       AND e.inserted_at > now() - make_interval(mins => :max_age_minutes)
       AND NOT EXISTS (SELECT 1 FROM mailglass_events r
                        WHERE r.idempotency_key = 'reconciled:' || e.id::text)
     ORDER BY e.inserted_at ASC
     LIMIT :limit
    """
)

LOOKUP_ONE = sa.text(
    """
    SELECT id FROM mailglass_deliveries
     WHERE tenant_id = :tenant_id AND provider = :provider AND provider_message_id = :message_id
     LIMIT 1
    """
)

INSERT_RECONCILED = sa.text(
    """
    INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key, metadata)
    VALUES (:id, :tenant_id, :delivery_id, 'reconciled', now(), :key, CAST(:metadata AS jsonb))
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
    """
)

_set_once = ",\n".join(
    f"{column} = CASE WHEN :type = '{etype}' THEN COALESCE({column}, :occurred_at) ELSE {column} END"
    for etype, column in SET_ONCE_COLUMNS.items()
)
_terminal = ", ".join(f"'{t}'" for t in TERMINAL_TYPES)
UPDATE_PROJECTION = sa.text(
    f"""
    UPDATE mailglass_deliveries SET
        last_event_type = CASE WHEN :occurred_at > last_event_at THEN :type ELSE last_event_type END,
        last_event_at = GREATEST(last_event_at, :occurred_at),
        {_set_once},
        terminal = terminal OR :type IN ({_terminal}),
        lock_version = lock_version + 1,
        updated_at = now()
     WHERE id = :delivery_id
    """
)

NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")

_MESSAGE_ID_KEYS = ("provider_message_id", "message_id", "sg_message_id")


def _text(maps: tuple[dict[str, Any], ...], keys: tuple[str, ...]) -> str | None:
    for mapping in maps:
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, str) and value:
                return value
    return None


@dataclass
class ReferenceStats:
    scanned: int = 0
    linked: int = 0
    batches: int = 0


def link_one(engine: Engine, row: Any) -> bool:
    """The original's per-orphan step: one lookup, then one transaction. True when linked."""
    maps = (row.metadata or {}, row.normalized_payload or {})
    provider = _text(maps, ("provider",))
    message_id = _text(maps, _MESSAGE_ID_KEYS)
    if provider is None or message_id is None:
        return False
    with engine.connect() as conn:
        delivery_id = conn.execute(
            LOOKUP_ONE, {"tenant_id": row.tenant_id, "provider": provider, "message_id": message_id}
        ).scalar()
        conn.rollback()
    if delivery_id is None:
        return False
    with engine.begin() as conn:
        event_id = uuid.uuid4()
        inserted = conn.execute(
            INSERT_RECONCILED,
            {
                "id": event_id,
                "tenant_id": row.tenant_id,
                "delivery_id": delivery_id,
                "key": f"reconciled:{row.id}",
                "metadata": json.dumps(
                    {
                        "reconciled_from_event_id": str(row.id),
                        "reconciled_provider": provider,
                        "reconciled_provider_event_id": _text(maps, ("provider_event_id",)),
                        "reconciled_event_type": row.type,
                    }
                ),
            },
        ).scalar()
        if inserted is None:
            return False
        conn.execute(UPDATE_PROJECTION, {"delivery_id": delivery_id, "type": row.type, "occurred_at": row.occurred_at})
        payload = {
            "tenant_id": row.tenant_id,
            "delivery_id": str(delivery_id),
            "event_type": "reconciled",
            "event_id": str(event_id),
            "reconciled_from_event_id": str(row.id),
        }
        conn.execute(NOTIFY, {"channel": NOTIFY_CHANNEL, "payload": json.dumps(payload)})
    return True


def find_orphans(
    conn: Connection, tenant_id: str, limit: int = 1000, grace_seconds: int = 60, max_age_minutes: int = 10080
) -> list[Any]:
    params = {
        "tenant_id": tenant_id,
        "limit": limit,
        "grace_seconds": grace_seconds,
        "max_age_minutes": max_age_minutes,
    }
    return list(conn.execute(FIND_ORPHANS, params))


def sweep_tenant(engine: Engine, tenant_id: str, limit: int = 1000, deadline: float | None = None) -> ReferenceStats:
    """One batch of the original for one tenant: find, then link orphan by orphan.

    ``deadline`` (a ``time.perf_counter()`` value) lets the benchmark stop a
    batch part-way when measuring within a time budget; whatever was linked
    until then is counted.
    """
    stats = ReferenceStats(batches=1)
    with engine.connect() as conn:
        rows = find_orphans(conn, tenant_id, limit)
        conn.rollback()
    for row in rows:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        stats.scanned += 1
        stats.linked += link_one(engine, row)
    return stats
