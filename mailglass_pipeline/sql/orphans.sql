-- Orphan inspection: the read statements behind `mailglass orphans` and the no_stale_orphans
-- check, and the bounded deletion of parked queue rows (mailglass_pipeline/orphans.py).
--
-- Each block is the complete statement (mailglass_pipeline/queries.py). The due window and the retry
-- rule are the sweep's own functions (mailglass_reconciliation_in_window, _retry_due, _parked of
-- migration 0007, decision D28), so a listing says due for what a sweep takes.
--
-- States of a queue row (one per orphan not yet reconciled):
--   malformed  no provider or no message id: never linked (parked by the first sweep that sees it)
--   stale      past max age: out of the scan, "older than 7 days, unlikely to reconcile"
--   waiting    inside the grace window, or backing off until next_attempt_at
--   due        the next sweep examines it
-- Every list statement reads only index ranges whose predicate is its state and stops at the
-- limit, so its cost follows the limit, not the backlog (tests/perf/test_query_plans.py). The
-- state and the scope (tenant_id null: every tenant) are bound values; under the custom plan the
-- callers ask for (statement custom_plans) each CASE on them folds to one branch, which keeps its
-- partial index as a statement per state and scope would.

-- name: list_pending
-- Due or waiting orphans (state), at most limit. Due: in the order the sweep takes them, fresh ones
-- (never examined, or their delivery appeared) oldest first, then those whose retry time came.
-- Waiting: inside the grace window (youngest last), then backing off, next attempt soonest first.
-- Retry rows come in an index's order: every tenant by retry time (due_retry_index), one tenant by
-- last examination (retry_index: the sweep's own order, which follows the retry time in a tenant).
SELECT * FROM (
    (SELECT q.*, CAST(:state AS text) AS state, 0 AS part
     FROM mailglass_reconciliation_queue AS q
     WHERE
         q.parked_at IS NULL AND q.next_attempt_at IS NULL
         AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
         AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
         AND CASE CAST(:state AS text)
             WHEN 'due' THEN
                 mailglass_reconciliation_in_window(q.orphan_inserted_at, :grace_seconds, :max_age_minutes)
             ELSE q.orphan_inserted_at > now() - make_interval(secs => :grace_seconds)
         END
     ORDER BY q.orphan_inserted_at
     LIMIT :limit)
    UNION ALL
    (SELECT q.*, CAST(:state AS text) AS state, 1 AS part
     FROM mailglass_reconciliation_queue AS q
     WHERE
         q.parked_at IS NULL AND q.next_attempt_at IS NOT NULL
         AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
         AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
         AND CASE CAST(:state AS text)
             WHEN 'due' THEN
                 mailglass_reconciliation_retry_due(
                     q.parked_at, q.next_attempt_at, q.last_attempted_at, :retry_all, :run_started
                 )
             ELSE q.next_attempt_at > now()
         END
     ORDER BY
         CASE WHEN CAST(:tenant_id AS text) IS NULL THEN q.next_attempt_at END,
         q.last_attempted_at, q.orphan_inserted_at, q.event_id
     LIMIT :limit)
) AS pending
-- Fresh ones first: UNION ALL returns its parts in order, each in its index's order.
LIMIT :limit;  -- noqa: AM09

-- name: list_parked
-- Stale or malformed orphans (state), oldest first, at most limit: parked as such by a sweep, then
-- those not parked yet: stale ones past max age with no sweep since they aged out, malformed ones
-- not examined yet (an examination parks them, so an unparked malformed orphan is a fresh one).
SELECT
    p.*,
    CAST(:state AS text) AS state
FROM mailglass_reconciliation_parked(:state, :tenant_id, :max_age_minutes, :limit) AS p
ORDER BY p.orphan_inserted_at
LIMIT :limit;

-- name: oldest_stale
-- The oldest stale orphans with their type (the no_stale_orphans check's table): the stale list
-- (mailglass_reconciliation_parked, state bound to stale) joined to the ledger by primary key.
SELECT
    s.event_id, s.tenant_id, s.provider, s.provider_message_id, e.type,
    EXTRACT(EPOCH FROM now() - s.orphan_inserted_at) AS age_seconds
FROM mailglass_reconciliation_parked(:state, :tenant_id, :max_age_minutes, :limit) AS s
INNER JOIN mailglass_events AS e ON s.event_id = e.id
ORDER BY s.orphan_inserted_at, s.event_id;

-- name: counts_by_state
-- Queue rows by state for each tenant of tenant_ids (each tenant's materialization metadata: one
-- pass over those tenants' rows), or, with tenant_ids null, for the whole queue as one row named
-- '*' (the sweep asset's plot of the queue by state; the queue is bounded by the parked-row
-- retention).
SELECT
    g.tenant_id,
    count(*) FILTER (
        WHERE
            q.parked_reason = 'malformed'
            OR q.parked_at IS NULL
            AND (q.provider IS NULL OR q.provider_message_id IS NULL)
    ) AS malformed,
    count(*) FILTER (
        WHERE
            q.parked_reason = 'stale'
            OR (
                q.parked_at IS NULL
                AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
                AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)
            )
    ) AS stale,
    count(*) FILTER (
        WHERE
            q.parked_at IS NULL
            AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
            AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
            AND (q.orphan_inserted_at > now() - make_interval(secs => :grace_seconds) OR q.next_attempt_at > now())
    ) AS waiting,
    count(*) FILTER (
        WHERE
            q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
            AND mailglass_reconciliation_in_window(q.orphan_inserted_at, :grace_seconds, :max_age_minutes)
            AND (
                q.parked_at IS NULL AND q.next_attempt_at IS NULL
                OR mailglass_reconciliation_retry_due(
                    q.parked_at, q.next_attempt_at, q.last_attempted_at, :retry_all, :run_started
                )
            )
    ) AS due
FROM mailglass_reconciliation_queue AS q
CROSS JOIN LATERAL (
    SELECT CASE WHEN CAST(:tenant_ids AS text[]) IS NULL THEN CAST('*' AS text) ELSE q.tenant_id END AS tenant_id
) AS g
WHERE CAST(:tenant_ids AS text[]) IS NULL OR q.tenant_id = ANY(CAST(:tenant_ids AS text[]))
GROUP BY g.tenant_id;

-- name: explain_orphan
-- One event for `explain`: its ledger row, its queue row (if still queued) and its `reconciled`
-- event (if any), each by a unique index.
SELECT
    e.id, e.tenant_id, e.type, e.delivery_id, e.needs_reconciliation, e.metadata, e.normalized_payload,
    isfinite(e.occurred_at) AS occurred_at_finite,
    e.inserted_at AT TIME ZONE 'UTC' AS inserted_at,
    q.event_id IS NOT NULL AS queued, q.attempts, q.last_attempted_at, q.next_attempt_at, q.linkable_at,
    q.parked_at, q.parked_reason,
    r.id AS reconciled_id, r.delivery_id AS reconciled_delivery_id,
    r.inserted_at AT TIME ZONE 'UTC' AS reconciled_at,
    now() AS now
FROM mailglass_events AS e
LEFT JOIN mailglass_reconciliation_queue AS q ON e.id = q.event_id
LEFT JOIN mailglass_events AS r ON r.idempotency_key = 'reconciled:' || CAST(e.id AS text)
WHERE e.id = :event_id;

-- name: deliveries_with_message_id
-- Deliveries carrying one of the message ids under ANY tenant and provider (what explain names as a
-- delivery under another tenant or provider). The providers come from a loose index scan of the
-- deliveries' unique (provider, provider_message_id) index, then one probe of it per provider:
-- a handful of index reads however many deliveries there are.
WITH RECURSIVE providers AS (
    (
        SELECT d.provider FROM mailglass_deliveries AS d
        WHERE d.provider_message_id IS NOT NULL AND d.provider IS NOT NULL
        ORDER BY d.provider LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT d.provider FROM mailglass_deliveries AS d
        WHERE d.provider_message_id IS NOT NULL AND d.provider > p.provider
        ORDER BY d.provider LIMIT 1
    )
    FROM providers AS p WHERE p.provider IS NOT NULL
)

SELECT d.id, d.tenant_id, d.provider, d.provider_message_id
FROM providers AS p
INNER JOIN mailglass_deliveries AS d
    ON p.provider = d.provider AND d.provider_message_id = ANY(CAST(:message_ids AS text[]))
WHERE p.provider IS NOT NULL
ORDER BY d.tenant_id = :tenant_id DESC, d.provider = :provider DESC, d.id
LIMIT 20;

-- name: prune_lock_timeout
-- A retention batch waits at most 5 s for a row lock (a sweep holds its rows for a transaction).
SELECT set_config('lock_timeout', '5s', TRUE) AS lock_timeout;

-- name: delete_parked
-- One batch of the parked-row retention: queue rows parked (reason, stale or malformed) before
-- cutoff, oldest first, at most batch_size, skipping rows a sweep holds. Only queue rows: the
-- ledger keeps every event. A SECURITY DEFINER function (migration 0005), so the reconciler's
-- role needs EXECUTE on it and no DELETE on the queue.
SELECT mailglass_prune_parked_orphans(:reason, :cutoff, :batch_size) AS deleted;

-- name: tenant_known
-- Whether any delivery or queued orphan has the tenant (a typo in --tenant-id otherwise answers
-- zeros silently): three index probes, each partial index named by its predicate.
SELECT
    EXISTS (SELECT 1 FROM mailglass_deliveries AS d WHERE d.tenant_id = :tenant_id)
    OR EXISTS (
        SELECT 1 FROM mailglass_reconciliation_queue AS q WHERE q.parked_at IS NULL AND q.tenant_id = :tenant_id
    )
    OR EXISTS (
        SELECT 1 FROM mailglass_reconciliation_queue AS q WHERE q.parked_at IS NOT NULL AND q.tenant_id = :tenant_id
    ) AS known;
