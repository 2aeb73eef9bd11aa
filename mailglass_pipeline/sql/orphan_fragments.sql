-- Fragments of the orphan inspection statements (orphans.sql): the states' conditions over the
-- queue alias q, each written once. Spliced where a statement writes {name}
-- (mailglass_pipeline/queries.py); comment lines are their documentation and are not spliced.

-- fragment: keyed
-- It has a provider and a message id: a sweep can look its delivery up.
q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL

-- fragment: unkeyed
-- It lacks a provider or a message id: malformed.
(q.provider IS NULL OR q.provider_message_id IS NULL)

-- fragment: aged_out
-- Keyed, pending and past max age: stale, though no sweep has parked it yet.
q.parked_at IS NULL AND {keyed} AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)

-- fragment: parked_rows
-- Stale or malformed orphans (state), oldest first, at most limit: parked as such by a sweep, then
-- those not parked yet: stale ones past max age with no sweep since they aged out, malformed ones
-- not examined yet (an examination parks them, so an unparked malformed orphan is a fresh one).
SELECT * FROM (
    (SELECT q.*, CAST(:state AS text) AS state, 0 AS part
     FROM mailglass_reconciliation_queue AS q
     WHERE q.parked_at IS NOT NULL AND q.parked_reason = CAST(:state AS text) AND {in_scope}
     ORDER BY q.orphan_inserted_at
     LIMIT :limit)
    UNION ALL
    (SELECT q.*, CAST(:state AS text) AS state, 1 AS part
     FROM mailglass_reconciliation_queue AS q
     WHERE CASE CAST(:state AS text) WHEN 'stale' THEN {aged_out} ELSE {fresh} AND {unkeyed} END AND {in_scope}
     ORDER BY q.orphan_inserted_at
     LIMIT :limit)
) AS parked
ORDER BY parked.orphan_inserted_at
LIMIT :limit
