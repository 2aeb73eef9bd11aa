"""Each provider event's raw record in ``mailglass_webhook_events`` (through ``mailglass serve``), and ``--replay``."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events
from tests.processes import mailglass, run_receiver, secrets_env

PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")


def webhook_rows(engine: Engine, tenant_id: str) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT * FROM mailglass_webhook_events WHERE tenant_id = :t ORDER BY received_at"),
                {"t": tenant_id},
            )
        )


def replay_cli(database_url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    done = mailglass("ingest", "--replay", *args, env={"MAILGLASS_DATABASE_URL": database_url})
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def test_webhook_rows_and_replay(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    sent: dict[str, bytes] = {}
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        for provider in PROVIDERS:
            body, headers = build_webhook(provider, f"rp-{provider}", "delivered", keys=keys)
            assert receiver.post(f"/{provider}/rp", body, headers).status == 200
            assert receiver.post(f"/{provider}/rp", body, headers).json()["duplicates"] >= 1  # redelivery
            sent[provider] = body
        body, headers = build_webhook("resend", "other-1", "delivered", keys=keys)
        assert receiver.post("/resend/other", body, headers).status == 200

    # One row per provider event (here one per request): succeeded, processed, redeliveries add nothing.
    rows = webhook_rows(engine, "rp")
    assert sorted(row.provider for row in rows) == sorted(PROVIDERS)
    for row in rows:
        assert row.status == "succeeded" and row.processed_at is not None and row.received_at is not None
        assert row.event_type_normalized == "delivered"
    by_provider = {row.provider: row for row in rows}
    (element,) = json.loads(sent["sendgrid"])
    assert by_provider["sendgrid"].provider_event_id == element["sg_event_id"]
    assert by_provider["sendgrid"].raw_payload == {"_batch": [element]}
    assert by_provider["postmark"].raw_payload == json.loads(sent["postmark"])
    assert by_provider["ses"].provider_event_id == json.loads(sent["ses"])["MessageId"]
    assert len(webhook_rows(engine, "other")) == 1

    # A webhook Mailglass recorded (its per-request row: key from the body) whose events never reached
    # the ledger (say, a bug then fixed).
    lost_body, _ = build_webhook("sendgrid", "rp-lost", "bounced")
    received = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_webhook_events (id, tenant_id, provider, provider_event_id, event_type_raw,
                    status, raw_payload, received_at, inserted_at, updated_at)
                VALUES (:id, 'rp', 'sendgrid', :key, 'bounce', 'failed', CAST(:payload AS jsonb), :at, :at, :at)
                """
            ),
            {
                "id": uuid.uuid4(),
                "key": hashlib.sha256(lost_body).hexdigest()[:32],
                "payload": json.dumps({"_batch": json.loads(lost_body)}),
                "at": received,
            },
        )
    before = count_events(engine, "rp")
    since = (received - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")

    code, first, stderr = replay_cli(database_url, "--tenant-id", "rp", "--since", since, "--until", until)
    assert code == 0, stderr
    assert (first["webhooks"], first["replayed"], first["failed"], first["events"]) == (6, 6, 0, 1)
    assert count_events(engine, "rp") == before + 1
    with engine.connect() as conn:
        lost = conn.execute(
            sa.text("SELECT inserted_at, type FROM mailglass_events WHERE metadata->>'provider_message_id' = 'rp-lost'")
        ).one()
    assert lost.type == "bounced" and abs((lost.inserted_at.replace(tzinfo=None) - received).total_seconds()) < 1
    assert {row.status for row in webhook_rows(engine, "rp")} == {"succeeded"}
    assert len(webhook_rows(engine, "rp")) == 6  # no second webhook row for the replayed one

    # Idempotent: the same replay again writes nothing; other tenants and other ranges are untouched.
    code, again, _ = replay_cli(database_url, "--tenant-id", "rp", "--since", since, "--until", until)
    assert code == 0 and (again["replayed"], again["events"]) == (6, 0)
    code, narrow, _ = replay_cli(
        database_url, "--tenant-id", "rp", "--provider", "postmark", "--since", since, "--until", until
    )
    assert code == 0 and narrow["webhooks"] == 1
    assert count_events(engine, "rp") == before + 1 and count_events(engine, "other") == 1

    # Bad arguments are refused before anything runs.
    code, _, stderr = replay_cli(database_url, "--tenant-id", "rp", "--since", until, "--until", since)
    assert code != 0 and "--since" in stderr
    code, _, stderr = replay_cli(database_url, "--tenant-id", "rp", "--since", since)
    assert code != 0 and "--until" in stderr
