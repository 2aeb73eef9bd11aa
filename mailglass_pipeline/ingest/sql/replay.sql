-- Re-running the ingest of stored raw payloads (mailglass_pipeline/ingest/replay.py), registered in
-- mailglass_pipeline.queries.

-- name: stored_webhooks
-- One tenant's raw records received in [since, until), of one provider or of all (provider bound
-- to null), oldest first: what `mailglass ingest --replay` feeds through the ingest again.
SELECT
    id,
    provider,
    provider_event_id,
    raw_payload,
    received_at
FROM mailglass_webhook_events
WHERE
    tenant_id = :tenant_id
    AND received_at >= :since AND received_at < :until
    AND (CAST(:provider AS text) IS NULL OR provider = :provider)
ORDER BY received_at, id;

-- name: mark_replayed
-- A replayed raw record is processed again: succeeded, at now (UTC, as Ecto writes the column).
UPDATE mailglass_webhook_events
SET
    status = 'succeeded',
    processed_at = now() AT TIME ZONE 'UTC',
    updated_at = now() AT TIME ZONE 'UTC'
WHERE id = :id;
