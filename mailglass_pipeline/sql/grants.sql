-- Least privilege for the mailglass reconciler's database role.
--
-- Creates nothing: no role, no table. It only REVOKEs and GRANTs on the schema
-- objects the migrations (run by the owner) created, so re-running it is
-- idempotent and leaves exactly these privileges. Create the role yourself
-- first, e.g. CREATE ROLE mailglass_reconciler LOGIN PASSWORD '...';
--
--   psql "$OWNER_URL" -v role=mailglass_reconciler -v schema=public -f grants.sql
--   mailglass grants --role mailglass_reconciler            (prints this file, rendered)
--   mailglass grants --role mailglass_reconciler --apply    (runs it as MAILGLASS_DATABASE_URL)
--
-- What one sweep does, and the privilege each step needs:
--   find      SELECT on the queue and the ledger, row locks FOR UPDATE OF the queue
--             (FOR UPDATE needs UPDATE on the locked table)
--   link      SELECT on deliveries
--   append    INSERT ... ON CONFLICT DO NOTHING RETURNING id on the ledger (INSERT, SELECT)
--   project   SELECT ... FOR UPDATE, UPDATE on deliveries
--   notify    pg_notify needs no privilege
--   bookkeep  UPDATE on the queue (examinations, retry times, parking)
-- The queue's rows are added and removed by triggers (and the absorb below), never by the role itself:
-- mailglass_track_orphans on the ledger queues each new orphan and, for each
-- appended `reconciled` event, deletes the orphan's row; mailglass_wake_orphans
-- (and its on-rekey twin) on mailglass_deliveries marks orphans due when their
-- delivery appears. All three are SECURITY DEFINER functions owned by the schema
-- owner with a pinned search_path (migration 0003), so this role needs no INSERT
-- or DELETE on the queue, and the sending application's role, which writes
-- mailglass_deliveries, needs no privilege on the queue at all. The queue is
-- derived, mutable bookkeeping (every row can be rebuilt from the ledger, as
-- migration 0001 does when adopting a Mailglass database); the ledger itself gets
-- no UPDATE, DELETE or TRUNCATE, and the append-only trigger refuses them anyway.
-- No DDL: the role owns nothing, gets no CREATE, and cannot migrate (that stays
-- the owner's job: `mailglass migrate` as the owner).

-- The schema is Mailglass's (its `prefix:`, MAILGLASS_DB_SCHEMA, default public). Mailglass's other
-- tables (suppressions, webhook events, outbound payloads; the last only from Mailglass V06 on) are
-- the Mailglass app's business: the reconciler is granted nothing on them.

REVOKE ALL ON TABLE :"schema".mailglass_events, :"schema".mailglass_deliveries,
    :"schema".mailglass_reconciliation_queue FROM :"role";

GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT, INSERT ON TABLE :"schema".mailglass_events TO :"role";
GRANT SELECT, UPDATE ON TABLE :"schema".mailglass_deliveries TO :"role";
GRANT SELECT, UPDATE ON TABLE :"schema".mailglass_reconciliation_queue TO :"role";
-- The daily parked-row retention deletes through this SECURITY DEFINER function (migration 0005),
-- never with a DELETE of its own.
GRANT EXECUTE ON FUNCTION :"schema".mailglass_prune_parked_orphans(text, timestamptz, integer) TO :"role";
-- Each sweep (and each schedule tick) first applies the signals the triggers on Mailglass's tables left
-- in mailglass_reconciliation_wakes through this SECURITY DEFINER function (migration 0006, decision
-- D27): it marks orphans due and removes the rows of orphans reconciled elsewhere, so the role needs
-- nothing on the signals' table and no DELETE on the queue.
GRANT EXECUTE ON FUNCTION :"schema".mailglass_reconciliation_absorb() TO :"role";
