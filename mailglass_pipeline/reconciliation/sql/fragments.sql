-- Fragments of the sweep's statements: the due rule and the fair allocation, each written once.
--
-- A fragment is spliced where a statement writes {name} (mailglass_pipeline/queries.py); its
-- comment lines are its documentation and are not spliced. Over the queue alias q throughout.
-- Three more fragments come from their Python homes: {projection} (projector.projection_ctes over
-- `won`), {notify} (projector.notify_select over `latest`) and {delivery_lookup}
-- (deliveries.lookup_lateral over `k`).

-- fragment: due_window
-- Past grace and inside max age (decision D4).
q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)

-- fragment: fresh
-- Never examined, or a delivery that can match it appeared since (the triggers clear next_attempt_at).
q.parked_at IS NULL AND q.next_attempt_at IS NULL

-- fragment: retry
-- Its retry time came. retry_all (an operator's manual sweep) ignores the backoff, but once per
-- run: a run of several transactions binds run_started, so an orphan it examined is not taken
-- again. Bound, not a second statement: under a custom plan (the sweep forces them) the CASE
-- folds to a constant and the retry index is still used (tests/perf/test_query_plans.py).
q.parked_at IS NULL
AND q.next_attempt_at <= CASE WHEN CAST(:retry_all AS boolean) THEN CAST('infinity' AS timestamptz) ELSE now() END
AND (CAST(:run_started AS timestamptz) IS NULL OR q.last_attempted_at < CAST(:run_started AS timestamptz))

-- fragment: in_scope
-- The tenant, or every tenant when tenant_id is null (folded away under a custom plan).
(CAST(:tenant_id AS text) IS NULL OR q.tenant_id = CAST(:tenant_id AS text))

-- fragment: fresh_since
-- When a fresh orphan became due: past grace and linkable.
GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.linkable_at)

-- fragment: retry_since
-- When a retry orphan became due: past grace and its retry time.
GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.next_attempt_at)

-- fragment: due_rows
-- Every due orphan in scope as (tenant_id, due_since): two range scans of partial indexes.
SELECT q.tenant_id, {fresh_since} AS due_since
  FROM mailglass_reconciliation_queue AS q
 WHERE {fresh} AND {due_window} AND {in_scope}
UNION ALL
SELECT q.tenant_id, {retry_since} AS due_since
  FROM mailglass_reconciliation_queue AS q
 WHERE {retry} AND {due_window} AND {in_scope}

-- fragment: linkable_waits
-- Linkable and still pending (its delivery committed: linkable_at), past grace, inside max age,
-- with how long it has waited since it became linkable.
SELECT q.tenant_id,
       now() - GREATEST(q.linkable_at, q.orphan_inserted_at + make_interval(secs => :grace_seconds)) AS waited
  FROM mailglass_reconciliation_queue AS q
 WHERE q.parked_at IS NULL AND q.linkable_at IS NOT NULL AND {due_window} AND {in_scope}

-- fragment: event_id
-- The provider's event id of the orphan's ledger row e: only a non-empty JSON string counts.
COALESCE(
    CASE WHEN jsonb_typeof(e.metadata -> 'provider_event_id') = 'string'
         THEN NULLIF(e.metadata ->> 'provider_event_id', '') END,
    CASE WHEN jsonb_typeof(e.normalized_payload -> 'provider_event_id') = 'string'
         THEN NULLIF(e.normalized_payload ->> 'provider_event_id', '') END)

-- fragment: backoff
-- The wait after this unmatched examination of q (its (q.attempts + 1)-th): backoff_steps minutes
-- (bound from mailglass_pipeline/settings.py, the one home of the steps), then backoff_cap.
make_interval(mins => COALESCE((CAST(:backoff_steps AS int[]))[q.attempts + 1], CAST(:backoff_cap AS int)))

