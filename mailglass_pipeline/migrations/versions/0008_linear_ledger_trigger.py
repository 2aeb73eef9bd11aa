"""The ledger trigger in time linear in the rows a statement appends (it was quadratic in reconciled events).

Revision ID: 0008_linear_ledger_trigger
Revises: 0007_shared_rules
Create Date: 2026-12-07

0006's ``mailglass_track_orphans`` found the orphans a statement's ``reconciled`` events name (``done``),
deleted the queue rows no other transaction held (``gone``), and signalled the rest with
``done ... WHERE NOT EXISTS (SELECT 1 FROM gone ...)``. PostgreSQL estimates a transition table's
filtered rows at 1, so that anti join was planned as a nested loop over two CTE scans: every done row
compared with every gone row. One statement appending 10,000 ``reconciled`` events (a sweep's write at
the default ``max_total``, or a bulk load of history) spent about 4 s in it, 100,000 about 430 s
(measured: ``benchmarks.datasets.load_history``, 5k/10k/20k orphans 1.0/3.8/17.7 s before, linear after).

Here the signals are the done orphans whose queue row is still there and not in ``gone``, written as
``NOT IN (SELECT ... FROM gone)``: PostgreSQL hashes that subplan whatever the estimate, so the cost is
one hash of ``gone`` and one probe per orphan. The rest of the body is 0006's: the event's provider and
message id from 0007's functions, and the delivery probe as 0006 wrote it, one equality per key on the
unique ``(provider, provider_message_id)`` index. Not 0007's ``mailglass_reconciliation_delivery``
(``= ANY`` of three ids, ordered): right after a bulk insert of deliveries, before any ANALYZE, the
planner chose the tenant's index for it and scanned the tenant's deliveries once per orphan
(``tests/reliability/test_crash.py``'s seed: minutes for 17,000 rows). The function's settings (pinned
``search_path``, no sequential scan, no JIT) are set again, since ``CREATE OR REPLACE`` drops them.
Downgrade keeps this body: it answers as 0006's did.
"""

from __future__ import annotations

from alembic import op

from mailglass_pipeline.migrations import online_ddl as online
from mailglass_pipeline.migrations.mailglass_ddl import quote_ident

revision = "0008_linear_ledger_trigger"
down_revision = "0007_shared_rules"
branch_labels = None
depends_on = None

UUID_RE = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# {q}: the schema, quoted; {inserted_at}: the orphan's insert time as an instant (Ecto's columns are
# timestamps without time zone, written in UTC).
_TRACK_ORPHANS = """
CREATE OR REPLACE FUNCTION {q}.mailglass_track_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO {q}.mailglass_reconciliation_queue
        (event_id, tenant_id, orphan_inserted_at, provider, provider_message_id, linkable_at)
    SELECT n.id, n.tenant_id, {inserted_at}, x.provider, x.provider_message_id,
           CASE WHEN x.provider IS NOT NULL AND x.provider_message_id IS NOT NULL AND (
                     EXISTS (SELECT 1 FROM {q}.mailglass_deliveries d WHERE d.provider = x.provider
                              AND d.provider_message_id = x.provider_message_id AND d.tenant_id = n.tenant_id)
                     OR (x.provider = 'sendgrid' AND (
                         EXISTS (SELECT 1 FROM {q}.mailglass_deliveries d WHERE d.provider = x.provider
                                  AND d.provider_message_id = split_part(x.provider_message_id, '.filter', 1)
                                  AND d.tenant_id = n.tenant_id)
                         OR EXISTS (SELECT 1 FROM {q}.mailglass_deliveries d WHERE d.provider = x.provider
                                     AND d.provider_message_id = split_part(x.provider_message_id, '.', 1)
                                     AND d.tenant_id = n.tenant_id))))
                THEN now() END
      FROM new_events n
     CROSS JOIN LATERAL (
           SELECT {q}.mailglass_reconciliation_event_provider(n.metadata, n.normalized_payload) AS provider,
                  {q}.mailglass_reconciliation_event_message_id(n.metadata, n.normalized_payload)
                      AS provider_message_id) x
     WHERE n.needs_reconciliation AND n.delivery_id IS NULL
    ON CONFLICT (event_id) DO NOTHING;

    -- A reconciled event's orphan leaves the queue now if no other transaction holds its row (the
    -- appending sweep's own rows included); a row a sweep holds is left to it, with a signal.
    WITH done AS (
        SELECT DISTINCT CAST(n.metadata ->> 'reconciled_from_event_id' AS uuid) AS event_id
          FROM new_events n
         WHERE n.type = 'reconciled' AND n.metadata ->> 'reconciled_from_event_id' ~ '{uuid_re}'
    ), gone AS (
        DELETE FROM {q}.mailglass_reconciliation_queue q
         WHERE q.event_id IN (SELECT l.event_id FROM {q}.mailglass_reconciliation_queue l
                               WHERE l.event_id IN (SELECT done.event_id FROM done)
                                 FOR UPDATE SKIP LOCKED)
        RETURNING q.event_id
    )
    INSERT INTO {q}.mailglass_reconciliation_wakes (reconciled_event_id)
    SELECT q.event_id FROM {q}.mailglass_reconciliation_queue q
     WHERE q.event_id IN (SELECT done.event_id FROM done)
       AND q.event_id NOT IN (SELECT gone.event_id FROM gone);
    RETURN NULL;
END
$$"""


def _inserted_at(schema: str) -> str:
    data_type = op.get_bind().exec_driver_sql(
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_schema = %(s)s AND table_name = 'mailglass_events' AND column_name = 'inserted_at'",
        {"s": schema},
    )
    if data_type.scalar() == "timestamp without time zone":
        return "(n.inserted_at AT TIME ZONE 'UTC')"
    return "n.inserted_at"


def upgrade() -> None:
    schema = str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar())
    q = quote_ident(schema)
    body = _TRACK_ORPHANS.format(q=q, inserted_at=_inserted_at(schema), uuid_re=UUID_RE)
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        conn.exec_driver_sql(f"SET lock_timeout = '{online.LOCK_TIMEOUT}'")
        try:
            online.ddl(conn, body)
            fn = f"{q}.mailglass_track_orphans()"
            online.ddl(conn, f"ALTER FUNCTION {fn} RESET ALL")
            online.ddl(conn, f"ALTER FUNCTION {fn} SET search_path = pg_catalog, {q}, pg_temp")
            online.ddl(conn, f"ALTER FUNCTION {fn} SET enable_seqscan = off")
            online.ddl(conn, f"ALTER FUNCTION {fn} SET jit = off")
            online.ddl(conn, f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC")
        finally:
            conn.exec_driver_sql("RESET lock_timeout")


def downgrade() -> None:
    """Nothing to undo: the body answers as 0006's did, only faster."""
