-- The sweep: find the due batch, link it, write the outcome, count what is left
-- (mailglass_pipeline/reconciliation/sweep.py). A batch costs these statements whatever its size
-- (decision D5). Each block is the complete statement PostgreSQL receives; the lines between
-- "rule: <name>" and "end rule" are a copy of a shared rule whose one home is
-- mailglass_pipeline/sql/rules.sql (tests/core/test_reconcile_sql.py compares every copy with it).

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

-- name: find_tenant
-- One tenant's due batch: at most LEAST(limit, max_total) orphans, in fair order, locked
-- SKIP LOCKED. A statement apart from find_all because the all-tenant allocation counts and
-- shares the due orphans of every tenant, work a one-tenant sweep must not pay.
WITH alloc AS (
    SELECT
        CAST(:tenant_id AS text) AS tenant_id,
        LEAST(:limit, :max_total) AS take
),

picked AS (
    -- rule: pick
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
                AND q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
                -- rule: due_window
                AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                -- end rule
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
                AND q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
                -- rule: due_window
                AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                -- end rule
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
                -- rule: retry
                AND q.parked_at IS NULL
                AND q.next_attempt_at
                <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
                AND (
                    CAST(:run_started AS timestamptz) IS NULL
                    OR q.last_attempted_at < CAST(:run_started AS timestamptz)
                )
                -- end rule
                -- rule: due_window
                AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                -- end rule
            ORDER BY q.last_attempted_at, q.orphan_inserted_at, q.event_id
            LIMIT a.take
            FOR UPDATE OF q SKIP LOCKED
        ) AS retry
        LIMIT a.take
    ) AS p
    WHERE a.take > 0
    -- end rule
)

-- rule: batch
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
-- rule: delivery_lookup
LEFT JOIN LATERAL (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE
        d.provider = k.provider
        -- rule: message_id_match
        AND d.provider_message_id IN (
            k.message_id,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.filter', 1) END,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.', 1) END
        )
        -- end rule
        AND d.tenant_id = k.tenant_id
    ORDER BY d.provider_message_id = k.message_id DESC
    LIMIT 1
) AS lk ON TRUE
-- end rule
ORDER BY p.tenant_id, p.cls, p.k1, p.k2, p.event_id;
-- end rule

-- name: find_all
-- Every tenant's due batch: at most limit per tenant (less what used, the run's earlier
-- transactions, already took) and max_total in all, in two rounds of water filling: first the
-- orphans whose delivery is known to be there (linkable_at) across all tenants, then the other
-- due orphans in what the cap leaves. Each tenant's share is then taken with index range scans.
--
-- Water filling (first_* and rest_*, the same steps over each round's want and cap): sorted by
-- take, a tenant is served whole when, were every larger tenant cut to its take, the total still
-- fits the cap. The others share what is left equally: quota each, and the extra left over goes
-- one each to the tenants waiting longest. So each tenant's first k orphans are taken before any
-- tenant's (k+1)-th, in one statement whatever the number of tenants.
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
    FROM (
        -- rule: due_rows
        SELECT
            q.tenant_id,
            GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.linkable_at) AS due_since
        FROM mailglass_reconciliation_queue AS q
        WHERE
            q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
            -- rule: due_window
            AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
            AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
            -- end rule
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
        UNION ALL
        SELECT
            q.tenant_id,
            GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.next_attempt_at) AS due_since
        FROM mailglass_reconciliation_queue AS q
        WHERE
            -- rule: retry
            q.parked_at IS NULL
            AND q.next_attempt_at
            <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
            AND (
                CAST(:run_started AS timestamptz) IS NULL
                OR q.last_attempted_at < CAST(:run_started AS timestamptz)
            )
            -- end rule
            -- rule: due_window
            AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
            AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
            -- end rule
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
        -- end rule
    ) AS d
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
        AND q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
        -- rule: due_window
        AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        -- end rule
    GROUP BY q.tenant_id
),

first_want AS (
    SELECT
        d.tenant_id,
        l.since,
        LEAST(l.n, d.want) AS take
    FROM due AS d INNER JOIN linkable_n AS l ON d.tenant_id = l.tenant_id
),

first_cap AS (SELECT CAST(:max_total AS bigint) AS cap),

