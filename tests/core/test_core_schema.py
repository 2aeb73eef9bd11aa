"""docs/contract.md section 3: tables, indexes, idempotent migration, adoption of orphans written by anyone.

From empty, ``mailglass migrate`` creates Mailglass's own schema (version 7): ``timestamp`` columns
holding UTC, ``status varchar(255)``, Mailglass's index names; tests/schema/ compares it in full
against a database built as Mailglass builds it.
"""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import EventLedgerImmutableError, schema
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import QUEUE, make_delivery, pending_orphans, reconciled_from, rows

# (unique, column list, partial predicate or None), as pg_indexes prints them.
EXPECTED_INDEXES = {
    "mailglass_deliveries": {
        (True, "provider, provider_message_id", "(provider_message_id IS NOT NULL)"),
        (False, "tenant_id, last_event_at DESC", None),
        (True, "idempotency_key", "(idempotency_key IS NOT NULL)"),
        (False, "tenant_id, recipient", None),
        (False, "tenant_id, stream, terminal, last_event_at DESC", None),
    },
    "mailglass_events": {
        (True, "idempotency_key", "(idempotency_key IS NOT NULL)"),
        (False, "delivery_id, occurred_at", "(delivery_id IS NOT NULL)"),
        (False, "tenant_id, inserted_at", "(needs_reconciliation = true)"),
        (False, "tenant_id, inserted_at DESC", None),
    },
}

EXPECTED_COLUMNS = {
    "mailglass_deliveries": {
        "id": ("uuid", "NO"),
        "tenant_id": ("text", "NO"),
        "mailable": ("text", "NO"),
        "stream": ("text", "NO"),
        "recipient": ("text", "NO"),
        "recipient_domain": ("text", "NO"),
        "provider": ("text", "YES"),
        "provider_message_id": ("text", "YES"),
        "last_event_type": ("text", "NO"),
        "last_event_at": ("timestamp without time zone", "NO"),
        "terminal": ("boolean", "NO"),
        "dispatched_at": ("timestamp without time zone", "YES"),
        "delivered_at": ("timestamp without time zone", "YES"),
        "bounced_at": ("timestamp without time zone", "YES"),
        "complained_at": ("timestamp without time zone", "YES"),
        "suppressed_at": ("timestamp without time zone", "YES"),
        "metadata": ("jsonb", "NO"),
        "lock_version": ("integer", "NO"),
        "idempotency_key": ("text", "YES"),
        "status": ("character varying", "NO"),
        "adapter_ref": ("text", "YES"),
        "last_error": ("jsonb", "YES"),
        "inserted_at": ("timestamp without time zone", "NO"),
        "updated_at": ("timestamp without time zone", "NO"),
    },
    "mailglass_events": {
        "id": ("uuid", "NO"),
        "tenant_id": ("text", "NO"),
        "delivery_id": ("uuid", "YES"),
        "type": ("text", "NO"),
        "occurred_at": ("timestamp without time zone", "NO"),
        "idempotency_key": ("text", "YES"),
        "reject_reason": ("text", "YES"),
        "normalized_payload": ("jsonb", "NO"),
        "metadata": ("jsonb", "NO"),
        "trace_id": ("text", "YES"),
        "needs_reconciliation": ("boolean", "NO"),
        "inserted_at": ("timestamp without time zone", "NO"),
    },
}

EXPECTED_DEFAULTS = {
    ("mailglass_deliveries", "terminal"): "false",
    ("mailglass_deliveries", "metadata"): "'{}'::jsonb",
    ("mailglass_deliveries", "lock_version"): "1",
    ("mailglass_deliveries", "status"): "'queued'::character varying",
    ("mailglass_events", "normalized_payload"): "'{}'::jsonb",
    ("mailglass_events", "metadata"): "'{}'::jsonb",
    ("mailglass_events", "needs_reconciliation"): "false",
    ("mailglass_events", "inserted_at"): "now()",
}

_INDEXDEF = re.compile(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+ USING btree \(([^)]*)\)(?: WHERE (.+))?$")


def _indexes(engine: Engine, table: str) -> set[tuple[bool, str, str | None]]:
    found = set()
    for (indexdef,) in rows(engine, "SELECT indexdef FROM pg_indexes WHERE tablename = :t", t=table):
        match = _INDEXDEF.match(indexdef)
        assert match, indexdef
        found.add((bool(match.group(1)), match.group(2), match.group(3)))
    return found


