"""From empty, ``mailglass migrate`` builds exactly Mailglass's V07 schema; a 0003 database upgrades in place.

The comparison is against a database built from the V07 fixture (Mailglass's migrations, version
by version): every table, column (type, length, precision, nullability, default), index name and
definition, constraint, Mailglass trigger and function, and the stamp. Then Mailglass's migrator
logic, re-implemented, finds nothing to run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from mailglass_pipeline import schema
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.databases import fresh_database
from tests.schema.schema_support import (
    load_mailglass,
    mailglass_versions_to_run,
    mailglass_writes,
    raw_engine,
    snapshot,
)


@pytest.fixture
def blank(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    with fresh_database(admin_url, admin_engine) as url:
        yield url


@pytest.fixture
def reference(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    with fresh_database(admin_url, admin_engine) as url:
        load_mailglass(url, 7, data=False)
        yield url


def _comparable(shot: dict[str, object]) -> dict[str, object]:
    # relfilenode differs between two databases by construction; everything else must match.
    out = dict(shot)
    out["owners"] = [row[:2] for row in shot["owners"]]  # type: ignore[attr-defined]
    return out


def test_empty_database_gets_exactly_mailglass_v07(blank: str, reference: str) -> None:
    schema.upgrade(blank)
    ours, theirs = _comparable(snapshot(blank, rows=False)), _comparable(snapshot(reference, rows=False))
    for key in theirs:
        assert ours[key] == theirs[key], key
    engine = raw_engine(blank)
    try:
        with engine.connect() as conn:
            assert mailglass_versions_to_run(conn) == []
            assert conn.execute(sa.text("SELECT obj_description('mailglass_events'::regclass)")).scalar() == "7"
    finally:
        engine.dispose()
    # A Mailglass app pointed at it: every write it makes succeeds, defaults apply.
    app = raw_engine(blank)
    try:
        found = mailglass_writes(app, "public", 7)
    finally:
        app.dispose()
    assert found["duplicate_constraint"] == "mailglass_deliveries_idempotency_key_unique_idx"


def _at_0003(url: str) -> None:
    """A database an earlier release created: the project's revisions 0001..0003, run as they were."""
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            config = schema.alembic_config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, "0003_due_orphans")
            conn.commit()
    finally:
        engine.dispose()


def _seed_0003(url: str) -> dict[str, uuid.UUID]:
    engine = create_engine(url)
    ids = {"delivery": uuid.uuid4(), "orphan": uuid.uuid4(), "late": uuid.uuid4(), "event": uuid.uuid4()}
    old = datetime.now(UTC) - timedelta(minutes=30)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                    " provider, provider_message_id, last_event_type, last_event_at, idempotency_key, status,"
                    " inserted_at, updated_at) VALUES (:d, 'acme', 'M', 'transactional', 'a@b.c', 'b.c', 'postmark',"
                    " 'pm-old', 'dispatched', :old, 'k-old', 'sent', :old, :old)"
                ),
                {"d": ids["delivery"], "old": old},
            )
            for key, pmid in (("orphan", "pm-old"), ("late", "pm-late")):
                conn.execute(
                    sa.text(
                        "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata,"
                        " needs_reconciliation, inserted_at) VALUES (:e, 'acme', 'delivered', :old,"
                        " jsonb_build_object('provider', 'postmark', 'message_id', CAST(:m AS text)), true, :old)"
                    ),
                    {"e": ids[key], "old": old, "m": pmid},
                )
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_events (id, tenant_id, delivery_id, type, occurred_at, idempotency_key,"
                    " inserted_at) VALUES (:e, 'acme', :d, 'dispatched', :old, 'dispatch:1', :old)"
                ),
                {"e": ids["event"], "d": ids["delivery"], "old": old},
            )
    finally:
        engine.dispose()
    return ids


def _rows(url: str) -> dict[str, list[str]]:
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: [r[0] for r in conn.execute(sa.text(f"SELECT t::text FROM {t} t ORDER BY 1"))]
                for t in ("mailglass_deliveries", "mailglass_events", "mailglass_reconciliation_queue")
            }
    finally:
        engine.dispose()


