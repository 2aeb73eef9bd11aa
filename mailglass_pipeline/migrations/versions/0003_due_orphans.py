"""An orphan is due only when it can succeed: match keys, backoff and a trigger on deliveries.

Revision ID: 0003_due_orphans
Revises: 0002_ingest
Create Date: 2026-12-01

Until 0002 every pending orphan was retried on every sweep, so a tenant whose
orphans never match stayed "due" for 7 days (10,080 examinations each) and
a fresh, matchable orphan could wait behind thousands of hopeless ones. From
here an orphan is *due* when it is past grace, inside max age, not parked, and

* ``next_attempt_at IS NULL``: never examined, or a delivery that can match it
  appeared since its last examination; or
* ``next_attempt_at <= now()``: its retry time came. After each unmatched
  examination the sweep sets ``next_attempt_at = now() + 1, 2, 4, 8, 16, then
  30 minutes`` (about 340 examinations in 7 days instead of 10,080).

New queue columns:

* ``provider``, ``provider_message_id``: the orphan's match key, extracted ONCE
  when the ledger trigger queues it, with the rules of the sweep's find
  (``provider_message_id``, then ``message_id``, then ``sg_message_id``; first
  in ``metadata``, then in ``normalized_payload``; a non-empty JSON string
  only). The ledger is append-only, so the key can never go stale. The sweep
  reads it from here instead of re-parsing JSON.
* ``next_attempt_at``: as above (NULL = due now).
* ``linkable_at``: when a matching delivery became available (set by either
  trigger, cleared by an unmatched examination); the reconciliation-lag check
  measures from ``GREATEST(linkable_at, orphan_inserted_at + grace)``.

``mailglass_deliveries_wake_orphans`` (statement level, ``AFTER INSERT``,
transition table: one call per INSERT/COPY/bulk load) and
``mailglass_deliveries_wake_orphans_on_rekey`` (row level ``AFTER UPDATE OF
tenant_id, provider, provider_message_id`` with a ``WHEN`` that compares
OLD and NEW: PostgreSQL allows no transition table on a column-list trigger,
and this form is never even called for other updates, e.g. the reconciler's
projection writes) mark the matching pending orphans due now and record
``linkable_at``. Each delivery row costs one probe of
``mailglass_reconciliation_queue_match_index``; the SendGrid rule of
``deliveries.lookup`` (an orphan's ``<id>.filter...`` matches a delivery
storing ``<id>``) is kept by indexing ``(tenant_id, md5(key))`` where the
key is the message id, for SendGrid its part before the first dot (hashed so
that an index row stays small whatever a webhook sent), then filtering
exactly as the lookup does. A delivery that already
matches an arriving orphan (plain-SQL writers insert the delivery first) is
noticed by the ledger trigger, which records ``linkable_at`` with one probe of
the delivery unique index.

Every trigger function here is ``SECURITY DEFINER`` (owned by the schema
owner who migrates) with a pinned ``search_path``, so neither the sending
application's role (which writes deliveries) nor the ingest/reconciler role
(which appends to the ledger) needs INSERT or DELETE on the queue: it is the
triggers' bookkeeping, not theirs. ``sql/grants.sql`` grants the reconciler
only SELECT and UPDATE on it.

Concurrency: the delivery trigger UPDATEs queue rows, so it waits for a sweep
that holds the same orphan ``FOR UPDATE`` (for that sweep's transaction, at
most a few seconds) and then marks it due on the committed row: a mark is
never lost. It only writes rows that are not already due and linkable.

Existing rows keep their state: the key columns are backfilled from the
ledger, an examined orphan gets ``next_attempt_at = last_attempted_at +
backoff(attempts)``, and an orphan whose delivery already exists becomes due
now with ``linkable_at = now()``.

Indexes, all partial on ``parked_at IS NULL``: the per-tenant fresh scan
``(tenant_id, orphan_inserted_at, event_id) WHERE next_attempt_at IS NULL``,
the per-tenant retry scan ``(tenant_id, last_attempted_at, ...) WHERE
next_attempt_at IS NOT NULL``, and two all-tenant range indexes,
``(orphan_inserted_at)`` for fresh rows and ``(next_attempt_at)`` for retry
rows, so "anything due?" reads only due rows at 10,000 tenants; plus
``(orphan_inserted_at)`` over all pending rows for all-tenant stale parking,
``(tenant_id, linkable_at)`` over linkable pending rows for the lag check.
The two scan indexes of 0001 are replaced.
"""

