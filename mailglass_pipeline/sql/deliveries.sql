-- Delivery rows (mailglass_pipeline/deliveries.py and projector.py). Each block is the complete
-- statement; the lookup is the function mailglass_reconciliation_delivery of migration 0007 (decision D28).

-- name: lookup_deliveries
-- The delivery id for each (tenant, provider, message id) of the three arrays, in their order, null
-- where nothing matches: one statement for a whole batch, answered from the unique index.
SELECT
    k.ord,
    lk.id
FROM unnest(CAST(:tenant_ids AS text[]), CAST(:providers AS text[]), CAST(:message_ids AS text[]))
    WITH ORDINALITY AS k (tenant_id, provider, message_id, ord)
LEFT JOIN LATERAL mailglass_reconciliation_delivery(k.tenant_id, k.provider, k.message_id) AS lk (id) ON TRUE
ORDER BY k.ord;

-- name: lock_deliveries
-- Lock the deliveries (ids: one uuid[] literal) in id order, so two writers locking overlapping
-- sets cannot deadlock (decision D6). NO KEY UPDATE, the lock the projection's UPDATE takes anyway:
-- FOR UPDATE would also block a Mailglass insert that references the delivery (its outbound
-- payloads' foreign key takes KEY SHARE), decision D30.
SELECT id
FROM mailglass_deliveries
WHERE id = ANY(CAST(:ids AS uuid[]))
ORDER BY id
FOR NO KEY UPDATE;

-- name: project
-- The projection rules (decision D6, documented in projector.py), their one home: every writer of a
-- ledger event that has a delivery runs this statement (projector.project) in the transaction that
-- appended the events, before its commit: the sweep after its write, the receiver after
-- store_webhook and store_webhooks_grouped (decision D34). won (delivery id, type, occurred_at, ord)
-- is one row per event, as the writer appended it (for the sweep: the type and time of the orphan it
-- linked); nothing is read from the ledger, whose columns the receiver's role may not read. The
-- deliveries are locked first in id order
-- (lock_deliveries above, or the group statement's own SKIP LOCKED lock), so this UPDATE waits for
-- no row and two writers cannot deadlock.
-- Over won: the latest event wins (on an occurred_at tie the lowest ord), only if later than
-- last_event_at; set-once times (earliest, only while null); terminal latches; lock_version + 1
-- and updated_at on each write.
WITH won AS (
    SELECT
        w.delivery_id,
        w.type,
        w.occurred_at,
        w.ord
    FROM json_to_recordset(CAST(:won AS json)) AS w (delivery_id uuid, type text, occurred_at timestamptz, ord bigint)
),

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
)

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
WHERE d.id = a.delivery_id;

-- name: create_delivery
-- A delivery inserted as a sending application would (the demo, tests and benchmarks).
INSERT INTO mailglass_deliveries (
    id, tenant_id, mailable, stream, recipient, recipient_domain, provider,
    provider_message_id, last_event_type, last_event_at, dispatched_at, metadata,
    idempotency_key, status, inserted_at, updated_at
)
VALUES (
    :id, :tenant_id, :mailable, :stream, :recipient, :domain, :provider, :pmid,
    :last_event_type, COALESCE(:last_event_at, now()), :dispatched_at,
    CAST(:metadata AS jsonb), :idempotency_key, 'sent', now(), now()
);
