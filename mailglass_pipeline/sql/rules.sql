-- The shared rules that are parts of data-modifying statements, each written once here (decision D28).
--
-- Every other shared rule is a database function of migration 0007 that the statements call and the
-- planner inlines (mailglass_reconciliation_due, _pick, _delivery, ...). These three cannot be: a
-- function cannot hold a data-modifying CTE the way a statement does, nor run inside its snapshot.
-- A statement that needs one holds a complete copy of it, marked by the line "-- rule: <name>" before
-- it and "-- end rule" after it, so every statement stays readable whole, as PostgreSQL receives it.
-- tests/core/test_reconcile_sql.py fails when a marked copy, in a .sql file or a benchmark, differs
-- from the text here (whitespace aside).
-- These blocks are pieces (CTE lists, an INSERT head), not statements: the loader never reads them
-- and sqlfluff skips this file (.sqlfluffignore); every statement holding them is linted whole.

-- rule: projection
-- The projection rules (decision D6) over won (delivery_id, type, occurred_at, ord): the latest
-- event wins (on an occurred_at tie the lowest ord), only if later than last_event_at; set-once
-- times (earliest, only while null); terminal latches; lock_version + 1 and updated_at on each
-- write. Its deliveries are locked in id order first (projector.lock, or rule lock_linked).
proj_agg AS (
    SELECT
        delivery_id,
        (array_agg(type ORDER BY occurred_at DESC, ord ASC))[1] AS latest_type,
        max(occurred_at) AS latest_at,
        min(occurred_at) FILTER (WHERE type = 'dispatched') AS dispatched_at,
        min(occurred_at) FILTER (WHERE type = 'delivered') AS delivered_at,
        min(occurred_at) FILTER (WHERE type = 'bounced') AS bounced_at,
        min(occurred_at) FILTER (WHERE type = 'complained') AS complained_at,
        min(occurred_at) FILTER (WHERE type = 'suppressed') AS suppressed_at,
        bool_or(type IN ('delivered', 'bounced', 'complained', 'rejected', 'failed', 'suppressed')) AS terminal
    FROM won
    GROUP BY delivery_id
),

proj_upd AS (
    UPDATE mailglass_deliveries AS d SET
        last_event_type = CASE WHEN a.latest_at > d.last_event_at THEN a.latest_type ELSE d.last_event_type END,
        last_event_at = GREATEST(d.last_event_at, a.latest_at),
        dispatched_at = COALESCE(d.dispatched_at, a.dispatched_at),
        delivered_at = COALESCE(d.delivered_at, a.delivered_at),
        bounced_at = COALESCE(d.bounced_at, a.bounced_at),
        complained_at = COALESCE(d.complained_at, a.complained_at),
        suppressed_at = COALESCE(d.suppressed_at, a.suppressed_at),
        terminal = d.terminal OR a.terminal,
        lock_version = d.lock_version + 1,
        updated_at = now()
    FROM proj_agg AS a
    WHERE d.id = a.delivery_id
    RETURNING d.id
)
-- end rule

-- rule: lock_linked
-- Inside a store statement: the deliveries of linked locked in id order (the LockRows node sits
-- above the sort), and won lets linked's rows through only after an uncorrelated count over
-- proj_locked, an InitPlan that runs to completion before the first row reaches the projection.
proj_locked AS MATERIALIZED (
    SELECT d.id
    FROM mailglass_deliveries AS d
    WHERE d.id IN (SELECT linked.delivery_id FROM linked)
    ORDER BY d.id
    FOR NO KEY UPDATE OF d
),

won AS (
    SELECT * FROM linked
    WHERE (SELECT count(*) FROM proj_locked) >= 0
)
-- end rule

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
