"""Bounded cost per connection in ``mailglass serve``, over raw sockets: header size and time, idle sockets, floods.

Each attack is the probe's reproduction (issue 25): a 64 MiB header value, many
headers, sockets that connect and say nothing, headers that never end, and
more sockets than the receiver will hold, while real webhooks and ``/healthz``
must still be answered.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events
from tests.processes import run_receiver, secrets_env


def rss_bytes(pid: int) -> int:
    (line,) = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def read_one_response(sock: socket.socket) -> bytes:
    """One whole response (head and its Content-Length body) from a keep-alive connection."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def flood_header(port: int, head: bytes, chunk: bytes, chunks: int) -> tuple[bytes, float]:
    """Send ``head`` then ``chunks`` x ``chunk`` (from a thread) while reading the answer; (answer, seconds)."""
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()

    def send() -> None:
        try:
            sock.sendall(head)
            for _ in range(chunks):
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed: exactly what is expected

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(10)
    answer = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        answer = sock.recv(65536)
    seconds = time.monotonic() - started
    sock.close()
    sender.join(10)
    return answer, seconds


def test_oversized_headers_are_refused_early_and_memory_stays_flat(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        pid = receiver.process.pid  # one worker: uvicorn serves in this process
        before = rss_bytes(pid)
        # One 64 MiB header value, sent without credentials (the probe's reproduction).
        for _ in range(3):
            answer, seconds = flood_header(
                receiver.port, b"POST /postmark/acme HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, 1024
            )
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
            assert b"application/json" in answer and b"16384" in answer
            assert seconds < 3, seconds
        # Many small headers: the same bound.
        answer, seconds = flood_header(
            receiver.port, b"POST /postmark/acme HTTP/1.1\r\nHost: x\r\n", b"X-Many: " + b"b" * 56 + b"\r\n", 250_000
        )
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert seconds < 3, seconds
        grown = rss_bytes(pid) - before
        assert grown < 16 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB"

        # Headers up to the limit in one piece are fine; a request line + headers over it is 431 too.
        body, headers = build_webhook("postmark", "hdr-ok", "delivered", keys=keys)
        assert receiver.post("/postmark/t-hdr", body, {**headers, "X-Pad": "p" * 12_000}).status == 200
        big = receiver.post("/postmark/t-hdr", body, {**headers, "X-Pad": "p" * 20_000})
        assert big.status == 431 and big.headers["content-type"] == "application/json"
        assert receiver.request("GET", "/healthz").status == 200
        assert "Traceback" not in receiver.log_text()
    assert count_events(engine, "t-hdr") == 1


def test_idle_and_header_stalled_connections_are_closed(
    database_url: str, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    timeout = 1.5
    args = ("--workers", "1", "--header-timeout", str(timeout))
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        started = time.monotonic()
        idle = socket.create_connection(("127.0.0.1", receiver.port))
        stalled = socket.create_connection(("127.0.0.1", receiver.port))
        stalled.sendall(b"POST /postmark/acme HTTP/1.1\r\nHost: x\r\n")
        # A client trickling one header byte every 0.3 s is cut too: the deadline is on the whole block.
        trickle = socket.create_connection(("127.0.0.1", receiver.port))
        stop = threading.Event()

        def drip() -> None:
            for byte in b"POST /postmark/acme HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
                if stop.wait(0.3):
                    return
                try:
                    trickle.sendall(bytes([byte]))
                except OSError:
                    return

        threading.Thread(target=drip, daemon=True).start()
        assert read_answer(idle, 10) == b""  # nothing sent, nothing answered: closed
        idle_closed = time.monotonic() - started
        stalled_answer = read_answer(stalled, 10)
        trickle_answer = read_answer(trickle, 10)
        stop.set()
        waited = time.monotonic() - started
        assert timeout - 0.3 < idle_closed < timeout + 3, idle_closed
        assert waited < timeout + 4, waited
        for answer in (stalled_answer, trickle_answer):
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"application/json" in answer

        # After a first request on a keep-alive connection, a second one stalled in its headers: 408 too.
        body, headers = build_webhook("postmark", "ka-1", "delivered", keys=keys)
        sock = socket.create_connection(("127.0.0.1", receiver.port))
        lines = [f"POST /postmark/t-ka HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() != "content-length"]
        sock.sendall("".join(lines).encode() + b"\r\n" + body)
        first = read_one_response(sock)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        sock.sendall(b"POST /postmark/t-ka HTTP/1.1\r\nHost: x\r\n")
        assert read_answer(sock, 10).startswith(b"HTTP/1.1 408")
        assert receiver.request("GET", "/healthz").status == 200


def test_thousands_of_hostile_sockets_cannot_refuse_health_and_webhooks(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # A small cap makes the flood cheap to build: 1,500 idle and header-stalled sockets against 200.
    args = ("--workers", "1", "--max-connections", "200", "--header-timeout", "60")
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        hostile = []
        for index in range(1500):
            sock = socket.create_connection(("127.0.0.1", receiver.port))
            if index % 2:
                sock.sendall(b"POST /postmark/acme HTTP/1.1\r\nHost: x\r\n")
            hostile.append(sock)
        time.sleep(0.5)
        for index in range(10):
            started = time.monotonic()
            health = receiver.request("GET", "/healthz")
            assert health.status == 200, health.body
            body, headers = build_webhook("resend", f"flood-{index}", "delivered", keys=keys)
            reply = receiver.post("/resend/t-flood", body, headers)
            assert reply.status == 200, reply.body
            assert time.monotonic() - started < 2
        closed = 0
        for sock in hostile:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            sock.close()
        assert closed >= 1500 - 200, closed
        metrics = receiver.request("GET", "/metrics").body.decode()
        evicted = re.search(r'mailglass_webhook_refused_total\{reason="evicted"\} (\S+)', metrics)
        assert evicted and float(evicted.group(1)) >= 1300, metrics[-2000:]
    assert count_events(engine, "t-flood") == 10


def test_too_many_requests_in_progress_get_our_json_503(
    database_url: str, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    args = ("--workers", "1", "--limit-concurrency", "2", "--body-timeout", "3")
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        held = []
        for _ in range(2):  # two requests in progress, their bodies never finished (Mailgun: signed in the body)
            sock = socket.create_connection(("127.0.0.1", receiver.port))
            sock.sendall(b"POST /mailgun/t-busy HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n[")
            held.append(sock)
        time.sleep(0.3)
        busy = receiver.request("GET", "/healthz")
        assert busy.status == 503 and busy.headers["retry-after"] == "30"
        assert busy.headers["content-type"] == "application/json" and "busy" in busy.json()["error"]
        for sock in held:
            assert read_answer(sock, 10).startswith(b"HTTP/1.1 408")
        assert receiver.request("GET", "/healthz").status == 200


def test_bytes_that_are_not_http_get_a_json_400(database_url: str, settings: IngestSettings, tmp_path: Path) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        sock = socket.create_connection(("127.0.0.1", receiver.port))
        sock.sendall(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
        answer = read_answer(sock, 10)
        assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer, answer[:200]
        assert receiver.request("GET", "/healthz").status == 200
