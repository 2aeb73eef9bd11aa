"""Shared fixtures: a real PostgreSQL, one fresh migrated database per test; the test tiers.

Tiers: every test that uses a database fixture (anything built on ``admin_url``) is marked
``database`` here; tests that start processes are marked ``process`` (or ``slow``) in their module.
``pytest`` with no arguments runs the rest, the fast tier; name a path, ``-m`` or ``-k`` to choose
yourself (``python3 quickstart.py test`` runs everything).

``MAILGLASS_TEST_DATABASE_URL`` (any database on the server; the fixtures
create their own beside it) or, when unset, the embedded server that the
README's default uses. The schema is migrated once into a template
database; each test gets a copy (``CREATE DATABASE ... TEMPLATE``), so tests
are isolated from each other and from xdist workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import schema
from mailglass_pipeline.db import create_engine
from tests.databases import create_database, drop_database, server_admin_url, with_database


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


@pytest.fixture(scope="session")
def dagster_storage_template(admin_url: str, admin_engine: Engine) -> Iterator[str]:
    """A database holding Dagster's storage tables, created once: each test's storage is a copy of it."""
    from dagster import instance_for_test

    from mailglass_pipeline.dagster_devtools.dev import psycopg2_url

    name = f"mg_dagster_tpl_{uuid.uuid4().hex[:10]}"
    create_database(admin_engine, name)
    with instance_for_test(
        overrides={"storage": {"postgres": {"postgres_url": psycopg2_url(with_database(admin_url, name))}}}
    ):
        pass  # opening the instance creates run, event log and schedule storage
    yield name
    drop_database(admin_engine, name)


@pytest.fixture
def dagster_storage_url(admin_url: str, admin_engine: Engine, dagster_storage_template: str) -> Iterator[str]:
    """A database for a Dagster instance's storage (dagster-postgres's psycopg2 URL), dropped after the test."""
    from mailglass_pipeline.dagster_devtools.dev import psycopg2_url

    name = f"mg_dagster_{uuid.uuid4().hex[:10]}"
    create_database(admin_engine, name, template=dagster_storage_template)
    yield psycopg2_url(with_database(admin_url, name))
    drop_database(admin_engine, name)


# -- tiers ----------------------------------------------------------------------------------

FAST_TIER = "not database and not process and not slow"


def pytest_configure(config: pytest.Config) -> None:
    """Bare ``pytest`` (tests chosen by pyproject's testpaths, no -m or -k) runs the fast tier only."""
    if (
        config.args_source is pytest.Config.ArgsSource.TESTPATHS
        and not config.option.markexpr
        and not config.option.keyword
    ):
        config.option.markexpr = FAST_TIER


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Runs before the -m selection (pytest's own hook is trylast), so -m database works too.
    for item in items:
        if "admin_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.database)
    # Slow tests first: xdist (pyproject: loadscope, not reordered) hands modules out in this order, so the
    # end-to-end tests, which mostly wait on Dagster processes and schedule ticks, start at once beside
    # the database tests instead of running last, one after another.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# -- the embedded server: stopped again when this test session started it -------------------

_EMBEDDED_RUNNING_AT_START: bool | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _EMBEDDED_RUNNING_AT_START
    from mailglass_pipeline.dagster_devtools.dev import embedded_server_pid

    _EMBEDDED_RUNNING_AT_START = embedded_server_pid() is not None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """`python3 quickstart.py test` leaves nothing running: stop the embedded server this session started.

    Only the controlling process does it (an xdist worker finishing must not stop the server under the others).
    """
    if hasattr(session.config, "workerinput") or _EMBEDDED_RUNNING_AT_START is not False:
        return
    from mailglass_pipeline.dagster_devtools.dev import stop_embedded_server

    if stop_embedded_server() is not None:
        print("\nstopped the embedded PostgreSQL this test session started")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Each test's call report on its item (``item.rep_call``), so a fixture can tell a failure from a pass.

    The browser test saves screenshots only on failure.
    """
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
