-- The append-only ledger (mailglass_pipeline/ledger.py). Each block is the complete statement;
-- "rule: <name>" marks a copy of a rule of mailglass_pipeline/sql/rules.sql (decision D28).

-- name: append_events
-- Append a batch of events, one JSON document (rows), idempotently: a key already in the ledger
-- (or repeated in the batch) is skipped. RETURNING id of the rows actually inserted.
INSERT INTO mailglass_events (
    id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
    normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at
)
SELECT
    r.id, r.tenant_id, r.delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
    r.normalized_payload, r.metadata, r.trace_id, r.needs_reconciliation,
    COALESCE(r.inserted_at, now())
FROM json_to_recordset(CAST(:rows AS json)) AS r (
    id uuid, tenant_id text, delivery_id uuid, type text, occurred_at timestamptz,
    idempotency_key text, reject_reason text, normalized_payload jsonb, metadata jsonb,
    trace_id text, needs_reconciliation boolean, inserted_at timestamptz
)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;
