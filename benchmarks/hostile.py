"""Hostile clients and the probe-style bound for :mod:`benchmarks.receiver` (issue 25).

- :func:`hold_idle`: sockets that connect and send nothing (re-opened when the receiver closes them);
- :func:`hold_header_stalled`: sockets that send half a header block and stall;
- :func:`post_forged`: clients posting forged ~0.94 MiB Mailgun bodies back to back, at full speed;
- :func:`hold_slow_clients`: requests stalled mid-body (re-opened when cut off with 408); Mailgun's, whose
  signature is inside the body, so the receiver must wait for it (headers that show a forgery get 401 at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from typing import Any

IDLE_CLIENTS = 2000
HEADER_STALLED_CLIENTS = 200
FORGED_CLIENTS = 4


def forged_mailgun_body() -> bytes:
    """About 0.94 MiB of tiny objects (the costliest shape to parse) and a signature block that does not verify."""
    objects = b",".join([b'{"a":1}'] * 123_000)
    block = b'"signature": {"timestamp": "1700000000", "token": "forged", "signature": "00"}'
    return b'{"event-data": {"items": [' + objects + b"]}, " + block + b"}"


async def _hold(port: int, count: int, stop: asyncio.Event, ready: asyncio.Event, greeting: bytes) -> int:
    """Keep ``count`` sockets open (each sending ``greeting``), re-opening closed ones; returns the closes seen."""
    closed = 0
    opened = 0

    async def one() -> None:
        nonlocal closed, opened
        first = True
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            if greeting:
                writer.write(greeting)
            if first:
                opened += 1
                first = False
                if opened == count:
                    ready.set()
            read = asyncio.ensure_future(reader.read(100))
            halt = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({read, halt}, return_when=asyncio.FIRST_COMPLETED)
            if read in done:
                closed += 1
            read.cancel()
            halt.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(count)))
    return closed


async def hold_idle(port: int, stop: asyncio.Event, ready: asyncio.Event) -> int:
    return await _hold(port, IDLE_CLIENTS, stop, ready, b"")


async def hold_header_stalled(port: int, stop: asyncio.Event, ready: asyncio.Event) -> int:
    return await _hold(port, HEADER_STALLED_CLIENTS, stop, ready, b"POST /postmark/stalled HTTP/1.1\r\nHost: b\r\n")


async def post_forged(port: int, stop: asyncio.Event, ready: asyncio.Event) -> int:
    """:data:`FORGED_CLIENTS` clients posting forged bodies until ``stop``; returns how many were refused."""
    body = forged_mailgun_body()
    request = (
        f"POST /mailgun/forged HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        "\r\n\r\n"
    ).encode() + body
    refused = 0

    async def one() -> None:
        nonlocal refused
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ready.set()
        while not stop.is_set():
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            refused += head.startswith(b"HTTP/1.1 401")
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    await asyncio.gather(*(one() for _ in range(FORGED_CLIENTS)))
    return refused


async def hold_slow_clients(port: int, count: int, stop: asyncio.Event) -> int:
    """Keep ``count`` connections stalled mid-body until ``stop``; returns how many 408s came back."""
    cut_off = 0

    async def one(index: int) -> None:
        nonlocal cut_off
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST /mailgun/slow-{index} HTTP/1.1\r\nHost: b\r\nContent-Length: 9000\r\n\r\n[{{".encode())
            await writer.drain()
            read = asyncio.ensure_future(reader.read(100))
            halt = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({read, halt}, return_when=asyncio.FIRST_COMPLETED)
            if read in done and read.result().startswith(b"HTTP/1.1 408"):
                cut_off += 1
            read.cancel()
            halt.cancel()
            writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return cut_off


def forged_summary(alone: list[dict[str, Any]], beside: list[tuple[dict[str, Any], int]]) -> str:
    """Signed throughput alone and beside the forged clients (medians over rounds), their ratio, the forgeries' rate."""
    ratios = [b["req_s"] / a["req_s"] for a, (b, _) in zip(alone, beside, strict=True)]
    signed_alone = statistics.median(a["req_s"] for a in alone)
    signed_beside = statistics.median(b["req_s"] for b, _ in beside)
    refused = statistics.median(count / b["seconds"] for b, count in beside)
    return (
        f"forged bodies (goal: ratio >= 0.80): signed alone {signed_alone:.0f} req/s, beside {FORGED_CLIENTS} forged "
        f"clients {signed_beside:.0f} req/s (medians); ratio {statistics.median(ratios):.2f} (median round; all: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); forged bodies refused {refused:.1f}/s"
    )
