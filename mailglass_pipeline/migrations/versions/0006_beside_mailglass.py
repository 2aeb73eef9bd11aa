"""Invisible beside a Mailglass app: its writes never wait on the reconciler, TRUNCATE works, ids are UUIDv7.

Revision ID: 0006_beside_mailglass
Revises: 0005_parked_retention
Create Date: 2026-12-07

Until here the triggers on Mailglass's tables wrote the reconciliation queue in the application's
transaction: a delivery insert or a dispatch (the UPDATE that sets ``provider_message_id``) UPDATEd the
matching queue rows, and an appended ``reconciled`` event DELETEd its orphan's row. A sweep holds the
rows it examines ``FOR UPDATE`` for its whole transaction (seconds), so those application writes waited
on it, or failed under the application's ``lock_timeout``. From here (decision D27):

* **The application's path only inserts.** ``mailglass_wake_orphans`` (statement level, per INSERT)
  copies the ``(tenant_id, provider, provider_message_id)`` of the new deliveries that carry a message
  id into one row of ``mailglass_reconciliation_wakes`` (arrays); ``mailglass_wake_orphans_on_rekey``
  (row level, only when the key changes to one with a message id: Mailglass's dispatch) copies the new
  key. No probe of the
  queue on the sender's path: matching keys to orphans is the sweep's work. An insert into a table
  without indexes never waits on a row lock.
* **A sweep absorbs the signals first** (``mailglass_reconciliation_absorb()``, in a short transaction
  before each sweep's, and at each schedule tick): it takes the signals, marks the orphans they match due and
  linkable (``next_attempt_at = NULL``, ``linkable_at`` = the signal's time) and removes the rows of
  orphans reconciled elsewhere. A signal committed after a sweep took its own stays for the next one,
  and one whose orphan another sweep holds is put back: no wake-up is lost.
* **A ``reconciled`` event** appended by anyone deletes its orphan's queue row only when no other
  transaction holds it (``FOR UPDATE SKIP LOCKED``: the sweep's own rows, or rows no sweep holds);
  for a row a sweep holds it leaves a signal instead. The unique ``reconciled:<orphan id>`` key
  (decision D2) keeps the sweep from appending a second ``reconciled`` event for an orphan Mailglass
  reconciled meanwhile.
* **``TRUNCATE mailglass_events``** works as on a Mailglass-only database (Mailglass's own test suite
  resets with it): 0001's refusing trigger and its function are dropped, and an ``AFTER TRUNCATE``
  trigger empties the queue and the signals, which describe the ledger's rows.
* **UUIDv7**: ``mailglass_reconciliation_uuidv7()`` (PostgreSQL 15 has no ``uuidv7()``) gives the
  ``reconciled`` events time-ordered ids like Mailglass's own (its decision D-28): 48 bits of Unix
  milliseconds, 12 bits of sub-millisecond time, 62 random bits.

The hot-path functions name every relation with its schema and carry no ``SET`` clause (a ``SET`` on a
function costs each call a configuration save and restore); every function keeps ``SECURITY DEFINER``,
so neither the sending application's role nor the ingest role needs a grant on the queue or the signals.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mailglass_pipeline.migrations import online_ddl as online
from mailglass_pipeline.migrations.mailglass_ddl import quote_ident

revision = "0006_beside_mailglass"
down_revision = "0005_parked_retention"
branch_labels = None
depends_on = None

LOCK_TIMEOUT = online.LOCK_TIMEOUT

# -- 0004's match rules, frozen here (a copy, not an import: tests/core/test_reconcile_sql.py holds them equal)

UUID_RE = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
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
    """The queue's match-index key (0003): SendGrid ids up to the first dot, hashed."""
    return f"md5(CASE WHEN {provider} = 'sendgrid' THEN split_part({message_id}, '.', 1) ELSE {message_id} END)"


def matches_sql(delivery_id_col: str, provider: str, message_id: str) -> str:
    """deliveries.lookup's rule: the delivery's id is the orphan's, or (SendGrid) its part before .filter / '.'."""
    return (
        f"{delivery_id_col} IN ({message_id}, "
        f"CASE WHEN {provider} = 'sendgrid' THEN split_part({message_id}, '.filter', 1) END, "
        f"CASE WHEN {provider} = 'sendgrid' THEN split_part({message_id}, '.', 1) END)"
    )


def _delivery_probe(q: str, message_id: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM {q}.mailglass_deliveries d WHERE d.provider = x.provider"
        f" AND d.provider_message_id = {message_id} AND d.tenant_id = n.tenant_id)"
    )


