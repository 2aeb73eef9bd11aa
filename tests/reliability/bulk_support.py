"""Deterministic bulk data for the crash test: the same rows in any database.

Everything derives from the row number and one base timestamp (ids are
``md5(...)::uuid``), so a crashed database and its uninterrupted twin hold
identical data and their final states can be compared row for row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

EVENT_TYPES = ("delivered", "bounced", "opened", "clicked", "complained", "deferred", "sent", "rejected")


def seed(engine: Engine, tenant: str, n: int, base: datetime, unmatched: int = 500) -> None:
    """``n`` deliveries, one orphan each (every 7th delivery gets a second), plus ``unmatched`` orphans."""
    params: dict[str, Any] = {"tenant": tenant, "n": n, "base": base, "unmatched": unmatched}
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_deliveries
                    (id, tenant_id, mailable, stream, recipient, recipient_domain, provider, provider_message_id,
                     last_event_type, last_event_at, status, inserted_at, updated_at)
                SELECT md5(:tenant || '/d/' || i)::uuid, :tenant, 'Mailer.bulk', 'transactional',
                       'r' || i || '@example.com', 'example.com', 'postmark', :tenant || '/m-' || i,
                       'dispatched', CAST(:base AS timestamptz) - interval '1 hour', 'sent',
                       CAST(:base AS timestamptz) - interval '1 hour', CAST(:base AS timestamptz) - interval '1 hour'
                  FROM generate_series(1, :n) AS i
                """
            ),
            params,
        )
        conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_events
                    (id, tenant_id, type, occurred_at, idempotency_key, metadata, needs_reconciliation, inserted_at)
                SELECT md5(:tenant || '/o/' || k)::uuid, :tenant,
                       (CAST(:types AS text[]))[1 + (k % cardinality(CAST(:types AS text[])))],
                       CAST(:base AS timestamptz) - interval '30 minutes' + k * interval '1 millisecond',
                       :tenant || '/seed/' || k,
                       jsonb_build_object('provider', 'postmark', 'provider_event_id', 'evt-' || k,
                                          'provider_message_id', :tenant || '/m-' || (CASE WHEN k > 2 * :n THEN k
                                                                             WHEN k > :n THEN (k - :n) * 7
                                                                             ELSE k END)),
                       true,
                       CAST(:base AS timestamptz) - interval '20 minutes' + k * interval '1 microsecond'
                  FROM generate_series(1, :n + :n / 7 + :unmatched) AS g(j)
                  CROSS JOIN LATERAL (SELECT CASE WHEN j <= :n + :n / 7 THEN j
                                                  ELSE 2 * :n + (j - :n - :n / 7) END AS k) AS kk
                """
            ),
            {**params, "types": list(EVENT_TYPES)},
        )
    # What autovacuum would do after a bulk load; without statistics the planner may choose a
    # bitmap AND over (provider) and (tenant_id) for the lookup, a full scan per orphan.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))


def snapshot(engine: Engine, tenant: str) -> dict[str, Any]:
    """What must be equal after a crash + rerun and after an uninterrupted run (no sweep-time values)."""
    with engine.connect() as conn:
        reconciled = conn.execute(
            sa.text(
                """
                SELECT metadata ->> 'reconciled_from_event_id' AS orphan, delivery_id,
                       metadata ->> 'reconciled_event_type' AS etype
                  FROM mailglass_events WHERE type = 'reconciled' AND tenant_id = :t
                """
            ),
            {"t": tenant},
        ).all()
        deliveries = conn.execute(
            sa.text(
                """
                SELECT id, last_event_type, last_event_at, terminal, dispatched_at, delivered_at, bounced_at,
                       complained_at, suppressed_at, lock_version
                  FROM mailglass_deliveries WHERE tenant_id = :t ORDER BY id
                """
            ),
            {"t": tenant},
        ).all()
        queue = conn.execute(
            sa.text("SELECT event_id, parked_reason FROM mailglass_reconciliation_queue WHERE tenant_id = :t"),
            {"t": tenant},
        ).all()
    return {
        "reconciled": sorted((r.orphan, str(r.delivery_id), r.etype) for r in reconciled),
        "deliveries": [tuple(r) for r in deliveries],
        "queue": sorted((str(r.event_id), r.parked_reason) for r in queue),
    }


def reconciled_count(engine: Engine, tenant: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM mailglass_events WHERE type = 'reconciled' AND tenant_id = :t"),
                {"t": tenant},
            ).scalar_one()
        )
