"""Item 7: the reconciler runs as a role holding only what ``sql/grants.sql`` grants.

The scenario runs the sweep as a fresh LOGIN role that got nothing but the
shipped GRANTs (applied through :func:`mailglass_pipeline.grants.apply_grants`,
the code path ``mailglass grants --apply`` uses). If the reconciler starts to
need another privilege the sweep fails here; if ``grants.sql`` grants too much
the refusal assertions fail.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline import grants
from mailglass_pipeline.db import create_engine, run_transaction
from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.reconciliation.sweep import absorb_wakes, reconcile, sweep
from mailglass_pipeline.settings import SweepConfig
from tests.databases import login_role
from tests.factories import fetch, make_delivery, make_orphan
from tests.processes import mailglass


@pytest.fixture
def restricted_url(database_url: str, admin_engine: Engine) -> Iterator[str]:
    with login_role(database_url, admin_engine, "mg_reconciler") as (role, url):
        grants.apply_grants(database_url, role)
        yield url


@pytest.fixture
def restricted(restricted_url: str) -> Iterator[Engine]:
    engine = create_engine(restricted_url)
    yield engine
    engine.dispose()


def _refused(engine: Engine, sql: str) -> str:
    """Run ``sql`` and return the SQLSTATE it was refused with (fails when it is allowed)."""
    with pytest.raises(sa.exc.DBAPIError) as info, engine.begin() as conn:
        conn.execute(sa.text(sql))
    return getattr(info.value.orig, "sqlstate", "?")


def test_rendered_grants_are_exact_and_injection_safe() -> None:
    sql = grants.render_grants('evil"; DROP TABLE mailglass_events; --')
    assert ':"role"' not in sql
    assert '"evil""; DROP TABLE mailglass_events; --"' in sql
    assert "DROP TABLE mailglass_events;" not in sql.replace('"evil""; DROP TABLE mailglass_events; --"', "")
    stmts = grants.statements("a;b")
    assert all(s.startswith(("REVOKE", "GRANT")) for s in stmts)
    assert any('"a;b"' in s for s in stmts)
    granted = " ".join(stmts).upper()
    assert "DELETE ON TABLE MAILGLASS_EVENTS" not in granted
    assert "ALL PRIVILEGES" not in granted and "CREATE" not in granted
    for bad in ("", "x\x00y", "r" * 64):
        with pytest.raises(ConfigurationError):
            grants.render_grants(bad)


def test_table_privileges_are_exactly_the_documented_ones(restricted_url: str, engine: Engine) -> None:
    role = make_url(restricted_url).username
    rows = fetch(
        engine,
        """
        SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) AS privs
          FROM information_schema.role_table_grants WHERE grantee = :role GROUP BY table_name
        """,
        role=role,
    )
    assert {r.table_name: r.privs for r in rows} == {
        "mailglass_events": "INSERT,SELECT",
        "mailglass_deliveries": "SELECT,UPDATE",
        "mailglass_reconciliation_queue": "SELECT,UPDATE",
    }
    # Re-applying is idempotent (REVOKE ALL first), not additive.
    grants.apply_grants(str(engine.url.render_as_string(hide_password=False)), role)
    assert len(fetch(engine, "SELECT 1 FROM information_schema.role_table_grants WHERE grantee = :r", r=role)) == 6


def test_core_reconciler_scenario_as_restricted_role(engine: Engine, restricted: Engine) -> None:
    # Data written by the owner/application; the sweeps run as the restricted role.
    linked_orphan = make_orphan(engine, tenant_id="t1", message_id="m-1", event_type="delivered")
    delivery = make_delivery(engine, tenant_id="t1", message_id="m-1")
    make_orphan(engine, tenant_id="t1", message_id="m-unknown")
    make_orphan(engine, tenant_id="t1", message_id=None, metadata={"provider": 7, "provider_message_id": ["x"]})
    make_orphan(engine, tenant_id="t1", message_id="m-old", age=timedelta(days=8))

    result = sweep(restricted, "t1", SweepConfig(grace_seconds=0))
    assert (result.scanned, result.linked, result.unmatched, result.malformed) == (3, 1, 1, 1)
    assert result.stale_orphans == 1
    rec = fetch(engine, "SELECT delivery_id, metadata FROM mailglass_events WHERE type = 'reconciled'")
    assert [(r.delivery_id, r.metadata["reconciled_from_event_id"]) for r in rec] == [(delivery, str(linked_orphan))]
    row = fetch(
        engine, "SELECT delivered_at, terminal, lock_version FROM mailglass_deliveries WHERE id = :d", d=delivery
    )
    assert row[0].delivered_at is not None and row[0].terminal and row[0].lock_version == 2

    again = sweep(restricted, "t1", SweepConfig(grace_seconds=0, retry_all=True))
    assert (again.scanned, again.linked) == (1, 0)  # only the unmatched orphan is retried
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type = 'reconciled'")[0].n == 1

    # A delivery committing later is picked up by the restricted role too.
    make_delivery(engine, tenant_id="t1", message_id="m-unknown")
    assert sweep(restricted, "t1", SweepConfig(grace_seconds=0)).linked == 1


def test_public_api_and_cli_run_as_restricted_role(engine: Engine, restricted_url: str) -> None:
    make_orphan(engine, tenant_id="t2", message_id="m-1")
    make_delivery(engine, tenant_id="t2", message_id="m-1")
    make_orphan(engine, tenant_id="t2", message_id="m-2")
    make_delivery(engine, tenant_id="t2", message_id="m-2")
    assert reconcile("t2", limit=1, database_url=restricted_url)["linked"] == 1
    env = {"MAILGLASS_DATABASE_URL": restricted_url}
    proc = mailglass("reconcile", "--tenant-id", "t2", "--grace-seconds", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["linked"] == 1


def test_restricted_role_cannot_rewrite_history_or_change_schema(engine: Engine, restricted: Engine) -> None:
    make_orphan(engine, tenant_id="t3", message_id="m-1")
    make_delivery(engine, tenant_id="t3", message_id="m-1")
    refused = {
        "UPDATE mailglass_events SET type = 'bounced'": "42501",
        "DELETE FROM mailglass_events": "42501",
        "TRUNCATE mailglass_events": "42501",
        "DELETE FROM mailglass_deliveries": "42501",
        "INSERT INTO mailglass_deliveries (tenant_id, mailable, stream, recipient, recipient_domain, "
        "last_event_type, last_event_at) VALUES ('t', 'm', 's', 'r', 'd', 'x', now())": "42501",
        "CREATE TABLE mg_intruder (id int)": "42501",
        "ALTER TABLE mailglass_events DISABLE TRIGGER mailglass_events_immutable_trigger": "42501",
        "DROP TRIGGER mailglass_events_immutable_trigger ON mailglass_events": "42501",
        "DROP TABLE mailglass_reconciliation_queue": "42501",
        # The queue's rows are the triggers' business (SECURITY DEFINER), not the role's.
        "DELETE FROM mailglass_reconciliation_queue": "42501",
        "INSERT INTO mailglass_reconciliation_queue (event_id, tenant_id, orphan_inserted_at)"
        " VALUES (gen_random_uuid(), 't', now())": "42501",
        "CREATE INDEX mg_i ON mailglass_deliveries (recipient)": "42501",
        "SELECT * FROM mailglass_alembic_version": "42501",
    }
    got = {sql: _refused(restricted, sql) for sql in refused}
    assert got == refused
    # And the migrations stay the owner's job.
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_events")[0].n == 1


def test_grants_cli_prints_and_applies(database_url: str, admin_engine: Engine, engine: Engine) -> None:
    env = {"MAILGLASS_DATABASE_URL": database_url}
    printed = mailglass("grants", "--role", "o'reilly", env=env)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == grants.render_grants("o'reilly").strip()

    missing = mailglass("grants", "--role", "mg_no_such_role", "--apply", env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "mg_no_such_role" in missing.stderr.strip().splitlines()[-1]

    role = f"mg_reconciler_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" NOLOGIN'))
    try:
        applied = mailglass("grants", "--role", role, "--apply", env=env)
        assert applied.returncode == 0, applied.stderr
        assert json.loads(applied.stdout)["role"] == role
        privileges = fetch(
            engine, "SELECT count(*) AS n FROM information_schema.role_table_grants WHERE grantee = :r", r=role
        )
        assert privileges[0].n == 6
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))


def test_orphans_written_by_the_restricted_role_are_queued_through_the_trigger(
    engine: Engine, restricted: Engine
) -> None:
    # The reconciler role (also what ingest may run as) appends an orphan: the SECURITY DEFINER ledger
    # trigger queues it although the role has no INSERT on the queue.
    with restricted.begin() as conn:
        orphan = conn.execute(
            sa.text(
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,"
                " inserted_at) VALUES (gen_random_uuid(), 't4', 'delivered', now(),"
                ' \'{"provider": "postmark", "provider_message_id": "m-4"}\', true, now() - interval \'5 minutes\')'
                " RETURNING id"
            )
        ).scalar_one()
    assert (
        fetch(engine, "SELECT provider_message_id FROM mailglass_reconciliation_queue WHERE event_id = :o", o=orphan)[
            0
        ].provider_message_id
        == "m-4"
    )
    make_delivery(engine, tenant_id="t4", message_id="m-4")
    assert sweep(restricted, "t4", SweepConfig()).linked == 1
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_reconciliation_queue")[0].n == 0


@pytest.fixture
def sender_url(database_url: str, admin_engine: Engine) -> Iterator[str]:
    """A role like a sending application's: INSERT (and UPDATE of the message id) on deliveries, nothing else."""
    with login_role(database_url, admin_engine, "mg_sender") as (role, url):
        owner = create_engine(database_url, poolclass=sa.pool.NullPool)
        with owner.begin() as conn:
            conn.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
            conn.execute(sa.text(f'GRANT INSERT ON TABLE mailglass_deliveries TO "{role}"'))
            conn.execute(
                sa.text(
                    "GRANT SELECT (id, provider_message_id), UPDATE (provider_message_id)"
                    f' ON mailglass_deliveries TO "{role}"'
                )
            )
        owner.dispose()
        yield url


