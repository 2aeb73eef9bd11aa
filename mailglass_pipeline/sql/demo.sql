-- The demo data set (mailglass_pipeline/demo.py): deliveries as a sending application writes them.

-- name: demo_insert_delivery
-- A demo delivery (id and key derived from tenant and message id, so a re-seed inserts nothing).
INSERT INTO mailglass_deliveries (
    id, tenant_id, mailable, stream, recipient, recipient_domain, provider, provider_message_id,
    last_event_type, last_event_at, dispatched_at, idempotency_key, status, inserted_at, updated_at
)
VALUES (
    :id, :tenant_id, 'DemoMailer.receipt', 'transactional', :recipient, :domain, :provider, :pmid,
    'dispatched', :at, :at, :key, 'sent', :at, :at
)
ON CONFLICT DO NOTHING;

-- name: demo_seeded
-- Whether a tenant's first demo delivery (key) is there: the tenant is seeded already.
SELECT 1 AS seeded
FROM mailglass_deliveries
WHERE idempotency_key = :k;

-- name: no_deliveries
-- True when no delivery exists yet (the quick start seeds only then).
SELECT NOT EXISTS (SELECT 1 FROM mailglass_deliveries) AS empty;
