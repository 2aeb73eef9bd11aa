"""Receiver metrics in Prometheus text format, right with several worker processes.

``mailglass serve --workers N`` runs N processes behind one port, so a scrape
lands on one of them at random. prometheus-client's *multiprocess mode* has
each process write its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` and
the scraped process sums every file, so any worker answers for all of them.
``mailglass serve`` points that variable at a fresh directory before the
workers start (a left-over directory would add a previous run's counts). The
metric families hold only counters and histograms, which sum across
processes without a mode to choose, and one gauge whose samples are per worker
(``pid`` label): whether that worker runs on its last good secrets.

Labels are bounded: ``provider`` is one of the five names and ``status`` an
HTTP code, never a tenant id (a label per tenant would grow without limit;
tenants are in the ledger). ``/healthz``, ``/metrics`` and unknown routes are
not webhooks and are not counted (a probe every few seconds would drown them).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from mailglass_pipeline.ingest import tenants

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "mailglass_webhook_requests",
    "Webhook requests answered, by provider and HTTP status.",
    ["provider", "status"],
)
EVENTS = Counter(
    "mailglass_webhook_events",
    "Provider events received, by outcome: linked, orphan, unlinkable (new ledger rows), duplicate, or "
    "malformed (a batch element that is not an event: kept as a raw record with status failed).",
    ["provider", "outcome"],
)
TENANT_CONFLICTS = Counter(
    "mailglass_webhook_tenant_conflicts",
    "Requests refused (409) because an event key is already stored for another tenant.",
    ["provider"],
)
LATENCY = Histogram(
    "mailglass_webhook_request_seconds",
    "Time from the request's first byte to the answer, for webhook POSTs.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

GROUP_SIZE = Histogram(
    "mailglass_webhook_store_group_size",
    "One-event webhooks stored by one statement (the receiver's group commit): _count statements, _sum webhooks.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 100),
)

REFUSED = Counter(
    "mailglass_webhook_refused",
    "Connections and requests the HTTP layer refused or closed before the application (ingest/protocol.py), "
    "by reason: headers_too_large, header_timeout, idle, evicted, connections, busy, not_http, "
    "auth_headers (401 from the headers alone), auth_failure_undelayed (401 sent at once: no room to hold it).",
    ["reason"],
)
SECRETS_FALLBACK = Gauge(
    "mailglass_webhook_secrets_fallback",
    "1 while MAILGLASS_WEBHOOK_SECRETS is missing or broken and this worker runs on the last good version "
    "(the same in every worker), 0 while the file is in force; one sample per worker (pid).",
    multiprocess_mode="all",
)
tenants.watch_fallback(lambda fallback: SECRETS_FALLBACK.set(1 if fallback else 0))

__all__ = [
    "CONTENT_TYPE",
    "EVENTS",
    "GROUP_SIZE",
    "LATENCY",
    "REFUSED",
    "REQUESTS",
    "SECRETS_FALLBACK",
    "TENANT_CONFLICTS",
    "render",
    "serve_metrics",
]


def render() -> bytes:
    """The text exposition: every worker's samples when running multiprocess, else this process's."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def serve_metrics(host: str, port: int) -> None:
    """Serve every worker's samples on ``host:port`` from this (the supervising) process, in a thread.

    For ``mailglass serve --metrics-port``: the scrape stays off the public
    webhook port, and a worker busy with webhooks is not the one answering it.
    """
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


#: Event outcome label -> key of the ingest result.
OUTCOMES = (
    ("linked", "linked"),
    ("orphan", "orphans"),
    ("unlinkable", "unlinkable"),
    ("duplicate", "duplicates"),
    ("malformed", "malformed"),
)


def count_result(provider: str, result: dict[str, object]) -> None:
    for outcome, key in OUTCOMES:
        value = result.get(key)
        if isinstance(value, int) and value:
            EVENTS.labels(provider, outcome).inc(value)
