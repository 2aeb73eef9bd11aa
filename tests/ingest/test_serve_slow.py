"""Slow clients cannot starve ``mailglass serve``: 20 stalled bodies, a valid request still answered at once."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events
from tests.processes import run_receiver, secrets_env

BODY_TIMEOUT = 3.0


def test_twenty_stalled_clients_do_not_delay_a_valid_request(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings, tmp_path: Path
) -> None:
    # One worker with 2 ingest threads: far fewer threads than stalled clients, the hardest case.
    args = ("--workers", "1", "--threads", "2", "--body-timeout", str(BODY_TIMEOUT))
    with run_receiver(database_url, secrets_env(settings), tmp_path, *args) as receiver:
        stalled: list[socket.socket] = []
        opened = time.monotonic()
        for index in range(20):  # Mailgun: signed inside the body, so its headers cannot refuse it
            sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=BODY_TIMEOUT + 5)
            sock.sendall(
                f"POST /mailgun/slow-{index} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                'Content-Length: 5000\r\n\r\n[{"event": "deliv'.encode()
            )
            stalled.append(sock)
        time.sleep(0.3)  # every stalled request is in the server, waiting for its body

        latencies = []
        for index in range(5):
            body, headers = build_webhook("resend", f"fast-{index}", "delivered", keys=keys)
            started = time.monotonic()
            reply = receiver.post("/resend/fast", body, headers)
            latencies.append(time.monotonic() - started)
            assert reply.status == 200, reply.body
        assert max(latencies) < 1.0, latencies

        # Each stalled client is cut off with a 408 once its body deadline passes.
        for sock in stalled:
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"application/json" in answer
            sock.close()
        waited = time.monotonic() - opened
        assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + 5, waited
        assert receiver.request("GET", "/healthz").status == 200
    assert count_events(engine, "fast") == 5
    assert sum(count_events(engine, f"slow-{index}") for index in range(20)) == 0
