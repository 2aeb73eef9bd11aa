"""`mailglass doctor` on real rows: each check sees what was broken, says the fix, and is quiet again once fixed.

Every test breaks one thing the product relies on in a freshly migrated database, as it breaks in the
field (a trigger disabled for a restore, a function re-owned, a grant revoked, an app session in
another zone, rows copied with triggers off), asserts the one line and a failing report, applies the fix
(or ``--repair``) and asserts a clean report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import doctor, grants, schema
from mailglass_pipeline.reconciliation.sweep import reconcile
from tests.databases import login_role
from tests.factories import make_delivery, make_orphan, rows

MAILGLASS_BIN = os.path.join(os.path.dirname(sys.executable), "mailglass")


def problems(engine: Engine, **kwargs: object) -> list[doctor.Problem]:
    return doctor.diagnose(engine, **kwargs).problems  # type: ignore[arg-type]


def run_sql(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def uuid7(at: datetime) -> uuid.UUID:
    """A UUIDv7 as Mailglass's Ecto schemas generate them: the UTC millisecond first, then random bits."""
    ms = int(at.timestamp() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


@pytest.fixture
def raw(database_url: str) -> Iterator[Engine]:
    """A plain session, as a Mailglass app (or an operator's psql) has: the server's defaults, no project options."""
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def test_a_healthy_database_with_rows_is_ok(engine: Engine) -> None:
    make_delivery(engine, tenant_id="acme", message_id="pm-1")
    make_orphan(engine, tenant_id="acme", message_id="pm-1")
    make_orphan(engine, tenant_id="acme", message_id="pm-never")
    report = doctor.diagnose(engine)
    assert report.ok, report.lines()
    [line] = report.lines()
    assert line.startswith("ok: schema 'public': Mailglass stamp 7; revision ")
    assert "queue consistent with the ledger" in line


def test_stamp_and_revision(engine: Engine) -> None:
    run_sql(engine, "COMMENT ON TABLE mailglass_events IS NULL")
    [problem] = problems(engine)
    assert problem.check == "stamp" and "no Mailglass version stamp" in problem.problem
    assert "COMMENT ON TABLE public.mailglass_events IS" in problem.fix
    run_sql(
        engine,
        "COMMENT ON TABLE mailglass_events IS '7'",
        "UPDATE mailglass_alembic_version SET version_num = '0004_mailglass_schema'",
    )
    [problem] = problems(engine)
    assert problem.check == "revision" and "at 0004_mailglass_schema, not at" in problem.problem
    assert "mailglass migrate" in problem.fix
    run_sql(engine, f"UPDATE mailglass_alembic_version SET version_num = '{schema.head_revision()}'")
    assert problems(engine) == []


@pytest.mark.parametrize(
    ("break_it", "says", "fix"),
    [
        (
            "ALTER FUNCTION mailglass_wake_orphans() SECURITY INVOKER",
            "function public.mailglass_wake_orphans() is no longer SECURITY DEFINER",
            "ALTER FUNCTION public.mailglass_wake_orphans() SECURITY DEFINER",
        ),
        (
            "ALTER FUNCTION mailglass_track_orphans() RESET search_path",
            "function public.mailglass_track_orphans() runs with",
            "ALTER FUNCTION public.mailglass_track_orphans() SET search_path = pg_catalog, public, pg_temp",
        ),
        (
            "ALTER TABLE mailglass_deliveries DISABLE TRIGGER mailglass_deliveries_wake_orphans",
            "trigger mailglass_deliveries_wake_orphans on public.mailglass_deliveries is disabled",
            "ALTER TABLE public.mailglass_deliveries ENABLE TRIGGER mailglass_deliveries_wake_orphans",
        ),
        (
            "ALTER TABLE mailglass_events ENABLE REPLICA TRIGGER mailglass_events_track_orphans",
            "trigger mailglass_events_track_orphans on public.mailglass_events is enabled for replica sessions only",
            "ALTER TABLE public.mailglass_events ENABLE TRIGGER mailglass_events_track_orphans",
        ),
    ],
)
def test_functions_and_triggers_as_created(engine: Engine, break_it: str, says: str, fix: str) -> None:
    assert problems(engine) == []
    run_sql(engine, break_it)
    [problem] = problems(engine)
    assert problem.problem.startswith(says), problem.line()
    assert problem.fix.startswith(fix), problem.line()
    run_sql(engine, fix)
    assert problems(engine) == []


def test_a_function_owned_by_another_role(engine: Engine, database_url: str, admin_engine: Engine) -> None:
    with login_role(database_url, admin_engine, "mg_doc") as (role, _url):
        run_sql(engine, f'ALTER FUNCTION mailglass_wake_orphans_on_rekey() OWNER TO "{role}"')
        [problem] = problems(engine)
        assert problem.problem.startswith(
            f"function public.mailglass_wake_orphans_on_rekey() is owned by {role!r}, not by 'postgres'"
        )
        run_sql(engine, problem.fix)
        assert problems(engine) == []


def test_a_missing_trigger_is_recreated_as_the_fix_says(engine: Engine, database_url: str) -> None:
    run_sql(engine, "DROP TRIGGER mailglass_deliveries_wake_orphans ON mailglass_deliveries")
    [problem] = problems(engine)
    assert problem.line().startswith(
        "triggers: trigger mailglass_deliveries_wake_orphans on public.mailglass_deliveries is missing; fix: as the"
        " owner, DELETE FROM public.mailglass_alembic_version, then `mailglass migrate`"
    )
    run_sql(engine, "DELETE FROM mailglass_alembic_version")
    schema.upgrade(database_url)
    assert problems(engine) == []


def test_rows_no_trigger_saw_are_queued_by_repair_as_the_trigger_would(
    engine: Engine, raw: Engine, database_url: str
) -> None:
    make_delivery(engine, tenant_id="acme", message_id="pm-linkable")
    twin = make_orphan(engine, tenant_id="acme", message_id="pm-linkable")
    # A logical-replication subscriber (or pg_restore --disable-triggers) writes with no trigger firing.
    with raw.begin() as conn:
        conn.exec_driver_sql("SET session_replication_role = replica")
        restored = conn.execute(
            sa.text(
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,"
                " inserted_at) SELECT gen_random_uuid(), tenant_id, type, occurred_at, metadata, true, inserted_at"
                " FROM mailglass_events WHERE id = :twin RETURNING id"
            ),
            {"twin": twin},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO mailglass_reconciliation_queue (event_id, tenant_id, orphan_inserted_at)"
                " VALUES (gen_random_uuid(), 'acme', now())"
            )
        )
    found = problems(engine)
    assert [p.check for p in found] == ["queue", "queue"]
    assert found[0].problem.startswith(f"1 pending orphans have no queue row (e.g. event {restored})")
    assert found[0].fix.startswith("`mailglass doctor --repair`")
    assert found[1].problem.startswith("1 queue rows belong to orphans gone from the ledger or already reconciled")

    report = doctor.diagnose(engine, repair=True)
    assert report.repaired == {"orphans queued": 1, "queue rows deleted": 1}
    assert report.ok, report.lines()
    assert report.lines()[:2] == ["repaired: orphans queued 1", "repaired: queue rows deleted 1"]
    columns = "tenant_id, orphan_inserted_at, attempts, provider, provider_message_id, next_attempt_at, parked_at"
    queued = {
        r[0]: r[1:]
        for r in rows(
            engine,
            f"SELECT event_id, {columns}, linkable_at IS NOT NULL FROM mailglass_reconciliation_queue"
            " WHERE event_id IN (:a, :b)",
            a=twin,
            b=restored,
        )
    }
    assert queued[restored] == queued[twin]  # the trigger's own row for the same orphan
    assert queued[restored][-1] is True  # its delivery is there: due at once, linkable
    again = doctor.diagnose(engine, repair=True)
    assert again.repaired == {"orphans queued": 0, "queue rows deleted": 0} and again.ok
    assert reconcile(database_url=database_url)["linked"] == 2