-- fragment: water_fill(alloc, source, cap)
-- Fair shares when the total cap binds ("water filling"), over {source} (tenant_id, take, since)
-- and a one-row {cap}: sorted by take, a tenant is served whole when, were every larger tenant
-- cut to its take, the total still fits the cap. The others share what is left equally: quota q
-- each, and the extra left over goes one each to the tenants waiting longest. So each tenant's
-- first k orphans are taken before any tenant's (k+1)-th, in one statement whatever the number of
-- tenants. Defines {alloc} (tenant_id, take) and three helper CTEs named after it.
{alloc}_sized AS (
    SELECT tenant_id, take, since,
           CAST(sum(take) OVER (ORDER BY take, tenant_id ROWS UNBOUNDED PRECEDING) AS bigint) AS prefix,
           row_number() OVER (ORDER BY take, tenant_id) AS pos,
           count(*) OVER () AS tenants
      FROM {source}
     WHERE take > 0
), {alloc}_flagged AS (
    SELECT s.*, s.prefix + s.take * (s.tenants - s.pos) <= c.cap AS whole
      FROM {alloc}_sized AS s CROSS JOIN {cap} AS c
), {alloc}_fill AS (
    SELECT count(*) FILTER (WHERE whole) AS whole_n,
           CAST(COALESCE(sum(take) FILTER (WHERE whole), 0) AS bigint) AS whole_sum,
           count(*) AS tenants
      FROM {alloc}_flagged
), {alloc} AS (
    SELECT f.tenant_id,
           CASE WHEN f.whole THEN f.take
                ELSE (c.cap - x.whole_sum) / NULLIF(x.tenants - x.whole_n, 0)
                     + CASE WHEN row_number() OVER (PARTITION BY f.whole ORDER BY f.since, f.tenant_id)
                                 <= (c.cap - x.whole_sum) % NULLIF(x.tenants - x.whole_n, 0)
                            THEN 1 ELSE 0 END
           END AS take
      FROM {alloc}_flagged AS f CROSS JOIN {alloc}_fill AS x CROSS JOIN {cap} AS c
)

-- fragment: pick(alloc)
-- Per tenant of {alloc}, its take: fresh orphans whose delivery is known to be there (linkable_at),
-- then the other fresh ones, each oldest first, then retry-due ones least recently examined first
-- (UNION ALL ... LIMIT: a later scan runs only when the earlier ones come back short). Each scan
-- locks SKIP LOCKED below its LIMIT, so a concurrent sweep takes the next orphans instead of waiting.
SELECT p.*
  FROM {alloc} AS a
 CROSS JOIN LATERAL (
       SELECT * FROM (
           SELECT q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
                  0 AS cls, q.orphan_inserted_at AS k1, NULL::timestamptz AS k2
             FROM mailglass_reconciliation_queue AS q
            WHERE q.tenant_id = a.tenant_id AND q.linkable_at IS NOT NULL AND {fresh} AND {due_window}
            ORDER BY q.orphan_inserted_at, q.event_id
            LIMIT a.take
              FOR UPDATE OF q SKIP LOCKED) AS linkable
       UNION ALL
       SELECT * FROM (
           SELECT q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
                  1 AS cls, q.orphan_inserted_at AS k1, NULL::timestamptz AS k2
             FROM mailglass_reconciliation_queue AS q
            WHERE q.tenant_id = a.tenant_id AND q.linkable_at IS NULL AND {fresh} AND {due_window}
            ORDER BY q.orphan_inserted_at, q.event_id
            LIMIT a.take
              FOR UPDATE OF q SKIP LOCKED) AS fresh
       UNION ALL
       SELECT * FROM (
           SELECT q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
                  2 AS cls, q.last_attempted_at AS k1, q.orphan_inserted_at AS k2
             FROM mailglass_reconciliation_queue AS q
            WHERE q.tenant_id = a.tenant_id AND {retry} AND {due_window}
            ORDER BY q.last_attempted_at, q.orphan_inserted_at, q.event_id
            LIMIT a.take
              FOR UPDATE OF q SKIP LOCKED) AS retry
       LIMIT a.take) AS p
 WHERE a.take > 0

-- fragment: batch_columns(picked)
-- The batch read from {picked} and the orphans' ledger rows, with the delivery each links to when
-- link is true (the lookup rule's one home is deliveries.lookup_lateral). With link false the
-- key row is empty, the lookup never probes, and delivery_id is null: attempt_link fills it.
-- An occurred_at of 'infinity' is valid timestamptz but no driver can load it: such an orphan
-- reads as malformed (parked), not as a row that fails every sweep of its tenant forever.
SELECT e.id, e.tenant_id, e.type,
       CASE WHEN isfinite(e.occurred_at) THEN e.occurred_at END AS occurred_at,
       e.inserted_at, p.attempts, p.provider, p.provider_message_id,
       {event_id} AS provider_event_id,
       lk.id AS delivery_id
  FROM {picked} AS p
  JOIN mailglass_events AS e ON e.id = p.event_id
  LEFT JOIN LATERAL (
       SELECT p.tenant_id, p.provider, p.provider_message_id AS message_id
        WHERE CAST(:link AS boolean)
          AND p.provider IS NOT NULL AND p.provider_message_id IS NOT NULL AND isfinite(e.occurred_at)
       ) AS k ON true
  LEFT JOIN {delivery_lookup} AS lk ON true
 ORDER BY p.tenant_id, p.cls, p.k1, p.k2, p.event_id