first_sized AS (
    SELECT
        tenant_id, take, since,
        CAST(sum(take) OVER (ORDER BY take, tenant_id ROWS UNBOUNDED PRECEDING) AS bigint) AS prefix,
        row_number() OVER (ORDER BY take, tenant_id) AS pos,
        count(*) OVER () AS tenants
    FROM first_want
    WHERE take > 0
),

first_flagged AS (
    SELECT
        s.*,
        s.prefix + s.take * (s.tenants - s.pos) <= c.cap AS whole
    FROM first_sized AS s CROSS JOIN first_cap AS c
),

first_fill AS (
    SELECT
        count(*) FILTER (WHERE whole) AS whole_n,
        CAST(COALESCE(sum(take) FILTER (WHERE whole), 0) AS bigint) AS whole_sum,
        count(*) AS tenants
    FROM first_flagged
),

first_alloc AS (
    SELECT
        f.tenant_id,
        CASE
            WHEN f.whole THEN f.take
            ELSE (c.cap - x.whole_sum) / NULLIF(x.tenants - x.whole_n, 0)
                + CASE
                    WHEN row_number() OVER (PARTITION BY f.whole ORDER BY f.since, f.tenant_id)
                        <= (c.cap - x.whole_sum) % NULLIF(x.tenants - x.whole_n, 0)
                        THEN 1
                    ELSE 0
                END
        END AS take
    FROM first_flagged AS f CROSS JOIN first_fill AS x CROSS JOIN first_cap AS c
),

rest_want AS (
    SELECT
        d.tenant_id,
        d.since,
        d.want - COALESCE(f.take, 0) AS take
    FROM due AS d LEFT JOIN first_alloc AS f ON d.tenant_id = f.tenant_id
),

rest_cap AS (
    SELECT CAST(:max_total AS bigint) - CAST(COALESCE(sum(take), 0) AS bigint) AS cap
    FROM first_alloc
),

rest_sized AS (
    SELECT
        tenant_id, take, since,
        CAST(sum(take) OVER (ORDER BY take, tenant_id ROWS UNBOUNDED PRECEDING) AS bigint) AS prefix,
        row_number() OVER (ORDER BY take, tenant_id) AS pos,
        count(*) OVER () AS tenants
    FROM rest_want
    WHERE take > 0
),

rest_flagged AS (
    SELECT
        s.*,
        s.prefix + s.take * (s.tenants - s.pos) <= c.cap AS whole
    FROM rest_sized AS s CROSS JOIN rest_cap AS c
),

rest_fill AS (
    SELECT
        count(*) FILTER (WHERE whole) AS whole_n,
        CAST(COALESCE(sum(take) FILTER (WHERE whole), 0) AS bigint) AS whole_sum,
        count(*) AS tenants
    FROM rest_flagged
),

rest_alloc AS (
    SELECT
        f.tenant_id,
        CASE
            WHEN f.whole THEN f.take
            ELSE (c.cap - x.whole_sum) / NULLIF(x.tenants - x.whole_n, 0)
                + CASE
                    WHEN row_number() OVER (PARTITION BY f.whole ORDER BY f.since, f.tenant_id)
                        <= (c.cap - x.whole_sum) % NULLIF(x.tenants - x.whole_n, 0)
                        THEN 1
                    ELSE 0
                END
        END AS take
    FROM rest_flagged AS f CROSS JOIN rest_fill AS x CROSS JOIN rest_cap AS c
),

alloc AS (
    SELECT
        tenant_id,
        CAST(sum(take) AS bigint) AS take
    FROM (
        SELECT * FROM first_alloc
        UNION ALL
        SELECT * FROM rest_alloc
    ) AS x
    GROUP BY tenant_id
),

picked AS (
    -- rule: pick
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
                AND q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
                -- rule: due_window
                AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                -- end rule
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
                AND q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
                -- rule: due_window
                AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                -- end rule
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
                -- rule: retry
                AND q.parked_at IS NULL
                AND q.next_attempt_at
                <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
                AND (
                    CAST(:run_started AS timestamptz) IS NULL
                    OR q.last_attempted_at < CAST(:run_started AS timestamptz)
                )
                -- end rule
                -- rule: due_window
                AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
                AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
                -- end rule
            ORDER BY q.last_attempted_at, q.orphan_inserted_at, q.event_id
            LIMIT a.take
            FOR UPDATE OF q SKIP LOCKED
        ) AS retry
        LIMIT a.take
    ) AS p
    WHERE a.take > 0
    -- end rule
)

