"""Helpers of the core tests that watch the database talk: notifications received, statements sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.projector import NOTIFY_CHANNEL
from tests.databases import libpq_url


@contextmanager
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A separate autocommit psycopg connection LISTENing on the delivery channel."""
    conn = psycopg.connect(libpq_url(database_url), autocommit=True)
    try:
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        yield conn
    finally:
        conn.close()


def drain(conn: psycopg.Connection[Any], timeout: float = 1.0) -> list[dict[str, Any]]:
    """Every notification that arrives within ``timeout`` seconds, parsed as JSON."""
    out = []
    for note in conn.notifies(timeout=timeout):
        assert note.channel == NOTIFY_CHANNEL
        out.append(json.loads(note.payload))
    return out


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """The SQL text of every statement ``engine`` sends inside the block (to count round trips)."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
