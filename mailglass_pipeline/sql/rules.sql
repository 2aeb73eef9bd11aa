-- The shared rules of the statements, each written once here (decision D14).
--
-- A statement that needs a rule holds a complete copy of it, marked by the line "-- rule: <name>"
-- before it and "-- end rule" after it (or, for a one-line rule, "-- rule: <name>" at the end of
-- its line), so every statement stays readable whole, as PostgreSQL receives it.
-- tests/core/test_reconcile_sql.py fails when a marked copy, in a .sql file, a benchmark or a
-- migration's trigger body, differs from the text here (whitespace aside). A copy may rename the
-- rule's relation aliases: "-- rule: delivery_lookup k=r" reads k as r.
-- These blocks are pieces (conditions, CTE lists), not statements: the loader never reads them
-- and sqlfluff skips this file (.sqlfluffignore); every statement holding them is linted whole.

-- rule: due_window
-- Past grace and inside max age (decision D4).
q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
-- end rule

-- rule: fresh
-- An orphan never examined, or whose delivery appeared since (the delivery triggers of migration
-- 0003 clear next_attempt_at): due once in the due window (decision D4).
q.parked_at IS NULL AND q.next_attempt_at IS NULL
-- end rule

-- rule: retry
-- Its retry time came (next_attempt_at, set by the backoff after an unmatched examination).
-- retry_all (an operator's manual sweep) ignores the backoff, but once per run: a run of several
-- transactions binds run_started, so an orphan it examined is not taken again. Bound, not a second
-- statement: under a custom plan (the callers force them) the CASE folds to a constant and the retry
-- index is still used (tests/perf/test_query_plans.py). The orphan listing binds retry_all false.
q.parked_at IS NULL
AND q.next_attempt_at
<= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
AND (
    CAST(:run_started AS timestamptz) IS NULL
    OR q.last_attempted_at < CAST(:run_started AS timestamptz)
)
-- end rule

-- rule: in_scope
-- The tenant, or every tenant when tenant_id is null (folded away under a custom plan).
(CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
-- end rule

-- rule: due_rows
-- Every due orphan in scope as (tenant_id, due_since): two range scans of partial indexes.
SELECT
    q.tenant_id,
    GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.linkable_at) AS due_since
FROM mailglass_reconciliation_queue AS q
WHERE
    q.parked_at IS NULL AND q.next_attempt_at IS NULL
    AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
    AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
    AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
UNION ALL
SELECT
    q.tenant_id,
    GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.next_attempt_at) AS due_since
FROM mailglass_reconciliation_queue AS q
WHERE
    q.parked_at IS NULL
    AND q.next_attempt_at
    <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
    AND (
        CAST(:run_started AS timestamptz) IS NULL
        OR q.last_attempted_at < CAST(:run_started AS timestamptz)
    )
    AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
    AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
    AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
-- end rule

-- rule: linkable_waits
-- Linkable and still pending (its delivery committed: linkable_at), past grace, inside max age,
-- with how long it has waited since it became linkable.
SELECT
    q.tenant_id,
    now() - GREATEST(q.linkable_at, q.orphan_inserted_at + make_interval(secs => :grace_seconds)) AS waited
FROM mailglass_reconciliation_queue AS q
WHERE
    q.parked_at IS NULL AND q.linkable_at IS NOT NULL
    AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
    AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
    AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
-- end rule

