"""One view of the per-tenant secrets in every worker (issue 25): ``mailglass serve --workers 2`` over real HTTP.

A rotation is in force in every worker from its next request on. A removed or
broken file keeps the last good version in *every* worker (not each worker's
own: a worker that never saw the rotation must not keep accepting the retired
secret), and says so in the log and in ``mailglass_webhook_secrets_fallback``.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections import Counter
from pathlib import Path

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import build_webhook
from tests.processes import Receiver, run_receiver, secrets_env

REQUESTS = 30


def write_secrets(path: Path, password: str) -> None:
    path.write_text(f'[tenants."acme".postmark]\npostmark_webhook_auth = "acme:{password}"\n')
    stamp = time.time() + 1  # certainly a new modification time, whatever the clock's tick
    os.utime(path, (stamp, stamp))


def answers(receiver: Receiver, password: str, tag: str) -> Counter[int]:
    """Statuses of REQUESTS postmark webhooks for acme with ``password``, each on its own connection."""
    body, _ = build_webhook("postmark", tag, "delivered")
    auth = {"Authorization": "Basic " + base64.b64encode(f"acme:{password}".encode()).decode()}
    return Counter(receiver.post("/postmark/acme", body, auth).status for _ in range(REQUESTS))


def fallback_by_worker(receiver: Receiver) -> dict[str, float]:
    text = receiver.request("GET", "/metrics").body.decode()
    found = re.findall(r'mailglass_webhook_secrets_fallback\{pid="(\d+)"\} (\S+)', text)
    return {pid: float(value) for pid, value in found}


def test_every_worker_answers_alike_after_a_rotation_and_a_broken_file(
    database_url: str, engine: Engine, settings: IngestSettings, tmp_path: Path
) -> None:
    secrets = tmp_path / "webhook-secrets.toml"
    write_secrets(secrets, "S1")
    env = {**secrets_env(settings), "MAILGLASS_WEBHOOK_SECRETS": str(secrets)}
    with run_receiver(database_url, env, tmp_path, "--workers", "2") as receiver:
        assert answers(receiver, "S1", "before") == Counter({200: REQUESTS})
        # Rotate S1 -> S2: every worker, from its next request on.
        write_secrets(secrets, "S2")
        assert answers(receiver, "S2", "rotated") == Counter({200: REQUESTS})
        assert answers(receiver, "S1", "retired") == Counter({401: REQUESTS})

        # The probe's case: one request sees S2, then the file goes. Every worker keeps S2 (the last good).
        write_secrets(secrets, "S3")
        base = build_webhook("postmark", "one", "delivered")[0]
        auth = {"Authorization": "Basic " + base64.b64encode(b"acme:S3").decode()}
        assert receiver.post("/postmark/acme", base, auth).status == 200
        secrets.unlink()
        assert answers(receiver, "S3", "removed-new") == Counter({200: REQUESTS})
        assert answers(receiver, "S2", "removed-old") == Counter({401: REQUESTS})
        workers = fallback_by_worker(receiver)
        assert len(workers) == 2 and set(workers.values()) == {1.0}, workers
        assert "keeping the previous webhook secrets" in receiver.log_text()

        # A broken edit: the same, everywhere.
        secrets.write_text("[tenants.acme\n")
        assert answers(receiver, "S3", "broken-new") == Counter({200: REQUESTS})
        assert answers(receiver, "S2", "broken-old") == Counter({401: REQUESTS})

        # Fixed: in force everywhere, and the metric says so.
        write_secrets(secrets, "S4")
        assert answers(receiver, "S4", "fixed") == Counter({200: REQUESTS})
        assert answers(receiver, "S3", "fixed-old") == Counter({401: REQUESTS})
        assert set(fallback_by_worker(receiver).values()) == {0.0}
        assert receiver.process.poll() is None
