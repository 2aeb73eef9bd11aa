"""Schema management: Alembic migrations shipped inside the package.

``upgrade`` is what ``mailglass migrate`` runs. The migration scripts live in
``mailglass_pipeline/migrations`` so an installed wheel can migrate without
the source tree; the Alembic configuration is built here in code for the same
reason (no alembic.ini to find on disk).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from mailglass_pipeline import settings
from mailglass_pipeline.db import connect, create_engine, db_schema, quote_ident
from mailglass_pipeline.errors import ConfigurationError

VERSION_TABLE = "mailglass_alembic_version"
#: Tables a migration alters (Mailglass's and the project's): the migrating role must own them.
OWNED_TABLES = (
    "mailglass_deliveries",
    "mailglass_events",
    "mailglass_suppressions",
    "mailglass_webhook_events",
    "mailglass_outbound_payloads",
    "mailglass_reconciliation_queue",
    "mailglass_reconciliation_wakes",
    "mailglass_webhook_tokens",
)


@dataclass(frozen=True)
class ProjectFunction:
    """A function the project's migrations create in the Mailglass schema, as they create it."""

    name: str
    #: Its argument types, as ``ALTER FUNCTION`` names them.
    arguments: str = ""
    #: Runs with its owner's (the migrating role's) rights, so writers need no privilege on the queue.
    security_definer: bool = True
    #: ``pinned``: ``search_path = pg_catalog, <schema>, pg_temp``; ``empty``: ``search_path = ''``;
    #: ``none``: no SET clause (the sender's hot path, relations schema-qualified: decision D27).
    search_path: str = "pinned"


@dataclass(frozen=True)
class ProjectTrigger:
    """A trigger the project's migrations create on a Mailglass table, and the function it calls."""

    name: str
    table: str
    function: str


#: The project's functions and triggers on Mailglass's tables (migrations 0001 to 0006): the one list
#: ``mailglass doctor`` checks a live database against. A migration that adds, drops or changes one
#: updates it.
PROJECT_FUNCTIONS = (
    ProjectFunction("mailglass_track_orphans"),
    ProjectFunction("mailglass_wake_orphans", search_path="none"),
    ProjectFunction("mailglass_wake_orphans_on_rekey", search_path="none"),
    ProjectFunction("mailglass_prune_parked_orphans", "text, timestamptz, integer"),
    ProjectFunction("mailglass_reconciliation_absorb"),
    ProjectFunction("mailglass_reconciliation_forget"),
    ProjectFunction("mailglass_reconciliation_uuidv7", security_definer=False, search_path="none"),
    # The statements' shared rules (migration 0007, decision D28): inlined by the planner, so no SET clause.
    *(
        ProjectFunction(name, arguments, security_definer=False, search_path="none")
        for name, arguments in (
            ("mailglass_reconciliation_in_window", "timestamptz, double precision, integer"),
            ("mailglass_reconciliation_retry_due", "timestamptz, timestamptz, timestamptz, boolean, timestamptz"),
            ("mailglass_reconciliation_due", "text, double precision, integer, boolean, timestamptz"),
            ("mailglass_reconciliation_linkable", "text, double precision, integer"),
            ("mailglass_reconciliation_pick", "text, bigint, double precision, integer, boolean, timestamptz"),
            ("mailglass_reconciliation_share", "text[], bigint[], timestamptz[], bigint"),
            ("mailglass_reconciliation_message_ids", "text, text"),
            ("mailglass_reconciliation_delivery", "text, text, text"),
            ("mailglass_reconciliation_json_text", "jsonb, text"),
            ("mailglass_reconciliation_event_provider", "jsonb, jsonb"),
            ("mailglass_reconciliation_event_message_id", "jsonb, jsonb"),
            ("mailglass_reconciliation_event_provider_event_id", "jsonb, jsonb"),
            ("mailglass_reconciliation_parked", "text, text, integer, bigint"),
            ("mailglass_reconciliation_unqueued", "integer"),
            ("mailglass_reconciliation_notify", "text, uuid, text, uuid, uuid"),
        )
    ),
)
PROJECT_TRIGGERS = (
    ProjectTrigger("mailglass_events_track_orphans", "mailglass_events", "mailglass_track_orphans"),
    ProjectTrigger("mailglass_events_forget_on_truncate", "mailglass_events", "mailglass_reconciliation_forget"),
    ProjectTrigger("mailglass_deliveries_wake_orphans", "mailglass_deliveries", "mailglass_wake_orphans"),
    ProjectTrigger(
        "mailglass_deliveries_wake_orphans_on_rekey", "mailglass_deliveries", "mailglass_wake_orphans_on_rekey"
    ),
)