def test_writers_in_another_time_zone_show_in_their_orphans(engine: Engine, raw: Engine) -> None:
    insert = (
        "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation)"
        " VALUES (:id, :tenant, 'delivered', now() AT TIME ZONE 'UTC',"
        " jsonb_build_object('provider', 'postmark', 'message_id', CAST(:m AS text)), true)"
    )
    # A Mailglass app's ingest, inserted_at from the column default: now() in the session's zone.
    with raw.begin() as conn:
        conn.exec_driver_sql("SET TimeZone = 'Asia/Tokyo'")
        conn.execute(sa.text(insert), {"id": uuid7(datetime.now(UTC)), "tenant": "tokyo", "m": "pm-tokyo"})
    [problem] = problems(engine)
    assert problem.check == "clocks"
    assert problem.problem.startswith("1 pending orphans stored 9.0 h ahead of now (e.g. event ")
    assert "tenant 'tokyo'" in problem.problem and "ALTER ROLE" in problem.fix
    with raw.begin() as conn:
        conn.exec_driver_sql("SET TimeZone = 'America/New_York'")
        conn.execute(sa.text(insert), {"id": uuid7(datetime.now(UTC)), "tenant": "ny", "m": "pm-ny"})
    hours = abs(ZoneInfo("America/New_York").utcoffset(datetime.now()).total_seconds()) / 3600  # type: ignore[union-attr]
    clocks = [p for p in problems(engine) if p.check == "clocks"]
    assert [p.problem.split(" (e.g.")[0] for p in clocks] == [
        "1 pending orphans stored 9.0 h ahead of now",
        f"1 pending orphans stored {hours:.1f} h behind the instant in their own UUIDv7 id",
    ]


