"""``mailglass serve`` over real HTTP: routes, tenant ids, hostile bodies, size limit, health and metrics."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events
from tests.processes import run_receiver, secrets_env

PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")


def test_routes_tenant_ids_and_hostile_bodies(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        # Routes: unknown -> 404, wrong method -> 405 with Allow; every answer JSON.
        for method, path, status in [
            ("GET", "/", 404),
            ("POST", "/nope/t1", 404),
            ("POST", "/postmark", 404),
            ("POST", "/postmark/t1/extra", 404),
            ("GET", "/postmark/t1", 405),
            ("PUT", "/ses/t1", 405),
            ("POST", "/healthz", 405),
            ("DELETE", "/metrics", 405),
        ]:
            reply = receiver.request(method, path, b"{}" if method != "GET" else None)
            assert reply.status == status, (method, path, reply.body)
            assert reply.headers["content-type"] == "application/json"
            assert "error" in reply.json()
            if status == 405:
                assert reply.headers["allow"]

        # Tenant ids: control characters, surrounding whitespace, over 255 characters -> 400, nothing stored.
        body, headers = build_webhook("resend", "rs-tenant", "delivered", keys=keys)
        for raw in ["t%00x", "t%0D%0Ax", "%20t", "t%20", "t%09", "x" * 256, "%FF%FE"]:
            reply = receiver.post(f"/resend/{raw}", body, headers)
            assert reply.status == 400, (raw, reply.body)
            assert "tenant id" in reply.json()["error"]
        ok = receiver.post("/resend/" + "x" * 255, body, headers)
        assert ok.status == 200, ok.body
        # A percent-encoded slash is part of the id, not a route separator; unicode ids are fine.
        body2, headers2 = build_webhook("resend", "rs-tenant-2", "delivered", keys=keys)
        assert receiver.post("/resend/acme%2Feu-%C3%A9", body2, headers2).status == 200
        assert count_events(engine, "acme/eu-é") == 1

        # Hostile bodies, signed or not, never get a 500 (and never a 2xx).
        hostile = [
            b"[" * 100_000,
            b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
            b"1" * 5_000,
            b'{"signature": {"timestamp": ' + b"9" * 5_000 + b', "token": "t", "signature": "s"}}',
            b"\xff\xfe\x00garbage",
            b"",
            b'{"Type": "Notification", "MessageId": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            b'"just a string"',
            b"null",
        ]
        for provider in PROVIDERS:
            for index, junk in enumerate(hostile):
                reply = receiver.post(f"/{provider}/t-hostile", junk, {"Content-Type": "application/json"})
                assert reply.status in (400, 401), (provider, index, reply.status, reply.body[:200])
                assert reply.headers["content-type"] == "application/json"
        assert count_events(engine, "t-hostile") == 0
        assert "Traceback" not in receiver.log_text()


def test_other_providers_body_refused_even_when_signed(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        body, _headers = build_webhook("mailgun", "mg-x", "delivered", keys=keys)
        # A valid Resend signature over a Mailgun body: authentic, but not Resend's shape.
        from mailglass_pipeline.ingest.resend import sign

        assert keys.resend_webhook_secret
        svix = {"svix-id": "msg_x", "svix-timestamp": str(int(time.time()))}
        svix["svix-signature"] = sign(keys.resend_webhook_secret, "msg_x", svix["svix-timestamp"], body)
        reply = receiver.post("/resend/t1", body, svix)
        assert reply.status == 400 and "not a resend webhook" in reply.json()["error"]
        sg_body, _sg_headers = build_webhook("sendgrid", "sg-x", "delivered", keys=keys)
        assert receiver.post("/postmark/t1", sg_body, {"Authorization": "Basic x"}).status == 401
        assert count_events(engine) == 0


def test_too_large_refused_before_the_body_is_read(database_url: str, settings: IngestSettings, tmp_path: Path) -> None:
    env = {**secrets_env(settings), "MAILGLASS_INGEST_MAX_BODY_BYTES": "65536"}
    with run_receiver(database_url, env, tmp_path, "--workers", "1") as receiver:
        # Announce 100 MB and send none of it: the answer must come at once, not after a body read.
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(
                b"POST /sendgrid/t1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 104857600\r\n\r\n"
            )
            answer = sock.recv(65536)
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"application/json" in answer and elapsed < 2
        # Chunked (no Content-Length) is capped while streaming (Mailgun: signed inside the body, so read).
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
            sock.sendall(b"POST /mailgun/t1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 16384
            try:
                for _ in range(8):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the receiver may close first
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def requests(text: str, status: str, provider: str = r"\w+") -> float:
    pattern = rf'mailglass_webhook_requests_total\{{provider="{provider}",status="{status}"\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_healthz_and_metrics_with_two_workers(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "2") as receiver:
        health = receiver.request("GET", "/healthz")
        assert health.status == 200 and health.json()["status"] == "ok"
        sent = 0
        for index in range(40):  # spread over both workers (new connection each time)
            provider = PROVIDERS[index % len(PROVIDERS)]
            body, headers = build_webhook(provider, f"m-{index}", "delivered", keys=keys)
            assert receiver.post(f"/{provider}/metrics-tenant", body, headers).status == 200
            sent += 1
        assert receiver.post("/postmark/metrics-tenant", b"{}", {}).status == 401
        # Every scrape, whichever worker answers, counts every worker's requests.
        for _ in range(6):
            text = receiver.request("GET", "/metrics").body.decode()
            ok = sum(
                float(v)
                for v in re.findall(r'mailglass_webhook_requests_total\{provider="\w+",status="200"\} (\S+)', text)
            )
            health_ok = re.search(r'mailglass_webhook_requests_total\{provider="none",status="200"\} (\S+)', text)
            assert ok - float(health_ok.group(1) if health_ok else 0) == sent
            unauthorized = re.search(
                r'mailglass_webhook_requests_total\{provider="postmark",status="401"\} (\S+)', text
            )
            assert unauthorized and float(unauthorized.group(1)) == 1
            orphans = re.findall(r'mailglass_webhook_events_total\{outcome="orphan",provider="\w+"\} (\S+)', text)
            orphans += re.findall(r'mailglass_webhook_events_total\{provider="\w+",outcome="orphan"\} (\S+)', text)
            assert sum(float(v) for v in orphans) >= sent
        pids = set()
        log = receiver.log_text()
        pids.update(re.findall(r"Started server process \[(\d+)\]", log))
        assert len(pids) == 2, log
        assert json.loads(receiver.request("GET", "/healthz").body)["schema"]

        # A schema not at this code's head revision (a migration not yet run): not ready.
        with engine.begin() as conn:
            head = conn.execute(sa.text("SELECT version_num FROM mailglass_alembic_version")).scalar_one()
            conn.execute(sa.text("UPDATE mailglass_alembic_version SET version_num = '0001_ledger'"))
        behind = receiver.request("GET", "/healthz")
        assert behind.status == 503 and behind.headers["retry-after"]
        assert behind.json()["schema"] == ["0001_ledger"] and behind.json()["expected_schema"] == head
