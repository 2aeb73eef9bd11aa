"""``mailglass ingest`` (in process, through the real ``mailglass`` group) and the receiver's app over real HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from mailglass_pipeline.ingest.server import Receiver
from mailglass_pipeline.ingest.tenants import TenantSettings
from tests.factories import count_events, events
from tests.ingest.ingest_support import fixture_bytes


@pytest.fixture
def cli() -> click.Group:
    from mailglass_pipeline.cli import cli

    return cli


def cli_env(database_url: str, settings: IngestSettings) -> dict[str, str]:
    return {
        "MAILGLASS_DATABASE_URL": database_url,
        "MAILGLASS_POSTMARK_WEBHOOK_AUTH": settings.postmark_auth or "",
        "MAILGLASS_SENDGRID_VERIFICATION_KEY": settings.sendgrid_verification_key or "",
        "MAILGLASS_MAILGUN_SIGNING_KEY": settings.mailgun_signing_key or "",
        "MAILGLASS_RESEND_WEBHOOK_SECRET": settings.resend_webhook_secret or "",
        "MAILGLASS_SNS_CERT_DIR": settings.sns_cert_dir or "",
    }


def test_cli_ingest_file_with_headers(
    cli: click.Group, database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    body, headers = build_webhook("resend", "rs-1", "delivered", keys=keys)
    capture = tmp_path / "capture.json"
    capture.write_bytes(body)
    args = ["ingest", "--provider", "resend", "--tenant-id", "t1", str(capture)]
    for name, value in headers.items():
        args[1:1] = ["--header", f"{name.upper()}: {value}"]  # header names are case-insensitive
    result = CliRunner().invoke(cli, args, env=cli_env(database_url, settings))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["events"], out["orphans"], out["duplicates"], out["verified"]) == (1, 1, 0, True)
    assert result.stderr == ""
    again = CliRunner().invoke(cli, args, env=cli_env(database_url, settings))
    assert json.loads(again.stdout)["duplicates"] == 1


def test_cli_no_verify_from_stdin_says_so(
    cli: click.Group, database_url: str, engine: Engine, settings: IngestSettings
) -> None:
    body = fixture_bytes("postmark/bounced_hard.json")
    args = ["ingest", "--provider", "postmark", "--tenant-id", "t1", "--no-verify", "-"]
    result = CliRunner().invoke(cli, args, input=body, env=cli_env(database_url, settings))
    assert result.exit_code == 0, result.output
    assert "--no-verify" in result.stderr and "SKIPPED" in result.stderr
    assert json.loads(result.stdout)["orphans"] == 1
    assert events(engine, "t1")[0].metadata["verified"] is False


def test_cli_bad_signature_one_line_nonzero(
    cli: click.Group, database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    body, _ = build_webhook("postmark", "pm-1", "delivered", keys=keys)
    capture = tmp_path / "capture.json"
    capture.write_bytes(body)
    bad = "Authorization: Basic " + base64.b64encode(b"mailglass:wrong").decode()
    args = ["ingest", "--provider", "postmark", "--tenant-id", "t1", "--header", bad, str(capture)]
    result = CliRunner().invoke(cli, args, env=cli_env(database_url, settings))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "WebhookSignatureError" in result.stderr
    assert count_events(engine) == 0
    malformed = tmp_path / "bad.json"
    malformed.write_bytes(b"{nope")
    args = ["ingest", "--provider", "sendgrid", "--tenant-id", "t1", "--no-verify", str(malformed)]
    result = CliRunner().invoke(cli, args, env=cli_env(database_url, settings))
    assert result.exit_code == 1 and "WebhookPayloadError" in result.stderr


def test_cli_bad_header_is_usage_error(cli: click.Group, tmp_path: Path) -> None:
    capture = tmp_path / "c.json"
    capture.write_bytes(b"{}")
    args = ["ingest", "--provider", "postmark", "--tenant-id", "t1", "--header", "no colon", str(capture)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Name: value" in result.output


# -- the receiver's app over real HTTP, served in this process ---------------------------------


@pytest.fixture
def server(database_url: str, settings: IngestSettings) -> Iterator[str]:
    """``mailglass serve``'s application under uvicorn in a thread (no worker processes: quick to start)."""
    from dataclasses import replace

    import uvicorn

    tenants = TenantSettings(replace(settings, max_body_bytes=64 * 1024))
    app = Receiver(tenants=tenants, database_url=database_url, threads=2)
    httpd = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=httpd.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not httpd.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the receiver did not start"
        time.sleep(0.02)
    port = httpd.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.should_exit = True
        thread.join(timeout=10)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), {k.lower(): v for k, v in exc.headers.items()}


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "mailgun", "ses", "resend"])
def test_receiver_over_http(provider: str, server: str, engine: Engine, keys: SampleKeys) -> None:
    body, headers = build_webhook(provider, f"{provider}-http-1", "delivered", keys=keys)
    status, payload, _ = post(f"{server}/{provider}/tenant-http", body, headers)
    assert status == 200, payload
    assert (payload["events"], payload["orphans"]) == (1, 1)
    (event,) = events(engine, "tenant-http")
    assert event.metadata["provider_message_id"] == f"{provider}-http-1"


def test_receiver_errors(server: str, engine: Engine, keys: SampleKeys) -> None:
    body, headers = build_webhook("postmark", "pm-2", "delivered", keys=keys)
    bad_auth = {**headers, "Authorization": "Basic " + base64.b64encode(b"x:y").decode()}
    status, payload, response_headers = post(f"{server}/postmark/t1", body, bad_auth)
    assert status == 401 and "credentials" in payload["error"]
    assert response_headers.get("www-authenticate", "").startswith("Basic")
    assert post(f"{server}/postmark/t1", b"{oops", headers)[0] == 400
    assert post(f"{server}/sparkpost/t1", body, headers)[0] == 404
    assert post(f"{server}/postmark", body, headers)[0] == 404
    assert post(f"{server}/postmark/t1", b"x" * (64 * 1024 + 1), headers)[0] == 413
    assert get_status(f"{server}/postmark/t1") == 405
    assert count_events(engine) == 0


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_cli_refuses_another_providers_body_even_unverified(
    cli: click.Group, database_url: str, engine: Engine, settings: IngestSettings, tmp_path: Path
) -> None:
    capture = tmp_path / "mailgun.json"
    capture.write_bytes(fixture_bytes("mailgun/delivered_full_body__anymail.json"))
    for provider in ("resend", "postmark", "sendgrid", "ses"):
        args = ["ingest", "--provider", provider, "--tenant-id", "t1", "--no-verify", str(capture)]
        result = CliRunner().invoke(cli, args, env=cli_env(database_url, settings))
        assert result.exit_code == 1, (provider, result.output)
        assert "WebhookPayloadError" in result.stderr, (provider, result.stderr)
    assert count_events(engine) == 0