def test_grants_of_a_service_role(engine: Engine, database_url: str, admin_engine: Engine) -> None:
    with login_role(database_url, admin_engine, "mg_doc") as (role, _url):
        [problem] = problems(engine, role=role)
        # 8 of the file's 9 (migration 0006 added EXECUTE on the absorb): USAGE on schema public is PUBLIC's already.
        assert problem.check == "grants" and f"role {role!r} lacks 8 privileges" in problem.problem
        grants.apply_grants(database_url, role)
        assert problems(engine, role=role) == []
        run_sql(
            engine, f'REVOKE INSERT ON mailglass_events FROM "{role}"', f'GRANT DELETE ON mailglass_events TO "{role}"'
        )
        found = [p.line() for p in problems(engine, role=role)]
        assert found == [
            f"grants: role {role!r} lacks 1 privileges of the reconciler's grants:"
            ' INSERT on "public".mailglass_events;'
            f" fix: `mailglass grants --role {role} --for reconciler --apply` as the owner",
            f"grants: role {role!r} holds 1 privileges beyond the reconciler's grants: DELETE on mailglass_events;"
            f" fix: `mailglass grants --role {role} --for reconciler --apply` as the owner (it revokes them first)",
        ]
        grants.apply_grants(database_url, role)
        assert problems(engine, role=role) == []
        receiver = [p.problem for p in problems(engine, role=role, service="receiver")]
        assert len(receiver) == 2 and "lacks" in receiver[0] and "beyond the receiver's grants" in receiver[1]
        grants.apply_grants(database_url, role, service="receiver")
        assert problems(engine, role=role, service="receiver") == []
    [problem] = problems(engine, role="postgres")
    assert "is a superuser" in problem.problem


def test_an_unknown_schema_is_one_line(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGLASS_DB_SCHEMA", "Public")
    report = doctor.diagnose(engine)
    assert [p.line() for p in report.problems] == [
        'schema: schema "Public" (MAILGLASS_DB_SCHEMA) holds no mailglass_events; Mailglass\'s tables are in'
        ' "public"; fix: set MAILGLASS_DB_SCHEMA=public (schema names are case-sensitive)'
    ]


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILGLASS_DATABASE_URL": url}
    return subprocess.run([MAILGLASS_BIN, "doctor", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.process
def test_cli_doctor(database_url: str, engine: Engine) -> None:
    done = _cli(database_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: schema 'public'") and len(done.stdout.splitlines()) == 1
    run_sql(engine, "ALTER TABLE mailglass_events DISABLE TRIGGER mailglass_events_track_orphans")
    make_orphan(engine, tenant_id="acme", message_id="pm-unseen")
    done = _cli(database_url, "--json")
    assert done.returncode == 1
    found = json.loads(done.stdout)
    assert found["ok"] is False and [p["check"] for p in found["problems"]] == ["triggers", "queue"]
    run_sql(engine, "ALTER TABLE mailglass_events ENABLE TRIGGER mailglass_events_track_orphans")
    done = _cli(database_url, "--repair")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "repaired: orphans queued 1"
