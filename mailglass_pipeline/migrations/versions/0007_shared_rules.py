"""The statements' shared rules as database functions the planner inlines: one home, no copies.

Revision ID: 0007_shared_rules
Revises: 0006_beside_mailglass
Create Date: 2026-12-07

Until here each statement held a marked copy of the rules it shares with others (``sql/rules.sql``,
compared by a test). From here each rule is one function of this revision (decision D28) that the
statements call: the due window, the retry rule, the due rows, the linkable waits, a tenant's pick, the
all-tenant allocation's water filling, the
delivery lookup and its message-id match, an event's provider and message-id keys, the parked listing,
the unqueued orphans, the notification.

Every function is ``LANGUAGE sql``, one statement, ``STABLE`` or ``IMMUTABLE`` (``VOLATILE`` only for the
notification, which sends one), not ``STRICT``, not ``SECURITY DEFINER`` and without a ``SET`` clause:
what PostgreSQL needs to inline it. A scalar one is replaced by its expression while the query is
planned, a set-returning one called in ``FROM`` by its ``SELECT`` as a subquery, so the planner sees the
same text the statements held before: under the callers' custom plans the bound parameters fold to
constants and the partial indexes match as before (``tests/perf/test_query_plans.py``). Relations and
the functions they call are named with their schema; they run with the caller's rights.

``mailglass_reconciliation_pick`` locks ``FOR UPDATE SKIP LOCKED``: it must be called in ``FROM`` (where it
is inlined); called elsewhere PostgreSQL refuses a lock in a non-volatile function.
"""

from __future__ import annotations

from alembic import op

from mailglass_pipeline.migrations import online_ddl as online
from mailglass_pipeline.migrations.mailglass_ddl import quote_ident

revision = "0007_shared_rules"
down_revision = "0006_beside_mailglass"
branch_labels = None
depends_on = None

LOCK_TIMEOUT = online.LOCK_TIMEOUT

