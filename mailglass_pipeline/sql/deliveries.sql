-- Delivery rows (mailglass_pipeline/deliveries.py and projector.py). Each block is the complete
-- statement; "rule: <name>" marks a copy of a rule of mailglass_pipeline/sql/rules.sql.

-- name: lookup_deliveries
-- The delivery id for each (tenant, provider, message id) of the three arrays, in their order, null
-- where nothing matches: one statement for a whole batch, answered from the unique index.
SELECT
    k.ord,
    lk.id
FROM unnest(CAST(:tenant_ids AS text[]), CAST(:providers AS text[]), CAST(:message_ids AS text[]))
    WITH ORDINALITY AS k (tenant_id, provider, message_id, ord)
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