def _schema_fingerprint(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    return {
        "indexes": rows(
            engine, "SELECT tablename, indexdef FROM pg_indexes WHERE tablename LIKE 'mailglass%' ORDER BY 2"
        ),
        "triggers": rows(
            engine,
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
        ),
        "tables": rows(engine, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"),
    }


def test_upgrade_creates_tables_columns_and_indexes(blank_database_url: str) -> None:
    before, after = schema.upgrade(blank_database_url)
    assert before is None
    assert after == schema.head_revision()
    engine = create_engine(blank_database_url)
    try:
        for table, expected in EXPECTED_COLUMNS.items():
            columns = {
                name: (dtype, nullable)
                for name, dtype, nullable in rows(
                    engine,
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = :t",
                    t=table,
                )
            }
            assert columns == expected, table
        defaults = {
            (t, c): d
            for t, c, d in rows(
                engine,
                "SELECT table_name, column_name, column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name IN ('mailglass_events', 'mailglass_deliveries')",
            )
        }
        for key, default in EXPECTED_DEFAULTS.items():
            assert defaults[key] == default, key
        for table, expected in EXPECTED_INDEXES.items():
            found = _indexes(engine, table)
            assert expected <= found, (table, expected - found)
        # Primary keys on id; deliberately no foreign key from events to deliveries.
        assert (True, "id", None) in _indexes(engine, "mailglass_events")
        assert (True, "id", None) in _indexes(engine, "mailglass_deliveries")
        fks = rows(
            engine, "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = 'mailglass_events'::regclass"
        )
        assert fks == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_keeps_data(database_url: str, engine: Engine) -> None:
    fingerprint = _schema_fingerprint(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation)"
                " VALUES (gen_random_uuid(), 't1', 'delivered', now(), '{\"provider\": \"postmark\"}', true)"
            )
        )
    queue_before = rows(engine, f"SELECT * FROM {QUEUE}")
    assert len(queue_before) == 1
    head = schema.head_revision()
    assert schema.upgrade(database_url) == (head, head)
    assert schema.upgrade(database_url) == (head, head)
    assert _schema_fingerprint(engine) == fingerprint
    assert rows(engine, f"SELECT * FROM {QUEUE}") == queue_before
    assert rows(engine, "SELECT count(*) FROM mailglass_events") == [(1,)]


def test_concurrent_upgrades_on_blank_database(blank_database_url: str) -> None:
    workers = 4
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []
    results: list[tuple[str | None, str]] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(schema.upgrade(blank_database_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == workers
    assert {after for _, after in results} == {schema.head_revision()}
    assert schema.current_revision(blank_database_url) == schema.head_revision()
    engine = create_engine(blank_database_url)
    try:
        for table, expected in EXPECTED_INDEXES.items():
            assert expected <= _indexes(engine, table)
        assert rows(engine, "SELECT version_num FROM mailglass_alembic_version") == [(schema.head_revision(),)]
    finally:
        engine.dispose()


# The two ledger tables as Mailglass v1.0.0 creates them (no work queue, no tracking trigger).
_MAILGLASS_TABLES = """
CREATE TABLE mailglass_deliveries (
    id uuid PRIMARY KEY, tenant_id text NOT NULL, mailable text NOT NULL, stream text NOT NULL,
    recipient text NOT NULL, recipient_domain text NOT NULL, provider text, provider_message_id text,
    last_event_type text NOT NULL, last_event_at timestamptz NOT NULL, terminal boolean NOT NULL DEFAULT false,
    dispatched_at timestamptz, delivered_at timestamptz, bounced_at timestamptz, complained_at timestamptz,
    suppressed_at timestamptz, metadata jsonb NOT NULL DEFAULT '{}', lock_version integer NOT NULL DEFAULT 1,
    idempotency_key text, status text NOT NULL DEFAULT 'queued', last_error jsonb,
    inserted_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE UNIQUE INDEX mailglass_deliveries_provider_message_id_index
    ON mailglass_deliveries (provider, provider_message_id) WHERE provider_message_id IS NOT NULL;
CREATE TABLE mailglass_events (
    id uuid PRIMARY KEY, tenant_id text NOT NULL, delivery_id uuid, type text NOT NULL,
    occurred_at timestamptz NOT NULL, idempotency_key text, reject_reason text,
    normalized_payload jsonb NOT NULL DEFAULT '{}', metadata jsonb NOT NULL DEFAULT '{}', trace_id text,
    needs_reconciliation boolean NOT NULL DEFAULT false, inserted_at timestamptz NOT NULL);
CREATE UNIQUE INDEX mailglass_events_idempotency_key_index
    ON mailglass_events (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE OR REPLACE FUNCTION mailglass_raise_immutability() RETURNS trigger LANGUAGE plpgsql SET search_path = ''
AS $$ BEGIN
  RAISE SQLSTATE '45A01' USING MESSAGE = 'mailglass_events is append-only; UPDATE and DELETE are forbidden';
END; $$;
CREATE TRIGGER mailglass_events_immutable_trigger BEFORE UPDATE OR DELETE ON mailglass_events
    FOR EACH ROW EXECUTE FUNCTION mailglass_raise_immutability();
"""

_MAILGLASS_EVENT = sa.text(
    """
    INSERT INTO mailglass_events
        (id, tenant_id, delivery_id, type, occurred_at, idempotency_key, metadata, needs_reconciliation, inserted_at)
    VALUES (:id, :tenant, :delivery, :type, now() - interval '5 minutes', :key, CAST(:metadata AS jsonb), :orphan,
            now() - interval '5 minutes')
    """
)


def test_upgrade_adopts_orphans_written_before_the_queue_existed(blank_database_url: str) -> None:
    engine = create_engine(blank_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(_MAILGLASS_TABLES))
            pending_a, pending_b, done, not_orphan, with_delivery = (uuid.uuid4() for _ in range(5))

            def event(event_id: uuid.UUID, tenant: str, etype: str, metadata: str, **kw: object) -> None:
                params = {"id": event_id, "tenant": tenant, "delivery": None, "type": etype, "key": None}
                params.update(metadata=metadata, orphan=True)
                params.update(kw)
                conn.execute(_MAILGLASS_EVENT, params)

            event(pending_a, "a", "delivered", '{"provider": "postmark", "message_id": "m-a"}')
            event(pending_b, "b", "opened", '{"provider": "postmark", "message_id": "m-b"}')
            event(done, "a", "bounced", '{"provider": "postmark", "message_id": "m-done"}')
            # Mailglass already reconciled `done`: its reconciled event carries the idempotency key.
            event(
                uuid.uuid4(), "a", "reconciled", f'{{"reconciled_from_event_id": "{done}"}}',
                key=f"reconciled:{done}", orphan=False, delivery=uuid.uuid4(),
            )  # fmt: skip
            event(not_orphan, "a", "delivered", '{"provider": "postmark"}', orphan=False, delivery=uuid.uuid4())
            event(with_delivery, "a", "delivered", '{"provider": "postmark"}', delivery=uuid.uuid4())

        schema.upgrade(blank_database_url)

        assert pending_orphans(engine) == {pending_a, pending_b}
        # Adopted orphans reconcile like any other.
        old = datetime.now(UTC) - timedelta(hours=1)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                    " provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)"
                    " VALUES (gen_random_uuid(), 'a', 'M', 'transactional', 'x@y.z', 'y.z', 'postmark', 'm-a',"
                    " 'dispatched', :old, :old, :old)"
                ),
                {"old": old},
            )
        result = sweep(engine, None, SweepConfig())
        assert (result.scanned, result.linked) == (2, 1)
        assert set(reconciled_from(engine)) == {done, pending_a}
        assert pending_orphans(engine) == {pending_b}
        # The ledger stays append-only after adoption.
        for statement, operation in (("UPDATE mailglass_events SET type = 'x'", "UPDATE"),
                                     ("DELETE FROM mailglass_events", "DELETE")):  # fmt: skip
            with pytest.raises(EventLedgerImmutableError) as info, engine.begin() as conn:
                conn.execute(sa.text(statement))
            assert info.value.operation == operation
    finally:
        engine.dispose()


