"""``mailglass serve`` over real HTTP: forged bodies cost their authentication, and every answer means what it says."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.mailgun import expected_signature
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from mailglass_pipeline.ingest.sns_envelope import MAX_BODY_BYTES as SES_MAX_BODY
from tests.factories import count_events
from tests.processes import CuttableProxy, Receiver, free_port, run_receiver, secrets_env, wait_until


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mailgun_signed(key: str, token: str, event_data: dict[str, object]) -> bytes:
    timestamp = str(int(time.time()))
    block = {"timestamp": timestamp, "token": token, "signature": expected_signature(key, timestamp, token)}
    return json.dumps({"signature": block, "event-data": event_data}).encode()


def fetch_count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def test_forged_bodies_are_refused_at_the_cost_of_their_authentication(
    database_url: str, settings: IngestSettings, tmp_path: Path
) -> None:
    # The shape that costs a general JSON parse most: hundreds of thousands of tiny containers.
    objects = b",".join([b'{"a":1}'] * 120_000)
    forged_mailgun = (
        b'{"event-data": [' + objects + b'], "signature": {"timestamp": "1", "token": "t", "signature": "0"}}'
    )
    assert 900_000 < len(forged_mailgun) < 1024 * 1024
    forged_ses = b'{"Type": "Notification", "MessageId": "m", "x": [' + b",".join([b"[]"] * 170_000) + b"]}"
    assert len(forged_ses) < SES_MAX_BODY
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        pid = receiver.process.pid
        for path, body in (("/mailgun/t-forged", forged_mailgun), ("/ses/t-forged", forged_ses)):
            assert receiver.post(path, body).status == 401  # warm-up
            before = cpu_seconds(pid)
            for _ in range(8):
                reply = receiver.post(path, body, {"Content-Type": "application/json"})
                assert reply.status == 401, reply.body[:200]
            per_request = (cpu_seconds(pid) - before) / 8
            # A parse of these bodies costs 0.2-1.5 s of CPU here; reading and refusing them a few ms.
            assert per_request < 0.05, (path, per_request)
        # SNS delivers at most 256 KiB: a larger SES body is refused from Content-Length, before it is read.
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
            sock.sendall(
                f"POST /ses/t-forged HTTP/1.1\r\nHost: x\r\nContent-Length: {SES_MAX_BODY + 1}\r\n\r\n".encode()
            )
            too_big = b""
            while chunk := sock.recv(65536):  # the receiver closes after its answer
                too_big += chunk
        assert too_big.startswith(b"HTTP/1.1 413") and str(SES_MAX_BODY).encode() in too_big, too_big


def test_answers_that_mean_what_they_say(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    metrics_port = free_port()
    args = ("--workers", "1", "--metrics-port", str(metrics_port))
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        assert re.search(r"mailglass: database postgresql\S*://", receiver.log_text()), receiver.log_text()[:2000]
        key = settings.mailgun_signing_key
        assert key is not None
        body, _ = build_webhook("mailgun", "mg-ans", "delivered", keys=keys)
        event_data = json.loads(body)["event-data"]

        # A NUL in a validly signed token: a permanent problem, 400 (never a retryable 503).
        reply = receiver.post("/mailgun/t-ans", mailgun_signed(key, "tok\u0000en-1", event_data))
        assert reply.status == 400 and "NUL" in reply.json()["error"], reply.body

        # A token stored for one tenant, re-signed and sent to another tenant: 409, counted.
        first = mailgun_signed(key, "token-cross-1", event_data)
        assert receiver.post("/mailgun/t-ans", first).status == 200
        time.sleep(1.1)  # a new timestamp: another signature, another body
        resigned = mailgun_signed(key, "token-cross-1", event_data)
        assert resigned != first
        reply = receiver.post("/mailgun/t-other", resigned)
        assert reply.status == 409 and "another tenant" in reply.json()["error"], reply.body
        # The same tenant replaying the token with another body is still a replay (401).
        assert receiver.post("/mailgun/t-ans", resigned).status == 401

        # Tenant ids: invisible and bidirectional characters and NFD forms refused in one line.
        body, headers = build_webhook("resend", "rs-ids", "delivered", keys=keys)
        for raw in ["acme%E2%80%AE", "ac%E2%80%8Bme", "cafe%CC%81", "%EF%BB%BFacme"]:
            reply = receiver.post(f"/resend/{raw}", body, headers)
            assert reply.status == 400, (raw, reply.body)
            assert "tenant id" in reply.json()["error"] and "\n" not in reply.json()["error"]
        assert receiver.post("/resend/caf%C3%A9", body, headers).status == 200

        # /healthz and unknown routes are not webhooks: not in the request counter. Metrics: own port only.
        assert receiver.request("GET", "/healthz").status == 200
        assert receiver.request("GET", "/nope").status == 404
        public = receiver.request("GET", "/metrics")
        assert public.status == 404 and public.headers["content-type"] == "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        conn.request("GET", "/metrics")
        scrape = conn.getresponse()
        text = scrape.read().decode()
        assert scrape.status == 200
        assert 'mailglass_webhook_requests_total{provider="resend",status="200"} 1.0' in text
        assert 'mailglass_webhook_tenant_conflicts_total{provider="mailgun"} 1.0' in text
        assert 'provider="none"' not in text
    assert count_events(engine, "t-ans") == 1 and count_events(engine, "t-other") == 0
    assert count_events(engine, "café") == 1


def test_terminated_backends_cost_a_retry_not_a_503(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # Eight ingest threads, each with a pooled connection: all of them terminated at once.
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1", "--threads", "8") as receiver:

        def send(receiver: Receiver, tag: str) -> int:
            provider = ("postmark", "resend", "sendgrid")[hash(tag) % 3]
            body, headers = build_webhook(provider, tag, "delivered", keys=keys)
            return receiver.post(f"/{provider}/t-term8", body, headers).status

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(lambda i: send(receiver, f"warm-{i}"), range(48))) == {200}
            others = "datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            assert fetch_count(engine, f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {others}")
            wait_until(
                lambda: not fetch_count(engine, f"SELECT count(*) FROM pg_stat_activity WHERE {others}"), 10, "alive"
            )
            statuses = list(pool.map(lambda i: send(receiver, f"after-{i}"), range(48)))
        assert statuses == [200] * 48, (statuses, receiver.log_text()[-3000:])
        assert "Traceback" not in receiver.log_text()
    assert count_events(engine, "t-term8") == 96


def test_health_details_go_to_the_log_not_the_public_body(
    database_url: str, settings: IngestSettings, tmp_path: Path
) -> None:
    proxy = CuttableProxy.for_url(database_url)
    env = {**secrets_env(settings), "MAILGLASS_CONNECT_TIMEOUT": "2"}
    try:
        with run_receiver(proxy.url_for(database_url), env, tmp_path, "--workers", "1") as receiver:
            proxy.cut()
            health = receiver.request("GET", "/healthz")
            assert health.status == 503 and health.headers["retry-after"]
            assert health.json() == {"status": "unavailable", "database": "unavailable"}
            assert str(proxy.port) not in health.body.decode()
            wait_until(lambda: "health check: database unreachable" in receiver.log_text(), 10, "not logged")
    finally:
        proxy.close()
