"""Helpers shared by the core tests (imported as ``core_support``; fixtures come from tests/conftest.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline.projector import NOTIFY_CHANNEL

QUEUE = "mailglass_reconciliation_queue"


def libpq_url(url: str) -> str:
    """A plain ``postgresql://`` URL for psycopg from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ledger, the deliveries and the work queue, in a stable order."""
    return {
        "events": rows(engine, "SELECT * FROM mailglass_events ORDER BY id"),
        "deliveries": rows(engine, "SELECT * FROM mailglass_deliveries ORDER BY id"),
        "queue": rows(engine, f"SELECT * FROM {QUEUE} ORDER BY event_id"),
    }


def reconciled_events(engine: Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT id, tenant_id, delivery_id, occurred_at, idempotency_key, metadata, xmin::text AS xid"
                    " FROM mailglass_events WHERE type = 'reconciled' ORDER BY inserted_at, id"
                )
            )
        )


def reconciled_from(engine: Engine) -> dict[uuid.UUID, uuid.UUID]:
    """orphan id -> delivery id, from the ``reconciled`` events (asserts one per orphan)."""
    found: dict[uuid.UUID, uuid.UUID] = {}
    for row in reconciled_events(engine):
        orphan = uuid.UUID(row.metadata["reconciled_from_event_id"])
        assert orphan not in found, f"two reconciled events for orphan {orphan}"
        found[orphan] = row.delivery_id
    return found


def delivery(engine: Engine, delivery_id: uuid.UUID) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM mailglass_deliveries WHERE id = :i"), {"i": delivery_id}).one()


def pending_orphans(engine: Engine) -> set[uuid.UUID]:
    """Orphans still waiting in the work queue (not parked)."""
    return {r[0] for r in rows(engine, f"SELECT event_id FROM {QUEUE} WHERE parked_at IS NULL")}


def insert_raw_orphan(
    engine: Engine,
    tenant_id: str,
    *,
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


def bulk_unmatchable_orphans(engine: Engine, tenant_id: str, count: int, *, oldest_age_seconds: float) -> None:
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


@contextmanager
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A separate autocommit psycopg connection LISTENing on the delivery channel."""
    conn = psycopg.connect(libpq_url(database_url), autocommit=True)
    try:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        yield conn
    finally:
        conn.close()


def drain(conn: psycopg.Connection[Any], timeout: float = 1.0) -> list[dict[str, Any]]:
    """Every notification that arrives within ``timeout`` seconds, parsed as JSON."""
    out = []
    for note in conn.notifies(timeout=timeout):
        assert note.channel == NOTIFY_CHANNEL
        out.append(json.loads(note.payload))
    return out


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """The SQL text of every statement ``engine`` sends inside the block (to count round trips)."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