def test_plain_sql_inserts_are_tracked(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = {
            r[0]: r[1]
            for r in conn.execute(
                sa.text(
                    """
                    INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,
                                                  delivery_id, inserted_at)
                    VALUES (gen_random_uuid(), 't1', 'delivered', now(),
                            '{"provider": "postmark", "provider_message_id": "p1"}',
                            true, NULL, now() - interval '5 minutes'),
                           (gen_random_uuid(), 't2', 'opened', now(), '{"provider": "postmark", "message_id": "p2"}',
                            true, NULL, now() - interval '5 minutes'),
                           (gen_random_uuid(), 't1', 'delivered', now(), '{}', false, NULL,
                            now() - interval '5 minutes'),
                           (gen_random_uuid(), 't1', 'delivered', now(), '{}', true, gen_random_uuid(),
                            now() - interval '5 minutes')
                    RETURNING id, tenant_id || ':' || needs_reconciliation || ':' || (delivery_id IS NULL)
                    """
                )
            )
        }
    orphans = {i for i, tag in ids.items() if tag.endswith(":true:true")}
    assert len(orphans) == 2
    assert pending_orphans(engine) == orphans
    # The queue row carries the orphan's tenant and inserted_at, so tenant-scoped, age-bounded scans see it.
    queued = rows(
        engine,
        f"SELECT q.tenant_id = e.tenant_id AND q.orphan_inserted_at = e.inserted_at FROM {QUEUE} q"
        " JOIN mailglass_events e ON e.id = q.event_id",
    )
    assert queued == [(True,), (True,)]

    # A reconciled event written by another writer (Mailglass, plain SQL) takes its orphan out of the queue,
    # and one whose reconciled_from_event_id is not a UUID is harmless.
    first = sorted(orphans)[0]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, idempotency_key, delivery_id,"
                " metadata)"
                " VALUES (gen_random_uuid(), 't1', 'reconciled', now(), 'reconciled:' || :o, gen_random_uuid(),"
                "         jsonb_build_object('reconciled_from_event_id', CAST(:o AS text))),"
                "        (gen_random_uuid(), 't1', 'reconciled', now(), 'reconciled:junk', gen_random_uuid(),"
                '         \'{"reconciled_from_event_id": "not-a-uuid"}\')'
            ),
            {"o": str(first)},
        )
    assert pending_orphans(engine) == orphans - {first}
    make_delivery(engine, tenant_id="t1", message_id="p1")
    make_delivery(engine, tenant_id="t2", message_id="p2")
    result = sweep(engine, None, SweepConfig())
    assert (result.scanned, result.linked) == (1, 1)
    assert pending_orphans(engine) == set()
