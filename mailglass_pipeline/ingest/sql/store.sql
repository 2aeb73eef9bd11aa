-- The ingest transaction's own reads and writes (mailglass_pipeline/ingest/core.py), registered in
-- mailglass_pipeline.queries. The statement that stores a webhook is composed in core.py from the
-- homes of its parts (ledger, deliveries, projector, webhook_events), not here.

-- name: other_tenant_key
-- The first of the ledger keys the insert skipped that another tenant holds, if any (the 409 answer).
SELECT idempotency_key
FROM mailglass_events
WHERE idempotency_key = ANY(CAST(:keys AS text[])) AND tenant_id <> :tenant_id
ORDER BY idempotency_key
LIMIT 1;
