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
- header size and time limits, idle connections closed, a connection cap that
  closes idle sockets first, a JSON 503 with ``Retry-After`` for too many
  requests in progress (uvicorn's ``limit_concurrency`` counts sockets and
  answers text): :mod:`.protocol`, uvicorn's httptools protocol subclassed;
- forged requests refused from their headers where they suffice, and every
  401 answered late and closed (decision D32): :mod:`.auth_failures`;
- the edge in front (deploy/nginx) holds the same limits per client address
  (docs/ingest.md: which layer holds which limit).

Metrics use prometheus-client's multiprocess mode (see :mod:`.metrics`):
this command gives the workers a fresh ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile

import click

from mailglass_pipeline.db import describe_url, resolve_database_url
from mailglass_pipeline.ingest.base import IngestSettings
from mailglass_pipeline.ingest.tenants import TenantSettings
from mailglass_pipeline.setting import Setting
from mailglass_pipeline.settings import DATABASE_URL as DATABASE_URL_SETTING
from mailglass_pipeline.settings import (
    SERVE_AUTH_FAILURE_DELAY,
    SERVE_BODY_TIMEOUT,
    SERVE_HEADER_TIMEOUT,
    SERVE_LIMIT_CONCURRENCY,
    SERVE_MAX_CONNECTIONS,
    SERVE_MAX_HEADER_BYTES,
    SERVE_METRICS_PORT,
    SERVE_STATE_DIR,
    SERVE_THREADS,
)

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
@SERVE_HEADER_TIMEOUT.option("--header-timeout", help="Seconds a client has to send the headers, from connecting.")
@SERVE_MAX_HEADER_BYTES.option("--max-header-bytes", help="Largest request line and headers, in bytes (431 beyond).")
@SERVE_MAX_CONNECTIONS.option("--max-connections", help="Open connections per worker; beyond, the longest-idle closes.")
@SERVE_LIMIT_CONCURRENCY.option("--limit-concurrency", help="Requests in progress per worker before new ones get 503.")
@SERVE_METRICS_PORT.option("--metrics-port", help="Serve /metrics on this port instead of the webhook port.")
@SERVE_AUTH_FAILURE_DELAY.option(
    "--auth-failure-delay", help="Seconds a 401 is held before it is sent and the connection closed (0: at once)."
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address of the --metrics-port listener.")
@click.option("--access-log", is_flag=True, help="Log every request (off by default: /metrics counts them).")
def serve_command(
    host: str,
    port: int,
    workers: int | None,
    threads: int,
    body_timeout: float,
    header_timeout: float,
    max_header_bytes: int,
    max_connections: int,
    limit_concurrency: int,
    metrics_port: int | None,
    auth_failure_delay: float,
    metrics_host: str,
    access_log: bool,
) -> None:
    """Receive provider webhooks: POST /<provider>/<tenant_id>, GET /healthz, GET /metrics."""
    import uvicorn

    # Refuse a broken configuration (bad limit, unreadable secrets file) before listening.
    TenantSettings.from_env()
    IngestSettings.from_env()
    # Resolved once here (the embedded server, if that is the database, starts now) and named, like
    # every other command; the workers inherit the URL.
    url = resolve_database_url()
    os.environ[DATABASE_URL_SETTING.env] = url
    click.echo(f"mailglass: database {describe_url(url)}", err=True)
    max_connections = min(max_connections, socket_budget(threads))
    for setting, value in (
        (SERVE_BODY_TIMEOUT, repr(body_timeout)),
        (SERVE_THREADS, str(threads)),
        (SERVE_HEADER_TIMEOUT, repr(header_timeout)),
        (SERVE_MAX_HEADER_BYTES, str(max_header_bytes)),
        (SERVE_MAX_CONNECTIONS, str(max_connections)),
        (SERVE_LIMIT_CONCURRENCY, str(limit_concurrency)),
        (SERVE_METRICS_PORT, str(metrics_port or "")),
        (SERVE_AUTH_FAILURE_DELAY, repr(auth_failure_delay)),
    ):
        os.environ[setting.env] = value
    # The workers share their last good webhook secrets here (ingest/tenants.py).
    state_dir = tempfile.mkdtemp(prefix="mailglass-serve-")
    os.environ[SERVE_STATE_DIR.env] = state_dir
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="mailglass-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    count = workers or default_workers()
    click.echo(f"mailglass: receiving webhooks on http://{host}:{port} ({count} workers x {threads} threads)", err=True)
    if metrics_port:
        from mailglass_pipeline.ingest.metrics import serve_metrics

        serve_metrics(metrics_host, metrics_port)
        click.echo(f"mailglass: metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    try:
        uvicorn.run(
            "mailglass_pipeline.ingest.server:create_app",
            factory=True,
            host=host,
            port=port,
            workers=count,
            http="mailglass_pipeline.ingest.protocol:GuardedProtocol",
            ws="none",
            limit_concurrency=None,  # counts sockets and answers text/plain: .protocol limits requests instead
            timeout_keep_alive=5,
            # On SIGTERM in-flight ingests finish; uploads still stalled after 20 s are dropped (k8s grace: 30 s).
            timeout_graceful_shutdown=20,
            # uvicorn kills a worker that misses its 5 s ping: on a saturated CPU that is a busy worker, not
            # a hung one, and killing it drops its in-flight webhooks. 30 s still replaces a truly hung one.
            timeout_worker_healthcheck=30,
            access_log=access_log,
            log_level="info",
            server_header=False,
            proxy_headers=False,
        )
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)


def socket_budget(threads: int) -> int:
    """Sockets a worker may hold: the open-file limit (raised to its hard limit) less files and connections.

    Running out of descriptors would stop uvicorn accepting anyone; the
    connection cap closes idle sockets before that can happen.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return max(2, soft - 128 - 2 * threads)