def _delivery_exists(q: str) -> str:
    sg_filter = "split_part(x.provider_message_id, '.filter', 1)"
    sg_dot = "split_part(x.provider_message_id, '.', 1)"
    return (
        f"({_delivery_probe(q, 'x.provider_message_id')} OR (x.provider = 'sendgrid'"
        f" AND ({_delivery_probe(q, sg_filter)} OR {_delivery_probe(q, sg_dot)})))"
    )


def _utc_instant(expr: str, ledger_type: str) -> str:
    return f"({expr} AT TIME ZONE 'UTC')" if ledger_type == "timestamp without time zone" else expr


# -- the objects ------------------------------------------------------------------------------------

WAKES = "mailglass_reconciliation_wakes"

# A signal: the keys of the deliveries one statement made or re-keyed (three parallel arrays:
# tenant_ids, providers, message_ids), or an orphan a reconciled event was appended for while a sweep
# held its row (reconciled_event_id). One row per statement, not per delivery, and no index or key: a
# bulk load of deliveries costs one row, a sweep reads and deletes them all. REPLICA IDENTITY FULL so
# that a publication FOR ALL TABLES still lets the sweep delete them.
_WAKES_TABLE = """
CREATE TABLE IF NOT EXISTS {q}.mailglass_reconciliation_wakes (
    tenant_ids          text[],
    providers           text[],
    message_ids         text[],
    reconciled_event_id uuid,
    signalled_at        timestamptz NOT NULL DEFAULT now()
)"""

# RFC 9562 UUIDv7, method 3: unix_ts_ms (48 bits), version 7 with 12 bits of sub-millisecond time
# (so ids made microseconds apart still sort by time), then gen_random_uuid()'s variant and random bits.
_UUIDV7 = """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_uuidv7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
SELECT CAST(encode(
    overlay(
        overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send(CAST(floor(t.ms) AS bigint)) FROM 3) FROM 1 FOR 6)
        PLACING int2send(CAST(28672 + floor((t.ms - floor(t.ms)) * 4096) AS smallint)) FROM 7 FOR 2),
    'hex') AS uuid)
FROM (SELECT extract(epoch FROM clock_timestamp()) * 1000 AS ms) AS t
$$"""


