"""``mailglass serve``: the webhook receiver as a production HTTP server.

Why uvicorn (with uvloop and httptools): a webhook receiver on the open
internet is mostly *waiting* - on clients that upload slowly (or stall on
purpose) and on the database. A thread-per-request server (gunicorn sync or
gthread workers, wsgiref) parks one thread on each unfinished body: twenty
clients that send half a body and stall hold every thread, and the receiver
stops answering. An event-loop server holds such a client as a socket and a
timer, so it cannot be starved by them; the synchronous ingest runs in a
bounded thread pool only once the whole body is in hand (see
:mod:`.server`). uvicorn is the reference ASGI server, is already in the
image (Dagster's webserver runs on it), serves several worker processes from
one port (``--workers``), and with httptools/uvloop parses HTTP in C.

What uvicorn does not do, and where it is done instead:

- body read deadline (408) and size limits (413 from ``Content-Length``
  before any byte of the body is read; streamed bodies capped as they come):
  :class:`.server.Receiver`;
- a deadline on slowly sent *headers*: such a connection costs a socket,
  never a thread; ``--limit-concurrency`` bounds the sockets (503 beyond),
  and in Kubernetes the ingress in front bounds header time (docs/deploy.md).

Metrics use prometheus-client's multiprocess mode (see :mod:`.metrics`):
this command gives the workers a fresh ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import click

from mailglass_pipeline.ingest.base import IngestSettings
from mailglass_pipeline.ingest.tenants import TenantSettings
from mailglass_pipeline.settings import SERVE_BODY_TIMEOUT, SERVE_STATE_DIR, SERVE_THREADS, Setting

# No import of .server or prometheus_client here: prometheus-client picks its
# multiprocess storage when first imported, so this module sets the variable first.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 in a container).")
@Setting("port", 8025, 1, 65535).option("--port")
@Setting("workers", None, 1, 64, "Worker processes (default: the CPU count, at most 4).", kind=int).option("--workers")
@SERVE_THREADS.option("--threads", help="Ingest threads per worker (each may hold one database connection).")
@SERVE_BODY_TIMEOUT.option("--body-timeout", help="Seconds a client has to send the whole body (408 after).")
@Setting("limit_concurrency", 1000, 1, None, "Open connections per worker before new ones get 503.").option(
    "--limit-concurrency"
)
@click.option("--access-log", is_flag=True, help="Log every request (off by default: /metrics counts them).")
def serve_command(
    host: str,
    port: int,
    workers: int | None,
    threads: int,
    body_timeout: float,
    limit_concurrency: int,
    access_log: bool,
) -> None:
    """Receive provider webhooks: POST /<provider>/<tenant_id>, GET /healthz, GET /metrics."""
    import uvicorn

    # Refuse a broken configuration (bad limit, unreadable secrets file) before listening.
    TenantSettings.from_env()
    IngestSettings.from_env()
    # The workers share their last good webhook secrets here (ingest/tenants.py).
    state_dir = tempfile.mkdtemp(prefix="mailglass-serve-")
    os.environ[SERVE_STATE_DIR.env] = state_dir
    os.environ[SERVE_BODY_TIMEOUT.env] = repr(body_timeout)
    os.environ[SERVE_THREADS.env] = str(threads)
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="mailglass-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    count = workers or default_workers()
    click.echo(f"mailglass: receiving webhooks on http://{host}:{port} ({count} workers x {threads} threads)", err=True)
    try:
        uvicorn.run(
            "mailglass_pipeline.ingest.server:create_app",
            factory=True,
            host=host,
            port=port,
            workers=count,
            limit_concurrency=limit_concurrency,
            timeout_keep_alive=5,
            # On SIGTERM in-flight ingests finish; uploads still stalled after 20 s are dropped (k8s grace: 30 s).
            timeout_graceful_shutdown=20,
            access_log=access_log,
            log_level="info",
            server_header=False,
            proxy_headers=False,
        )
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
