"""Databases for tests: URLs, created beside the server's (from a migrated template or empty), dropped afterwards.

``MAILGLASS_TEST_DATABASE_URL`` (any database on the server) or, when unset, the embedded
server that the README's default uses. Used by tests/conftest.py's fixtures and by tests that
need a database shaped differently (the query-plan tests' large fixture, the schema tests' Mailglass databases).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline.db import create_engine, embedded_server_url, normalize_url

TEST_URL_ENV = "MAILGLASS_TEST_DATABASE_URL"


def server_admin_url() -> str:
    """The URL the fixtures create their databases beside."""
    url = os.environ.get(TEST_URL_ENV)
    return normalize_url(url) if url else embedded_server_url(database="postgres")


def with_database(url: str, name: str, *, user: str | None = None) -> str:
    """``url`` pointing at database ``name`` (password kept), as role ``user`` (no password) when given."""
    parsed = make_url(url).set(database=name)
    if user is not None:
        parsed = parsed.set(username=user, password=None)
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """A plain ``postgresql://`` URL for psycopg from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_engine: Engine, name: str, template: str | None = None) -> None:
    """``CREATE DATABASE name``, a copy of ``template`` when given (isolated per test).

    The server's default strategy (WAL_LOG from PostgreSQL 15 on) copies a small template about twice
    as fast as FILE_COPY, which also forces a checkpoint that every concurrent test pays for.
    """
    clause = f' TEMPLATE "{template}"' if template else ""
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))


def drop_database(admin_engine: Engine, name: str) -> None:
    """Drop ``name``, disconnecting whoever is still on it."""
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_database(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    """An empty database (no schema) for the block: its URL."""
    name = f"mg_s_{uuid.uuid4().hex[:12]}"
    create_database(admin_engine, name)
    try:
        yield with_database(admin_url, name)
    finally:
        drop_database(admin_engine, name)


@contextmanager
def login_role(database_url: str, admin_engine: Engine, prefix: str) -> Iterator[tuple[str, str]]:
    """A fresh LOGIN role with no privileges: ``(role, url)``, ``url`` being ``database_url`` as that role.

    Afterwards whatever it owns or was granted in the database is dropped, then the role.
    """
    role = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        yield role, make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)
    finally:
        owner = create_engine(database_url, poolclass=sa.pool.NullPool)
        with owner.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        owner.dispose()
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