-- rule: pick
-- Per tenant of alloc, its take: fresh orphans whose delivery is known to be there (linkable_at),
-- then the other fresh ones, each oldest first, then retry-due ones least recently examined first
-- (UNION ALL ... LIMIT: a later scan runs only when the earlier ones come back short). Each scan
-- locks SKIP LOCKED below its LIMIT, so a concurrent sweep takes the next orphans instead of waiting.
SELECT p.*
FROM alloc AS a
CROSS JOIN LATERAL (
    SELECT * FROM (
        SELECT
            q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
            0 AS cls, q.orphan_inserted_at AS k1, CAST(NULL AS timestamptz) AS k2
        FROM mailglass_reconciliation_queue AS q
        WHERE
            q.tenant_id = a.tenant_id AND q.linkable_at IS NOT NULL
            AND q.parked_at IS NULL AND q.next_attempt_at IS NULL
            AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
            AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        ORDER BY q.orphan_inserted_at, q.event_id
        LIMIT a.take
        FOR UPDATE OF q SKIP LOCKED
    ) AS linkable
    UNION ALL
    SELECT * FROM (
        SELECT
            q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
            1 AS cls, q.orphan_inserted_at AS k1, CAST(NULL AS timestamptz) AS k2
        FROM mailglass_reconciliation_queue AS q
        WHERE
            q.tenant_id = a.tenant_id AND q.linkable_at IS NULL
            AND q.parked_at IS NULL AND q.next_attempt_at IS NULL
            AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
            AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        ORDER BY q.orphan_inserted_at, q.event_id
        LIMIT a.take
        FOR UPDATE OF q SKIP LOCKED
    ) AS fresh
    UNION ALL
    SELECT * FROM (
        SELECT
            q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
            2 AS cls, q.last_attempted_at AS k1, q.orphan_inserted_at AS k2
        FROM mailglass_reconciliation_queue AS q
        WHERE
            q.tenant_id = a.tenant_id
            AND q.parked_at IS NULL
            AND q.next_attempt_at
            <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
            AND (
                CAST(:run_started AS timestamptz) IS NULL
                OR q.last_attempted_at < CAST(:run_started AS timestamptz)
            )
            AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
            AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        ORDER BY q.last_attempted_at, q.orphan_inserted_at, q.event_id
        LIMIT a.take
        FOR UPDATE OF q SKIP LOCKED
    ) AS retry
    LIMIT a.take
) AS p
WHERE a.take > 0
-- end rule

-- rule: batch
-- The batch read from picked and the orphans' ledger rows, with the delivery each links to when
-- link is true. With link false the key row k is empty, the lookup never probes, and delivery_id
-- is null: attempt_link fills it. The provider event id: a non-empty JSON string only. An
-- occurred_at of 'infinity' is valid timestamptz but no driver can load it: such an orphan reads
-- as malformed (parked), not as a row that fails every sweep of its tenant forever.
SELECT
    e.id, e.tenant_id, e.type,
    CASE WHEN isfinite(e.occurred_at) THEN e.occurred_at END AS occurred_at,
    e.inserted_at, p.attempts, p.provider, p.provider_message_id,
    COALESCE(
        CASE
            WHEN jsonb_typeof(e.metadata -> 'provider_event_id') = 'string'
                THEN NULLIF(e.metadata ->> 'provider_event_id', '')
        END,
        CASE
            WHEN jsonb_typeof(e.normalized_payload -> 'provider_event_id') = 'string'
                THEN NULLIF(e.normalized_payload ->> 'provider_event_id', '')
        END
    ) AS provider_event_id,
    lk.id AS delivery_id
FROM picked AS p
INNER JOIN mailglass_events AS e ON p.event_id = e.id
LEFT JOIN LATERAL (
    SELECT p.tenant_id, p.provider, p.provider_message_id AS message_id
    WHERE
        CAST(:link AS boolean)
        AND p.provider IS NOT NULL AND p.provider_message_id IS NOT NULL AND isfinite(e.occurred_at)
) AS k ON TRUE
LEFT JOIN LATERAL (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE
        d.provider = k.provider
        AND d.provider_message_id IN (
            k.message_id,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.filter', 1) END,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.', 1) END
        )
        AND d.tenant_id = k.tenant_id
    ORDER BY d.provider_message_id = k.message_id DESC
    LIMIT 1
) AS lk ON TRUE
ORDER BY p.tenant_id, p.cls, p.k1, p.k2, p.event_id
-- end rule

-- rule: delivery_lookup
-- The delivery lookup (decision D8): the delivery of the key row k (tenant_id, provider,
-- message_id), or no row: exact message id first, then for SendGrid the part before '.filter', then
-- the part before the first dot, always within the tenant (a message id that collides across
-- tenants never links across them), answered from the unique (provider, provider_message_id) index.
LEFT JOIN LATERAL (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE
        d.provider = k.provider
        AND d.provider_message_id IN (
            k.message_id,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.filter', 1) END,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.', 1) END
        )
        AND d.tenant_id = k.tenant_id
    ORDER BY d.provider_message_id = k.message_id DESC
    LIMIT 1
) AS lk ON TRUE
-- end rule