from __future__ import annotations

from alembic import op

revision = "0003_due_orphans"
down_revision = "0002_ingest"
branch_labels = None
depends_on = None

UUID_RE = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
#: Minutes to wait after the n-th unmatched examination (n = 1..5); 30 after that.
BACKOFF_MINUTES = (1, 2, 4, 8, 16)
BACKOFF_CAP_MINUTES = 30
_MESSAGE_ID_KEYS = ("provider_message_id", "message_id", "sg_message_id")


def _text_at(alias: str, column: str, key: str) -> str:
    return (
        f"CASE WHEN jsonb_typeof({alias}.{column} -> '{key}') = 'string' "
        f"THEN NULLIF({alias}.{column} ->> '{key}', '') END"
    )


def provider_sql(alias: str) -> str:
    return f"COALESCE({_text_at(alias, 'metadata', 'provider')}, {_text_at(alias, 'normalized_payload', 'provider')})"


def message_id_sql(alias: str) -> str:
    keys = (_text_at(alias, c, k) for c in ("metadata", "normalized_payload") for k in _MESSAGE_ID_KEYS)
    return "COALESCE(" + ", ".join(keys) + ")"


def match_key_sql(provider: str, message_id: str) -> str:
    """The indexed probe key: SendGrid ids up to the first dot (every id deliveries.lookup accepts shares it).

    Hashed: an index row must stay small whatever a webhook sent (a 1 MB message id is stored, looked up
    and never matches; it must not make the insert fail). The probe rechecks the ids exactly.
    """
    return f"md5(CASE WHEN {provider} = 'sendgrid' THEN split_part({message_id}, '.', 1) ELSE {message_id} END)"


def matches_sql(delivery_id_col: str, provider: str, message_id: str) -> str:
    """deliveries.lookup's rule: the delivery's id is the orphan's, or (SendGrid) its part before .filter / '.'."""
    return (
        f"{delivery_id_col} IN ({message_id}, "
        f"CASE WHEN {provider} = 'sendgrid' THEN split_part({message_id}, '.filter', 1) END, "
        f"CASE WHEN {provider} = 'sendgrid' THEN split_part({message_id}, '.', 1) END)"
    )


def backoff_sql(attempts: str) -> str:
    steps = ", ".join(str(m) for m in BACKOFF_MINUTES)
    return f"make_interval(mins => COALESCE((ARRAY[{steps}])[{attempts}], {BACKOFF_CAP_MINUTES}))"


_QUEUE_KEY = match_key_sql("q.provider", "q.provider_message_id")

# The orphans a delivery row `n` (or NEW) can link, through the match index; OFFSET 0 keeps it a
# parameterised probe per delivery row whatever the planner guesses about the transition table.
_WAKE_PROBE = """
    SELECT q.event_id
      FROM mailglass_reconciliation_queue q
     WHERE q.parked_at IS NULL
       AND q.tenant_id = {d}.tenant_id
       AND {queue_key} = {delivery_key}
       AND q.provider = {d}.provider
       AND {matches}
       AND (q.next_attempt_at IS NOT NULL OR q.linkable_at IS NULL)
    OFFSET 0
"""


def _wake_probe(alias: str) -> str:
    return _WAKE_PROBE.format(
        d=alias,
        queue_key=_QUEUE_KEY,
        delivery_key=match_key_sql(f"{alias}.provider", f"{alias}.provider_message_id"),
        matches=matches_sql(f"{alias}.provider_message_id", "q.provider", "q.provider_message_id"),
    )


