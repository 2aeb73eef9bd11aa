"""The receiver's HTTP protocol: uvicorn's httptools protocol with a bounded cost per connection.

uvicorn (0.55) bounds neither the size nor the time of a request's headers
with httptools (a 64 MiB header is read in full, and httptools joins its
pieces quadratically), never closes a connection that connects and sends
nothing, and its ``limit_concurrency`` counts *connections*: a few thousand
idle sockets make it refuse everyone, ``/healthz`` included, with a plain-text
503. This subclass keeps uvicorn's parsing and request cycle and adds, per
worker (decision D24):

- **header bytes**: more than ``max_header_bytes`` received before the headers
  end -> 431 (JSON), the rest of the upload discarded, the connection closed;
- **header deadline**: the headers must be complete within ``header_timeout``
  of the connection (or of the next request's first byte): else 408 (JSON), or
  a silent close when nothing was sent; idle keep-alive stays uvicorn's 5 s;
- **connections**: at ``max_connections`` open sockets a new one closes the
  longest-waiting *idle* one (no request in progress): a flood of hostile
  sockets displaces only other idle sockets, never a request being served;
- **requests in progress**: beyond ``limit_concurrency`` a request gets 503
  JSON with ``Retry-After`` (uvicorn's own limit is off: it counts sockets);
- a request that is not HTTP gets a JSON 400, not uvicorn's text;
- an answer that closes the connection before the request's body has arrived
  (413 from ``Content-Length``, a 401 from the headers) is followed by a
  half-close and the rest of the body dropped unparsed for a moment, so the
  client reads the answer instead of a reset.

Each refusal is counted in ``mailglass_webhook_refused_total{reason}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from itertools import islice
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mailglass_pipeline.ingest import metrics
from mailglass_pipeline.ingest.errors import RETRY_AFTER
from mailglass_pipeline.settings import (
    SERVE_HEADER_TIMEOUT,
    SERVE_LIMIT_CONCURRENCY,
    SERVE_MAX_CONNECTIONS,
    SERVE_MAX_HEADER_BYTES,
)

#: Seconds the rest of a refused upload is read and dropped before closing, so the client reads the
#: answer (closing with unread bytes makes the kernel send a reset that can destroy the answer).
LINGER_SECONDS = 2.0
#: Longest-waiting connections examined for an idle one to close (a request in progress is skipped).
EVICTION_SCAN = 64
REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Busy"}


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    header_timeout: float
    max_connections: int
    limit_concurrency: int


@functools.cache
def limits() -> Limits:
    """This worker's limits, from the variables ``mailglass serve`` sets (read once per process)."""
    return Limits(
        max_header_bytes=SERVE_MAX_HEADER_BYTES.read(),
        header_timeout=SERVE_HEADER_TIMEOUT.read(),
        max_connections=SERVE_MAX_CONNECTIONS.read(),
        limit_concurrency=SERVE_LIMIT_CONCURRENCY.read(),
    )


def json_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def raw_response(status: int, message: str, *, retry_after: bool = False) -> bytes:
    """A whole HTTP/1.1 answer written straight to the socket (no ASGI cycle exists for it)."""
    body = json_body(message)
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after:
        head.append(f"retry-after: {RETRY_AFTER}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def refusal_app(status: int, message: str, *, retry_after: bool = False) -> Any:
    """An ASGI app answering ``status`` with a JSON error and closing (the body is not read)."""
    body = json_body(message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    if retry_after:
        headers.append((b"retry-after", RETRY_AFTER.encode()))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


BUSY = refusal_app(503, "receiver busy: too many requests in progress; retry later", retry_after=True)

#: Connections waiting for a request's headers (idle ones included), oldest first: the eviction order.
_WAITING: dict[GuardedProtocol, None] = {}


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, a header deadline and idle-first eviction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits()
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting = False
        self._lingering = False

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not _evict_idle():
            self.transport = transport
            metrics.REFUSED.labels("connections").inc()
            transport.write(raw_response(503, "receiver busy: too many connections; retry later", retry_after=True))
            transport.close()
            return
        super().connection_made(transport)
        self._start_waiting()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self.flow is None:  # refused in connection_made: uvicorn never set it up
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused upload: dropped unparsed
        if self._waiting:
            self._header_bytes += len(data)
            if self._header_timer is None:
                self._arm_header_timer()
        super().data_received(data)
        if self._waiting and self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            metrics.REFUSED.labels("headers_too_large").inc()
            self._refuse(431, f"request headers over {self.limits.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        """Not HTTP at all (the parser gave up): a JSON 400 instead of uvicorn's text."""
        metrics.REFUSED.labels("not_http").inc()
        self._refuse(400, "not a valid HTTP/1.1 request")

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._waiting:  # a pipelined request behind one in progress
            self._start_waiting()
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        refusal = None
        if size > self.limits.max_header_bytes:
            metrics.REFUSED.labels("headers_too_large").inc()
            refusal = refusal_app(431, f"request headers over {self.limits.max_header_bytes} bytes")
        elif len(self.tasks) >= self.limits.limit_concurrency:
            metrics.REFUSED.labels("busy").inc()
            refusal = BUSY
        if refusal is None:
            super().on_headers_complete()
            if self.cycle is not None:
                self.cycle.transport = _ClosingAfterBody(self, self.cycle)  # type: ignore[assignment]
            return
        app, self.app = self.app, refusal
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._lingering:
            self._start_waiting()  # idle now: uvicorn's keep-alive timer runs; the header timer starts with data

    # -- helpers ------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        self._waiting = True
        self._header_bytes = 0
        _WAITING.pop(self, None)
        _WAITING[self] = None

    def _stop_waiting(self) -> None:
        self._waiting = False
        _WAITING.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_deadline)

    def _in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._waiting:
            return
        if self._in_progress():  # a pipelined request stalled behind one in progress: close after it
            self.cycle.keep_alive = False
            return
        if self._header_bytes:
            metrics.REFUSED.labels("header_timeout").inc()
            self._refuse(408, f"request headers not received within {self.limits.header_timeout:g} s")
        else:
            metrics.REFUSED.labels("idle").inc()
            self._stop_waiting()
            self.transport.close()

    def evict(self) -> None:
        metrics.REFUSED.labels("evicted").inc()
        self._stop_waiting()
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` now, then drop whatever else arrives for a moment and close."""
        self._stop_waiting()
        self._unset_keepalive_if_required()
        self.transport.write(raw_response(status, message))
        self._linger()

    def close_after_answer(self, cycle: Any) -> None:
        """The app's answer closes the connection: at once, or lingering while the request body still arrives."""
        if cycle.more_body and not cycle.disconnected and not self.transport.is_closing():
            self.flow.resume_reading()  # paused when the unread body filled uvicorn's buffer
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Half-close, drop whatever else arrives unparsed for :data:`LINGER_SECONDS`, then close."""
        self._lingering = True
        try:
            self.transport.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            self.transport.close()
            return
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


class _ClosingAfterBody:
    """The transport as one request's cycle sees it: its ``close`` lets an unread body drain first."""

    def __init__(self, protocol: GuardedProtocol, cycle: Any) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._transport = protocol.transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_after_answer(self._cycle)


def _evict_idle() -> bool:
    """Close the longest-waiting connection with no request in progress; False if none was found."""
    for protocol in list(islice(_WAITING, EVICTION_SCAN)):
        if not protocol._in_progress() and not protocol.transport.is_closing():
            protocol.evict()
            return True
    return False
