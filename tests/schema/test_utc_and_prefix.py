"""UTC whatever the zones around it, and a Mailglass installed under a prefix (``MAILGLASS_DB_SCHEMA``).

Mailglass's ``timestamp`` columns hold UTC. The client's ``PGTZ`` and the database's default zone are
set to New York here: the project's sessions stay in UTC, the queue trigger (running in the
writer's New York session) converts naming UTC, and grace and max age hold to the second.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline import schema
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.ingest.samples import build_webhook
from mailglass_pipeline.reconciliation.sweep import find_orphans, sweep
from mailglass_pipeline.settings import SweepConfig
from tests.databases import fresh_database
from tests.processes import CommandResult, mailglass
from tests.schema.schema_support import (
    O_MESSAGE_ID,
    O_SG_MESSAGE_ID,
    load_mailglass,
    mailglass_versions_to_run,
    raw_engine,
    require_citext,
    snapshot,
)

NEW_YORK = "America/New_York"


@pytest.fixture
def blank(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    with fresh_database(admin_url, admin_engine) as url:
        yield url


def _cli(url: str, *args: str, **env: str) -> CommandResult:
    return mailglass(*args, env={"MAILGLASS_DATABASE_URL": url, **env})


def test_grace_and_max_age_hold_to_the_second_in_any_zone(
    blank: str, admin_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema.upgrade(blank)
    with admin_engine.connect() as conn:
        conn.exec_driver_sql(f"ALTER DATABASE \"{make_url(blank).database}\" SET timezone = '{NEW_YORK}'")
    monkeypatch.setenv("PGTZ", NEW_YORK)
    writer = raw_engine(blank)  # a Mailglass app's session: New York, by PGTZ and by the database default
    ours = create_engine(blank)
    try:
        with writer.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == NEW_YORK
        with ours.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        ages = {"due": 61.5, "in_grace": 58.5, "young": 9 * 60 + 58.5, "stale": 10 * 60 + 1.5}
        ids = {name: uuid.uuid4() for name in ages}
        with writer.begin() as conn:
            for name, age in ages.items():
                # As Ecto writes them: a UTC wall-clock time into a timestamp column, from a NY session.
                at = (datetime.now(UTC) - timedelta(seconds=age)).replace(tzinfo=None)
                conn.execute(
                    sa.text(
                        "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata,"
                        " needs_reconciliation, inserted_at) VALUES (:id, 'ny', 'delivered', :at,"
                        " jsonb_build_object('provider', 'postmark', 'message_id', CAST(:m AS text)), true, :at)"
                    ),
                    {"id": ids[name], "at": at, "m": f"pm-{name}"},
                )
        with ours.connect() as conn:
            # The trigger ran in the NY session and still queued each orphan at its UTC instant.
            offsets = conn.execute(
                sa.text(
                    "SELECT max(abs(extract(epoch FROM q.orphan_inserted_at - (e.inserted_at AT TIME ZONE 'UTC'))))"
                    " FROM mailglass_reconciliation_queue q JOIN mailglass_events e ON e.id = q.event_id"
                )
            ).scalar()
        assert offsets == 0
        with ours.begin() as conn:
            grace = set(find_orphans(conn, "ny", SweepConfig(grace_seconds=60))["id"])
            aged = set(find_orphans(conn, "ny", SweepConfig(grace_seconds=0, max_age_minutes=10))["id"])
        assert grace == {ids["due"], ids["young"], ids["stale"]}
        assert aged == {ids["due"], ids["in_grace"], ids["young"]}
        # The sweep as the CLI runs it, under the same hostile environment.
        deliveries = [("pm-due", "m1"), ("pm-young", "m2")]
        with writer.begin() as conn:
            for pmid, name in deliveries:
                conn.execute(
                    sa.text(
                        "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient,"
                        " recipient_domain, provider, provider_message_id, last_event_type, last_event_at,"
                        " inserted_at, updated_at) VALUES (gen_random_uuid(), 'ny', :n, 'transactional', 'a@b.c',"
                        " 'b.c', 'postmark', :m, 'dispatched', :at, :at, :at)"
                    ),
                    {"n": name, "m": pmid, "at": (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None)},
                )
        result = sweep(ours, "ny", SweepConfig(grace_seconds=60, max_age_minutes=10))
        assert (result.linked, result.stale_orphans) == (2, 1)
    finally:
        writer.dispose()
        ours.dispose()


def _public_objects(url: str) -> list[tuple[str, str]]:
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT 'class', relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                        " UNION ALL SELECT 'proc', proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
                        " UNION ALL SELECT 'type', typname FROM pg_type WHERE typnamespace = 'public'::regnamespace"
                        " ORDER BY 1, 2"
                    )
                )
            ]
    finally:
        engine.dispose()


def _skip_without_citext(url: str) -> None:
    """These tests are about where citext goes: the embedded server ships none (15 schema tests skip there)."""
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            require_citext(conn)
    finally:
        engine.dispose()


def test_prefix_from_empty_creates_everything_in_the_schema_and_only_citext_in_public(
    blank: str, admin_url: str, admin_engine: Engine
) -> None:
    _skip_without_citext(blank)
    done = _cli(blank, "migrate", MAILGLASS_DB_SCHEMA="mg")
    assert done.returncode == 0, done.stderr
    with fresh_database(admin_url, admin_engine) as reference:
        # What Mailglass's migrator leaves in public: its unqualified CREATE EXTENSION citext, nothing else.
        with raw_engine(reference).begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS citext")
        assert _public_objects(blank) == _public_objects(reference)
    with fresh_database(admin_url, admin_engine) as reference:
        load_mailglass(reference, 7, schema="mg", data=False)
        ours, theirs = snapshot(blank, "mg", rows=False), snapshot(reference, "mg", rows=False)
    for key in ("columns", "indexes", "constraints", "triggers", "stamp"):
        assert ours[key] == theirs[key], key
    engine = raw_engine(blank)
    try:
        with engine.connect() as conn:
            assert mailglass_versions_to_run(conn, "mg") == []
            assert conn.execute(sa.text("SELECT to_regclass('mg.mailglass_alembic_version')")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("prefix", ["mg", "MgUpper"])
def test_prefix_adoption_migrate_reconcile_ingest_grants(blank: str, admin_engine: Engine, prefix: str) -> None:
    """Any prefix Mailglass accepts, mixed case too: quoted everywhere (search_path, DDL, grants)."""
    load_mailglass(blank, 7, schema=prefix)
    public_before = _public_objects(blank)
    before = snapshot(blank, prefix)
    env = {"MAILGLASS_DB_SCHEMA": prefix}
    done = _cli(blank, "migrate", **env)
    assert done.returncode == 0, done.stderr
    assert snapshot(blank, prefix) == before
    done = _cli(blank, "reconcile", **env)
    assert done.returncode == 0, done.stderr
    # Ingest: a Postmark webhook for a message nobody sent yet becomes an orphan, in mg.
    body, _headers = build_webhook("postmark", "pm-ingested", "delivered")
    with tempfile.NamedTemporaryFile(suffix=".json") as capture:
        capture.write(body)
        capture.flush()
        done = _cli(
            blank, "ingest", "--provider", "postmark", "--tenant-id", "acme", "--no-verify", capture.name, **env
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["orphans"] == 1
    role = f"mg_rec_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        done = _cli(blank, "grants", "--role", role, "--apply", **env)
        assert done.returncode == 0, done.stderr
        restricted = make_url(blank).set(username=role, password=None).render_as_string(hide_password=False)
        done = _cli(restricted, "reconcile", "--grace-seconds", "0", **env)
        assert done.returncode == 0, done.stderr
        done = _cli(blank, "doctor", "--role", role, **env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"grants of role {role!r} as the reconciler's" in done.stdout
    finally:
        with raw_engine(blank).begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
    assert _public_objects(blank) == public_before
    engine = raw_engine(blank)
    try:
        with engine.connect() as conn:
            reconciled = {
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT (metadata->>'reconciled_from_event_id')::uuid"
                        f' FROM "{prefix}".mailglass_events'
                        " WHERE type = 'reconciled'"
                    )
                )
            }
            queued = conn.execute(sa.text(f'SELECT count(*) FROM "{prefix}".mailglass_reconciliation_queue')).scalar()
    finally:
        engine.dispose()
    assert {O_MESSAGE_ID, O_SG_MESSAGE_ID} <= reconciled
    assert queued == 2  # the orphan that never matches, and the ingested one


def _namespaces(url: str) -> list[tuple[str, str]]:
    """Every schema and relation outside the system's: what a refused migrate must leave as it was."""
    engine = raw_engine(url)
    try:
        with engine.connect() as conn:
            return [
                (str(schema_name), str(relation))
                for schema_name, relation in conn.execute(
                    sa.text(
                        "SELECT n.nspname, coalesce(c.relname, '') FROM pg_namespace n"
                        " LEFT JOIN pg_class c ON c.relnamespace = n.oid"
                        " WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' ORDER BY 1, 2"
                    )
                )
            ]
    finally:
        engine.dispose()