# Each a complete CREATE FUNCTION; {q} is the schema, quoted. Order matters: a body is checked when created.
FUNCTIONS = (
    # The due window (decision D4): past grace and inside max age.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_in_window(
    inserted_at timestamptz, grace_seconds double precision, max_age_minutes integer
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT
    inserted_at <= now() - make_interval(secs => grace_seconds)
    AND inserted_at > now() - make_interval(mins => max_age_minutes)
$$""",
    # Its retry time came (next_attempt_at, set by the backoff after an unmatched examination).
    # retry_all (an operator's manual sweep) ignores the backoff, but once per run: a run of several
    # transactions binds run_started, so an orphan it examined is not taken again. Under a custom plan
    # the CASE folds to a constant and the retry index is still used.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_retry_due(
    parked_at timestamptz, next_attempt_at timestamptz, last_attempted_at timestamptz,
    retry_all boolean, run_started timestamptz
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT
    parked_at IS NULL
    AND next_attempt_at <= CASE WHEN retry_all THEN CAST('infinity' AS timestamptz) ELSE now() END
    AND (run_started IS NULL OR last_attempted_at < run_started)
$$""",
    # Every due orphan in scope (the tenant, or every tenant when scope_tenant is null), with the time
    # it became due: fresh ones (never examined, or woken by their delivery) and retry-due ones, two
    # range scans of the partial fresh and retry indexes.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_due(
    scope_tenant text, grace_seconds double precision, max_age_minutes integer,
    retry_all boolean, run_started timestamptz
) RETURNS TABLE (tenant_id text, due_since timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT
    q.tenant_id,
    GREATEST(q.orphan_inserted_at + make_interval(secs => grace_seconds), q.linkable_at)
FROM {q}.mailglass_reconciliation_queue AS q
WHERE
    q.parked_at IS NULL AND q.next_attempt_at IS NULL
    AND {q}.mailglass_reconciliation_in_window(q.orphan_inserted_at, grace_seconds, max_age_minutes)
    AND (scope_tenant IS NULL OR q.tenant_id = scope_tenant)
UNION ALL
SELECT
    q.tenant_id,
    GREATEST(q.orphan_inserted_at + make_interval(secs => grace_seconds), q.next_attempt_at)
FROM {q}.mailglass_reconciliation_queue AS q
WHERE
    {q}.mailglass_reconciliation_retry_due(
        q.parked_at, q.next_attempt_at, q.last_attempted_at, retry_all, run_started
    )
    AND {q}.mailglass_reconciliation_in_window(q.orphan_inserted_at, grace_seconds, max_age_minutes)
    AND (scope_tenant IS NULL OR q.tenant_id = scope_tenant)
$$""",
    # Linkable orphans still pending (their delivery committed: linkable_at) in the due window and in
    # scope, with the time they became linkable past grace: how long a linkable orphan has waited.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_linkable(
    scope_tenant text, grace_seconds double precision, max_age_minutes integer
) RETURNS TABLE (tenant_id text, since timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT
    q.tenant_id,
    GREATEST(q.linkable_at, q.orphan_inserted_at + make_interval(secs => grace_seconds))
FROM {q}.mailglass_reconciliation_queue AS q
WHERE
    q.parked_at IS NULL AND q.linkable_at IS NOT NULL
    AND {q}.mailglass_reconciliation_in_window(q.orphan_inserted_at, grace_seconds, max_age_minutes)
    AND (scope_tenant IS NULL OR q.tenant_id = scope_tenant)
$$""",
    # One tenant's take: fresh orphans whose delivery is known to be there (linkable_at), then the
    # other fresh ones, each oldest first, then retry-due ones least recently examined first (UNION
    # ALL ... LIMIT: a later scan runs only when the earlier ones come back short). Each scan locks
    # SKIP LOCKED below its LIMIT, so a concurrent sweep takes the next orphans instead of waiting.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_pick(
    of_tenant text, take bigint, grace_seconds double precision, max_age_minutes integer,
    retry_all boolean, run_started timestamptz
) RETURNS TABLE (
    event_id uuid, tenant_id text, attempts integer, provider text, provider_message_id text,
    cls integer, k1 timestamptz, k2 timestamptz
)
LANGUAGE sql STABLE PARALLEL UNSAFE AS $$
SELECT * FROM (
    SELECT
        q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
        0 AS cls, q.orphan_inserted_at AS k1, CAST(NULL AS timestamptz) AS k2
    FROM {q}.mailglass_reconciliation_queue AS q
    WHERE
        q.tenant_id = of_tenant AND q.linkable_at IS NOT NULL
        AND q.parked_at IS NULL AND q.next_attempt_at IS NULL
        AND {q}.mailglass_reconciliation_in_window(q.orphan_inserted_at, grace_seconds, max_age_minutes)
    ORDER BY q.orphan_inserted_at, q.event_id
    LIMIT take
    FOR UPDATE OF q SKIP LOCKED
) AS linkable
UNION ALL
SELECT * FROM (
    SELECT
        q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
        1 AS cls, q.orphan_inserted_at AS k1, CAST(NULL AS timestamptz) AS k2
    FROM {q}.mailglass_reconciliation_queue AS q
    WHERE
        q.tenant_id = of_tenant AND q.linkable_at IS NULL
        AND q.parked_at IS NULL AND q.next_attempt_at IS NULL
        AND {q}.mailglass_reconciliation_in_window(q.orphan_inserted_at, grace_seconds, max_age_minutes)
    ORDER BY q.orphan_inserted_at, q.event_id
    LIMIT take
    FOR UPDATE OF q SKIP LOCKED
) AS fresh
UNION ALL
SELECT * FROM (
    SELECT
        q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
        2 AS cls, q.last_attempted_at AS k1, q.orphan_inserted_at AS k2
    FROM {q}.mailglass_reconciliation_queue AS q
    WHERE
        q.tenant_id = of_tenant
        AND {q}.mailglass_reconciliation_retry_due(
            q.parked_at, q.next_attempt_at, q.last_attempted_at, retry_all, run_started
        )
        AND {q}.mailglass_reconciliation_in_window(q.orphan_inserted_at, grace_seconds, max_age_minutes)
    ORDER BY q.last_attempted_at, q.orphan_inserted_at, q.event_id
    LIMIT take
    FOR UPDATE OF q SKIP LOCKED
) AS retry
LIMIT take
$$""",
    # Water filling, one round of the all-tenant allocation: each tenant (tenant_ids) wants takes
    # orphans, waiting since sinces, and cap is what the round may give. Sorted by want, a tenant is
    # served whole when, were every larger tenant cut to its want, the total still fits the cap. The
    # others share what is left equally: quota each, and the extra left over goes one each to the
    # tenants waiting longest. So each tenant's first k orphans are given before any tenant's (k+1)-th.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_share(
    tenant_ids text[], takes bigint[], sinces timestamptz[], cap bigint
) RETURNS TABLE (tenant_id text, take bigint)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT
    f.tenant_id,
    CASE
        WHEN f.whole THEN f.take
        ELSE (cap - f.whole_sum) / NULLIF(f.tenants - f.whole_n, 0)
            + CASE
                WHEN row_number() OVER (PARTITION BY f.whole ORDER BY f.since, f.tenant_id)
                    <= mod(cap - f.whole_sum, NULLIF(f.tenants - f.whole_n, 0))
                    THEN 1
                ELSE 0
            END
    END
FROM (
    SELECT
        s.*,
        count(*) FILTER (WHERE s.whole) OVER () AS whole_n,
        CAST(COALESCE(sum(s.take) FILTER (WHERE s.whole) OVER (), 0) AS bigint) AS whole_sum
    FROM (
        SELECT
            w.*,
            w.prefix + w.take * (w.tenants - w.pos) <= cap AS whole
        FROM (
            SELECT
                u.tenant_id, u.take, u.since,
                CAST(sum(u.take) OVER (ORDER BY u.take, u.tenant_id ROWS UNBOUNDED PRECEDING) AS bigint) AS prefix,
                row_number() OVER (ORDER BY u.take, u.tenant_id) AS pos,
                count(*) OVER () AS tenants
            FROM unnest(tenant_ids, takes, sinces) AS u (tenant_id, take, since)
            WHERE u.take > 0
        ) AS w
    ) AS s
) AS f
$$""",
    # The message ids a delivery may be stored under for one an event carries (SendGrid: the send API
    # returns X-Message-Id, the webhooks carry it plus a '.filter...' suffix): the id itself, then for
    # SendGrid the part before '.filter' and the part before the first dot. Also in the wake triggers
    # of migrations 0003 and 0004 (tests/core/test_reconcile_sql.py holds them equal).
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_message_ids(
    provider text, message_id text
) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT ARRAY[
    message_id,
    CASE WHEN provider = 'sendgrid' THEN split_part(message_id, '.filter', 1) END,
    CASE WHEN provider = 'sendgrid' THEN split_part(message_id, '.', 1) END
]
$$""",
    # The delivery lookup (decision D8): the delivery of (tenant, provider, message id), or no row:
    # the exact message id first, always within the tenant (a message id that collides across
    # tenants never links across them), answered from the unique (provider, provider_message_id) index.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_delivery(
    key_tenant text, key_provider text, key_message_id text
) RETURNS SETOF uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT d.id
FROM {q}.mailglass_deliveries AS d
WHERE
    d.provider = key_provider
    AND d.provider_message_id = ANY({q}.mailglass_reconciliation_message_ids(key_provider, key_message_id))
    AND d.tenant_id = key_tenant
ORDER BY d.provider_message_id = key_message_id DESC
LIMIT 1
$$""",
    # A non-empty JSON string at key of doc, or null: a number, an object or '' is no value.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_json_text(doc jsonb, key text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN jsonb_typeof(doc -> key) = 'string' THEN NULLIF(doc ->> key, '') END
