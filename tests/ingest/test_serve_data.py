"""``mailglass serve`` keeps data: poison batches stored, exactly once under load, 503 while the database is down."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook, sign_sns
from tests.factories import count_events, delivery, events, make_delivery
from tests.processes import CuttableProxy, run_receiver, secrets_env, wait_until

PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")
#: An event id of 9,000 incompressible characters (a b-tree index entry holds at most about 2.7 kB).
LONG_ID = "".join(hashlib.sha256(str(index).encode()).hexdigest() for index in range(282))[:9000]


def signed_sendgrid(keys: SampleKeys, body: bytes) -> dict[str, str]:
    assert keys.sendgrid_private_key is not None
    timestamp = str(int(time.time()))
    signature = keys.sendgrid_private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def test_poison_batch_is_stored_and_answered_2xx(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # Raw JSON text: NaN, Infinity, -Infinity, 1e999 and \u0000 (in values, a key and the message id).
    body = (
        b"["
        b'{"event":"deferred","email":"a@example.com","sg_event_id":"p1","sg_message_id":"m1.filter1",'
        b'"timestamp":1700000000,"response":"451 4.7.1 try later\\u0000\\u0000","score":NaN},'
        b'{"event":"open","email":"b@example.com","sg_event_id":"p2","sg_message_id":"m2\\u0000x.filter1",'
        b'"timestamp":1700000001,"useragent":"Mozilla\\u0000","ratio":Infinity,"low":-Infinity,"big":1e999},'
        b'{"event":"delivered","email":"c@example.com","sg_event_id":"p3","sg_message_id":"m3.filter1",'
        b'"timestamp":NaN,"weird\\u0000key":1},'
        b'{"event":"delivered","email":"d@example.com","sg_event_id":"p4\\u0000","timestamp":1700000003},'
        b'{"event":"delivered","email":"e@example.com","sg_event_id":"'
        + LONG_ID.encode()
        + b'","timestamp":1700000004}'
        b"]"
    )
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        reply = receiver.post("/sendgrid/poison", body, signed_sendgrid(keys, body))
        assert reply.status == 200, reply.body
        assert (reply.json()["received"], reply.json()["events"]) == (5, 5)
        # SES: NUL inside the signed Message (the signature covers the raw text, checked before the fix-up).
        ses_body, ses_headers = build_webhook("ses", "ses-poison", "bounced", keys=keys)
        message = json.loads(ses_body)
        inner = json.loads(message["Message"])
        inner["bounce"]["bouncedRecipients"][0]["diagnosticCode"] = "smtp; 550 \x00 no such user"
        message["Message"] = json.dumps(inner)
        assert keys.sns_private_key is not None
        reply = receiver.post("/ses/poison", json.dumps(sign_sns(message, keys.sns_private_key)).encode(), ses_headers)
        assert reply.status == 200 and reply.json()["events"] == 1, reply.body
        # Redelivery of the same bytes: duplicates, not new rows, not an error.
        assert receiver.post("/sendgrid/poison", body, signed_sendgrid(keys, body)).json()["duplicates"] == 5

    rows = {row.metadata.get("provider_event_id"): row for row in events(engine, "poison")}
    assert len(rows) == 6
    # An id too long for a b-tree index entry: stored, keyed by its hash, the id itself kept in full.
    assert rows[LONG_ID].idempotency_key.startswith("sendgrid:sha256:")
    first = rows["p1"]
    assert first.normalized_payload["response"] == "451 4.7.1 try later\ufffd\ufffd"
    assert first.normalized_payload["score"] == "NaN" and first.metadata["payload_sanitized"] is True
    second = rows["p2"]
    assert (second.normalized_payload["ratio"], second.normalized_payload["low"]) == ("Infinity", "-Infinity")
    assert second.normalized_payload["big"] == "Infinity"
    assert second.metadata["provider_message_id"] == "m2\ufffdx"
    third = rows["p3"]
    assert "weird\ufffdkey" in third.normalized_payload and third.metadata["occurred_at_estimated"] is True
    assert "p4\ufffd" in rows and rows["p4\ufffd"].idempotency_key == "sendgrid:p4\ufffd"
    ses_row = next(row for key, row in rows.items() if key and key.endswith(":0"))
    assert "\ufffd no such user" in json.dumps(ses_row.normalized_payload, ensure_ascii=False)


def test_concurrent_load_every_2xx_stored_exactly_once(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    requests: list[tuple[str, str, bytes, dict[str, str]]] = []
    for index in range(120):
        provider = PROVIDERS[index % len(PROVIDERS)]
        tenant = f"load-{index % 7}"
        body, headers = build_webhook(provider, f"load-{index}", "delivered", keys=keys)
        requests.append((provider, tenant, body, headers))
    requests += requests[:30]  # redeliveries racing the originals

    # 4 threads: one group statement at a time per worker, so concurrent webhooks queue and go together.
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "2", "--threads", "4") as receiver:

        def send(item: tuple[str, str, bytes, dict[str, str]]) -> tuple[int, dict[str, Any]]:
            provider, tenant, body, headers = item
            reply = receiver.post(f"/{provider}/{tenant}", body, headers)
            return reply.status, reply.json()

        with ThreadPoolExecutor(max_workers=16) as pool:
            replies = list(pool.map(send, requests))
        scraped = receiver.request("GET", "/metrics").body.decode()

    # The group commit (ingest/grouped.py) ran: fewer statements than webhooks stored through it.
    statements = sample(scraped, "mailglass_webhook_store_group_size_count")
    grouped = sample(scraped, "mailglass_webhook_store_group_size_sum")
    assert 0 < statements < grouped <= len(requests), (statements, grouped)

    assert {status for status, _ in replies} == {200}, [r for r in replies if r[0] != 200][:3]
    reported = [event_id for _, result in replies for event_id in result["event_ids"]]
    assert len(reported) == len(set(reported)) == 120
    assert sum(result["duplicates"] for _, result in replies) == 30
    with engine.connect() as conn:
        stored = {str(row[0]) for row in conn.execute(sa.text("SELECT id FROM mailglass_events"))}
        webhooks = conn.execute(sa.text("SELECT count(*), count(DISTINCT status) FROM mailglass_webhook_events")).one()
    assert stored == set(reported)
    assert tuple(webhooks) == (120, 1)  # one raw record per webhook, redeliveries add none


def test_a_webhook_waiting_on_a_locked_delivery_holds_up_no_other(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # A transaction elsewhere (a sweep, the sending application) holds a delivery's row. The webhook for
    # that delivery waits for it (outside the database since issue 25: its group skips the held row and it
    # is tried again within MAILGLASS_SERVE_LOCK_WAIT); the webhooks after it are stored beside it.
    delivery_id = make_delivery(
        engine, tenant_id="t-lock", provider="postmark", message_id="lock-held", dispatched=True
    )
    env = {**secrets_env(settings), "MAILGLASS_SERVE_LOCK_WAIT": "30"}
    with run_receiver(database_url, env, tmp_path, "--workers", "1") as receiver:
        holder = engine.connect()
        transaction = holder.begin()
        holder.execute(sa.text("SELECT 1 FROM mailglass_deliveries WHERE id = :id FOR UPDATE"), {"id": delivery_id})
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                body, headers = build_webhook("postmark", "lock-held", "delivered", keys=keys)
                waiting = pool.submit(receiver.post, "/postmark/t-lock", body, headers)
                time.sleep(0.5)
                # It holds no connection waiting on the lock (nor a thread): nothing queues behind it.
                assert count_lock_waits(engine) == 0
                for index in range(5):
                    body, headers = build_webhook("resend", f"lock-free-{index}", "delivered", keys=keys)
                    started = time.monotonic()
                    assert receiver.post("/resend/t-lock", body, headers).status == 200
                    assert time.monotonic() - started < 5
                assert not waiting.done()
                transaction.rollback()
                reply = waiting.result(timeout=30)
        finally:
            holder.close()
    assert reply.status == 200 and reply.json()["linked"] == 1, reply.body
    assert delivery(engine, delivery_id).last_event_type == "delivered"
    assert count_events(engine, "t-lock") == 6


def count_lock_waits(engine: Engine) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    return fetch_count(engine, sql)


def test_503_with_retry_after_while_the_database_is_down(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    proxy = CuttableProxy.for_url(database_url)
    env = {**secrets_env(settings), "MAILGLASS_CONNECT_TIMEOUT": "2"}
    try:
        with run_receiver(proxy.url_for(database_url), env, tmp_path, "--workers", "1") as receiver:
            body, headers = build_webhook("resend", "down-0", "delivered", keys=keys)
            assert receiver.post("/resend/t-down", body, headers).status == 200

            proxy.cut()  # open connections dropped, new ones refused
            for index, provider in enumerate(PROVIDERS):
                body, headers = build_webhook(provider, f"down-{index + 1}", "delivered", keys=keys)
                reply = receiver.post(f"/{provider}/t-down", body, headers)
                assert reply.status == 503, (provider, reply.status, reply.body)
                assert reply.headers["retry-after"] and reply.headers["content-type"] == "application/json"
            health = receiver.request("GET", "/healthz")
            assert health.status == 503 and health.headers["retry-after"]
            assert health.json()["status"] == "unavailable"

            proxy.restore()
            wait_until(lambda: receiver.request("GET", "/healthz").status == 200, 30, "healthz did not recover")
            body, headers = build_webhook("postmark", "down-after", "delivered", keys=keys)
            assert receiver.post("/postmark/t-down", body, headers).status == 200
            assert "Traceback" not in receiver.log_text()
    finally:
        proxy.close()
    assert count_events(engine, "t-down") == 2


def test_terminated_backend_costs_no_webhook(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # The receiver's pool does not pre-ping. A connection the server dropped fails the statement of
    # the group (ingest/grouped.py), which writes nothing; the request is then stored on its own path,
    # on a fresh connection: answered 200 and stored once, not refused.
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1", "--threads", "1") as receiver:
        body, headers = build_webhook("resend", "term-0", "delivered", keys=keys)
        assert receiver.post("/resend/t-term", body, headers).status == 200
        others = "datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        assert fetch_count(engine, f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {others}")
        wait_until(
            lambda: not fetch_count(engine, f"SELECT count(*) FROM pg_stat_activity WHERE {others}"), 10, "alive"
        )

        body, headers = build_webhook("postmark", "term-1", "delivered", keys=keys)
        reply = receiver.post("/postmark/t-term", body, headers)
        assert reply.status == 200 and reply.json()["events"] == 1, (reply.status, reply.body)
        assert receiver.post("/postmark/t-term", body, headers).json()["duplicates"] == 1
        assert "Traceback" not in receiver.log_text()
    assert count_events(engine, "t-term") == 2


def sample(exposition: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus text exposition."""
    (value,) = [line.split()[-1] for line in exposition.splitlines() if line.startswith(name + " ")]
    return float(value)


def fetch_count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())