def test_a_prefix_named_in_another_case_is_refused_in_one_line_and_builds_nothing(blank: str) -> None:
    load_mailglass(blank, 7, schema="MgUpper")
    before = snapshot(blank, "MgUpper")
    namespaces = _namespaces(blank)
    done = _cli(blank, "migrate", MAILGLASS_DB_SCHEMA="mgupper")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("mailglass: database ")]
    assert errors == [
        'mailglass: MAILGLASS_DB_SCHEMA="mgupper" holds no Mailglass tables, but "MgUpper" does: set'
        " MAILGLASS_DB_SCHEMA=MgUpper (schema names are case-sensitive); nothing was changed"
    ]
    assert _namespaces(blank) == namespaces
    assert snapshot(blank, "MgUpper") == before
    # Any other command with the wrong case: one line that points at the schema and at doctor.
    done = _cli(blank, "reconcile", MAILGLASS_DB_SCHEMA="mgupper")
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if not line.startswith("mailglass: database postgres")]
    assert 'does not exist in schema "mgupper" (MAILGLASS_DB_SCHEMA): `mailglass doctor` says where' in line
    done = _cli(blank, "doctor", MAILGLASS_DB_SCHEMA="mgupper")
    assert (done.returncode, done.stdout.splitlines()) == (
        1,
        [
            'schema: schema "mgupper" (MAILGLASS_DB_SCHEMA) holds no mailglass_events; Mailglass\'s tables are in'
            ' "MgUpper"; fix: set MAILGLASS_DB_SCHEMA=MgUpper (schema names are case-sensitive)'
        ],
    )
    assert _namespaces(blank) == namespaces
    done = _cli(blank, "migrate", MAILGLASS_DB_SCHEMA="Mg-Upper")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("mailglass: MAILGLASS_DB_SCHEMA must be")
    assert _namespaces(blank) == namespaces