$$""",
    # An event's provider, from its metadata, else its normalized payload.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_event_provider(
    metadata jsonb, normalized_payload jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT COALESCE(
    {q}.mailglass_reconciliation_json_text(metadata, 'provider'),
    {q}.mailglass_reconciliation_json_text(normalized_payload, 'provider')
)
$$""",
    # An event's message id, by the message-id keys (provider_message_id, message_id, sg_message_id),
    # first in its metadata, then in its normalized payload. Also in the ledger trigger of migrations
    # 0003, 0004 and 0006 and in orphans._MESSAGE_ID_KEYS (tests/core/test_reconcile_sql.py holds them equal).
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_event_message_id(
    metadata jsonb, normalized_payload jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT COALESCE(
    {q}.mailglass_reconciliation_json_text(metadata, 'provider_message_id'),
    {q}.mailglass_reconciliation_json_text(metadata, 'message_id'),
    {q}.mailglass_reconciliation_json_text(metadata, 'sg_message_id'),
    {q}.mailglass_reconciliation_json_text(normalized_payload, 'provider_message_id'),
    {q}.mailglass_reconciliation_json_text(normalized_payload, 'message_id'),
    {q}.mailglass_reconciliation_json_text(normalized_payload, 'sg_message_id')
)
$$""",
    # An event's provider event id (what a reconciled event records), from its metadata, else its payload.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_event_provider_event_id(
    metadata jsonb, normalized_payload jsonb
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT COALESCE(
    {q}.mailglass_reconciliation_json_text(metadata, 'provider_event_id'),
    {q}.mailglass_reconciliation_json_text(normalized_payload, 'provider_event_id')
)
$$""",
    # Stale or malformed orphans (state) in scope, oldest first, at most lim: parked as such by a
    # sweep, then those not parked yet: stale ones past max age (keyed, pending) with no sweep since
    # they aged out, malformed ones (no provider or message id) not examined yet (an examination parks
    # them, so an unparked one is a fresh one).
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_parked(
    state text, scope_tenant text, max_age_minutes integer, lim bigint
) RETURNS SETOF {q}.mailglass_reconciliation_queue
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT * FROM (
    (
        SELECT q.*
        FROM {q}.mailglass_reconciliation_queue AS q
        WHERE
            q.parked_at IS NOT NULL AND q.parked_reason = state
            AND (scope_tenant IS NULL OR q.tenant_id = scope_tenant)
        ORDER BY q.orphan_inserted_at
        LIMIT lim
    )
    UNION ALL
    (
        SELECT q.*
        FROM {q}.mailglass_reconciliation_queue AS q
        WHERE
            CASE state
                WHEN 'stale' THEN
                    q.parked_at IS NULL
                    AND q.provider IS NOT NULL AND q.provider_message_id IS NOT NULL
                    AND q.orphan_inserted_at <= now() - make_interval(mins => max_age_minutes)
                ELSE
                    q.parked_at IS NULL AND q.next_attempt_at IS NULL
                    AND (q.provider IS NULL OR q.provider_message_id IS NULL)
            END
            AND (scope_tenant IS NULL OR q.tenant_id = scope_tenant)
        ORDER BY q.orphan_inserted_at
        LIMIT lim
    )
) AS parked
ORDER BY parked.orphan_inserted_at
LIMIT lim
$$""",
    # Pending orphans (needs_reconciliation, no delivery, no reconciled event) younger than the parked
    # retention (an older one's row may have been parked and pruned on purpose) that have no queue
    # row: no trigger saw them (mailglass doctor's queue check and its --repair). Walks the tenants of
    # Mailglass's needs-reconciliation index, one probe each, then each tenant's recent orphans along
    # it (OFFSET 0: a probe per tenant, never a join over the ledger): the cost follows the recent
    # orphans, not the ledger.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_unqueued(retention_days integer) RETURNS SETOF uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
WITH RECURSIVE tenants AS (
    (
        SELECT e.tenant_id
        FROM {q}.mailglass_events AS e
        WHERE e.needs_reconciliation
        ORDER BY e.tenant_id
        LIMIT 1
    )
    UNION ALL
    SELECT (
        SELECT e.tenant_id
        FROM {q}.mailglass_events AS e
        WHERE e.needs_reconciliation AND e.tenant_id > t.tenant_id
        ORDER BY e.tenant_id
        LIMIT 1
    )
    FROM tenants AS t
    WHERE t.tenant_id IS NOT NULL
)

SELECT e.id
FROM tenants AS t
CROSS JOIN LATERAL (
    SELECT o.id
    FROM {q}.mailglass_events AS o
    WHERE
        o.tenant_id = t.tenant_id AND o.needs_reconciliation AND o.delivery_id IS NULL
        AND o.inserted_at > CAST(now() AT TIME ZONE 'UTC' AS timestamp) - make_interval(days => retention_days)
    ORDER BY o.inserted_at
    OFFSET 0
) AS e
WHERE
    NOT EXISTS (SELECT 1 FROM {q}.mailglass_reconciliation_queue AS q WHERE q.event_id = e.id)
    AND NOT EXISTS (
        SELECT 1 FROM {q}.mailglass_events AS r WHERE r.idempotency_key = 'reconciled:' || CAST(e.id AS text)
    )
$$""",
    # One notification (decision D7), sent inside the transaction that made the change, so a listener
    # hears only of what committed. pg_notify refuses payloads of 8000 bytes or more and only the tenant
    # id can push it over: above 7000 bytes of JSON it is sent as null.
    """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_notify(
    tenant_id text, delivery_id uuid, event_type text, event_id uuid, from_id uuid
) RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE AS $$
SELECT pg_notify('mailglass_delivery_updated', CAST(json_build_object(
    'tenant_id', CASE WHEN octet_length(CAST(to_json(tenant_id) AS text)) > 7000 THEN NULL ELSE tenant_id END,
    'delivery_id', delivery_id, 'event_type', event_type,
    'event_id', event_id, 'reconciled_from_event_id', from_id
) AS text))
$$""",
)