def _track_orphans(q: str, ledger_type: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_track_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO {q}.mailglass_reconciliation_queue
        (event_id, tenant_id, orphan_inserted_at, provider, provider_message_id, linkable_at)
    SELECT n.id, n.tenant_id, {_utc_instant("n.inserted_at", ledger_type)},
           x.provider, x.provider_message_id,
           CASE WHEN x.provider IS NOT NULL AND x.provider_message_id IS NOT NULL AND {_delivery_exists(q)}
                THEN now() END
      FROM new_events n
     CROSS JOIN LATERAL (SELECT {provider_sql("n")} AS provider,
                                {message_id_sql("n")} AS provider_message_id) x
     WHERE n.needs_reconciliation AND n.delivery_id IS NULL
    ON CONFLICT (event_id) DO NOTHING;

    -- A reconciled event's orphan leaves the queue now if no other transaction holds its row (the
    -- appending sweep's own rows included); a row a sweep holds is left to it, with a signal.
    WITH done AS (
        SELECT DISTINCT CAST(n.metadata ->> 'reconciled_from_event_id' AS uuid) AS event_id
          FROM new_events n
         WHERE n.type = 'reconciled' AND n.metadata ->> 'reconciled_from_event_id' ~ '{UUID_RE}'
    ), gone AS (
        DELETE FROM {q}.mailglass_reconciliation_queue q
         WHERE q.event_id IN (SELECT l.event_id FROM {q}.mailglass_reconciliation_queue l
                               WHERE l.event_id IN (SELECT done.event_id FROM done)
                                 FOR UPDATE SKIP LOCKED)
        RETURNING q.event_id
    )
    INSERT INTO {q}.mailglass_reconciliation_wakes (reconciled_event_id)
    SELECT d.event_id FROM done d
     WHERE NOT EXISTS (SELECT 1 FROM gone g WHERE g.event_id = d.event_id)
       AND EXISTS (SELECT 1 FROM {q}.mailglass_reconciliation_queue q WHERE q.event_id = d.event_id);
    RETURN NULL;
END
$$"""


def _wake(q: str) -> list[str]:
    return [
        f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_wake_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO {q}.mailglass_reconciliation_wakes (tenant_ids, providers, message_ids)
    SELECT array_agg(n.tenant_id), array_agg(n.provider), array_agg(n.provider_message_id)
      FROM new_deliveries n
     WHERE n.provider IS NOT NULL AND n.provider_message_id IS NOT NULL
    HAVING count(*) > 0;
    RETURN NULL;
END
$$""",
        f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_wake_orphans_on_rekey() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO {q}.mailglass_reconciliation_wakes (tenant_ids, providers, message_ids)
    VALUES (ARRAY[NEW.tenant_id], ARRAY[NEW.provider], ARRAY[NEW.provider_message_id]);
    RETURN NULL;
END
$$""",
    ]


def _absorb(q: str) -> str:
    """The signals into the queue, in the caller's transaction (see the module's docstring)."""
    queue_key = match_key_sql("o.provider", "o.provider_message_id")
    signal_key = match_key_sql("k.provider", "k.provider_message_id")
    matches = matches_sql("k.provider_message_id", "o.provider", "o.provider_message_id")
    return f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_absorb() RETURNS TABLE (woken bigint, removed bigint)
LANGUAGE sql SECURITY DEFINER AS $$
WITH taken AS (
    DELETE FROM {q}.mailglass_reconciliation_wakes w
     WHERE w.ctid = ANY (ARRAY(SELECT t.ctid FROM {q}.mailglass_reconciliation_wakes t FOR UPDATE SKIP LOCKED))
    RETURNING w.*
), signal AS (
    SELECT row_number() OVER () AS n, taken.* FROM taken
), hit AS (
    -- Each signal's orphans: the reconciled one, or the pending orphans its delivery key matches
    -- (one probe of the match index per key, the rule of deliveries.lookup) that are not already
    -- due and linkable.
    SELECT s.n, s.reconciled_event_id AS event_id, s.signalled_at, true AS reconciled
      FROM signal s
     WHERE s.reconciled_event_id IS NOT NULL
    UNION ALL
    SELECT s.n, o.event_id, s.signalled_at, false
      FROM signal s
     CROSS JOIN LATERAL unnest(s.tenant_ids, s.providers, s.message_ids) AS k (tenant_id, provider, provider_message_id)
     CROSS JOIN LATERAL (
        SELECT o.event_id
          FROM {q}.mailglass_reconciliation_queue o
         WHERE o.parked_at IS NULL
           AND o.tenant_id = k.tenant_id
           AND {queue_key} = {signal_key}
           AND o.provider = k.provider
           AND {matches}
           AND (o.next_attempt_at IS NOT NULL OR o.linkable_at IS NULL)
        OFFSET 0) o
     WHERE s.reconciled_event_id IS NULL
), mine AS (
    SELECT o.event_id FROM {q}.mailglass_reconciliation_queue o
     WHERE o.event_id IN (SELECT hit.event_id FROM hit)
       FOR UPDATE SKIP LOCKED
), removed_rows AS (
    DELETE FROM {q}.mailglass_reconciliation_queue o
     WHERE o.event_id IN (SELECT mine.event_id FROM mine)
       AND o.event_id IN (SELECT hit.event_id FROM hit WHERE hit.reconciled)
    RETURNING o.event_id
), woken_rows AS (
    UPDATE {q}.mailglass_reconciliation_queue o
       SET next_attempt_at = NULL, linkable_at = COALESCE(o.linkable_at, h.since)
      FROM (SELECT hit.event_id, min(hit.signalled_at) AS since FROM hit GROUP BY hit.event_id
            HAVING NOT bool_or(hit.reconciled)) h
     WHERE o.event_id = h.event_id
       AND o.event_id IN (SELECT mine.event_id FROM mine)
       AND o.parked_at IS NULL
    RETURNING o.event_id
), kept AS (
    -- A signal whose orphan another sweep holds goes back for the next sweep.
    INSERT INTO {q}.mailglass_reconciliation_wakes
        (tenant_ids, providers, message_ids, reconciled_event_id, signalled_at)
    SELECT s.tenant_ids, s.providers, s.message_ids, s.reconciled_event_id, s.signalled_at
      FROM signal s
     WHERE EXISTS (SELECT 1 FROM hit h JOIN {q}.mailglass_reconciliation_queue o ON o.event_id = h.event_id
                    WHERE h.n = s.n AND h.event_id NOT IN (SELECT mine.event_id FROM mine))
    RETURNING 1
)
SELECT (SELECT count(*) FROM woken_rows), (SELECT count(*) FROM removed_rows)
$$"""


# Mailglass's TRUNCATE (its test suite's reset) empties what describes the ledger's rows.
_FORGET = """
CREATE OR REPLACE FUNCTION {q}.mailglass_reconciliation_forget() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    TRUNCATE {q}.mailglass_reconciliation_queue, {q}.mailglass_reconciliation_wakes;
    RETURN NULL;
END
$$"""

