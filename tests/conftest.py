"""Shared fixtures: a real PostgreSQL, one fresh migrated database per test.

``MAILGLASS_TEST_DATABASE_URL`` (any database on the server; the fixtures
create their own beside it) or, when unset, the embedded server that the
README's default uses. The schema is migrated once into a template
database; each test gets a copy (``CREATE DATABASE ... TEMPLATE``), so tests
are isolated from each other and from xdist workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from database_support import create_database, drop_database, server_admin_url, with_database
from sqlalchemy.engine import Engine

from mailglass_pipeline import deliveries, ledger, schema
from mailglass_pipeline.db import create_engine


@pytest.fixture(scope="session")
def admin_url() -> str:
    return server_admin_url()


@pytest.fixture(scope="session")
def admin_engine(admin_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def template_database(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    name = f"mg_tpl_{uuid.uuid4().hex[:10]}"
    create_database(admin_engine, name)
    schema.upgrade(with_database(admin_url, name))
    yield name
    drop_database(admin_engine, name)


@pytest.fixture
def blank_database_url(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    """An empty database (no schema): for migration tests."""
    name = f"mg_t_{uuid.uuid4().hex[:12]}"
    create_database(admin_engine, name)
    yield with_database(admin_url, name)
    drop_database(admin_engine, name)


@pytest.fixture
def database_url(admin_url: str, admin_engine: Engine, template_database: str) -> Iterator[str]:
    """A fresh database at the schema's head revision, dropped after the test."""
    name = f"mg_t_{uuid.uuid4().hex[:12]}"
    create_database(admin_engine, name, template=template_database)
    yield with_database(admin_url, name)
    drop_database(admin_engine, name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


# -- data builders shared by the tests -------------------------------------------------

NOW = datetime.now(UTC)


def make_delivery(
    engine: Engine, tenant_id: str, message_id: str | None, provider: str = "postmark", **kwargs: Any
) -> uuid.UUID:
    kwargs.setdefault("last_event_at", datetime.now(UTC) - timedelta(hours=1))
    with engine.begin() as conn:
        return deliveries.create(conn, tenant_id=tenant_id, provider=provider, provider_message_id=message_id, **kwargs)


def make_orphan(
    engine: Engine,
    tenant_id: str,
    message_id: str | None,
    *,
    provider: str | None = "postmark",
    event_type: str = "delivered",
    age: timedelta = timedelta(minutes=5),
    occurred_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    normalized_payload: dict[str, Any] | None = None,
) -> uuid.UUID:
    """An orphan inserted ``age`` ago, with Mailglass-compatible metadata unless given."""
    inserted_at = datetime.now(UTC) - age
    if metadata is None:
        metadata = {"provider_event_id": f"evt-{uuid.uuid4().hex[:8]}"}
        if provider is not None:
            metadata["provider"] = provider
        if message_id is not None:
            metadata["provider_message_id"] = message_id
    event = ledger.NewEvent(
        tenant_id=tenant_id,
        type=event_type,
        occurred_at=occurred_at or inserted_at,
        inserted_at=inserted_at,
        idempotency_key=f"test:{uuid.uuid4()}",
        metadata=metadata,
        normalized_payload=normalized_payload or {},
        needs_reconciliation=True,
    )
    with engine.begin() as conn:
        ledger.append_events(conn, [event])
    return event.id


def fetch(engine: Engine, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


# -- the embedded server: stopped again when this test session started it -------------------

_EMBEDDED_RUNNING_AT_START: bool | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _EMBEDDED_RUNNING_AT_START
    from mailglass_pipeline.devtools.dev import embedded_server_pid

    _EMBEDDED_RUNNING_AT_START = embedded_server_pid() is not None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """`python3 quickstart.py test` leaves nothing running: stop the embedded server this session started.

    Only the controlling process does it (an xdist worker finishing must not stop the server under the others).
    """
    if hasattr(session.config, "workerinput") or _EMBEDDED_RUNNING_AT_START is not False:
        return
    from mailglass_pipeline.devtools.dev import stop_embedded_server

    if stop_embedded_server() is not None:
        print("\nstopped the embedded PostgreSQL this test session started")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each test's call report on its item (``item.rep_call``), so a fixture can tell a failure from a pass.

    The browser test saves screenshots only on failure. It lives here, in the one conftest: a second
    ``conftest.py`` would shadow this module for the tests that ``from conftest import ...``.
    """
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
