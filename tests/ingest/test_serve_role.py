"""``mailglass serve`` runs as a role holding only what ``sql/grants_receiver.sql`` grants.

The role is a fresh LOGIN role given nothing but the shipped receiver GRANTs,
applied as an operator does: ``mailglass grants --for receiver --role R --apply``. Every provider's webhook, a
redelivery, a cross-tenant refusal, a linked event's projection, a SendGrid
batch and the health check work; rewriting history or reading payloads does not.
If the receiver starts to need another privilege this test fails; if the file
grants too much, the refusals fail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline import grants
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.databases import login_role
from tests.factories import count_events, delivery, make_delivery
from tests.processes import mailglass, run_receiver, secrets_env

PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")


@pytest.fixture
def receiver_url(database_url: str, admin_engine: Engine) -> Iterator[str]:
    with login_role(database_url, admin_engine, "mg_receiver") as (role, url):
        applied = mailglass(
            "grants", "--for", "receiver", "--role", role, "--apply", env={"MAILGLASS_DATABASE_URL": database_url}
        )
        assert applied.returncode == 0, applied.stderr
        assert json.loads(applied.stdout) == {
            "role": role,
            "service": "receiver",
            "statements": len(grants.statements(role, service="receiver")),
        }
        yield url


def refused(url: str, sql: str) -> str:
    """Run ``sql`` as the role; the SQLSTATE it was refused with (fails when it is allowed)."""
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with pytest.raises(sa.exc.DBAPIError) as info, engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()
    return getattr(info.value.orig, "sqlstate", "?")


def test_serve_end_to_end_as_the_receiver_role(
    receiver_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    linked = make_delivery(engine, tenant_id="role", provider="postmark", message_id="role-linked", dispatched=True)
    with run_receiver(receiver_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        assert receiver.request("GET", "/healthz").status == 200
        for provider in PROVIDERS:
            body, headers = build_webhook(provider, f"role-{provider}", "delivered", keys=keys)
            reply = receiver.post(f"/{provider}/role", body, headers)
            assert (reply.status, reply.json()["events"]) == (200, 1), (provider, reply.body)
            if provider != "mailgun":  # a Mailgun token is single-use: its redelivery is refused as a replay
                assert receiver.post(f"/{provider}/role", body, headers).json()["duplicates"] == 1
            assert receiver.post(f"/{provider}/other-role", body, headers).status == 409
        body, headers = build_webhook("postmark", "role-linked", "bounced", keys=keys)
        reply = receiver.post("/postmark/role", body, headers)
        assert (reply.status, reply.json()["linked"]) == (200, 1)
        assert "Traceback" not in receiver.log_text()
        # The group statement (ingest/grouped.py) ran under the role too: a refusal there would be hidden
        # by the ordinary path answering instead, but it is logged.
        assert "together failed" not in receiver.log_text()
    assert count_events(engine, "role") == 6 and count_events(engine, "other-role") == 0
    assert delivery(engine, linked).bounced_at is not None
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM mailglass_webhook_events WHERE tenant_id = 'role'")).scalar()


def test_receiver_role_holds_exactly_the_documented_privileges(receiver_url: str, engine: Engine) -> None:
    role = make_url(receiver_url).username
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                """
                SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) AS privs
                  FROM information_schema.role_table_grants WHERE grantee = :role GROUP BY table_name
                """
            ),
            {"role": role},
        ).all()
    assert {row.table_name: row.privs for row in tables} == {
        "mailglass_events": "INSERT",
        "mailglass_deliveries": "SELECT,UPDATE",
        "mailglass_webhook_events": "INSERT",
        "mailglass_webhook_tokens": "DELETE,INSERT,SELECT",
        "mailglass_alembic_version": "SELECT",
    }
    # The token pruning the receiver runs now and then is allowed.
    with create_engine(receiver_url, poolclass=sa.pool.NullPool).begin() as conn:
        conn.execute(sa.text("DELETE FROM mailglass_webhook_tokens WHERE seen_at < now() - interval '1 hour'"))
    denied = {
        "UPDATE mailglass_events SET type = 'delivered'": "42501",
        "DELETE FROM mailglass_events": "42501",
        "TRUNCATE mailglass_events": "42501",
        "SELECT normalized_payload FROM mailglass_events": "42501",
        "UPDATE mailglass_webhook_events SET status = 'failed'": "42501",
        "DELETE FROM mailglass_webhook_events": "42501",
        "SELECT raw_payload FROM mailglass_webhook_events": "42501",
        "SELECT * FROM mailglass_reconciliation_queue": "42501",
        "DELETE FROM mailglass_deliveries": "42501",
        "CREATE TABLE mailglass_receiver_probe (x int)": "42501",
    }
    assert {sql: refused(receiver_url, sql) for sql in denied} == denied


def test_grants_cli_for_the_receiver(database_url: str) -> None:
    env = {"MAILGLASS_DATABASE_URL": database_url}
    printed = mailglass("grants", "--for", "receiver", "--role", "mailglass_receiver", env=env)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == grants.render_grants("mailglass_receiver", service="receiver").strip()
    statements = grants.statements("mailglass_receiver", service="receiver")
    assert any("mailglass_webhook_tokens" in s for s in statements)
    assert not any("mailglass_reconciliation_queue" in s for s in statements)
