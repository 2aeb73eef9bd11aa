-- The sweep: find the due batch, link it, write the outcome, count what is left
-- (mailglass_pipeline/reconciliation/sweep.py). A batch costs these statements whatever its size
-- (decision D5). Each block is the complete statement PostgreSQL receives. The shared rules it
-- calls (mailglass_reconciliation_due, _pick, _delivery, ...) are functions of migration 0007 that
-- the planner inlines (decision D28). The projection onto the deliveries is the statement project
-- of mailglass_pipeline/sql/deliveries.sql (projector.project), run after write (decision D30).

-- name: set_timeouts
-- The transaction's timeouts, and one plan per execution: psycopg prepares a statement after 5
-- executions and PostgreSQL may then switch to a generic plan; for these statements, whose best
-- plan depends on the batch and backlog sizes bound in (and whose variants are bind parameters
-- that a custom plan folds), that made one transaction of a run 5 s instead of 0.7 s.
SELECT
    set_config('lock_timeout', :lock_timeout, TRUE),
    set_config('statement_timeout', :statement_timeout, TRUE),
    set_config('plan_cache_mode', 'force_custom_plan', TRUE);

-- name: run_started
-- The database's clock: at the start of a run, as the examinations record it (and the orphan
-- listing's now).
SELECT now() AS started;

-- name: absorb_wakes
-- The signals the triggers on Mailglass's tables left since the last sweep (decision D27), applied
-- in a short transaction of its own before a sweep's (the rows it changes are then free for any
-- sweep): orphans whose delivery appeared become due and linkable, orphans another writer
-- reconciled while a sweep held them leave the queue. A SECURITY
-- DEFINER function of migration 0006 (whose body holds the statement), so the reconciler's role
-- needs no DELETE on the queue; it skips rows another sweep holds and keeps their signals.
SELECT
    a.woken,
    a.removed
FROM mailglass_reconciliation_absorb() AS a;

-- name: find_batch
-- The due batch, in fair order, locked SKIP LOCKED: of one tenant (tenant_id bound), at most
-- LEAST(limit, max_total) orphans; of every tenant (tenant_id null), at most limit per tenant (less
-- what used, the run's earlier transactions, already took) and max_total in all, in two rounds of
-- water filling: first the orphans whose delivery is known to be there (linkable_at) across all
-- tenants, then the other due orphans in what the cap leaves. Each tenant's share is then taken
-- with index range scans (mailglass_reconciliation_pick). A one-tenant sweep never runs the
-- allocation: under the custom plan its branch of alloc folds to nothing, and the CTEs only it
-- reads are never executed (tests/perf/test_query_plans.py).
--
-- Each round is water filling (mailglass_reconciliation_share, migration 0007) over the round's
-- wants and cap: each tenant's first k orphans are taken before any tenant's (k+1)-th, in one
-- statement whatever the number of tenants.
WITH used AS (
    SELECT
        key AS tenant_id,
        CAST(value AS bigint) AS used
    FROM json_each_text(CAST(:used AS json))
),

due_n AS (
    SELECT
        tenant_id,
        count(*) AS n,
        min(due_since) AS since
    FROM mailglass_reconciliation_due(:tenant_id, :grace_seconds, :max_age_minutes, :retry_all, :run_started)
    GROUP BY tenant_id
),

due AS (
    SELECT
        d.tenant_id,
        d.since,
        LEAST(d.n, :limit - COALESCE(u.used, 0)) AS want
    FROM due_n AS d LEFT JOIN used AS u ON d.tenant_id = u.tenant_id
),

linkable_n AS (
    SELECT
        q.tenant_id,
        count(*) AS n,
        min(GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.linkable_at)) AS since
    FROM mailglass_reconciliation_queue AS q
    WHERE
        q.linkable_at IS NOT NULL
        AND q.parked_at IS NULL AND q.next_attempt_at IS NULL
        AND mailglass_reconciliation_in_window(q.orphan_inserted_at, :grace_seconds, :max_age_minutes)
    GROUP BY q.tenant_id
),