def _delivery_probe(message_id: str) -> str:
    # Equality on both columns of the delivery unique index: a one-row probe whatever the statistics say.
    return (
        "EXISTS (SELECT 1 FROM mailglass_deliveries d WHERE d.provider = x.provider"
        f" AND d.provider_message_id = {message_id} AND d.tenant_id = n.tenant_id)"
    )


# deliveries.lookup's rule from the orphan's side: its own id, or (SendGrid) the part before .filter / '.'.
_SG_FILTER = "split_part(x.provider_message_id, '.filter', 1)"
_SG_DOT = "split_part(x.provider_message_id, '.', 1)"
_DELIVERY_EXISTS = (
    f"({_delivery_probe('x.provider_message_id')} OR (x.provider = 'sendgrid'"
    f" AND ({_delivery_probe(_SG_FILTER)} OR {_delivery_probe(_SG_DOT)})))"
)

UPGRADE = f"""
ALTER TABLE mailglass_reconciliation_queue
    ADD COLUMN IF NOT EXISTS provider text,
    ADD COLUMN IF NOT EXISTS provider_message_id text,
    ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz,
    ADD COLUMN IF NOT EXISTS linkable_at timestamptz;

-- Backfill: keys from the ledger, retry times from the attempts made so far.
UPDATE mailglass_reconciliation_queue q
   SET provider = {provider_sql("e")},
       provider_message_id = {message_id_sql("e")},
       next_attempt_at = CASE WHEN q.last_attempted_at IS NOT NULL AND q.attempts > 0
                              THEN q.last_attempted_at + {backoff_sql("q.attempts")} END
  FROM mailglass_events e
 WHERE e.id = q.event_id;

-- A pending orphan whose delivery already exists is due now (linkable since this migration saw it).
UPDATE mailglass_reconciliation_queue q
   SET next_attempt_at = NULL, linkable_at = now()
 WHERE q.parked_at IS NULL
   AND EXISTS (SELECT 1 FROM mailglass_deliveries d
                WHERE d.provider = q.provider
                  AND {matches_sql("d.provider_message_id", "q.provider", "q.provider_message_id")}
                  AND d.tenant_id = q.tenant_id);

DROP INDEX IF EXISTS mailglass_reconciliation_queue_tenant_scan_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_scan_index;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_fresh_index
    ON mailglass_reconciliation_queue (tenant_id, orphan_inserted_at, event_id)
    WHERE parked_at IS NULL AND next_attempt_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_retry_index
    ON mailglass_reconciliation_queue (tenant_id, last_attempted_at, orphan_inserted_at, event_id)
    WHERE parked_at IS NULL AND next_attempt_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_due_fresh_index
    ON mailglass_reconciliation_queue (orphan_inserted_at) INCLUDE (tenant_id)
    WHERE parked_at IS NULL AND next_attempt_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_due_retry_index
    ON mailglass_reconciliation_queue (next_attempt_at) INCLUDE (tenant_id, orphan_inserted_at)
    WHERE parked_at IS NULL AND next_attempt_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_pending_age_index
    ON mailglass_reconciliation_queue (orphan_inserted_at) WHERE parked_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_linkable_index
    ON mailglass_reconciliation_queue (tenant_id, linkable_at)
    WHERE parked_at IS NULL AND linkable_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_match_index
    ON mailglass_reconciliation_queue (tenant_id, {match_key_sql("provider", "provider_message_id")})
    WHERE parked_at IS NULL;

-- The ledger trigger of 0001, now also extracting the match key and noticing a delivery that is
-- already there; SECURITY DEFINER so the inserting role needs no privilege on the queue.
CREATE OR REPLACE FUNCTION mailglass_track_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO mailglass_reconciliation_queue
        (event_id, tenant_id, orphan_inserted_at, provider, provider_message_id, linkable_at)
    SELECT n.id, n.tenant_id, n.inserted_at, x.provider, x.provider_message_id,
           CASE WHEN x.provider IS NOT NULL AND x.provider_message_id IS NOT NULL AND {_DELIVERY_EXISTS}
                THEN now() END
      FROM new_events n
     CROSS JOIN LATERAL (SELECT {provider_sql("n")} AS provider,
                                {message_id_sql("n")} AS provider_message_id) x
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

-- One call per INSERT statement (COPY and multi-row INSERT included), one index probe per row.
CREATE OR REPLACE FUNCTION mailglass_wake_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    UPDATE mailglass_reconciliation_queue q
       SET next_attempt_at = NULL, linkable_at = COALESCE(q.linkable_at, now())
     WHERE q.event_id = ANY (ARRAY(
            SELECT w.event_id
              FROM new_deliveries n
             CROSS JOIN LATERAL ({_wake_probe("n")}) w
             WHERE n.provider IS NOT NULL AND n.provider_message_id IS NOT NULL))
       AND q.parked_at IS NULL
       AND (q.next_attempt_at IS NOT NULL OR q.linkable_at IS NULL);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION mailglass_wake_orphans_on_rekey() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NEW.provider IS NOT NULL AND NEW.provider_message_id IS NOT NULL THEN
        UPDATE mailglass_reconciliation_queue q
           SET next_attempt_at = NULL, linkable_at = COALESCE(q.linkable_at, now())
         WHERE q.event_id IN ({_wake_probe("NEW")});
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY ARRAY['mailglass_track_orphans()', 'mailglass_wake_orphans()',
                              'mailglass_wake_orphans_on_rekey()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn, current_schema());
        -- Trigger plans are cached for the session, planned on whatever the tables held at the first
        -- call; never let a plan made on an empty queue turn a probe into a scan per delivery row.
        EXECUTE format('ALTER FUNCTION %s SET enable_seqscan = off', fn);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END
$$;

DROP TRIGGER IF EXISTS mailglass_deliveries_wake_orphans ON mailglass_deliveries;
CREATE TRIGGER mailglass_deliveries_wake_orphans
    AFTER INSERT ON mailglass_deliveries
    REFERENCING NEW TABLE AS new_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION mailglass_wake_orphans();
DROP TRIGGER IF EXISTS mailglass_deliveries_wake_orphans_on_rekey ON mailglass_deliveries;
CREATE TRIGGER mailglass_deliveries_wake_orphans_on_rekey
    AFTER UPDATE OF tenant_id, provider, provider_message_id ON mailglass_deliveries
    FOR EACH ROW
    WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
          OR OLD.provider IS DISTINCT FROM NEW.provider
          OR OLD.provider_message_id IS DISTINCT FROM NEW.provider_message_id)
    EXECUTE FUNCTION mailglass_wake_orphans_on_rekey();
"""