#: Their signatures, as DROP FUNCTION names them (the downgrade), in the order they were created.
SIGNATURES = (
    "mailglass_reconciliation_in_window(timestamptz, double precision, integer)",
    "mailglass_reconciliation_retry_due(timestamptz, timestamptz, timestamptz, boolean, timestamptz)",
    "mailglass_reconciliation_due(text, double precision, integer, boolean, timestamptz)",
    "mailglass_reconciliation_linkable(text, double precision, integer)",
    "mailglass_reconciliation_pick(text, bigint, double precision, integer, boolean, timestamptz)",
    "mailglass_reconciliation_share(text[], bigint[], timestamptz[], bigint)",
    "mailglass_reconciliation_message_ids(text, text)",
    "mailglass_reconciliation_delivery(text, text, text)",
    "mailglass_reconciliation_json_text(jsonb, text)",
    "mailglass_reconciliation_event_provider(jsonb, jsonb)",
    "mailglass_reconciliation_event_message_id(jsonb, jsonb)",
    "mailglass_reconciliation_event_provider_event_id(jsonb, jsonb)",
    "mailglass_reconciliation_parked(text, text, integer, bigint)",
    "mailglass_reconciliation_unqueued(integer)",
    "mailglass_reconciliation_notify(text, uuid, text, uuid, uuid)",
)


def _schema() -> str:
    return quote_ident(str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar()))


def upgrade() -> None:
    q = _schema()
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            for sql in FUNCTIONS:
                online.ddl(conn, sql.format(q=q))
        finally:
            conn.exec_driver_sql("RESET lock_timeout")


def downgrade() -> None:
    q = _schema()
    for signature in reversed(SIGNATURES):
        op.execute(f"DROP FUNCTION IF EXISTS {q}.{signature}")
