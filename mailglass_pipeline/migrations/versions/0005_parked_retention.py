"""Parked queue rows in age order, for the orphan listing and the parked-row retention.

Revision ID: 0005_parked_retention
Revises: 0004_mailglass_schema
Create Date: 2026-12-03

Rows parked in ``mailglass_reconciliation_queue`` (``stale``: past max age;
``malformed``: no provider or message id) are removed after
``MAILGLASS_PARKED_RETENTION_DAYS`` (``orphans.prune_parked``), and
``mailglass orphans --state stale|malformed`` lists them oldest first across
tenants. The parked index of 0001 leads with ``tenant_id``, so both would read
every parked row of every tenant; this one reads them per reason in age order
and stops at the batch or the limit. Queue only: the ledger is untouched.

The deletion is ``mailglass_prune_parked_orphans(reason, cutoff, batch)``, a
``SECURITY DEFINER`` function owned by the schema owner with a pinned
``search_path`` (as the queue triggers of 0003): the reconciler's role keeps no
DELETE on the queue (``sql/grants.sql``), only EXECUTE on this function, which
deletes nothing but parked rows, one batch per call.
"""

from __future__ import annotations

from alembic import op

revision = "0005_parked_retention"
down_revision = "0004_mailglass_schema"
branch_labels = None
depends_on = None


FUNCTION = "mailglass_prune_parked_orphans(text, timestamptz, integer)"

UPGRADE = f"""
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_parked_age_index
    ON mailglass_reconciliation_queue (parked_reason, orphan_inserted_at) WHERE parked_at IS NOT NULL;
-- Malformed orphans no sweep has examined yet (`mailglass orphans --state malformed`): few by construction
-- (the next sweep parks them), so this index stays tiny while the fresh backlog may be large; in
-- orphan_inserted_at order, so the all-tenant listing reads it in order and a tenant's filters it.
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_fresh_malformed_index
    ON mailglass_reconciliation_queue (orphan_inserted_at, tenant_id)
    WHERE parked_at IS NULL AND next_attempt_at IS NULL AND (provider IS NULL OR provider_message_id IS NULL);

-- One batch: rows parked for `p_reason` before `p_cutoff`, oldest first, at most `p_batch`, skipping rows
-- a sweep holds. parked_at >= orphan_inserted_at, so the index range on orphan_inserted_at holds them all.
CREATE OR REPLACE FUNCTION mailglass_prune_parked_orphans(p_reason text, p_cutoff timestamptz, p_batch integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    deleted integer;
BEGIN
    IF p_batch IS NULL OR p_batch < 1 OR p_batch > 100000 THEN
        RAISE EXCEPTION 'batch must be between 1 and 100000, got %', p_batch USING ERRCODE = '22023';
    END IF;
    DELETE FROM mailglass_reconciliation_queue q
     WHERE q.event_id IN (
            SELECT c.event_id FROM mailglass_reconciliation_queue c
             WHERE c.parked_at IS NOT NULL AND c.parked_reason = p_reason
               AND c.orphan_inserted_at < p_cutoff AND c.parked_at < p_cutoff
             ORDER BY c.orphan_inserted_at
             LIMIT p_batch
             FOR UPDATE SKIP LOCKED)
       AND q.parked_at IS NOT NULL;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION {FUNCTION} SET search_path = pg_catalog, %I, pg_temp', current_schema());
    EXECUTE 'REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC';
END
$$;
"""

DOWNGRADE = f"""
DROP FUNCTION IF EXISTS {FUNCTION};
DROP INDEX IF EXISTS mailglass_reconciliation_queue_parked_age_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_fresh_malformed_index;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
