-- Least privilege for the webhook receiver's database role (`mailglass serve`).
--
-- Creates nothing: no role, no table. It only REVOKEs and GRANTs on the schema
-- objects the migrations (run by the owner) created, so re-running it is
-- idempotent and leaves exactly these privileges. Create the role yourself
-- first, e.g. CREATE ROLE mailglass_receiver LOGIN PASSWORD '...';
--
--   psql "$OWNER_URL" -v role=mailglass_receiver -v schema=public -f grants_receiver.sql
--   mailglass grants --for receiver --role mailglass_receiver            (prints this file, rendered)
--   mailglass grants --for receiver --role mailglass_receiver --apply    (runs it as MAILGLASS_DATABASE_URL)
--
-- What one webhook does, and the privilege each step needs:
--   claim     (Mailgun) INSERT ... ON CONFLICT DO NOTHING RETURNING on the token table, SELECT of a
--             token seen before, and now and then a DELETE of the expired tokens (SELECT for its WHERE)
--   record    INSERT ... ON CONFLICT DO NOTHING on the webhook events (SELECT on the two columns
--             of the conflict target, which PostgreSQL requires for ON CONFLICT)
--   link      SELECT on deliveries (the lookup)
--   append    INSERT ... ON CONFLICT DO NOTHING RETURNING id on the ledger: INSERT, and SELECT on
--             the columns it reads (id for RETURNING, idempotency_key for the conflict target,
--             tenant_id for the cross-tenant refusal); no SELECT on payloads or metadata
--   project   SELECT ... FOR UPDATE, UPDATE on deliveries
--   health    SELECT on the Alembic version table (GET /healthz compares it with the code's head)
-- The ledger's triggers queue orphans through SECURITY DEFINER functions (migration 0003), so this
-- role needs nothing on mailglass_reconciliation_queue. It gets no UPDATE, DELETE or TRUNCATE on the
-- ledger, no UPDATE or DELETE on the webhook events, nothing on Mailglass's other tables, no DDL.
-- `mailglass ingest --replay` (an operator's command: it reads and re-marks webhook events) is not
-- the receiver's job: run it as the owner.

REVOKE ALL ON TABLE :"schema".mailglass_events, :"schema".mailglass_deliveries,
    :"schema".mailglass_webhook_events, :"schema".mailglass_webhook_tokens,
    :"schema".mailglass_alembic_version FROM :"role";

GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT INSERT ON TABLE :"schema".mailglass_events TO :"role";
GRANT SELECT (id, tenant_id, idempotency_key) ON TABLE :"schema".mailglass_events TO :"role";
GRANT SELECT, UPDATE ON TABLE :"schema".mailglass_deliveries TO :"role";
GRANT INSERT ON TABLE :"schema".mailglass_webhook_events TO :"role";
GRANT SELECT (provider, provider_event_id) ON TABLE :"schema".mailglass_webhook_events TO :"role";
GRANT SELECT, INSERT, DELETE ON TABLE :"schema".mailglass_webhook_tokens TO :"role";
GRANT SELECT ON TABLE :"schema".mailglass_alembic_version TO :"role";
