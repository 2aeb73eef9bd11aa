"""LOWER BOUND, for measurement only: one server-side statement per batch doing the sweep's work, then its projection.

One data-modifying CTE per batch (one tenant, or every tenant with the
per-tenant quota and the fair total cap) takes the batch from the work queue
with ``reconciler.find_orphans``'s own statement (same due rule, order,
quotas and locking), looks up the
deliveries with the same lateral lookup as ``deliveries.lookup``, appends the
``reconciled`` events (``ON CONFLICT DO NOTHING``), records the attempt on
unmatched orphans and queues the notifications; then the sweep's own two
statements fold the events that won into the deliveries' projections:
everything the reconciler does, with no other round trip and no Python per
batch. Nothing practical can be faster on the same schema, so the benchmark
reports the reconciler's distance from it.

The find statement and the backoff expression are the reconciler's own
(read from the SQL registry, ``mailglass_pipeline.queries``), and so are the
projection (``projector.project``, its one home, with its lock) and the
notification (its function), so both do exactly the same work.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import projector, queries
from mailglass_pipeline.reconciliation.sweep import BACKOFF_PARAMS, find_params
from mailglass_pipeline.settings import DEFAULT_MAX_TOTAL, SweepConfig

#: The backoff as the sweep's write statement computes it (same bind parameters).
_BACKOFF = "make_interval(mins => COALESCE((CAST(:backoff_steps AS int[]))[q.attempts + 1], CAST(:backoff_cap AS int)))"


def _sweep_batch(tenant_scoped: bool) -> sa.TextClause:
    # batch: the reconciler's own find statement, verbatim (same due rule, order, quotas and locking).
    find = queries.statement("find_batch").text
    return sa.text(
        f"""
    WITH batch AS ({find}
    ), matched AS (
        -- The find statement already looked the deliveries up (bound :link), as the sweep's does.
        SELECT b.* FROM batch b
    ), ins AS (
        INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key, metadata)
        SELECT gen_random_uuid(), m.tenant_id, m.delivery_id, 'reconciled', now(), 'reconciled:' || m.id::text,
               jsonb_build_object('reconciled_from_event_id', m.id::text, 'reconciled_provider', m.provider,
                                  'reconciled_provider_event_id', m.provider_event_id,
                                  'reconciled_event_type', m.type)
          FROM matched m
         WHERE m.delivery_id IS NOT NULL
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, (metadata ->> 'reconciled_from_event_id')::uuid AS from_id
    ), won AS (
        -- ord: on an occurred_at tie the earlier-inserted orphan wins (as the sweep's write orders them).
        SELECT m.*, i.id AS reconciled_id, row_number() OVER (ORDER BY m.occurred_at, m.inserted_at) AS ord
          FROM ins i JOIN matched m ON m.id = i.from_id
    ), attempted AS (
        UPDATE mailglass_reconciliation_queue q
           SET attempts = q.attempts + 1,
               last_attempted_at = now(),
               next_attempt_at = now() + {_BACKOFF},
               linkable_at = NULL,
               parked_at = CASE WHEN m.provider IS NULL OR m.provider_message_id IS NULL THEN now() END,
               parked_reason = CASE WHEN m.provider IS NULL OR m.provider_message_id IS NULL THEN 'malformed' END
          FROM matched m
         WHERE q.event_id = m.id AND m.delivery_id IS NULL
        RETURNING q.event_id
    ), latest AS (
        SELECT DISTINCT ON (delivery_id) tenant_id, delivery_id, 'reconciled'::text AS event_type,
               reconciled_id AS event_id, id AS from_id
          FROM won
         ORDER BY delivery_id, occurred_at DESC, inserted_at DESC
    ), notified AS (
        -- The sweep's notification (migration 0007's function, decision D7).
        SELECT mailglass_reconciliation_notify(n.tenant_id, n.delivery_id, n.event_type, n.event_id, n.from_id)
        FROM latest AS n
    )
    SELECT (SELECT count(*) FROM batch) AS scanned,
           (SELECT count(*) FROM ins) AS linked,
           (SELECT COALESCE(json_agg(json_build_object('delivery_id', delivery_id, 'type', type,
                                                       'occurred_at', occurred_at, 'ord', ord)), '[]')
              FROM won) AS won_rows,
           (SELECT count(*) FROM attempted) AS attempted,
           (SELECT count(*) FROM notified) AS notified
    """
    )


SWEEP_BATCH = {scoped: _sweep_batch(scoped) for scoped in (False, True)}


def _run(engine: Engine, tenant_id: str | None, config: SweepConfig) -> tuple[int, int]:
    with engine.begin() as conn:
        # As the sweep does (set_timeouts): one plan per execution, so the bound variants fold.
        conn.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
        params = {**find_params(tenant_id, config, link=True), **BACKOFF_PARAMS}
        row = conn.execute(SWEEP_BATCH[tenant_id is not None], params).one()
        # The projection: the sweep's own two statements (its one home, projector.py), as the sweep runs them.
        projector.project(conn, row.won_rows)
    return int(row.scanned), int(row.linked)


def sweep_all(
    engine: Engine,
    limit: int = 1000,
    max_total: int = DEFAULT_MAX_TOTAL,
    grace_seconds: int = 60,
    max_age_minutes: int = 10080,
) -> tuple[int, int]:
    """One all-tenant sweep (per-tenant quota, fair total cap) in one statement; returns (scanned, linked)."""
    config = SweepConfig(limit=limit, max_total=max_total, grace_seconds=grace_seconds, max_age_minutes=max_age_minutes)
    return _run(engine, None, config)


def sweep_tenant(
    engine: Engine, tenant_id: str, limit: int = 1000, grace_seconds: int = 60, max_age_minutes: int = 10080
) -> tuple[int, int]:
    """One batch for one tenant in one statement (one transaction); returns (scanned, linked)."""
    config = SweepConfig(limit=limit, grace_seconds=grace_seconds, max_age_minutes=max_age_minutes)
    return _run(engine, tenant_id, config)