-- rule: message_id_match
-- The message-id match of the lookup (SendGrid: the send API returns X-Message-Id, the
-- webhooks carry it plus a '.filter...' suffix). Also in the wake triggers of migrations 0003 and
-- 0004 (compared by tests/core/test_reconcile_sql.py) and orphans._message_id_variants.
d.provider_message_id IN (
    k.message_id,
    CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.filter', 1) END,
    CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.', 1) END
)
-- end rule

-- rule: projection
-- The projection rules (decision D6) over won (delivery_id, type, occurred_at, ord): the latest
-- event wins (on an occurred_at tie the lowest ord), only if later than last_event_at; set-once
-- times (earliest, only while null); terminal latches; lock_version + 1 and updated_at on each
-- write. Its deliveries are locked in id order first (projector.lock, or rule lock_linked).
proj_agg AS (
    SELECT
        delivery_id,
        (array_agg(type ORDER BY occurred_at DESC, ord ASC))[1] AS latest_type,
        max(occurred_at) AS latest_at,
        min(occurred_at) FILTER (WHERE type = 'dispatched') AS dispatched_at,
        min(occurred_at) FILTER (WHERE type = 'delivered') AS delivered_at,
        min(occurred_at) FILTER (WHERE type = 'bounced') AS bounced_at,
        min(occurred_at) FILTER (WHERE type = 'complained') AS complained_at,
        min(occurred_at) FILTER (WHERE type = 'suppressed') AS suppressed_at,
        bool_or(type IN ('delivered', 'bounced', 'complained', 'rejected', 'failed', 'suppressed')) AS terminal
    FROM won
    GROUP BY delivery_id
),

proj_upd AS (
    UPDATE mailglass_deliveries AS d SET
        last_event_type = CASE WHEN a.latest_at > d.last_event_at THEN a.latest_type ELSE d.last_event_type END,
        last_event_at = GREATEST(d.last_event_at, a.latest_at),
        dispatched_at = COALESCE(d.dispatched_at, a.dispatched_at),
        delivered_at = COALESCE(d.delivered_at, a.delivered_at),
        bounced_at = COALESCE(d.bounced_at, a.bounced_at),
        complained_at = COALESCE(d.complained_at, a.complained_at),
        suppressed_at = COALESCE(d.suppressed_at, a.suppressed_at),
        terminal = d.terminal OR a.terminal,
        lock_version = d.lock_version + 1,
        updated_at = now()
    FROM proj_agg AS a
    WHERE d.id = a.delivery_id
    RETURNING d.id
)
-- end rule

-- rule: lock_linked
-- Inside a store statement: the deliveries of linked locked in id order (the LockRows node sits
-- above the sort), and won lets linked's rows through only after an uncorrelated count over
-- proj_locked, an InitPlan that runs to completion before the first row reaches the projection.
proj_locked AS MATERIALIZED (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE d.id IN (SELECT linked.delivery_id FROM linked)
    ORDER BY d.id
    FOR NO KEY UPDATE OF d
),

won AS (
    SELECT * FROM linked
    WHERE (SELECT count(*) FROM proj_locked) >= 0
)
-- end rule

-- rule: notify
-- One notification per row of latest (decision D7). pg_notify refuses payloads of 8000 bytes or
-- more and only the tenant id can push it over: above 7000 bytes of JSON it is sent as null.
SELECT
    pg_notify('mailglass_delivery_updated', CAST(json_build_object(
        'tenant_id', CASE
            WHEN octet_length(CAST(to_json(n.tenant_id) AS text)) > 7000 THEN NULL ELSE n.tenant_id
        END,
        'delivery_id', n.delivery_id, 'event_type', n.event_type,
        'event_id', n.event_id, 'reconciled_from_event_id', n.from_id
    ) AS text)) AS notified