DOWNGRADE = f"""
DROP TRIGGER IF EXISTS mailglass_deliveries_wake_orphans_on_rekey ON mailglass_deliveries;
DROP TRIGGER IF EXISTS mailglass_deliveries_wake_orphans ON mailglass_deliveries;
DROP FUNCTION IF EXISTS mailglass_wake_orphans_on_rekey();
DROP FUNCTION IF EXISTS mailglass_wake_orphans();
CREATE OR REPLACE FUNCTION mailglass_track_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
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
ALTER FUNCTION mailglass_track_orphans() RESET ALL;
GRANT EXECUTE ON FUNCTION mailglass_track_orphans() TO PUBLIC;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_match_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_linkable_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_pending_age_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_due_retry_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_due_fresh_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_retry_index;
DROP INDEX IF EXISTS mailglass_reconciliation_queue_fresh_index;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_tenant_scan_index
    ON mailglass_reconciliation_queue (tenant_id, last_attempted_at NULLS FIRST, orphan_inserted_at)
    WHERE parked_at IS NULL;
CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_scan_index
    ON mailglass_reconciliation_queue (last_attempted_at NULLS FIRST, orphan_inserted_at)
    WHERE parked_at IS NULL;
ALTER TABLE mailglass_reconciliation_queue
    DROP COLUMN IF EXISTS linkable_at,
    DROP COLUMN IF EXISTS next_attempt_at,
    DROP COLUMN IF EXISTS provider_message_id,
    DROP COLUMN IF EXISTS provider;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
