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
