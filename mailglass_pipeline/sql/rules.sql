-- The shared rule that is a part of data-modifying statements, written once here (decision D28).
--
-- Every other shared rule is a database function of migration 0007 that the statements call and the
-- planner inlines (mailglass_reconciliation_due, _pick, _delivery, ...), or a statement of its own
-- that every writer runs (the projection: statement project of sql/deliveries.sql, decision D6).
-- This one cannot be either: a function cannot hold a data-modifying CTE the way a statement does,
-- nor run inside its snapshot. A statement that needs it holds a complete copy of it, marked by the
-- line "-- rule: <name>" before it and "-- end rule" after it, so every statement stays readable
-- whole, as PostgreSQL receives it. tests/core/test_reconcile_sql.py fails when a marked copy
-- differs from the text here (whitespace aside).
-- These blocks are pieces (an INSERT head), not statements: the loader never reads them and
-- sqlfluff skips this file (.sqlfluffignore); every statement holding them is linted whole.

-- rule: ledger_insert
-- The idempotent ledger append (statement append_events): ON CONFLICT on the partial unique
-- index of idempotency_key, inserted_at defaulting to now().
INSERT INTO mailglass_events (
    id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
    normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at
)
SELECT
    r.id, r.tenant_id, r.delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
    r.normalized_payload, r.metadata, r.trace_id, r.needs_reconciliation,
    COALESCE(r.inserted_at, now())
-- end rule
