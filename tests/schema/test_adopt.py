"""Adopting a database Mailglass created (V04 = 1.0.0, V05, V06, V07): every Mailglass object and row kept.

``mailglass migrate`` is run the way an operator runs it (the CLI, as the owner); then the orphans
Mailglass wrote are reconciled, and Mailglass's own inserts and updates still succeed, both as the
owner and as a role holding only the grants a Mailglass app has.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline import grants, schema
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.databases import fresh_database, with_database
from tests.processes import CommandResult, mailglass
from tests.schema.schema_support import (
    D_PM1,
    D_SG2,
    MAILGLASS_TABLES,
    O_ALREADY_RECONCILED,
    O_MESSAGE_ID,
    O_NEVER,
    O_SG_MESSAGE_ID,
    load_mailglass,
    mailglass_versions_to_run,
    mailglass_writes,
    raw_engine,
    sections_between,
    snapshot,
)


def migrate_cli(url: str, **env: str) -> CommandResult:
    return mailglass("migrate", env={"MAILGLASS_DATABASE_URL": url, **env})


@pytest.fixture
def blank(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    with fresh_database(admin_url, admin_engine) as url:
        yield url


def _pending(engine: Engine) -> set[uuid.UUID]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text("SELECT event_id FROM mailglass_reconciliation_queue"))}


def _reconciled(engine: Engine) -> dict[uuid.UUID, uuid.UUID]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT (metadata->>'reconciled_from_event_id')::uuid, delivery_id FROM mailglass_events"
                " WHERE type = 'reconciled'"
            )
        )
        return {r[0]: r[1] for r in found}


@pytest.mark.parametrize("version", [4, 5, 6, 7])
def test_adoption_keeps_every_mailglass_object_and_row_and_links_its_orphans(blank: str, version: int) -> None:
    load_mailglass(blank, version)
    before = snapshot(blank)
    done = migrate_cli(blank)
    assert done.returncode == 0, done.stderr
    assert snapshot(blank) == before  # columns, indexes, constraints, triggers, function, stamp, rows, no rewrite
    assert schema.current_revision(blank) == schema.head_revision()
    engine = create_engine(blank)
    try:
        # Orphans Mailglass wrote are queued, except the one Mailglass already reconciled.
        assert _pending(engine) == {O_MESSAGE_ID, O_SG_MESSAGE_ID, O_NEVER}
        result = sweep(engine, None, SweepConfig())
        assert (result.scanned, result.linked) == (3, 2)
        reconciled = _reconciled(engine)
        assert reconciled[O_MESSAGE_ID] == D_PM1  # message_id in metadata
        assert reconciled[O_SG_MESSAGE_ID] == D_SG2  # sg_message_id in the payload, SendGrid's .filter rule
        assert O_ALREADY_RECONCILED in reconciled  # Mailglass's own, untouched
        assert len([k for k in reconciled if k == O_ALREADY_RECONCILED]) == 1
        assert _pending(engine) == {O_NEVER}
        # Idempotent: a second migrate changes nothing.
        again = snapshot(blank)
        assert migrate_cli(blank).returncode == 0
        assert snapshot(blank) == again
    finally:
        engine.dispose()
    # Mailglass's migrator still sees its own version and would run exactly the later ones.
    plain = raw_engine(blank)
    try:
        with plain.connect() as conn:
            assert mailglass_versions_to_run(conn) == list(range(version + 1, 8))
    finally:
        plain.dispose()


@pytest.mark.parametrize("version", [5, 6])
def test_mailglass_migrates_to_its_next_versions_after_adoption(blank: str, version: int) -> None:
    load_mailglass(blank, version)
    assert migrate_cli(blank).returncode == 0
    plain = raw_engine(blank)
    try:
        with plain.begin() as conn:
            todo = mailglass_versions_to_run(conn)
            conn.exec_driver_sql(sections_between(todo[0], todo[-1]).replace("__SCHEMA__", '"public"'))
            conn.exec_driver_sql(f"COMMENT ON TABLE mailglass_events IS '{todo[-1]}'")
        with plain.connect() as conn:
            assert mailglass_versions_to_run(conn) == []
    finally:
        plain.dispose()
    # And the project's side keeps working on the newer schema.
    assert migrate_cli(blank).returncode == 0


def _mailglass_app_role(admin_engine: Engine, url: str, schema_name: str = "public") -> str:
    """A LOGIN role with what a Mailglass app's role holds on Mailglass's tables, and nothing of the project's."""
    role = f"mg_app_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    owner = raw_engine(url)
    with owner.begin() as conn:
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{schema_name}" TO "{role}"')
        for table in MAILGLASS_TABLES:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": f'"{schema_name}".{table}'}).scalar():
                conn.exec_driver_sql(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{schema_name}".{table} TO "{role}"')
    owner.dispose()
    return role


def _drop_role(admin_engine: Engine, url: str, role: str) -> None:
    owner = raw_engine(url)
    with owner.begin() as conn:
        conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
    owner.dispose()
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP ROLE "{role}"'))


@pytest.mark.parametrize("version", [4, 5, 6, 7])
def test_mailglass_writes_succeed_after_adoption(blank: str, admin_engine: Engine, version: int) -> None:
    load_mailglass(blank, version)
    assert migrate_cli(blank).returncode == 0
    role = _mailglass_app_role(admin_engine, blank)
    try:
        for url in (blank, with_database(blank, make_url(blank).database or "", user=role)):
            app = raw_engine(url)  # a Mailglass app's pool: none of the project's session options
            try:
                found = mailglass_writes(app, "public", version)
            finally:
                app.dispose()
            assert found["duplicate_constraint"] == "mailglass_deliveries_idempotency_key_unique_idx"
            assert found["optimistic_update"] == 1
            engine = create_engine(blank)
            try:
                # The ingested orphan was queued by the project's trigger, though the app's role has no
                # privilege on the queue.
                assert found["orphan"] in _pending(engine)
                with engine.connect() as conn:
                    inserted_at = conn.execute(
                        sa.text("SELECT inserted_at FROM mailglass_events WHERE id = :o"), {"o": found["orphan"]}
                    ).scalar()
                assert inserted_at is not None  # the column default applied
                if version >= 7:
                    with engine.connect() as conn:
                        state = conn.execute(
                            sa.text("SELECT lifecycle_state FROM mailglass_outbound_payloads WHERE delivery_id = :d"),
                            {"d": found["delivery"]},
                        ).scalar()
                    assert state == "recoverable"
            finally:
                engine.dispose()
    finally:
        _drop_role(admin_engine, blank, role)
    # The reconciler's least privilege applies on every version (V04 and V05 have no payloads table)
    # and is enough for a sweep.
    reconciler = f"mg_rec_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{reconciler}" LOGIN'))
    try:
        grants.apply_grants(blank, reconciler)
        restricted = create_engine(with_database(blank, make_url(blank).database or "", user=reconciler))
        try:
            assert sweep(restricted, None, SweepConfig()).linked == 2
        finally:
            restricted.dispose()
    finally:
        _drop_role(admin_engine, blank, reconciler)


def test_migrate_refuses_a_role_that_does_not_own_mailglass_tables_before_any_change(
    blank: str, admin_engine: Engine
) -> None:
    load_mailglass(blank, 7)
    role = _mailglass_app_role(admin_engine, blank)
    try:
        with raw_engine(blank).begin() as conn:
            conn.exec_driver_sql(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        before = snapshot(blank)
        done = migrate_cli(with_database(blank, make_url(blank).database or "", user=role))
        assert done.returncode != 0
        # One error line (after the line naming the database, which every command prints).
        errors = [line for line in done.stderr.splitlines() if line.strip() and "database postgresql" not in line]
        assert len(errors) == 1, done.stderr
        owner = make_url(blank).username
        assert f"run as role '{owner}'" in errors[0]
        assert snapshot(blank) == before
        plain = raw_engine(blank)
        try:
            with plain.connect() as conn:
                leftovers = conn.execute(
                    sa.text(
                        "SELECT relname FROM pg_class WHERE relname LIKE 'mailglass_%' AND relname NOT LIKE ALL(:m)"
                    ),
                    {"m": [f"{t}%" for t in MAILGLASS_TABLES]},
                ).all()
        finally:
            plain.dispose()
        assert leftovers == []  # no version table, no queue: nothing was created
    finally:
        _drop_role(admin_engine, blank, role)
