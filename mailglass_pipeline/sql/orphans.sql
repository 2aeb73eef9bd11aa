-- Orphan inspection: the read statements behind `mailglass orphans` and the no_stale_orphans
-- check, and the bounded deletion of parked queue rows (mailglass_pipeline/orphans.py).
--
-- One named block per statement: a line `-- name: <name>`, comment lines saying what it is for,
-- then the SQL up to the next `-- name:`. `{tenant}` stands for the tenant filter (empty, or
-- `AND q.tenant_id = :tenant_id`): two plans, each able to use its own index, instead of one plan
-- with `:tenant_id IS NULL OR ...` that the planner cannot narrow.
--
-- States of a queue row (one per orphan not yet reconciled):
--   malformed  no provider or no message id: never linked (parked by the first sweep that sees it)
--   stale      past max age: out of the scan, "older than 7 days, unlikely to reconcile"
--   waiting    inside the grace window, or backing off until next_attempt_at
--   due        the next sweep examines it
-- Every list statement reads only index ranges whose predicate is its state and stops at :limit,
-- so its cost follows the limit, not the backlog (tests/perf/test_query_plans.py).

-- name: due
-- Due orphans in the order the sweep takes them: fresh (never examined, or their delivery appeared)
-- oldest first, then those whose retry time came, longest due first.
SELECT * FROM (
    (SELECT q.*, 'due' AS state, 0 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NULL AND q.next_attempt_at IS NULL
        AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL {tenant}
      ORDER BY q.orphan_inserted_at
      LIMIT :limit)
    UNION ALL
    (SELECT q.*, 'due' AS state, 1 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NULL AND q.next_attempt_at IS NOT NULL AND q.next_attempt_at <= now()
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes) {tenant}
      ORDER BY {retry_order}
      LIMIT :limit)
) d
LIMIT :limit

-- name: waiting
-- Waiting orphans: inside the grace window (youngest last), then backing off, next attempt soonest first.
SELECT * FROM (
    (SELECT q.*, 'waiting' AS state, 0 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NULL AND q.next_attempt_at IS NULL
        AND q.orphan_inserted_at > now() - make_interval(secs => :grace_seconds)
        AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL {tenant}
      ORDER BY q.orphan_inserted_at
      LIMIT :limit)
    UNION ALL
    (SELECT q.*, 'waiting' AS state, 1 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NULL AND q.next_attempt_at IS NOT NULL AND q.next_attempt_at > now()
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes) {tenant}
      ORDER BY {retry_order}
      LIMIT :limit)
) w
LIMIT :limit

-- name: stale
-- Stale orphans, oldest first: parked as stale by a sweep, or past max age and not yet parked
-- (no sweep ran since they aged out).
SELECT * FROM (
    (SELECT q.*, 'stale' AS state, 0 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NOT NULL AND q.parked_reason = 'stale' {tenant}
      ORDER BY q.orphan_inserted_at
      LIMIT :limit)
    UNION ALL
    (SELECT q.*, 'stale' AS state, 1 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NULL
        AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)
        AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL {tenant}
      ORDER BY q.orphan_inserted_at
      LIMIT :limit)
) s
ORDER BY s.orphan_inserted_at
LIMIT :limit

-- name: malformed
-- Malformed orphans, oldest first: parked as malformed, or not examined yet (an examination parks
-- them, so an unparked malformed orphan is always a fresh one).
SELECT * FROM (
    (SELECT q.*, 'malformed' AS state, 0 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NOT NULL AND q.parked_reason = 'malformed' {tenant}
      ORDER BY q.orphan_inserted_at
      LIMIT :limit)
    UNION ALL
    (SELECT q.*, 'malformed' AS state, 1 AS part
       FROM mailglass_reconciliation_queue q
      WHERE q.parked_at IS NULL AND q.next_attempt_at IS NULL
        AND (q.provider IS NULL OR q.provider_message_id IS NULL) {tenant}
      ORDER BY q.orphan_inserted_at
      LIMIT :limit)
) m
ORDER BY m.orphan_inserted_at
LIMIT :limit

