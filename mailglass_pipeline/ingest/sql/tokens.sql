-- Mailgun's single-use webhook tokens (mailglass_pipeline/ingest/tokens.py), registered in
-- mailglass_pipeline.queries.

-- name: prune_tokens
-- Housekeeping of Mailgun's single-use tokens: delete those seen longer ago than the retention
-- (seconds). A token that old fails the timestamp tolerance anyway, so this is never a guard.
DELETE FROM mailglass_webhook_tokens
WHERE seen_at < now() - CAST(:retention AS integer) * interval '1 second';

-- name: claim_token
-- Record a single-use token. A row back means this request is the first to use it; a concurrent
-- claim of the same token waits on the primary key until the first transaction ends.
INSERT INTO mailglass_webhook_tokens (provider, token, tenant_id, body_sha256)
VALUES (:provider, :token, :tenant_id, :digest)
ON CONFLICT (provider, token) DO NOTHING
RETURNING TRUE AS claimed;

-- name: seen_token
-- Who used a token before, and with which body (same body, other tenant: a cross-tenant replay).
SELECT
    tenant_id,
    body_sha256
FROM mailglass_webhook_tokens
WHERE provider = :provider AND token = :token;