FROM latest AS n
-- end rule

-- rule: ledger_insert
-- The idempotent ledger append (statement append_events): ON CONFLICT on the partial unique
-- index of idempotency_key, inserted_at defaulting to now().
INSERT INTO mailglass_events (
    id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
    normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at
)
SELECT
    r.id, r.tenant_id, r.delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
    r.normalized_payload, r.metadata, r.trace_id, r.needs_reconciliation,
    COALESCE(r.inserted_at, now())
-- end rule

-- rule: keyed
-- It has a provider and a message id: a sweep can look its delivery up.
q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
-- end rule

-- rule: unkeyed
-- It lacks a provider or a message id: malformed.
(q.provider IS NULL OR q.provider_message_id IS NULL)
-- end rule

-- rule: aged_out
-- Keyed, pending and past max age: stale, though no sweep has parked it yet.
q.parked_at IS NULL
AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)
-- end rule

-- rule: parked_rows
-- Stale or malformed orphans (state), oldest first, at most limit: parked as such by a sweep,
-- then those not parked yet: stale ones past max age with no sweep since they aged out, malformed
-- ones not examined yet (an examination parks them, so an unparked one is a fresh one).
SELECT * FROM (
    (
        SELECT
            q.*,
            CAST(:state AS text) AS state,
            0 AS part
        FROM mailglass_reconciliation_queue AS q
        WHERE
            q.parked_at IS NOT NULL AND q.parked_reason = CAST(:state AS text)
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
        ORDER BY q.orphan_inserted_at
        LIMIT :limit
    )
    UNION ALL
    (
        SELECT
            q.*,
            CAST(:state AS text) AS state,
            1 AS part
        FROM mailglass_reconciliation_queue AS q
        WHERE
            CASE CAST(:state AS text)
                WHEN 'stale' THEN
                    q.parked_at IS NULL
                    AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
                    AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)
                ELSE
                    q.parked_at IS NULL AND q.next_attempt_at IS NULL
                    AND (q.provider IS NULL OR q.provider_message_id IS NULL)
            END
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
        ORDER BY q.orphan_inserted_at
        LIMIT :limit
    )
) AS parked
ORDER BY orphan_inserted_at
LIMIT :limit
-- end rule

-- rule: unqueued_orphans
-- Pending orphans (needs_reconciliation, no delivery, no reconciled event) younger than the parked
-- retention (retention_days: an older one's row may have been parked and pruned on purpose) that
-- have no queue row: no trigger saw them (mailglass doctor's queue check and its --repair). Walks
-- the tenants of Mailglass's needs-reconciliation index, one probe each, then each tenant's recent
-- orphans along it (OFFSET 0: a probe per tenant, never a join over the ledger): the cost follows
-- the recent orphans, not the ledger.
WITH RECURSIVE tenants AS (
    (
        SELECT e.tenant_id
        FROM mailglass_events AS e
        WHERE e.needs_reconciliation
        ORDER BY e.tenant_id
        LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT e.tenant_id
        FROM mailglass_events AS e
        WHERE e.needs_reconciliation AND e.tenant_id > t.tenant_id
        ORDER BY e.tenant_id
        LIMIT 1
    )
    FROM tenants AS t
    WHERE t.tenant_id IS NOT NULL
),

unqueued AS (
    SELECT e.id
    FROM tenants AS t
    CROSS JOIN LATERAL (
        SELECT o.id
        FROM mailglass_events AS o
        WHERE
            o.tenant_id = t.tenant_id AND o.needs_reconciliation AND o.delivery_id IS NULL
            AND o.inserted_at > CAST(now() AT TIME ZONE 'UTC' AS timestamp) - make_interval(days => :retention_days)
        ORDER BY o.inserted_at
        OFFSET 0
    ) AS e
    WHERE
        NOT EXISTS (SELECT 1 FROM mailglass_reconciliation_queue AS q WHERE q.event_id = e.id)
        AND NOT EXISTS (
            SELECT 1 FROM mailglass_events AS r WHERE r.idempotency_key = 'reconciled:' || CAST(e.id AS text)
        )
)

-- end rule