-- name: orphan
-- One event for `explain`: its ledger row, its queue row (if still queued) and its `reconciled`
-- event (if any), each by a unique index.
SELECT e.id, e.tenant_id, e.type, e.delivery_id, e.needs_reconciliation, e.metadata, e.normalized_payload,
       isfinite(e.occurred_at) AS occurred_at_finite,
       e.inserted_at AT TIME ZONE 'UTC' AS inserted_at,
       q.event_id IS NOT NULL AS queued, q.attempts, q.last_attempted_at, q.next_attempt_at, q.linkable_at,
       q.parked_at, q.parked_reason,
       r.id AS reconciled_id, r.delivery_id AS reconciled_delivery_id, r.inserted_at AT TIME ZONE 'UTC' AS reconciled_at,
       now() AS now
  FROM mailglass_events e
  LEFT JOIN mailglass_reconciliation_queue q ON q.event_id = e.id
  LEFT JOIN mailglass_events r ON r.idempotency_key = 'reconciled:' || e.id::text
 WHERE e.id = :event_id

-- name: deliveries_with_message_id
-- Deliveries carrying one of the message ids under ANY tenant and provider (what explain names as a
-- delivery under another tenant or provider). The providers come from a loose index scan of the
-- deliveries' unique (provider, provider_message_id) index, then one probe of it per provider:
-- a handful of index reads however many deliveries there are.
WITH RECURSIVE providers AS (
    (SELECT d.provider FROM mailglass_deliveries d
      WHERE d.provider_message_id IS NOT NULL AND d.provider IS NOT NULL ORDER BY d.provider LIMIT 1)
    UNION ALL
    SELECT (SELECT d.provider FROM mailglass_deliveries d
             WHERE d.provider_message_id IS NOT NULL AND d.provider > p.provider ORDER BY d.provider LIMIT 1)
      FROM providers p WHERE p.provider IS NOT NULL
)
SELECT d.id, d.tenant_id, d.provider, d.provider_message_id
  FROM providers p
  JOIN mailglass_deliveries d
    ON d.provider = p.provider AND d.provider_message_id = ANY (CAST(:message_ids AS text[]))
 WHERE p.provider IS NOT NULL
 ORDER BY d.tenant_id = :tenant_id DESC, d.provider = :provider DESC, d.id
 LIMIT 20

-- name: counts_by_state
-- Queue rows by state for a set of tenants (each tenant's materialization metadata: one pass over
-- those tenants' rows), or, with `{scope}` empty and `{group}` = '*', over the whole queue (the
-- sweep asset's plot of the queue by state; the queue is bounded by the parked-row retention).
SELECT {group} AS tenant_id,
       count(*) FILTER (WHERE q.parked_reason = 'malformed'
                          OR (q.parked_at IS NULL AND (q.provider IS NULL OR q.provider_message_id IS NULL)))
           AS malformed,
       count(*) FILTER (WHERE q.parked_reason = 'stale'
                          OR (q.parked_at IS NULL AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
                              AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)))
           AS stale,
       count(*) FILTER (WHERE q.parked_at IS NULL AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
                          AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                          AND (q.orphan_inserted_at > now() - make_interval(secs => :grace_seconds)
                               OR q.next_attempt_at > now()))
           AS waiting,
       count(*) FILTER (WHERE q.parked_at IS NULL AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
                          AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                          AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                          AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= now()))
           AS due
  FROM mailglass_reconciliation_queue q
 {scope}
 GROUP BY 1

-- name: oldest_stale
-- The oldest stale orphans with their type (the no_stale_orphans check's table): the stale list
-- joined to the ledger by primary key.
SELECT s.event_id, s.tenant_id, s.provider, s.provider_message_id, e.type,
       EXTRACT(EPOCH FROM now() - s.orphan_inserted_at) AS age_seconds
  FROM ({stale}) s
  JOIN mailglass_events e ON e.id = s.event_id
 ORDER BY s.orphan_inserted_at, s.event_id

-- name: delete_parked
-- One batch of the parked-row retention: queue rows parked (:reason, stale or malformed) before
-- :cutoff, oldest first, at most :batch_size, skipping rows a sweep holds. Only queue rows: the
-- ledger keeps every event. A SECURITY DEFINER function (migration 0005), so the reconciler's
-- role needs EXECUTE on it and no DELETE on the queue.
SELECT mailglass_prune_parked_orphans(:reason, :cutoff, :batch_size)

-- name: tenant_known
-- Whether any delivery or queued orphan has the tenant (a typo in --tenant-id otherwise answers
-- zeros silently): three index probes, each partial index named by its predicate.
SELECT EXISTS (SELECT 1 FROM mailglass_deliveries d WHERE d.tenant_id = :tenant_id)
    OR EXISTS (SELECT 1 FROM mailglass_reconciliation_queue q WHERE q.parked_at IS NULL AND q.tenant_id = :tenant_id)
    OR EXISTS (SELECT 1 FROM mailglass_reconciliation_queue q
                WHERE q.parked_at IS NOT NULL AND q.tenant_id = :tenant_id)
