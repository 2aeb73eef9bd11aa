"""deploy/nginx/mailglass-receiver.conf run with Debian's nginx in front of a real ``mailglass serve``.

``.ci/run`` installs Debian's nginx; without it this test skips and says so.
Only the upstream address and the listen port are replaced; every limit is
the shipped file's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events
from tests.processes import free_port, run_receiver, secrets_env, stop_process_group, wait_until

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "nginx" / "mailglass-receiver.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

MAIN = """
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/mailglass-receiver.conf;
}}
"""


def start_nginx(tmp: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    text = SHIPPED.read_text()
    assert "server 127.0.0.1:8025;" in text and "listen 8080;" in text
    text = text.replace("server 127.0.0.1:8025;", f"server 127.0.0.1:{upstream_port};")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (tmp / "mailglass-receiver.conf").write_text(text)
    user = "user root;" if os.geteuid() == 0 else ""  # its workers must write the temp folders in tmp
    (tmp / "nginx.conf").write_text(MAIN.format(tmp=tmp, user=user))
    assert NGINX is not None
    log = (tmp / "nginx.out").open("wb")
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return process.poll() is not None

    wait_until(listening, 20, "nginx did not start")
    assert process.poll() is None, (tmp / "error.log").read_text()
    return process, port


def exchange(port: int, raw: bytes, timeout: float = 10) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)
    sock.sendall(raw)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b"connection: close" not in data.lower() and len(data) > 200:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    sock.close()
    return data


@pytest.mark.skipif(
    NGINX is None, reason="Debian's nginx is not installed (.ci/run installs it: apt-get install nginx-light)"
)
def test_shipped_nginx_edge_in_front_of_the_receiver(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        process, port = start_nginx(tmp_path, receiver.port)
        try:
            # A signed webhook through the edge: stored, answered by the receiver.
            body, headers = build_webhook("postmark", "edge-1", "delivered", keys=keys)
            head = [f"POST /postmark/t-edge HTTP/1.1\r\nHost: edge\r\nContent-Length: {len(body)}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() != "content-length"]
            answer = exchange(port, "".join(head).encode() + b"Connection: close\r\n\r\n" + body)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]

            # A 64 KiB header line: refused by the edge, in JSON, at once.
            started = time.monotonic()
            answer = exchange(
                port, b"POST /postmark/t-edge HTTP/1.1\r\nHost: e\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 431"), answer[:300]
            assert b"application/json" in answer and time.monotonic() - started < 3

            # A body over the limit: 413 JSON from the edge; /metrics is not exposed through it.
            answer = exchange(port, b"POST /sendgrid/t-edge HTTP/1.1\r\nHost: e\r\nContent-Length: 2000000\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 413") and b"application/json" in answer, answer[:300]
            answer = exchange(port, b"GET /metrics HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
            answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        finally:
            stop_process_group(process)
        # With the receiver gone, the edge's 502 becomes our JSON 503 with Retry-After.
    process, port = start_nginx(tmp_path, free_port())
    try:
        answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        assert b"Retry-After: 30" in answer and b"application/json" in answer
    finally:
        stop_process_group(process)
    assert count_events(engine, "t-edge") == 1
