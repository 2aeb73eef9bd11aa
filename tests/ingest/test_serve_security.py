"""``mailglass serve`` security over real HTTP: SES topic allowlist, per-tenant secrets, cross-tenant 409."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SNS_TOPIC_ARN, SampleKeys, build_webhook, sign_sns
from tests.factories import count_events, events
from tests.processes import Receiver, run_receiver, secrets_env

FOREIGN_TOPIC = "arn:aws:sns:us-east-1:999999999999:someone-elses-topic"


def ses_from_topic(keys: SampleKeys, message_id: str, topic: str) -> tuple[bytes, dict[str, str]]:
    """An SES notification really signed (by our test SNS key), published on ``topic``."""
    body, headers = build_webhook("ses", message_id, "bounced", keys=keys)
    message = {**json.loads(body), "TopicArn": topic}
    assert keys.sns_private_key is not None
    return json.dumps(sign_sns(message, keys.sns_private_key)).encode(), headers


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_ses_topic_allowlist(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        forged = ses_from_topic(keys, "ses-forged", FOREIGN_TOPIC)
        reply = receiver.post("/ses/t1", *forged)
        assert reply.status == 401 and "TopicArn" in reply.json()["error"]
        assert receiver.post("/ses/t1", *ses_from_topic(keys, "ses-ok", SNS_TOPIC_ARN)).status == 200
        assert count_events(engine, "t1") == 1
    # No topic list at all: a configuration error the provider retries (5xx with Retry-After), nothing stored.
    env = {**secrets_env(settings), "MAILGLASS_SES_TOPIC_ARNS": ""}
    with run_receiver(database_url, env, tmp_path, "--workers", "1") as receiver:
        reply = receiver.post("/ses/t2", *ses_from_topic(keys, "ses-2", SNS_TOPIC_ARN))
        assert reply.status == 503 and reply.headers["retry-after"]
        assert "MAILGLASS_SES_TOPIC_ARNS" in reply.json()["error"]
        assert count_events(engine, "t2") == 0


def write_secrets(path: Path, acme_auth: str, acme_topics: list[str]) -> None:
    text = (
        f'[tenants."acme".postmark]\npostmark_webhook_auth = "{acme_auth}"\n\n'
        f'[tenants."acme".ses]\nses_topic_arns = {json.dumps(acme_topics)}\n'
    )
    path.write_text(text)
    # A rewrite within the same clock tick must still be noticed (size/inode also count); make it certain.
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


def test_per_tenant_secrets_take_effect_without_restart(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    secrets = tmp_path / "webhook-secrets.toml"
    write_secrets(secrets, "acme:first-password", [FOREIGN_TOPIC])
    env = {**secrets_env(settings), "MAILGLASS_WEBHOOK_SECRETS": str(secrets)}
    assert settings.postmark_auth
    with run_receiver(database_url, env, tmp_path, "--workers", "1") as receiver:

        def postmark(tenant: str, credentials: str, message_id: str) -> int:
            body, _ = build_webhook("postmark", message_id, "delivered")
            return receiver.post(f"/postmark/{tenant}", body, basic(credentials)).status

        # acme is verified with its own entry ONLY: the shared global password no longer opens it.
        assert postmark("acme", settings.postmark_auth, "pm-1") == 401
        assert postmark("acme", "acme:first-password", "pm-2") == 200
        # acme's password opens no other tenant; other tenants keep the global one.
        assert postmark("globex", "acme:first-password", "pm-3") == 401
        assert postmark("globex", settings.postmark_auth, "pm-4") == 200
        # acme's SES topics: the global topic is not acme's.
        assert receiver.post("/ses/acme", *ses_from_topic(keys, "ses-a1", SNS_TOPIC_ARN)).status == 401
        assert receiver.post("/ses/acme", *ses_from_topic(keys, "ses-a2", FOREIGN_TOPIC)).status == 200

        # Rotate acme's password in the file: in force for the next request, no restart.
        write_secrets(secrets, "acme:second-password", [FOREIGN_TOPIC])
        assert postmark("acme", "acme:first-password", "pm-5") == 401
        assert postmark("acme", "acme:second-password", "pm-6") == 200
        # A broken edit keeps the last good secrets (logged), it does not open or close every tenant.
        secrets.write_text("[tenants.acme\n")
        assert postmark("acme", "acme:second-password", "pm-7") == 200
        assert "keeping the previous webhook secrets" in receiver.log_text()
        assert receiver.process.poll() is None
    assert count_events(engine, "acme") == 4 and count_events(engine, "globex") == 1


def conflicts(receiver: Receiver) -> float:
    text = receiver.request("GET", "/metrics").body.decode()
    return sum(float(v) for v in re.findall(r"mailglass_webhook_tenant_conflicts_total\{[^}]*\} (\S+)", text))


def test_key_stored_for_another_tenant_is_a_409(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        for provider in ("sendgrid", "mailgun", "resend", "ses", "postmark"):
            body, headers = build_webhook(provider, f"{provider}-x", "delivered", keys=keys)
            first = receiver.post(f"/{provider}/owner", body, headers)
            assert first.status == 200 and first.json()["events"] >= 1, first.body
            # The same request replayed to another tenant's URL: refused, clearly, never "duplicate".
            stolen = receiver.post(f"/{provider}/intruder", body, headers)
            assert stolen.status == 409, (provider, stolen.body)
            assert "another tenant" in stolen.json()["error"] and "duplicate" not in stolen.json()["error"]
            # The real tenant's redelivery is still an idempotent duplicate.
            again = receiver.post(f"/{provider}/owner", body, headers)
            assert again.status == 200 and again.json()["duplicates"] >= 1, again.body
        assert count_events(engine, "intruder") == 0
        assert {row.tenant_id for row in events(engine, "owner")} == {"owner"}
        assert conflicts(receiver) == 5