#: Alembic's ``context``/``op`` proxies are module globals, so two ``command.upgrade`` calls running
#: in threads of one process clobber each other (KeyError: 'config'). Serialise them here; across
#: processes the advisory lock taken in ``migrations/env.py`` does the same job.
_UPGRADE_LOCK = threading.Lock()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "mailglass_pipeline:migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://"))
    head = script.get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    """Every revision this release ships (a database at another one was migrated by a newer release)."""
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://"))
    return {revision.revision for revision in script.walk_revisions()}


def current_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with connect(engine) as conn:
            opts = {"version_table": VERSION_TABLE, "version_table_schema": db_schema()}
            return MigrationContext.configure(conn, opts=opts).get_current_revision()
    finally:
        engine.dispose()


def check_owner(conn: sa.Connection, schema: str) -> None:
    """Refuse, before any change, a role that cannot alter the tables: one line naming the owner to use."""
    found = conn.execute(
        sa.text(
            "SELECT c.relname, pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE')"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :s AND c.relkind IN ('r', 'p') AND c.relname = ANY(:t) ORDER BY c.relname"
        ),
        {"s": schema, "t": list(OWNED_TABLES)},
    ).all()
    for table, owner, owned in found:
        if not owned:
            user = conn.exec_driver_sql("SELECT current_user").scalar()
            raise ConfigurationError(
                f"migrate must run as role {owner!r}, the owner of {schema}.{table} (connected as {user!r});"
                " nothing was changed"
            )


def refuse_other_install(conn: sa.Connection, schema: str) -> None:
    """Refuse, before any change, a schema without Mailglass's tables while another schema has them.

    A wrong case (``mgupper`` for ``"MgUpper"``) or a missing ``MAILGLASS_DB_SCHEMA`` would otherwise
    build a second, empty Mailglass schema beside the app's (decision D19).
    """
    found = [
        str(name)
        for (name,) in conn.execute(
            sa.text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = 'mailglass_events' AND c.relkind IN ('r', 'p') ORDER BY n.nspname"
            )
        )
    ]
    if found and schema not in found:
        env = settings.DB_SCHEMA.env
        hint = f"set {env}={found[0]}" if len(found) == 1 else f"set {env} to one of them"
        raise ConfigurationError(
            f"{env}={quote_ident(schema)} holds no Mailglass tables, but {', '.join(map(quote_ident, found))}"
            f" {'does' if len(found) == 1 else 'do'}: {hint} (schema names are case-sensitive); nothing was changed"
        )


def ensure_schema(conn: sa.Connection, schema: str) -> None:
    """Create the Mailglass schema when missing (Mailglass's migrator does the same for a prefix)."""
    exists = conn.execute(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).scalar()
    if not exists:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        conn.commit()


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the schema to head; returns (revision before, revision after). Idempotent.

    A database without the project's version table (empty, or created by Mailglass) is stamped at
    0003 and gets revision 0004 alone: see that revision for why.
    """
    with _UPGRADE_LOCK:
        schema = db_schema()
        engine = create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with connect(engine) as conn:
                refuse_other_install(conn, schema)
                check_owner(conn, schema)
                ensure_schema(conn, schema)
                conn.rollback()
            before = current_revision(url)
            with connect(engine) as conn:
                config = alembic_config(url)
                config.attributes["connection"] = conn
                config.attributes["converge_unversioned"] = True
                command.upgrade(config, "head")
                conn.commit()
        finally:
            engine.dispose()
    return before, head_revision()
