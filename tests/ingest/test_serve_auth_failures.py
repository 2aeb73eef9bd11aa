"""Forged requests answered late and refused from their headers (decision D32), over raw sockets.

A forged client waiting for its 401 gets it only after ``--auth-failure-delay``
and the connection is closed, while a signed webhook beside it is answered at
once; where the headers already show a forgery the body is never needed; a
sender that failed (a botched rotation) is not remembered.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events
from tests.ingest.test_serve_connections import read_answer, rss_bytes
from tests.processes import run_receiver, secrets_env

DELAY = 1.5


def head(path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items() if name.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def forged_mailgun() -> bytes:
    block = b'"signature": {"timestamp": "1700000000", "token": "forged", "signature": "00"}'
    return b'{"event-data": {"items": [' + b",".join([b'{"a":1}'] * 100_000) + b"]}, " + block + b"}"


def timed_answer(sock: socket.socket, started: float, out: dict[str, object]) -> None:
    """Read until the server closes; record the answer and when its first byte came."""
    sock.settimeout(DELAY + 10)
    data = b""
    try:
        while chunk := sock.recv(65536):
            if not data:
                out["first_byte"] = time.monotonic() - started
            data += chunk
    except (TimeoutError, ConnectionResetError):
        out["reset"] = True
    out["answer"] = data
    out["closed"] = time.monotonic() - started


def test_a_forged_body_waits_for_its_401_while_signed_traffic_is_answered_at_once(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    args = ("--workers", "1", "--auth-failure-delay", str(DELAY))
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        body = forged_mailgun()
        forged = socket.create_connection(("127.0.0.1", receiver.port))
        started = time.monotonic()
        forged.sendall(head("/mailgun/t-forged", len(body)) + body)
        seen: dict[str, object] = {}
        reader = threading.Thread(target=timed_answer, args=(forged, started, seen))
        reader.start()
        time.sleep(0.3)  # the forged body is read and refused by now; its answer is being held
        signed_times = []
        for index in range(5):
            signed, headers = build_webhook("postmark", f"beside-{index}", "delivered", keys=keys)
            sent = time.monotonic()
            assert receiver.post("/postmark/t-beside", signed, headers).status == 200
            signed_times.append(time.monotonic() - sent)
        reader.join(DELAY + 15)
        forged.close()
        answer = seen["answer"]
        assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"connection: close" in answer.lower() and b"application/json" in answer
        assert DELAY <= seen["first_byte"] < DELAY + 5, seen  # type: ignore[operator]
        assert seen["closed"] < DELAY + 5 and "reset" not in seen, seen  # type: ignore[operator]
        # Each signed webhook was answered while the forged one's 401 was held.
        assert max(signed_times) < DELAY, signed_times
    assert count_events(engine, "t-beside") == 5


def test_headers_that_show_a_forgery_get_their_401_without_the_body(
    database_url: str, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    args = ("--workers", "1", "--auth-failure-delay", str(DELAY))
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        _, signed = build_webhook("sendgrid", "hdr-stale", "delivered", keys=keys)
        stale = {**signed, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) - 3600)}
        wrong_auth = {"Authorization": "Basic " + base64.b64encode(b"acme:wrong").decode()}
        cases = [
            ("/sendgrid/t-hdr", {}, b"lacks"),  # no signature headers at all
            ("/sendgrid/t-hdr", stale, b"tolerance"),  # signed an hour ago
            ("/resend/t-hdr", {"svix-id": "msg_1", "svix-signature": "v1,AAAA"}, b"lacks"),
            ("/postmark/t-hdr", wrong_auth, b"credentials do not match"),
        ]
        for path, headers, says in cases:
            # A megabyte announced, one kilobyte sent: the answer cannot depend on the body.
            sock = socket.create_connection(("127.0.0.1", receiver.port))
            started = time.monotonic()
            sock.sendall(head(path, 1_000_000, headers) + b"[" + b" " * 1023)
            answer = read_answer(sock, DELAY + 10)
            waited = time.monotonic() - started
            sock.close()
            assert answer.startswith(b"HTTP/1.1 401"), (path, answer[:300])
            assert says in answer and b"connection: close" in answer.lower(), (path, answer[:300])
            assert DELAY <= waited < DELAY + 5, (path, waited)
        # A client that goes on sending its body meanwhile still reads the answer, then the close.
        sock = socket.create_connection(("127.0.0.1", receiver.port))
        sock.sendall(head("/postmark/t-hdr", 900_000, wrong_auth))
        sender = threading.Thread(target=lambda: _send_quietly(sock, b"x" * 900_000), daemon=True)
        sender.start()
        answer = read_answer(sock, DELAY + 10)
        sender.join(10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 401") and b"www-authenticate" in answer.lower(), answer[:300]
        metrics_text = receiver.request("GET", "/metrics").body.decode()
        assert 'mailglass_webhook_refused_total{reason="auth_headers"} 5.0' in metrics_text


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closes after its answer
        sock.sendall(data)


def test_a_sender_that_failed_is_not_remembered_and_held_answers_are_bounded(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # --limit-concurrency 4: at most 2 answers held at once, the rest of the 401s go out at once.
    args = ("--workers", "1", "--auth-failure-delay", str(DELAY), "--limit-concurrency", "4")
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        body, headers = build_webhook("postmark", "rotated", "delivered", keys=keys)
        wrong = {**headers, "Authorization": "Basic " + base64.b64encode(b"acme:old-secret").decode()}
        # A botched rotation: the provider signs with a secret the receiver no longer has, then with the right one.
        started = time.monotonic()
        assert receiver.post("/postmark/t-rotated", body, wrong).status == 401
        assert time.monotonic() - started >= DELAY
        started = time.monotonic()
        assert receiver.post("/postmark/t-rotated", body, headers).status == 200
        assert time.monotonic() - started < DELAY  # the same address, answered at normal speed
        assert count_events(engine, "t-rotated") == 1

        # Four forged requests at once: two are held, two answered at once (still 401, still closed).
        times: list[float] = []

        def forged() -> None:
            sent = time.monotonic()
            assert receiver.post("/postmark/t-rotated", body, wrong).status == 401
            times.append(time.monotonic() - sent)

        threads = [threading.Thread(target=forged) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DELAY + 15)
        times.sort()
        assert len(times) == 4 and times[1] < DELAY <= times[2], times
        metrics_text = receiver.request("GET", "/metrics").body.decode()
        assert 'mailglass_webhook_refused_total{reason="auth_failure_undelayed"} 2.0' in metrics_text


def test_held_answers_do_not_keep_their_bodies(database_url: str, settings: IngestSettings, tmp_path: Path) -> None:
    args = ("--workers", "1", "--auth-failure-delay", "8")
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        body = forged_mailgun()
        request = head("/mailgun/t-held", len(body)) + body
        assert receiver.post("/mailgun/t-held", body).status == 401  # warm-up: the worker's memory settles
        before = rss_bytes(receiver.process.pid)
        socks = []
        for _ in range(30):  # 30 forged megabytes, one after another, each refused while the others are held
            sock = socket.create_connection(("127.0.0.1", receiver.port))
            sock.sendall(request)
            socks.append(sock)
            time.sleep(0.1)
        held = rss_bytes(receiver.process.pid) - before
        answers = [read_answer(sock, 15) for sock in socks]
        for sock in socks:
            sock.close()
        assert all(answer.startswith(b"HTTP/1.1 401") for answer in answers), {a[:40] for a in answers}
        assert held < 12 * 2**20, f"RSS grew {held / 2**20:.1f} MiB while 30 answers were held"