first_want AS (
    SELECT
        d.tenant_id,
        l.since,
        LEAST(l.n, d.want) AS take
    FROM due AS d INNER JOIN linkable_n AS l ON d.tenant_id = l.tenant_id
),

first_alloc AS (
    SELECT a.tenant_id, a.take
    FROM (SELECT array_agg(tenant_id) AS ids, array_agg(take) AS takes, array_agg(since) AS sinces FROM first_want) AS w
    CROSS JOIN LATERAL mailglass_reconciliation_share(w.ids, w.takes, w.sinces, CAST(:max_total AS bigint)) AS a
),

rest_want AS (
    SELECT
        d.tenant_id,
        d.since,
        d.want - COALESCE(f.take, 0) AS take
    FROM due AS d LEFT JOIN first_alloc AS f ON d.tenant_id = f.tenant_id
),

rest_alloc AS (
    SELECT a.tenant_id, a.take
    FROM (SELECT array_agg(tenant_id) AS ids, array_agg(take) AS takes, array_agg(since) AS sinces FROM rest_want) AS w
    -- What the first round left of max_total.
    CROSS JOIN (SELECT CAST(:max_total AS bigint) - CAST(COALESCE(sum(take), 0) AS bigint) AS cap FROM first_alloc) AS c
    CROSS JOIN LATERAL mailglass_reconciliation_share(w.ids, w.takes, w.sinces, c.cap) AS a
),

alloc AS (
    SELECT
        CAST(:tenant_id AS text) AS tenant_id,
        CAST(LEAST(:limit, :max_total) AS bigint) AS take
    WHERE CAST(:tenant_id AS text) IS NOT NULL
    UNION ALL
    SELECT
        x.tenant_id,
        CAST(sum(x.take) AS bigint) AS take
    FROM (
        SELECT * FROM first_alloc
        UNION ALL
        SELECT * FROM rest_alloc
    ) AS x
    WHERE CAST(:tenant_id AS text) IS NULL
    GROUP BY x.tenant_id
),

picked AS (
    SELECT p.*
    FROM alloc AS a
    CROSS JOIN LATERAL mailglass_reconciliation_pick(
        a.tenant_id, a.take, :grace_seconds, :max_age_minutes, :retry_all, :run_started
    ) AS p
    WHERE a.take > 0
)

SELECT
    e.id, e.tenant_id, e.type,
    CASE WHEN isfinite(e.occurred_at) THEN e.occurred_at END AS occurred_at,
    e.inserted_at, p.attempts, p.provider, p.provider_message_id,
    mailglass_reconciliation_event_provider_event_id(e.metadata, e.normalized_payload) AS provider_event_id,
    lk.id AS delivery_id
FROM picked AS p
INNER JOIN mailglass_events AS e ON p.event_id = e.id
LEFT JOIN LATERAL (
    SELECT p.tenant_id, p.provider, p.provider_message_id AS message_id
    WHERE
        CAST(:link AS boolean)
        AND p.provider IS NOT NULL AND p.provider_message_id IS NOT NULL AND isfinite(e.occurred_at)
) AS k ON TRUE
LEFT JOIN LATERAL mailglass_reconciliation_delivery(k.tenant_id, k.provider, k.message_id) AS lk (id) ON TRUE
ORDER BY p.tenant_id, p.cls, p.k1, p.k2, p.event_id;