def test_a_sender_with_no_queue_grant_wakes_orphans(engine: Engine, sender_url: str) -> None:
    inserted = make_orphan(engine, tenant_id="t5", message_id="m-ins")
    rekeyed = make_orphan(engine, tenant_id="t5", message_id="m-upd")
    with engine.begin() as conn:  # both examined once, unmatched: backing off
        conn.execute(sa.text("UPDATE mailglass_reconciliation_queue SET attempts = 3, last_attempted_at = now(),"
                             " next_attempt_at = now() + interval '4 minutes'"))  # fmt: skip
    sender = create_engine(sender_url, poolclass=sa.pool.NullPool)
    try:
        privileges = fetch(engine, "SELECT count(*) AS n FROM information_schema.role_table_grants"
                           " WHERE grantee = :r AND table_name = 'mailglass_reconciliation_queue'",
                           r=make_url(sender_url).username)  # fmt: skip
        assert privileges[0].n == 0
        with sender.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                    " provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at) VALUES"
                    " (gen_random_uuid(), 't5', 'M', 'transactional', 'a@b.c', 'b.c', 'postmark', 'm-ins',"
                    " 'dispatched', now(), now(), now()),"
                    " (gen_random_uuid(), 't5', 'M', 'transactional', 'a@b.c', 'b.c', 'postmark', NULL,"
                    " 'dispatched', now(), now(), now())"
                )
            )
            conn.execute(
                sa.text(
                    "UPDATE mailglass_deliveries SET provider_message_id = 'm-upd' WHERE provider_message_id IS NULL"
                )
            )
        with pytest.raises(sa.exc.ProgrammingError), sender.begin() as conn:
            conn.execute(sa.text("SELECT * FROM mailglass_reconciliation_queue"))
    finally:
        sender.dispose()
    run_transaction(engine, absorb_wakes)  # what the next sweep does first (decision D27)
    due = fetch(engine, "SELECT event_id FROM mailglass_reconciliation_queue"
                " WHERE next_attempt_at IS NULL AND linkable_at IS NOT NULL")  # fmt: skip
    assert {r.event_id for r in due} == {inserted, rekeyed}
    result = sweep(engine, "t5", SweepConfig())
    assert (result.scanned, result.linked) == (2, 2)
