"""Rows for tests: the one place that writes test data (keyword-only builders) and reads it back.

Builders take the engine first and everything else by keyword, so a swapped argument cannot
slip through: ``make_delivery(engine, tenant_id="t1", message_id="m-1")``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import deliveries, ledger

QUEUE = "mailglass_reconciliation_queue"

# -- builders --------------------------------------------------------------------------------


def make_delivery(
    engine: Engine,
    *,
    tenant_id: str,
    message_id: str | None,
    provider: str | None = "postmark",
    dispatched: bool = False,
    **columns: Any,
) -> uuid.UUID:
    """A delivery as the sending application commits it: last event an hour ago (``dispatched_at`` too if
    ``dispatched``); ``columns`` go to ``deliveries.create``."""
    columns.setdefault("last_event_at", datetime.now(UTC) - timedelta(hours=1))
    if dispatched:
        columns.setdefault("dispatched_at", columns["last_event_at"])
    with engine.begin() as conn:
        return deliveries.create(
            conn, tenant_id=tenant_id, provider=provider, provider_message_id=message_id, **columns
        )


def make_orphan(
    engine: Engine,
    *,
    tenant_id: str,
    message_id: str | None,
    provider: str | None = "postmark",
    event_type: str = "delivered",
    age: timedelta = timedelta(minutes=5),
    occurred_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    normalized_payload: dict[str, Any] | None = None,
) -> uuid.UUID:
    """An orphan inserted ``age`` ago, with Mailglass-compatible metadata unless given."""
    inserted_at = datetime.now(UTC) - age
    if metadata is None:
        metadata = {"provider_event_id": f"evt-{uuid.uuid4().hex[:8]}"}
        if provider is not None:
            metadata["provider"] = provider
        if message_id is not None:
            metadata["provider_message_id"] = message_id
    event = ledger.NewEvent(
        tenant_id=tenant_id,
        type=event_type,
        occurred_at=occurred_at or inserted_at,
        inserted_at=inserted_at,
        idempotency_key=f"test:{uuid.uuid4()}",
        metadata=metadata,
        normalized_payload=normalized_payload or {},
        needs_reconciliation=True,
    )
    with engine.begin() as conn:
        ledger.append_events(conn, [event])
    return event.id


def insert_raw_orphan(
    engine: Engine,
    *,
    tenant_id: str,
    metadata_json: str,
    payload_json: str = "{}",
    age_seconds: float = 300,
    event_type: str = "delivered",
) -> uuid.UUID:
    """An orphan written by plain SQL with arbitrary JSON (any JSON type) in metadata/normalized_payload."""
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_events
                    (id, tenant_id, type, occurred_at, metadata, normalized_payload, needs_reconciliation, inserted_at)
                VALUES (gen_random_uuid(), :t, :ty, now() - make_interval(secs => :age), CAST(:m AS jsonb),
                        CAST(:p AS jsonb), true, now() - make_interval(secs => :age))
                RETURNING id
                """
            ),
            {"t": tenant_id, "ty": event_type, "m": metadata_json, "p": payload_json, "age": age_seconds},
        ).scalar_one()


def bulk_unmatchable_orphans(engine: Engine, *, tenant_id: str, count: int, oldest_age_seconds: float) -> None:
    """``count`` orphans in one statement, all older than ``oldest_age_seconds - count ms``, never matching."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_events
                    (id, tenant_id, type, occurred_at, metadata, needs_reconciliation, inserted_at)
                SELECT gen_random_uuid(), :t, 'delivered', ts,
                       jsonb_build_object('provider', 'postmark', 'provider_message_id', 'nomatch-' || i,
                                          'provider_event_id', 'evt-' || i),
                       true, ts
                  FROM generate_series(1, :n) AS i,
                       LATERAL (SELECT now() - make_interval(secs => :age) + i * interval '1 millisecond') AS x(ts)
                """
            ),
            {"t": tenant_id, "n": count, "age": oldest_age_seconds},
        )


# -- readers ---------------------------------------------------------------------------------


def fetch(engine: Engine, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in fetch(engine, sql, **params)]


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def count_events(engine: Engine, tenant_id: str | None = None) -> int:
    if tenant_id is None:
        return int(scalar(engine, "SELECT count(*) FROM mailglass_events"))
    return int(scalar(engine, "SELECT count(*) FROM mailglass_events WHERE tenant_id = :t", t=tenant_id))


def events(engine: Engine, tenant_id: str) -> list[sa.Row[Any]]:
    return fetch(engine, "SELECT * FROM mailglass_events WHERE tenant_id = :t ORDER BY inserted_at, id", t=tenant_id)


def delivery(engine: Engine, delivery_id: Any) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM mailglass_deliveries WHERE id = :i"), {"i": delivery_id}).one()


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ledger, the deliveries and the work queue, in a stable order."""
    return {
        "events": rows(engine, "SELECT * FROM mailglass_events ORDER BY id"),
        "deliveries": rows(engine, "SELECT * FROM mailglass_deliveries ORDER BY id"),
        "queue": rows(engine, f"SELECT * FROM {QUEUE} ORDER BY event_id"),
    }


def reconciled_events(engine: Engine) -> list[sa.Row[Any]]:
    return fetch(
        engine,
        "SELECT id, tenant_id, delivery_id, occurred_at, idempotency_key, metadata, xmin::text AS xid"
        " FROM mailglass_events WHERE type = 'reconciled' ORDER BY inserted_at, id",
    )


def reconciled_from(engine: Engine) -> dict[uuid.UUID, uuid.UUID]:
    """orphan id -> delivery id, from the ``reconciled`` events (asserts one per orphan)."""
    found: dict[uuid.UUID, uuid.UUID] = {}
    for row in reconciled_events(engine):
        orphan = uuid.UUID(row.metadata["reconciled_from_event_id"])
        assert orphan not in found, f"two reconciled events for orphan {orphan}"
        found[orphan] = row.delivery_id
    return found


def pending_orphans(engine: Engine) -> set[uuid.UUID]:
    """Orphans still waiting in the work queue (not parked)."""
    return {r[0] for r in rows(engine, f"SELECT event_id FROM {QUEUE} WHERE parked_at IS NULL")}
