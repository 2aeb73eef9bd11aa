"""`mailglass orphans` and `mailglass orphans explain`: every reason built from real rows, through the CLI."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import orphans, settings
from mailglass_pipeline.db import connect
from mailglass_pipeline.reconciliation.results import SweepResult
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig, stale_message
from tests.databases import login_role
from tests.factories import fetch, make_delivery, make_orphan
from tests.processes import CommandResult, mailglass


def _cli(database_url: str, *args: str) -> CommandResult:
    return mailglass(*args, env={"MAILGLASS_DATABASE_URL": database_url})


def _explain(engine: Engine, event_id: uuid.UUID) -> dict:
    with connect(engine) as conn:
        return orphans.explain(conn, event_id)


def _sweep(engine: Engine, tenant: str | None = None) -> SweepResult:
    return sweep(engine, tenant, SweepConfig())


@pytest.fixture
def world(engine: Engine) -> dict[str, uuid.UUID]:
    """One orphan per reason, in tenants a and b, after one real sweep."""
    ids = {
        "no_delivery": make_orphan(engine, tenant_id="a", message_id="nothing-here"),
        "other_tenant": make_orphan(engine, tenant_id="a", message_id="belongs-to-b"),
        "other_provider": make_orphan(engine, tenant_id="a", message_id="sent-by-sendgrid"),
        "malformed": make_orphan(engine, tenant_id="a", message_id=None),
        "no_provider": make_orphan(engine, tenant_id="a", message_id="x-1", provider=None),
        "stale": make_orphan(engine, tenant_id="a", message_id="too-old", age=timedelta(days=8)),
        "linked": make_orphan(engine, tenant_id="a", message_id="will-link"),
        "b_orphan": make_orphan(engine, tenant_id="b", message_id="b-only"),
    }
    make_delivery(engine, tenant_id="b", message_id="belongs-to-b")
    make_delivery(engine, tenant_id="a", message_id="sent-by-sendgrid", provider="sendgrid")
    make_delivery(engine, tenant_id="a", message_id="will-link")
    _sweep(engine)
    ids["fresh"] = make_orphan(engine, tenant_id="a", message_id="just-arrived", age=timedelta(seconds=5))
    ids["due_linkable"] = make_orphan(engine, tenant_id="a", message_id="arrives-later")
    make_delivery(engine, tenant_id="a", message_id="arrives-later")
    return ids


def test_every_reason_from_real_rows(engine: Engine, world: dict[str, uuid.UUID]) -> None:
    got = {name: _explain(engine, event_id) for name, event_id in world.items()}

    assert (got["no_delivery"]["state"], got["no_delivery"]["reason"]) == ("waiting", "no_delivery")
    # Examined once by the sweep: the backoff's first step (the next minute tick).
    assert got["no_delivery"]["attempts"] == 1 and got["no_delivery"]["next_attempt_at"]

    assert got["other_tenant"]["reason"] == "delivery_other_tenant"
    assert got["other_tenant"]["delivery"]["tenant_id"] == "b"
    assert "'b'" in got["other_tenant"]["message"]

    assert got["other_provider"]["reason"] == "delivery_other_provider"
    assert got["other_provider"]["delivery"]["provider"] == "sendgrid"

    assert (got["malformed"]["state"], got["malformed"]["missing"]) == ("malformed", ["provider_message_id"])
    assert got["no_provider"]["missing"] == ["provider"]

    assert got["stale"]["state"] == "stale" and stale_message() in got["stale"]["message"]

    linked = got["linked"]
    assert (linked["state"], linked["reason"]) == ("linked", "linked")
    [(reconciled_id,)] = fetch(
        engine, "SELECT id FROM mailglass_events WHERE idempotency_key = :k", k=f"reconciled:{world['linked']}"
    )
    assert linked["reconciled_event_id"] == str(reconciled_id)

    assert (got["fresh"]["state"], got["fresh"]["reason"]) == ("waiting", "no_delivery")
    assert got["due_linkable"]["state"] == "due" and got["due_linkable"]["reason"] == "delivery_found"

    assert got["b_orphan"]["tenant_id"] == "b"


def test_not_an_orphan_and_unknown_ids(engine: Engine, world: dict[str, uuid.UUID]) -> None:
    [(reconciled_id,)] = fetch(
        engine, "SELECT id FROM mailglass_events WHERE idempotency_key = :k", k=f"reconciled:{world['linked']}"
    )
    assert _explain(engine, reconciled_id)["reason"] == "not_an_orphan"
    with pytest.raises(orphans.OrphanNotFoundError):
        _explain(engine, uuid.uuid4())
    with pytest.raises(ValueError, match="not an event id"):
        orphans.parse_event_id("not-a-uuid")


def test_list_by_state_and_tenant_never_leaks(engine: Engine, world: dict[str, uuid.UUID]) -> None:
    with connect(engine) as conn:
        everything = orphans.list_orphans(conn, "a", limit=100)
        by_state = {s: orphans.list_orphans(conn, "a", s, limit=100) for s in orphans.STATES}
        b_rows = orphans.list_orphans(conn, "b", limit=100)
        all_tenants = orphans.list_orphans(conn, None, limit=100)
        limited = orphans.list_orphans(conn, None, limit=2)
    assert all(r.tenant_id == "a" for r in everything)
    assert [r.event_id for r in b_rows] == [str(world["b_orphan"])]
    for state, rows in by_state.items():
        assert all(r.state == state for r in rows), state
    assert {r.event_id for r in by_state["due"]} == {str(world["due_linkable"])}
    assert {r.event_id for r in by_state["stale"]} == {str(world["stale"])}
    assert {r.event_id for r in by_state["malformed"]} == {str(world["malformed"]), str(world["no_provider"])}
    assert str(world["fresh"]) in {r.event_id for r in by_state["waiting"]}
    assert str(world["linked"]) not in {r.event_id for r in all_tenants}  # linked: not queued any more
    assert {r.tenant_id for r in all_tenants} == {"a", "b"}
    assert len(limited) == 2
    # Every state's list matches the per-tenant counts.
    with connect(engine) as conn:
        counts = orphans.counts_by_state(conn, ["a", "b", "nobody"])
    assert counts["a"] == {s: len(rows) for s, rows in by_state.items()}
    assert counts["nobody"] == dict.fromkeys(orphans.STATES, 0)


def test_cli_list_and_explain(engine: Engine, database_url: str, world: dict[str, uuid.UUID]) -> None:
    table = _cli(database_url, "orphans", "--tenant-id", "a")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["event_id", "tenant", "state"]
    assert str(world["stale"]) in table.stdout and str(world["b_orphan"]) not in table.stdout

    as_json = _cli(database_url, "orphans", "--tenant-id", "b", "--json")
    assert [json.loads(line)["event_id"] for line in as_json.stdout.splitlines()] == [str(world["b_orphan"])]

    stale = _cli(database_url, "orphans", "--state", "stale", "--json", "--limit", "5")
    assert [json.loads(line)["state"] for line in stale.stdout.splitlines()] == ["stale"]

    explained = _cli(database_url, "orphans", "explain", str(world["other_tenant"]), "--json")
    assert explained.returncode == 0, explained.stderr
    assert json.loads(explained.stdout)["reason"] == "delivery_other_tenant"
    text = _cli(database_url, "orphans", "explain", str(world["malformed"]))
    assert "missing provider_message_id" in text.stdout

    for bad in (str(uuid.uuid4()), "nope"):
        proc = _cli(database_url, "orphans", "explain", bad)
        assert proc.returncode != 0 and proc.stdout == ""
        # One line on stderr, nothing else (an unknown id names the database it was looked up in).
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mailglass: "), proc.stderr
    assert "in the ledger of database postgresql" in proc_unknown_stderr(database_url), "unknown id: which database"

    typo = _cli(database_url, "reconcile", "--tenant-id", "aa")
    assert typo.returncode == 0 and json.loads(typo.stdout)["scanned"] == 0
    assert "hint: no delivery or orphan has tenant 'aa'" in typo.stderr and "'a'" in typo.stderr
    known = _cli(database_url, "reconcile", "--tenant-id", "b")
    assert "hint" not in known.stderr


def proc_unknown_stderr(database_url: str) -> str:
    return _cli(database_url, "orphans", "explain", str(uuid.uuid4())).stderr


def test_retention_removes_only_parked_rows_past_the_period(engine: Engine) -> None:
    stale = make_orphan(engine, tenant_id="a", message_id="old", age=timedelta(days=8))
    malformed = make_orphan(engine, tenant_id="a", message_id=None)
    pending = make_orphan(engine, tenant_id="a", message_id="pending")
    _sweep(engine)  # parks the stale and the malformed one
    with engine.begin() as conn:  # parked 40 days ago: past the default 30
        conn.execute(
            sa.text("UPDATE mailglass_reconciliation_queue SET parked_at = parked_at - interval '40 days',"
                    " orphan_inserted_at = orphan_inserted_at - interval '40 days'"
                    " WHERE event_id = :id"),
            {"id": stale},
        )  # fmt: skip
    recent = make_orphan(engine, tenant_id="a", message_id=None, age=timedelta(days=1))
    _sweep(engine)
    ledger_before = fetch(engine, "SELECT count(*) FROM mailglass_events")
    result = orphans.prune_parked(engine, batch_size=1)
    assert (result["deleted_stale"], result["deleted_malformed"]) == (1, 0)
    queued = {r[0] for r in fetch(engine, "SELECT event_id FROM mailglass_reconciliation_queue")}
    assert queued == {malformed, pending, recent}
    assert fetch(engine, "SELECT count(*) FROM mailglass_events") == ledger_before  # the ledger keeps every event
    # Explain still answers for the removed row, from the ledger.
    assert _explain(engine, stale)["state"] == "stale" and not _explain(engine, stale)["queued"]
    # A shorter period (env) reaches the malformed ones too, in batches of one.
    os.environ[settings.PARKED_RETENTION_DAYS.env] = "1"
    try:
        later = orphans.prune_parked(engine, batch_size=1, now=None)
    finally:
        del os.environ[settings.PARKED_RETENTION_DAYS.env]
    assert later["retention_days"] == 1 and later["deleted_malformed"] == 0  # parked moments ago: kept
    from datetime import UTC, datetime

    future = orphans.prune_parked(engine, 1, batch_size=1, now=datetime.now(UTC) + timedelta(days=2))
    assert future["deleted_malformed"] == 2 and future["batches"] >= 3
    assert {r[0] for r in fetch(engine, "SELECT event_id FROM mailglass_reconciliation_queue")} == {pending}


def test_the_least_privilege_role_prunes_through_the_function_only(
    engine: Engine, database_url: str, admin_engine: Engine
) -> None:
    """The reconciler's role (sql/grants.sql) runs the retention yet has no DELETE on the queue."""
    from datetime import UTC, datetime

    from mailglass_pipeline import grants
    from mailglass_pipeline.db import create_engine

    with login_role(database_url, admin_engine, "mg_prune") as (role, url):
        grants.apply_grants(database_url, role)
        restricted = create_engine(url)
        try:
            make_orphan(engine, tenant_id="a", message_id=None)
            _sweep(engine)  # parks it as malformed
            with pytest.raises(sa.exc.ProgrammingError), restricted.begin() as conn:
                conn.execute(sa.text("DELETE FROM mailglass_reconciliation_queue"))
            later = datetime.now(UTC) + timedelta(days=31)
            assert orphans.prune_parked(restricted, now=later)["deleted_malformed"] == 1
        finally:
            restricted.dispose()
