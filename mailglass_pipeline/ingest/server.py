"""The receiver as an ASGI application: routing, bounded body reads, JSON answers.

``mailglass serve`` runs it under uvicorn (see :mod:`.serve` for why). The
event loop only does what cannot block: parse the request line, refuse a
route, a method or a ``Content-Length`` over the limit *before* reading the
body, and read the body under a deadline. A small body is then verified
and parsed on the loop (tens of microseconds, cheaper than a hand-off);
everything that touches the database (and a large body's parsing) runs in a
bounded thread pool, so a slow database delays requests but never the loop,
and a client stalling mid-body costs a socket, not a thread. One-event
webhooks that arrive together are stored together (:mod:`.grouped`).

Answers (all JSON, never an HTML page): 404 unknown route; 405 with ``Allow``;
400 unfit tenant id or unreadable request; 408 body not received in time; 413
too large; then what :func:`.errors.http_answer` makes of the ingest's outcome
(200 result, 400, 401, 409, 503 with ``Retry-After``; a 500 means a bug).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.db import create_engine, resolve_database_url, sqlstate_of
from mailglass_pipeline.errors import DatabaseUnavailableError
from mailglass_pipeline.ingest import metrics, ses
from mailglass_pipeline.ingest.auth_failures import Tarpit, header_refusal
from mailglass_pipeline.ingest.base import PROVIDERS, ParsedWebhook
from mailglass_pipeline.ingest.coalescer import Coalescer
from mailglass_pipeline.ingest.core import joins_group, parse_webhook, prunes_tokens, result_of, store_parsed
from mailglass_pipeline.ingest.errors import RETRY_AFTER, DeliveryLockedError, WebhookSignatureError, http_answer
from mailglass_pipeline.ingest.grouped import BUSY, MAX_GROUP, Outcome, store_grouped
from mailglass_pipeline.ingest.grouped import Request as GroupRequest
from mailglass_pipeline.ingest.health import check_health
from mailglass_pipeline.ingest.tenants import TenantSettings, tenant_id_problem
from mailglass_pipeline.settings import (
    SERVE_AUTH_FAILURE_DELAY,
    SERVE_BODY_TIMEOUT,
    SERVE_LIMIT_CONCURRENCY,
    SERVE_LOCK_WAIT,
    SERVE_METRICS_PORT,
    SERVE_THREADS,
)

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The providers' own published limits, where tighter than ``MAILGLASS_INGEST_MAX_BODY_BYTES`` (413 beyond).
PROVIDER_MAX_BODY = {"ses": ses.MAX_BODY_BYTES}
#: Bodies up to this size are verified and parsed on the event loop (tens of microseconds: cheaper
#: than a hand-off to a thread); larger ones (SendGrid batches) in the ingest threads.
INLINE_PARSE_BYTES = 16 * 1024
#: Seconds a group statement runs before another may start beside it (a statement takes a few ms).
GROUP_PATIENCE = 0.05
#: Seconds one attempt of the ordinary path may wait for a row lock (then the thread is let go).
LOCK_PROBE = 0.2
#: First pause before a webhook whose delivery is locked is tried again (doubling, at most 0.5 s).
LOCK_RETRY_PAUSE = 0.05


class Receiver:
    """``POST /<provider>/<tenant_id>``, ``GET /healthz``, ``GET /metrics``."""

    def __init__(
        self,
        *,
        tenants: TenantSettings | None = None,
        database_url: str | None = None,
        body_timeout: float = SERVE_BODY_TIMEOUT.default,
        threads: int = SERVE_THREADS.default,
        lock_wait: float = SERVE_LOCK_WAIT.default,
        public_metrics: bool = True,
        auth_failure_delay: float = SERVE_AUTH_FAILURE_DELAY.default,
        delayed_failures: int = SERVE_LIMIT_CONCURRENCY.default // 2,
    ) -> None:
        self.tenants = tenants or TenantSettings.from_env()
        self.database_url = database_url
        self.body_timeout = body_timeout
        self.max_body = self.tenants.base.max_body_bytes
        self.threads = threads
        self.lock_wait = lock_wait
        #: False when ``mailglass serve --metrics-port`` serves them on a port of their own.
        self.public_metrics = public_metrics
        #: 401s answered late (decision D32); at most half the requests in progress, so the rest find room.
        self.tarpit = Tarpit(auth_failure_delay, delayed_failures)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mailglass-ingest")
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        # One group statement at a time, more only while one is slow (see .coalescer); half the
        # threads at most, so that batches and the ordinary path always find a thread.
        self.groups: Coalescer[GroupRequest, Outcome] = Coalescer(
            self._store_group, max_group=MAX_GROUP, max_in_flight=max(1, threads // 2), patience=GROUP_PATIENCE
        )

    def engine(self) -> Engine:
        """The receiver's pool, made on first use (in an ingest thread: resolving may start the embedded server).

        One connection per ingest thread, kept: a pool smaller than the thread
        count would open and close an overflow connection (a server process)
        per request under load. Without pre-ping (a round trip per request): a
        dropped connection fails its statement, which writes nothing, and is
        dropped from the pool; the webhooks are then stored alone, on fresh ones.
        """
        with self._engine_lock:
            if self._engine is None:
                url = resolve_database_url(self.database_url)
                self._engine = create_engine(url, pre_ping=False, pool_size=self.threads, max_overflow=0)
            return self._engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        provider = "none"
        status = 500
        try:
            provider, status = await self._route(scope, receive, send)
        finally:
            if provider != "none":  # health, metrics and unknown routes are not webhooks
                metrics.REQUESTS.labels(provider, str(status)).inc()
                metrics.LATENCY.labels(provider).observe(time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.shutdown(wait=True)
                if self._engine is not None:
                    self._engine.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> tuple[str, int]:
        method = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        segments = raw_path.split(b"?", 1)[0].split(b"/")[1:]
        if segments in ([b"healthz"], [b"metrics"]):
            if method not in ("GET", "HEAD"):
                return "none", await answer(send, 405, {"error": "use GET"}, {"allow": "GET, HEAD"})
            if segments == [b"metrics"] and self.public_metrics:
                body = await self._run(metrics.render)
                return "none", await answer_raw(send, 200, body, metrics.CONTENT_TYPE)
            if segments == [b"metrics"]:
                return "none", await answer(send, 404, {"error": "no such route; metrics are on their own port"})
            healthy, payload = await self._run(check_health, self.database_url)
            extra = {} if healthy else {"retry-after": RETRY_AFTER}
            return "none", await answer(send, 200 if healthy else 503, payload, extra)
        provider = segments[0].decode("latin-1") if segments else ""
        if len(segments) != 2 or provider not in PROVIDERS:
            routes = "POST /<provider>/<tenant_id> (" + ", ".join(PROVIDERS) + "), GET /healthz, GET /metrics"
            return "none", await answer(send, 404, {"error": f"no such route; routes: {routes}"})
        if method != "POST":
            return provider, await answer(send, 405, {"error": "use POST"}, {"allow": "POST"})
        try:
            tenant_id = unquote_to_bytes(segments[1]).decode("utf-8")
        except UnicodeDecodeError:
            return provider, await answer(send, 400, {"error": "tenant id is not UTF-8"})
        problem = tenant_id_problem(tenant_id)
        if problem:
            return provider, await answer(send, 400, {"error": problem})
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        limit = min(self.max_body, PROVIDER_MAX_BODY.get(provider, self.max_body))
        # Before any byte of the body: its declared size, then what the headers show of its authenticity.
        refusal = declared_length_refusal(headers, limit)
        if refusal is None:
            refused = self._header_refusal(provider, tenant_id, headers)
            if refused is not None:  # the body stays unread: the protocol drops it after the answer
                metrics.REFUSED.labels("auth_headers").inc()
                await self.tarpit.hold()
                status, payload, extra = http_answer(provider, WebhookSignatureError(refused))
                return provider, await answer(send, status, payload, {**extra, "connection": "close"})
            body, refusal = await self._read_body(receive, limit)
        if refusal is not None:
            status, message = refusal
            return provider, await answer(send, status, {"error": message}, {"connection": "close"})
        status, payload, extra = await self._ingest(provider, tenant_id, body, headers)
        if status == 401:  # forged, stale or replayed: answered late, and the connection closed
            del body  # a held answer keeps a coroutine, not a megabyte
            await self.tarpit.hold()
            extra = {**extra, "connection": "close"}
        return provider, await answer(send, status, payload, extra)

    def _header_refusal(self, provider: str, tenant_id: str, headers: dict[str, str]) -> str | None:
        """A 401's message when the headers alone show the request is not authentic (see :mod:`.auth_failures`)."""
        try:
            settings = self.tenants.for_tenant(tenant_id, provider)
        except Exception:  # unreadable secrets: the ordinary path answers it
            return None
        return header_refusal(provider, headers, settings, datetime.now(UTC))

    async def _read_body(self, receive: Receive, limit: int) -> tuple[bytes, tuple[int, str] | None]:
        """The body, or ``(status, message)``: 408 on the deadline, 413 once a streamed body passes ``limit``."""
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_timeout
        more = True
        while more:
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(remaining, 0.001))
            except TimeoutError:
                return b"", (408, f"body not received within {self.body_timeout:g} s")
            if message["type"] == "http.disconnect":
                return b"", (400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # no Content-Length (chunked): capped while streaming
                return b"", (413, f"body is over the {limit}-byte limit")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks), None

    async def _ingest(
        self, provider: str, tenant_id: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        outcome: dict[str, Any] | Exception
        try:
            settings = self.tenants.for_tenant(tenant_id, provider)
            if len(body) <= INLINE_PARSE_BYTES:
                parsed = parse_webhook(provider, body, headers, settings=settings)
            else:
                parsed = await self._run(parse_webhook, provider, body, headers, settings=settings)
            outcome = result_of(parsed, tenant_id, await self._store(parsed, tenant_id))
        except Exception as exc:
            outcome = exc
        status, payload, extra = http_answer(provider, outcome)
        if status == 200:
            metrics.count_result(provider, payload)
        elif status == 409:
            metrics.TENANT_CONFLICTS.labels(provider).inc()
        return status, payload, extra

    async def _store(self, parsed: ParsedWebhook, tenant_id: str) -> dict[str, Any]:
        """:func:`.core.store_parsed`, with the one-event webhooks of this worker stored together.

        A webhook whose delivery another transaction holds locked is tried
        again by itself, after 50, 100, 200 ... ms, for ``lock_wait`` seconds,
        then refused with :class:`DeliveryLockedError` (503, nothing stored).
        The pauses cost no thread and no connection; an attempt waits for a
        lock at most ``LOCK_PROBE``. So one locked row delays only its own webhooks.
        """
        prune = prunes_tokens(parsed)
        deadline = time.monotonic() + self.lock_wait
        pause = LOCK_RETRY_PAUSE
        while True:
            counts = await self._store_once(parsed, tenant_id, prune)
            if isinstance(counts, dict):
                return counts
            if time.monotonic() + pause > deadline:
                raise DeliveryLockedError(
                    f"a delivery this {parsed.provider} webhook updates stayed locked by another transaction "
                    f"for {self.lock_wait:g} s; nothing stored"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _store_once(self, parsed: ParsedWebhook, tenant_id: str, prune: bool) -> Outcome:
        if joins_group(parsed, prune=prune):
            counts = await self.groups.submit((parsed, tenant_id))
            if counts is not None:
                return counts
        try:
            return await self._run(self._store_alone, parsed, tenant_id, prune)
        except DeliveryLockedError:
            return BUSY

    def _store_alone(self, parsed: ParsedWebhook, tenant_id: str, prune: bool) -> dict[str, Any]:
        """:func:`.core.store_parsed` in its own transaction, once more after a connection the server dropped.

        A terminated backend (``pg_terminate_backend``, a failover, a restart)
        fails its statement, which wrote nothing, and the pool's other
        connections are as dead: the pool is replaced (connections other
        threads hold are left to them) and the webhook stored on a fresh
        connection. A database that is really gone fails that retry too: 503.
        """
        try:
            return store_parsed(self.engine(), parsed, tenant_id, prune=prune, try_group=False, lock_timeout=LOCK_PROBE)
        except (DatabaseUnavailableError, sa.exc.DBAPIError) as exc:
            if not dropped_connection(exc):
                raise
            log.info("a database connection was dropped; storing the %s webhook on a fresh one", parsed.provider)
            self.engine().dispose(close=False)
            return store_parsed(self.engine(), parsed, tenant_id, prune=prune, try_group=False, lock_timeout=LOCK_PROBE)

    async def _store_group(self, requests: Sequence[GroupRequest]) -> list[Outcome]:
        metrics.GROUP_SIZE.observe(len(requests))
        return await self._run(lambda: store_grouped(self.engine(), requests))

    async def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: func(*args, **kwargs))


def declared_length_refusal(headers: dict[str, str], limit: int) -> tuple[int, str] | None:
    """``(status, message)`` when ``Content-Length`` alone refuses the request (400 not a number, 413 too large)."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        return 400, "Content-Length is not a number"
    if int(declared) > limit:
        return 413, f"body of {declared} bytes is over the {limit}-byte limit"
    return None


#: The server ended the session (pg_terminate_backend, a shutdown): the connection was established, then dropped.
DROPPED_SQLSTATES = frozenset({"57P01", "57P02"})


def dropped_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is an established connection lost (worth one retry), not a database out of reach."""
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
    return bool(getattr(cause, "connection_invalidated", False)) or sqlstate_of(cause) in DROPPED_SQLSTATES


async def answer(send: Send, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> int:
    body = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    return await answer_raw(send, status, body, "application/json", extra)


async def answer_raw(
    send: Send, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> int:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(name.encode(), value.encode()) for name, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


def create_app() -> Receiver:
    """The application factory uvicorn imports in each worker (settings from the environment)."""
    return Receiver(
        body_timeout=SERVE_BODY_TIMEOUT.read(),
        threads=SERVE_THREADS.read(),
        lock_wait=SERVE_LOCK_WAIT.read(),
        public_metrics=SERVE_METRICS_PORT.read() is None,
        auth_failure_delay=SERVE_AUTH_FAILURE_DELAY.read(),
        delayed_failures=max(1, SERVE_LIMIT_CONCURRENCY.read() // 2),
    )