def test_a_0003_database_with_data_upgrades_in_place(blank: str, reference: str) -> None:
    _at_0003(blank)
    ids = _seed_0003(blank)
    before = _rows(blank)
    assert schema.upgrade(blank) == ("0003_due_orphans", schema.head_revision())
    after = _rows(blank)
    # Every row kept; the deliveries gained Mailglass's adapter_ref (NULL), nothing else changed.
    assert after["mailglass_events"] == before["mailglass_events"]
    assert after["mailglass_reconciliation_queue"] == before["mailglass_reconciliation_queue"]
    assert after["mailglass_deliveries"] == [r[:-1] + ",)" for r in before["mailglass_deliveries"]]
    ours, theirs = snapshot(blank, rows=False), snapshot(reference, rows=False)
    # Mailglass's names everywhere: indexes, constraints, triggers, its function restored, the stamp.
    assert [r[1] for r in ours["indexes"]] == [r[1] for r in theirs["indexes"]]
    assert [r[1] for r in ours["constraints"]] == [r[1] for r in theirs["constraints"]]
    assert ours["triggers"] == theirs["triggers"]
    assert [r[:4] for r in ours["functions"]] == [r[:4] for r in theirs["functions"]]
    assert ours["stamp"] == theirs["stamp"] == [("7",)]
    # Same columns, except the timestamptz an earlier release chose (Ecto reads both) and status's type.
    tolerated = {"timestamp with time zone", "text"}
    theirs_cols = {(r[0], r[1]): r for r in theirs["columns"]}
    for row in ours["columns"]:
        expected = theirs_cols.pop((row[0], row[1]))
        if row[2] != expected[2]:
            assert row[2] in tolerated, row
        else:
            assert row[5] == expected[5], row
    assert theirs_cols == {}
    engine = create_engine(blank)
    try:
        result = sweep(engine, None, SweepConfig())
        assert (result.scanned, result.linked) == (2, 1)
        with engine.connect() as conn:
            linked = conn.execute(
                sa.text("SELECT delivery_id FROM mailglass_events WHERE idempotency_key = :k"),
                {"k": f"reconciled:{ids['orphan']}"},
            ).scalar()
        assert linked == ids["delivery"]
    finally:
        engine.dispose()
    app = raw_engine(blank)
    try:
        assert mailglass_writes(app, "public", 7)["optimistic_update"] == 1
    finally:
        app.dispose()
    with raw_engine(blank).connect() as conn:
        assert mailglass_versions_to_run(conn) == []


def test_downgrade_then_upgrade_round_trip_of_the_project_revisions(blank: str) -> None:
    schema.upgrade(blank)
    _seed_0003(blank)
    shot = snapshot(blank)
    project = _project_objects(blank)
    engine = create_engine(blank, poolclass=sa.pool.NullPool)
    try:
        for target in ("base", "head"):
            with engine.connect() as conn:
                config = schema.alembic_config(blank)
                config.attributes["connection"] = conn
                (command.downgrade if target == "base" else command.upgrade)(config, target)
                conn.commit()
            if target == "base":
                assert "tables" not in _project_objects(blank)  # queue and token table gone
    finally:
        engine.dispose()
    assert schema.current_revision(blank) == schema.head_revision()
    # Mailglass's objects and rows as they were; the project's objects back, the queue rebuilt by 0001.
    assert snapshot(blank) == shot
    assert _project_objects(blank) == project


def _project_objects(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            found = {
                "tables": conn.execute(
                    sa.text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename IN"
                        " ('mailglass_reconciliation_queue', 'mailglass_webhook_tokens') ORDER BY 1"
                    )
                ).all(),
                "indexes": conn.execute(
                    sa.text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename IN"
                        " ('mailglass_reconciliation_queue', 'mailglass_webhook_tokens') ORDER BY 1"
                    )
                ).all(),
                "triggers": conn.execute(
                    sa.text(
                        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal"
                        " AND tgname NOT IN ('mailglass_events_immutable_trigger') ORDER BY 1"
                    )
                ).all(),
                "functions": conn.execute(
                    sa.text(
                        "SELECT proname FROM pg_proc WHERE proname LIKE 'mailglass%'"
                        " AND proname <> 'mailglass_raise_immutability' ORDER BY 1"
                    )
                ).all(),
            }
            return {k: [tuple(r) for r in v] for k, v in found.items() if v}
    finally:
        engine.dispose()
