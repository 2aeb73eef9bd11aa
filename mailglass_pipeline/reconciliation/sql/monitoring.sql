-- Monitoring reads: what the schedule's tick, the sensor and the asset checks ask of the queue
-- (mailglass_pipeline/reconciliation/monitoring.py). Each reads index ranges of the queue (or walks an
-- index), never the ledger's history.

-- name: custom_plans
-- One plan per execution for the rest of the caller's transaction, as the sweep's set_timeouts
-- does: the scope (tenant_id null or not) and retry_all are bind parameters that only a custom
-- plan folds; psycopg prepares a statement run often, and a generic plan would keep the OR.
SELECT set_config('plan_cache_mode', 'force_custom_plan', TRUE) AS plan_cache_mode;

-- name: due_summary
-- Tenants and orphans due now, and how long the longest-waiting one has been due: the tick's
-- question before launching a run. Two partial-index range scans (mailglass_reconciliation_due).
SELECT
    count(DISTINCT d.tenant_id) AS tenants,
    count(*) AS orphans,
    EXTRACT(EPOCH FROM now() - min(d.due_since)) AS oldest
FROM mailglass_reconciliation_due(:tenant_id, :grace_seconds, :max_age_minutes, :retry_all, :run_started) AS d;

-- name: due_tenants
-- Tenants with at least one orphan a sweep would examine now.
SELECT DISTINCT d.tenant_id
FROM mailglass_reconciliation_due(:tenant_id, :grace_seconds, :max_age_minutes, :retry_all, :run_started) AS d
ORDER BY d.tenant_id;

-- name: reconciliation_lag
-- Linkable orphans still pending that have waited longer than threshold_seconds since they
-- became linkable, and the longest wait (the reconciliation_lag check).
SELECT
    count(*) AS n,
    EXTRACT(EPOCH FROM now() - min(l.since)) AS longest
FROM mailglass_reconciliation_linkable(:tenant_id, :grace_seconds, :max_age_minutes) AS l
WHERE l.since < now() - make_interval(secs => :threshold_seconds);

-- name: stale_orphans
-- Orphans past max age still unreconciled (parked stale, or pending and aged out since the last
-- sweep), and the age of the oldest.
SELECT
    count(*) AS n,
    EXTRACT(EPOCH FROM now() - min(q.orphan_inserted_at)) AS oldest
FROM mailglass_reconciliation_queue AS q
WHERE
    (CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))
    AND (
        q.parked_reason = 'stale'
        OR (q.parked_at IS NULL AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes))
    );

-- name: known_tenants
-- Every tenant with a delivery or a queued orphan: loose index scans, in time proportional to the
-- number of tenants, not rows (PostgreSQL has no skip scan before 18). Every queue index that
-- leads with tenant_id is partial: each scan names its index's predicate (pending: the age index;
-- parked: the parked index), or it is a sequential scan per step (12 s at 10,000 tenants
-- instead of tens of ms).
WITH RECURSIVE d AS (
    (SELECT tenant_id FROM mailglass_deliveries ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (
        SELECT x.tenant_id FROM mailglass_deliveries AS x
        WHERE x.tenant_id > d.tenant_id
        ORDER BY x.tenant_id LIMIT 1
    )
    FROM d WHERE d.tenant_id IS NOT NULL
),

q AS (
    (
        SELECT tenant_id FROM mailglass_reconciliation_queue
        WHERE parked_at IS NULL ORDER BY tenant_id LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT x.tenant_id FROM mailglass_reconciliation_queue AS x
        WHERE x.parked_at IS NULL AND x.tenant_id > q.tenant_id
        ORDER BY x.tenant_id LIMIT 1
    )
    FROM q WHERE q.tenant_id IS NOT NULL
),

p AS (
    (
        SELECT tenant_id FROM mailglass_reconciliation_queue
        WHERE parked_at IS NOT NULL ORDER BY tenant_id LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT x.tenant_id FROM mailglass_reconciliation_queue AS x
        WHERE x.parked_at IS NOT NULL AND x.tenant_id > p.tenant_id
        ORDER BY x.tenant_id LIMIT 1
    )
    FROM p WHERE p.tenant_id IS NOT NULL
)

SELECT tenant_id FROM d WHERE tenant_id IS NOT NULL
UNION
SELECT tenant_id FROM q WHERE tenant_id IS NOT NULL
UNION
SELECT tenant_id FROM p WHERE tenant_id IS NOT NULL
ORDER BY tenant_id;