-- rule: batch
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
-- rule: delivery_lookup
LEFT JOIN LATERAL (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE
        d.provider = k.provider
        -- rule: message_id_match
        AND d.provider_message_id IN (
            k.message_id,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.filter', 1) END,
            CASE WHEN k.provider = 'sendgrid' THEN split_part(k.message_id, '.', 1) END
        )
        -- end rule
        AND d.tenant_id = k.tenant_id
    ORDER BY d.provider_message_id = k.message_id DESC
    LIMIT 1
) AS lk ON TRUE
-- end rule
ORDER BY p.tenant_id, p.cls, p.k1, p.k2, p.event_id;
-- end rule

-- name: write
-- The write step of a sweep as ONE statement (data-modifying CTEs), so a batch costs one round
-- trip to write whatever its size. Its input is the linked batch as one JSON document (rows). It
-- locks no delivery: the projection onto the deliveries is the statement "project", run last
-- before the commit (decision D30), and won_rows is its input.
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
    -- rule: notify
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
        AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
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
    (SELECT COALESCE(json_agg(json_build_object('id', id, 'delivery_id', delivery_id, 'ord', ord)), '[]') FROM won) AS won_rows,
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
    -- rule: due_rows
    SELECT
        q.tenant_id,
        GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.linkable_at) AS due_since
    FROM mailglass_reconciliation_queue AS q
    WHERE
        q.parked_at IS NULL AND q.next_attempt_at IS NULL -- rule: fresh
        -- rule: due_window
        AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        -- end rule
        AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
    UNION ALL
    SELECT
        q.tenant_id,
        GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.next_attempt_at) AS due_since
    FROM mailglass_reconciliation_queue AS q
    WHERE
        -- rule: retry
        q.parked_at IS NULL
        AND q.next_attempt_at
        <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
        AND (
            CAST(:run_started AS timestamptz) IS NULL
            OR q.last_attempted_at < CAST(:run_started AS timestamptz)
        )
        -- end rule
        -- rule: due_window
        AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        -- end rule
        AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
    -- end rule
),

linkable AS (
    -- rule: linkable_waits
    SELECT
        q.tenant_id,
        now() - GREATEST(q.linkable_at, q.orphan_inserted_at + make_interval(secs => :grace_seconds)) AS waited
    FROM mailglass_reconciliation_queue AS q
    WHERE
        q.parked_at IS NULL AND q.linkable_at IS NOT NULL
        -- rule: due_window
        AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
        AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
        -- end rule
        AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
    -- end rule
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
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
    ) AS remaining_orphans,
    (
        SELECT count(*) FROM mailglass_reconciliation_queue AS q
        WHERE
            q.parked_at IS NOT NULL AND q.parked_reason = 'stale'
            AND (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text)) -- rule: in_scope
    ) AS stale_orphans,
    (SELECT count(*) FROM due) AS due_remaining,
    (SELECT EXTRACT(EPOCH FROM now() - min(due_since)) FROM due) AS oldest_due_age,
    (SELECT EXTRACT(EPOCH FROM max(waited)) FROM linkable) AS pending_lag;

-- name: project
-- The projection rules from projector.py (decision D6) over the orphans the write statement won
-- (won_rows: orphan id, delivery id, ord), their type and time read from their own ledger rows.
-- The sweep runs it last before the commit, after projector.lock locked these deliveries in id
-- order: a delivery a sweep links is locked for this statement and the commit only, not for the
-- whole sweep, so a Mailglass write of that delivery waits milliseconds at most (decision D30).
WITH won AS (
    SELECT
        w.delivery_id,
        e.type,
        e.occurred_at,
        w.ord
    FROM json_to_recordset(CAST(:won AS json)) AS w (id uuid, delivery_id uuid, ord bigint)
    INNER JOIN mailglass_events AS e ON w.id = e.id
),

-- rule: projection
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

SELECT count(*) AS projected FROM proj_upd;