#: The functions on the sending application's path for every delivery: no SET clause (each costs a call
#: a configuration save and restore); their bodies name every relation with its schema and use no operator
#: but IS NOT NULL, so the caller's search_path cannot redirect them.
HOT_FUNCTIONS = ("mailglass_wake_orphans()", "mailglass_wake_orphans_on_rekey()")
#: The others keep a pinned search_path.
PINNED_FUNCTIONS = (
    "mailglass_track_orphans()",
    "mailglass_reconciliation_absorb()",
    "mailglass_reconciliation_forget()",
)
#: The ledger trigger's plans are cached for the writer's session, planned on whatever the tables held at
#: its first call: index probes whatever the statistics said then (an empty queue must not leave a scan
#: cached), and no JIT (a disabled scan's cost would otherwise buy every event append a compilation).
#: The absorb is an SQL function, planned at each call on the statistics of the moment.
PROBING_FUNCTIONS = ("mailglass_track_orphans()",)


def _ledger_time_type(conn: sa.Connection, schema: str) -> str:
    return str(
        online.scalar(
            conn,
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_schema = :s AND table_name = 'mailglass_events' AND column_name = 'inserted_at'",
            s=schema,
        )
    )


def converge(conn: sa.Connection, schema: str) -> None:
    """The whole revision on an autocommit connection; every step is idempotent."""
    q = quote_ident(schema)
    conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    try:
        online.ddl(conn, _WAKES_TABLE.format(q=q))
        online.ddl(conn, f"ALTER TABLE {q}.{WAKES} REPLICA IDENTITY FULL")
        online.ddl(conn, _UUIDV7.format(q=q))
        ledger_type = _ledger_time_type(conn, schema)
        for sql in (_track_orphans(q, ledger_type), *_wake(q), _absorb(q), _FORGET.format(q=q)):
            online.ddl(conn, sql)
        for fn in HOT_FUNCTIONS:
            online.ddl(conn, f"ALTER FUNCTION {q}.{fn} RESET ALL")
        for fn in PINNED_FUNCTIONS:
            online.ddl(conn, f"ALTER FUNCTION {q}.{fn} RESET ALL")
            online.ddl(conn, f"ALTER FUNCTION {q}.{fn} SET search_path = pg_catalog, {q}, pg_temp")
        for fn in PROBING_FUNCTIONS:
            online.ddl(conn, f"ALTER FUNCTION {q}.{fn} SET enable_seqscan = off")
            online.ddl(conn, f"ALTER FUNCTION {q}.{fn} SET jit = off")
        for fn in (*HOT_FUNCTIONS, *PINNED_FUNCTIONS):
            online.ddl(conn, f"REVOKE ALL ON FUNCTION {q}.{fn} FROM PUBLIC")
        for sql in (
            f"""CREATE OR REPLACE TRIGGER mailglass_deliveries_wake_orphans_on_rekey
                AFTER UPDATE OF tenant_id, provider, provider_message_id ON {q}.mailglass_deliveries FOR EACH ROW
                WHEN (NEW.provider IS NOT NULL AND NEW.provider_message_id IS NOT NULL
                      AND (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.provider IS DISTINCT FROM NEW.provider
                           OR OLD.provider_message_id IS DISTINCT FROM NEW.provider_message_id))
                EXECUTE FUNCTION {q}.mailglass_wake_orphans_on_rekey()""",
            f"""CREATE OR REPLACE TRIGGER mailglass_events_forget_on_truncate AFTER TRUNCATE ON {q}.mailglass_events
                FOR EACH STATEMENT EXECUTE FUNCTION {q}.mailglass_reconciliation_forget()""",
            f"DROP TRIGGER IF EXISTS mailglass_events_no_truncate ON {q}.mailglass_events",
            f"DROP FUNCTION IF EXISTS {q}.mailglass_forbid_ledger_truncate()",
        ):
            online.ddl(conn, sql)
    finally:
        conn.exec_driver_sql("RESET lock_timeout")


def upgrade() -> None:
    schema = str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar())
    with op.get_context().autocommit_block():
        converge(op.get_bind(), schema)


def downgrade() -> None:
    # The TRUNCATE trigger and the absorb go (0001's downgrade drops the queue they use). The trigger
    # functions keep this revision's bodies, so the signals' table and the id function stay with them;
    # 0003's and 0001's downgrades remove the project's objects as before.
    q = quote_ident(str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar()))
    op.execute(f"DROP TRIGGER IF EXISTS mailglass_events_forget_on_truncate ON {q}.mailglass_events")
    op.execute(f"DROP FUNCTION IF EXISTS {q}.mailglass_reconciliation_forget()")
    op.execute(f"DROP FUNCTION IF EXISTS {q}.mailglass_reconciliation_absorb()")
