-- The receiver's statements: storing a webhook (mailglass_pipeline/ingest/core.py) and a group of
-- one-event webhooks (ingest/grouped.py). Each block is the complete statement; "rule: <name>"
-- marks a copy of a rule of mailglass_pipeline/sql/rules.sql; the lookup is the function
-- mailglass_reconciliation_delivery of migration 0007 (decision D28). Neither projects: the caller
-- runs the statement project (sql/deliveries.sql, projector.py) after it, in the same transaction.

-- name: other_tenant_key
-- The first of the ledger keys the insert skipped that another tenant holds, if any (the 409 answer).
SELECT idempotency_key
FROM mailglass_events
WHERE idempotency_key = ANY(CAST(:keys AS text[])) AND tenant_id <> :tenant_id
ORDER BY idempotency_key
LIMIT 1;

-- name: store_webhook
-- The store inside the transaction (ingest/core.py), in ONE statement: the raw records (rows, one
-- JSON document; see ledger.py), each event's delivery by the lookup rule, the idempotent ledger
-- insert and the raw provider events (webhooks, one row each, status failed for a malformed batch
-- element, which has no ledger row; webhook_events.py). Its rows (id, delivery id, inserted, in the
-- webhook's order) are what the caller then projects, in the same transaction: projector.project
-- (its lock, then the statement project in sql/deliveries.sql), the rules' one home. The cross-tenant check cannot
-- join it: it must see what a concurrent insert committed while this statement waited on the key,
-- which a later statement's snapshot does (other_tenant_key, only when something was skipped).
WITH found AS (
    SELECT
        r.id, r.tenant_id, lk.id AS delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
        r.normalized_payload, r.metadata, r.trace_id,
        lk.id IS NULL AND r.message_id IS NOT NULL AS needs_reconciliation,
        r.inserted_at, r.ord, r.provider
    FROM json_to_recordset(CAST(:rows AS json)) AS r (
        id uuid, tenant_id text, delivery_id uuid, type text, occurred_at timestamptz,
        idempotency_key text, reject_reason text, normalized_payload jsonb, metadata jsonb,
        trace_id text, needs_reconciliation boolean, inserted_at timestamptz,
        provider text, message_id text, ord integer
    )
    LEFT JOIN LATERAL mailglass_reconciliation_delivery(r.tenant_id, r.provider, r.message_id) AS lk (id) ON TRUE
),

appended AS (
    -- rule: ledger_insert
    INSERT INTO mailglass_events (
        id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
        normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at
    )
    SELECT
        r.id, r.tenant_id, r.delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
        r.normalized_payload, r.metadata, r.trace_id, r.needs_reconciliation,
        COALESCE(r.inserted_at, now())
    -- end rule
    FROM found AS r
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
),

webhook AS (
    INSERT INTO mailglass_webhook_events (
        id, tenant_id, provider, provider_event_id, event_type_raw, event_type_normalized, status,
        raw_payload, received_at, processed_at, inserted_at, updated_at
    )
    SELECT
        w.id, :tenant_id, :provider, w.provider_event_id, w.event_type_raw, w.event_type_normalized,
        COALESCE(w.status, 'succeeded'), w.raw_payload, :webhooks_received_at,
        now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
    FROM json_to_recordset(CAST(:webhooks AS json)) AS w (
        id uuid, provider_event_id text, event_type_raw text, event_type_normalized text, raw_payload jsonb,
        status text
    )
    ON CONFLICT (provider, provider_event_id) DO NOTHING
)

SELECT
    f.id,
    f.delivery_id,
    f.needs_reconciliation,
    a.id IS NOT NULL AS inserted
FROM found AS f LEFT JOIN appended AS a ON f.id = a.id
ORDER BY f.ord;

-- name: store_webhooks_grouped
-- Several one-event webhooks in ONE statement (ingest/grouped.py), each request all or nothing:
-- rows carries one ledger row per request (ord: its place in the group) with its Mailgun token
-- (token, digest; null for other providers); webhooks the raw records, each with its request's
-- ord, written only with that request's ledger event (stored). The group's deliveries are locked
-- first, without waiting (locked): a request whose delivery another transaction holds stays out and
-- comes back busy, so one locked row never holds up the group (ingest/grouped.py). The rows it
-- returns with a delivery are then projected (statement project) in the same transaction, under
-- these locks, which the transaction holds until its commit.
WITH found AS (
    SELECT
        r.id, r.tenant_id, lk.id AS delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
        r.normalized_payload, r.metadata, r.trace_id,
        lk.id IS NULL AND r.message_id IS NOT NULL AS needs_reconciliation,
        r.inserted_at, r.ord, r.provider, r.token, r.digest
    FROM json_to_recordset(CAST(:rows AS json)) AS r (
        id uuid, tenant_id text, delivery_id uuid, type text, occurred_at timestamptz,
        idempotency_key text, reject_reason text, normalized_payload jsonb, metadata jsonb,
        trace_id text, needs_reconciliation boolean, inserted_at timestamptz,
        provider text, message_id text, ord integer, token text, digest text
    )
    LEFT JOIN LATERAL mailglass_reconciliation_delivery(r.tenant_id, r.provider, r.message_id) AS lk (id) ON TRUE
    -- A request whose Mailgun token is already claimed stays out (the ordinary path refuses it).
    WHERE NOT EXISTS (
        SELECT 1 FROM mailglass_webhook_tokens AS t
        WHERE t.provider = r.provider AND t.token = r.token
    )
),

locked AS MATERIALIZED (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE d.id IN (SELECT f.delivery_id FROM found AS f)
    ORDER BY d.id
    FOR NO KEY UPDATE OF d SKIP LOCKED
),

-- The deliveries another transaction holds: their requests stay out (busy).
held AS (
    SELECT delivery_id FROM found WHERE delivery_id IS NOT NULL
    EXCEPT
    SELECT id FROM locked
),

ready AS (
    SELECT f.* FROM found AS f
    WHERE NOT EXISTS (SELECT 1 FROM held AS h WHERE h.delivery_id = f.delivery_id)
),

appended AS (
    -- rule: ledger_insert
    INSERT INTO mailglass_events (
        id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
        normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at
    )
    SELECT
        r.id, r.tenant_id, r.delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
        r.normalized_payload, r.metadata, r.trace_id, r.needs_reconciliation,
        COALESCE(r.inserted_at, now())
    -- end rule
    FROM ready AS r
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
),

stored AS (
    SELECT f.* FROM ready AS f INNER JOIN appended AS a ON f.id = a.id
),

tok AS (
    INSERT INTO mailglass_webhook_tokens (provider, token, tenant_id, body_sha256)
    SELECT
        provider,
        token,
        tenant_id,
        digest
    FROM stored
    WHERE token IS NOT NULL
),

webhook AS (
    INSERT INTO mailglass_webhook_events (
        id, tenant_id, provider, provider_event_id, event_type_raw, event_type_normalized, status,
        raw_payload, received_at, processed_at, inserted_at, updated_at
    )
    SELECT
        w.id, f.tenant_id, f.provider, w.provider_event_id, w.event_type_raw, w.event_type_normalized,
        'succeeded', w.raw_payload, :webhooks_received_at,
        now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
    FROM json_to_recordset(CAST(:webhooks AS json)) AS w (
        ord integer, id uuid, provider_event_id text, event_type_raw text, event_type_normalized text, raw_payload jsonb
    )
    INNER JOIN stored AS f ON w.ord = f.ord
    ON CONFLICT (provider, provider_event_id) DO NOTHING
)

SELECT
    ord,
    id,
    delivery_id,
    needs_reconciliation,
    FALSE AS busy
FROM stored
UNION ALL
SELECT
    f.ord,
    NULL,
    NULL,
    NULL,
    TRUE
FROM found AS f INNER JOIN held AS h ON f.delivery_id = h.delivery_id;