def test_citext_goes_where_mailglass_puts_it_and_lookups_stay_case_insensitive(blank: str) -> None:
    _skip_without_citext(blank)
    done = _cli(blank, "migrate", MAILGLASS_DB_SCHEMA="mg")
    assert done.returncode == 0, done.stderr
    app = raw_engine(blank)  # a Mailglass app's session: the default search_path
    try:
        with app.begin() as conn:
            assert (
                conn.exec_driver_sql(
                    "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'"
                ).scalar()
                == "public"
            )
            conn.execute(
                sa.text(
                    "INSERT INTO mg.mailglass_suppressions (id, tenant_id, address, scope, reason, source)"
                    " VALUES (gen_random_uuid(), 'acme', 'Dee@Example.COM', 'address', 'hard_bounce', 'test')"
                )
            )

        def lookups() -> int:
            with app.connect() as conn:
                # Mailglass's Suppression check: address = $1 with the address as the app has it.
                return int(
                    conn.execute(
                        sa.text("SELECT count(*) FROM mg.mailglass_suppressions WHERE address = :a"),
                        {"a": "dee@example.com"},
                    ).scalar_one()
                )

        assert lookups() == 1
        done = _cli(blank, "doctor", MAILGLASS_DB_SCHEMA="mg")
        assert done.returncode == 0, done.stdout + done.stderr
        assert 'citext in "public"' in done.stdout
        # What an earlier release left: citext inside the prefix, where an app session does not look.
        with app.begin() as conn:
            conn.exec_driver_sql("ALTER EXTENSION citext SET SCHEMA mg")
        assert lookups() == 0
        done = _cli(blank, "doctor", MAILGLASS_DB_SCHEMA="mg")
        assert done.returncode == 1
        [line] = done.stdout.splitlines()
        assert line.startswith('citext: the citext extension is in schema "mg", outside the default search_path')
        assert line.endswith('fix: ALTER EXTENSION citext SET SCHEMA "public" (where Mailglass\'s migrator creates it)')
        with app.begin() as conn:
            conn.exec_driver_sql('ALTER EXTENSION citext SET SCHEMA "public"')
        assert lookups() == 1
        assert _cli(blank, "doctor", MAILGLASS_DB_SCHEMA="mg").returncode == 0
    finally:
        app.dispose()


def test_every_entry_point_connects_in_utc_on_the_mailglass_schema(blank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dagster resource, the ingest's and reconciler's engine, Alembic's: one door (db.create_engine)."""
    from mailglass_pipeline import db
    from mailglass_pipeline.defs.resources import MailglassDatabase

    monkeypatch.setenv("PGTZ", NEW_YORK)
    monkeypatch.setenv("PGOPTIONS", "-c search_path=public -c TimeZone=Asia/Tokyo")
    monkeypatch.setenv("MAILGLASS_DB_SCHEMA", "mg")
    with raw_engine(blank).begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA mg")
    engines = [MailglassDatabase(database_url=blank).get_engine(), db.get_engine(blank), db.create_engine(blank)]
    try:
        for engine in engines:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
                assert conn.exec_driver_sql("SHOW search_path").scalar() == '"mg"'  # quoted: a prefix keeps its case
                assert conn.exec_driver_sql("SELECT current_schemas(false)").scalar() == ["mg"]
                stamp = conn.exec_driver_sql("SELECT localtimestamp(0) = (now() AT TIME ZONE 'UTC')::timestamp(0)")
                assert stamp.scalar() is True
    finally:
        for engine in engines:
            engine.dispose()
    monkeypatch.setenv("MAILGLASS_DB_SCHEMA", "Bad-Name")
    with pytest.raises(Exception, match="MAILGLASS_DB_SCHEMA"):
        db.create_engine(blank)
