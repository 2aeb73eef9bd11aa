"""Catalog changes on a live database: short lock waits, retried; indexes built without blocking writers.

Why: a migration that queues for an ``ACCESS EXCLUSIVE`` lock behind a long transaction makes every
writer queue behind it, so a Mailglass app sharing the database would stall. Each change here waits
at most ``LOCK_TIMEOUT`` for its lock (the caller sets it on the session) and is retried, so a writer
never waits longer than that; an index is built ``CONCURRENTLY`` and a failed build (left invalid) is
dropped and built again. Used by revision ``0004_mailglass_schema``; the session must be in autocommit
(``CONCURRENTLY`` cannot run in a transaction).
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from mailglass_pipeline.migrations.mailglass_ddl import quote_ident

LOCK_TIMEOUT = "300ms"
LOCK_ATTEMPTS = 200


def execute(conn: sa.Connection, sql: str, **params: object) -> sa.CursorResult:
    return conn.execute(sa.text(sql), params) if params else conn.exec_driver_sql(sql)


def ddl(conn: sa.Connection, sql: str) -> None:
    """Run one catalog change, waiting at most LOCK_TIMEOUT per try for its lock (writers never queue longer)."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            conn.exec_driver_sql(sql)
            return
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03" or attempt == LOCK_ATTEMPTS - 1:
                raise
            time.sleep(min(0.05 * (attempt + 1), 1.0))


def scalar(conn: sa.Connection, sql: str, **params: object) -> object:
    return conn.execute(sa.text(sql), params).scalar()


def has_table(conn: sa.Connection, schema: str, table: str) -> bool:
    return bool(scalar(conn, "SELECT to_regclass(:n) IS NOT NULL", n=f"{quote_ident(schema)}.{table}"))


def index_state(conn: sa.Connection, schema: str, name: str) -> bool | None:
    """None when absent, else whether the index is valid (a failed CONCURRENTLY build leaves it invalid)."""
    return conn.execute(
        sa.text(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = :n"
        ),
        {"s": schema, "n": name},
    ).scalar()


def create_index_concurrently(conn: sa.Connection, schema: str, name: str, sql: str) -> None:
    state = index_state(conn, schema, name)
    if state is True:
        return
    if state is False:
        conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(schema)}.{name}")
    conn.exec_driver_sql(sql)
