"""Mailglass v1.0.0 ledger tables, the append-only guard and the reconciliation work queue.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-28

``CREATE ... IF NOT EXISTS`` throughout: a database already written by the
Elixir Mailglass holds the two ledger tables, and this migration must adopt
them rather than fail.

Why a work queue (``mailglass_reconciliation_queue``): the ledger is
append-only, so nothing can mark an orphan "done"; a scan of the ledger must
anti-join every reconciled orphan of the last 7 days, and its cost grows with
history. The queue holds only *pending* orphans (a row is removed the moment
a ``reconciled`` event for it is appended, by whichever writer), so a sweep
costs what the backlog costs. Both queue maintenance steps live in one
statement-level trigger on the ledger, so orphans written by this project,
by Mailglass itself or by plain SQL are all tracked, and a bulk insert pays
one trigger call, not one per row.
"""

from __future__ import annotations

from alembic import op

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

UUID_RE = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

UPGRADE = f"""
CREATE TABLE IF NOT EXISTS mailglass_deliveries (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           text NOT NULL,
    mailable            text NOT NULL,
    stream              text NOT NULL,
    recipient           text NOT NULL,
    recipient_domain    text NOT NULL,
    provider            text,
    provider_message_id text,
    last_event_type     text NOT NULL,
    last_event_at       timestamptz NOT NULL,
    terminal            boolean NOT NULL DEFAULT false,
    dispatched_at       timestamptz,
    delivered_at        timestamptz,
    bounced_at          timestamptz,
    complained_at       timestamptz,
    suppressed_at       timestamptz,
    metadata            jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    lock_version        integer NOT NULL DEFAULT 1,
    idempotency_key     text,
    status              text NOT NULL DEFAULT 'queued',
    last_error          jsonb,
    inserted_at         timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS mailglass_deliveries_provider_message_id_index
    ON mailglass_deliveries (provider, provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailglass_deliveries_tenant_id_last_event_at_index
    ON mailglass_deliveries (tenant_id, last_event_at DESC);
CREATE UNIQUE INDEX IF NOT EXISTS mailglass_deliveries_idempotency_key_index
    ON mailglass_deliveries (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS mailglass_events (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id            text NOT NULL,
    delivery_id          uuid,
    type                 text NOT NULL,
    occurred_at          timestamptz NOT NULL,
    idempotency_key      text,
    reject_reason        text,
    normalized_payload   jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    metadata             jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    trace_id             text,
    needs_reconciliation boolean NOT NULL DEFAULT false,
    inserted_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS mailglass_events_idempotency_key_index
    ON mailglass_events (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailglass_events_delivery_id_occurred_at_index
    ON mailglass_events (delivery_id, occurred_at) WHERE delivery_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailglass_events_needs_reconciliation_index
    ON mailglass_events (tenant_id, inserted_at) WHERE needs_reconciliation;

-- The ledger is append-only: Mailglass's SQLSTATE and message, plus the
-- attempted operation in DETAIL so callers can say which one it was.
CREATE OR REPLACE FUNCTION mailglass_raise_immutability() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = '45A01',
        MESSAGE = 'mailglass_events is append-only; UPDATE and DELETE are forbidden',
        DETAIL  = format('attempted %s on mailglass_events', TG_OP);
END
$$;
DROP TRIGGER IF EXISTS mailglass_events_immutable ON mailglass_events;
CREATE TRIGGER mailglass_events_immutable
    BEFORE UPDATE OR DELETE ON mailglass_events
    FOR EACH ROW EXECUTE FUNCTION mailglass_raise_immutability();
DROP TRIGGER IF EXISTS mailglass_events_no_truncate ON mailglass_events;
CREATE TRIGGER mailglass_events_no_truncate
    BEFORE TRUNCATE ON mailglass_events
    FOR EACH STATEMENT EXECUTE FUNCTION mailglass_raise_immutability();

-- Pending work beside the ledger: one row per orphan not yet reconciled.
-- parked_at/parked_reason: orphans that can never link in this sweep's
-- terms ('malformed': no provider or message id; 'stale': past max age)
-- leave the scan index but stay countable for the stale-orphan check.
CREATE TABLE IF NOT EXISTS mailglass_reconciliation_queue (
    event_id           uuid PRIMARY KEY,
    tenant_id          text NOT NULL,
    orphan_inserted_at timestamptz NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    last_attempted_at  timestamptz,
    parked_at          timestamptz,
    parked_reason      text CHECK (parked_reason IN ('malformed', 'stale'))
);
-- No starvation: never-attempted first (oldest first), then least recently attempted.
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_tenant_scan_index
    ON mailglass_reconciliation_queue (tenant_id, last_attempted_at NULLS FIRST, orphan_inserted_at)
    WHERE parked_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_scan_index
    ON mailglass_reconciliation_queue (last_attempted_at NULLS FIRST, orphan_inserted_at)
    WHERE parked_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_age_index
    ON mailglass_reconciliation_queue (tenant_id, orphan_inserted_at) WHERE parked_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_parked_index
    ON mailglass_reconciliation_queue (tenant_id, parked_reason, orphan_inserted_at)
    WHERE parked_at IS NOT NULL;

CREATE OR REPLACE FUNCTION mailglass_track_orphans() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mailglass_reconciliation_queue (event_id, tenant_id, orphan_inserted_at)
    SELECT n.id, n.tenant_id, n.inserted_at
      FROM new_events n
     WHERE n.needs_reconciliation AND n.delivery_id IS NULL
    ON CONFLICT (event_id) DO NOTHING;

    DELETE FROM mailglass_reconciliation_queue q
     WHERE q.event_id IN (
        SELECT CASE WHEN n.metadata->>'reconciled_from_event_id' ~ '{UUID_RE}'
                    THEN (n.metadata->>'reconciled_from_event_id')::uuid END
          FROM new_events n
         WHERE n.type = 'reconciled');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS mailglass_events_track_orphans ON mailglass_events;
CREATE TRIGGER mailglass_events_track_orphans
    AFTER INSERT ON mailglass_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION mailglass_track_orphans();

-- Adopt orphans already in the ledger (a database shared with Mailglass).
INSERT INTO mailglass_reconciliation_queue (event_id, tenant_id, orphan_inserted_at)
SELECT e.id, e.tenant_id, e.inserted_at
  FROM mailglass_events e
 WHERE e.needs_reconciliation AND e.delivery_id IS NULL
   AND NOT EXISTS (SELECT 1 FROM mailglass_events r
                    WHERE r.idempotency_key = 'reconciled:' || e.id::text)
ON CONFLICT (event_id) DO NOTHING;
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS mailglass_events_track_orphans ON mailglass_events;
DROP FUNCTION IF EXISTS mailglass_track_orphans();
DROP TABLE IF EXISTS mailglass_reconciliation_queue;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # The ledger tables are left in place on purpose: they may be shared with
    # Mailglass and hold the only copy of the delivery history.
    op.execute(DOWNGRADE)