-- name: write
-- The write step of a sweep as ONE statement (data-modifying CTEs), so a batch costs one round
-- trip to write whatever its size. Its input is the linked batch as one JSON document (rows). It
-- locks no delivery: the projection onto the deliveries is the statement "project" (projector.py),
-- run last before the commit (decision D30), and won_rows is its input.
--   batch      that document (orphan id, delivery id, provider, provider event id, malformed, pos);
--   matched    the linked orphans with type, times and tenant read from their own ledger rows
--              (append-only, so exactly what find read);
--   ins        the reconciled events (occurred_at = sweep time, UUIDv7 ids as Mailglass's: decision
--              D27); ON CONFLICT DO NOTHING admits one per orphan (decision D2), RETURNING says which
--              this sweep appended;
--   won        those orphans in batch order (occurred_at, inserted_at, find order);
--   notified   one notification per linked delivery (decision D7); a SELECT CTE runs only when
--              read, hence its count below;
--   attempted  the examination of every unlinked orphan: attempts + 1, the next retry time by the
--              backoff (decision D4), linkable_at cleared; malformed and aged-out ones parked;
--   parked     every other orphan in scope past max age parked as stale (a row must not be
--              updated twice in one statement, so the batch's unlinked rows are left to attempted).
-- All CTEs share one snapshot, so the backlog count (which must see the queue after the trigger
-- removed the linked orphans) is a separate statement (after_sweep).
WITH batch AS (
    SELECT r.*
    FROM json_to_recordset(CAST(:rows AS json)) AS r (
        id uuid, delivery_id uuid, provider text, provider_event_id text, malformed boolean, pos integer
    )
),

matched AS (
    SELECT
        b.id,
        e.tenant_id,
        b.delivery_id,
        e.type,
        e.occurred_at,
        e.inserted_at,
        b.provider,
        b.provider_event_id,
        b.pos
    FROM batch AS b INNER JOIN mailglass_events AS e ON b.id = e.id
    WHERE b.delivery_id IS NOT NULL
),

ins AS (
    -- Every column explicit: a database created by Mailglass itself has fewer defaults.
    INSERT INTO mailglass_events (
        id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
        normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at
    )
    SELECT
        mailglass_reconciliation_uuidv7(),
        m.tenant_id,
        m.delivery_id,
        'reconciled',
        now(),
        'reconciled:' || CAST(m.id AS text),
        NULL,
        CAST('{}' AS jsonb),
        jsonb_build_object(
            'reconciled_from_event_id', CAST(m.id AS text),
            'reconciled_provider', m.provider,
            'reconciled_provider_event_id', m.provider_event_id,
            'reconciled_event_type', m.type
        ),
        NULL,
        FALSE,
        now()
    FROM matched AS m
    ORDER BY m.pos
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, idempotency_key
),

won AS (
    SELECT
        m.id,
        m.tenant_id,
        m.delivery_id,
        m.type,
        m.occurred_at,
        i.id AS reconciled_id,
        row_number() OVER (ORDER BY m.occurred_at, m.inserted_at, m.pos) AS ord
    FROM ins AS i INNER JOIN matched AS m ON i.idempotency_key = 'reconciled:' || CAST(m.id AS text)
),

latest AS (
    SELECT DISTINCT ON (w.delivery_id)
        w.tenant_id,
        w.delivery_id,
        CAST('reconciled' AS text) AS event_type,
        w.reconciled_id AS event_id,
        w.id AS from_id
    FROM won AS w
    ORDER BY w.delivery_id ASC, w.ord DESC
),

notified AS (
    SELECT mailglass_reconciliation_notify(n.tenant_id, n.delivery_id, n.event_type, n.event_id, n.from_id) AS notified
    FROM latest AS n
),

cutoff AS (SELECT now() - make_interval(mins => :max_age_minutes) AS stale_before),

attempted AS (
    UPDATE mailglass_reconciliation_queue AS q
    SET
        attempts = q.attempts + 1,
        last_attempted_at = now(),
        -- From the minute the sweep belongs to, not from now(): a sweep starts seconds after its
        -- tick, so now() + 1 minute would miss the next tick ("retry in 1 minute" = next tick).
        next_attempt_at = date_trunc('minute', now())
            + make_interval(mins => COALESCE((CAST(:backoff_steps AS int[]))[q.attempts + 1], CAST(:backoff_cap AS int))),
        linkable_at = NULL,
        parked_at = CASE WHEN b.malformed OR q.orphan_inserted_at <= c.stale_before THEN now() END,
        parked_reason = CASE
            WHEN b.malformed THEN 'malformed'
            WHEN q.orphan_inserted_at <= c.stale_before THEN 'stale'
        END
    FROM batch AS b, cutoff AS c
    WHERE q.event_id = b.id AND b.delivery_id IS NULL
    RETURNING q.event_id, q.tenant_id, q.parked_reason
),

parked AS (
    UPDATE mailglass_reconciliation_queue AS q
    SET parked_at = now(), parked_reason = 'stale'
    FROM cutoff AS c
    WHERE
        q.parked_at IS NULL
        AND q.orphan_inserted_at <= c.stale_before
        AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
        AND NOT EXISTS (SELECT 1 FROM batch AS b WHERE b.id = q.event_id AND b.delivery_id IS NULL)
    RETURNING q.event_id, q.tenant_id
),

newly_stale AS (
    SELECT
        s.tenant_id,
        count(*) AS n
    FROM (
        SELECT tenant_id FROM attempted WHERE parked_reason = 'stale'
        UNION ALL
        SELECT tenant_id FROM parked
    ) AS s
    GROUP BY s.tenant_id
)

SELECT
    ARRAY(SELECT id FROM won) AS won,
    (
        SELECT COALESCE(json_agg(json_build_object(
            'delivery_id', delivery_id, 'type', type, 'occurred_at', occurred_at, 'ord', ord
        )), '[]')
        FROM won
    ) AS won_rows,
    -- The queue rows of the won orphans are removed by the ledger trigger at the end of this
    -- statement; the statement's snapshot still sees them.
    (
        SELECT EXTRACT(EPOCH FROM max(now() - GREATEST(
            COALESCE(q.linkable_at, q.orphan_inserted_at),
            q.orphan_inserted_at + make_interval(secs => :grace_seconds)
        )))
        FROM won AS w INNER JOIN mailglass_reconciliation_queue AS q ON w.id = q.event_id
    ) AS linked_lag,
    (SELECT count(*) FROM notified) AS notified,
    (SELECT count(*) FROM attempted) AS attempted,
    (SELECT count(*) FROM parked) AS parked,
    -- Per tenant, orphans this statement parked as stale: a change worth a materialization.
    (SELECT COALESCE(json_agg(json_build_array(tenant_id, n)), '[]') FROM newly_stale) AS newly_stale;

-- name: after_sweep
-- What is left after a sweep, in one statement: the examined tenants' backlog, the scope's
-- totals, the due orphans the caps left, and the longest wait of a linkable orphan still pending.
WITH per_tenant AS (
    SELECT
        tenant_id,
        count(*) FILTER (WHERE parked_at IS NULL) AS remaining_orphans,
        count(*) FILTER (WHERE parked_reason = 'stale') AS stale_orphans
    FROM mailglass_reconciliation_queue
    WHERE tenant_id = ANY(CAST(:examined AS text[]))
    GROUP BY tenant_id
),

due AS (
    SELECT d.tenant_id, d.due_since
    FROM mailglass_reconciliation_due(:tenant_id, :grace_seconds, :max_age_minutes, :retry_all, :run_started) AS d
),

linkable AS (
    SELECT l.tenant_id, now() - l.since AS waited
    FROM mailglass_reconciliation_linkable(:tenant_id, :grace_seconds, :max_age_minutes) AS l
)

SELECT
    (
        SELECT COALESCE(json_agg(json_build_array(tenant_id, remaining_orphans, stale_orphans)), '[]')
        FROM per_tenant
    ) AS per_tenant,
    (
        SELECT count(*) FROM mailglass_reconciliation_queue AS q
        WHERE
            q.parked_at IS NULL
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
    ) AS remaining_orphans,
    (
        SELECT count(*) FROM mailglass_reconciliation_queue AS q
        WHERE
            q.parked_at IS NOT NULL AND q.parked_reason = 'stale'
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
    ) AS stale_orphans,
    (SELECT count(*) FROM due) AS due_remaining,
    (SELECT EXTRACT(EPOCH FROM now() - min(due_since)) FROM due) AS oldest_due_age,
    (SELECT EXTRACT(EPOCH FROM max(waited)) FROM linkable) AS pending_lag;
