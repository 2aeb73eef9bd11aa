"""Alembic environment for mailglass's own schema.

Run programmatically by :func:`mailglass_pipeline.schema.upgrade`. The
version table is ``mailglass_alembic_version`` so that an application using
Alembic for its own tables in the same database keeps its ``alembic_version``.
A session-level advisory lock serialises concurrent ``mailglass migrate``
calls (Dagster processes and the CLI may all start at once); session-level
because revision 0004 works outside a transaction (autocommit blocks), which
would release a transaction-scoped lock half-way. The version table lives in
the Mailglass schema (``MAILGLASS_DB_SCHEMA``), never elsewhere.

``config.attributes["converge_unversioned"]``: set by ``schema.upgrade``. A
database without the project's version table (empty, or Mailglass's own) is
stamped at ``0003_due_orphans`` under the lock, so only 0004 runs on it (see
that revision's docstring).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import context

from mailglass_pipeline.db import create_engine, db_schema

VERSION_TABLE = "mailglass_alembic_version"
UNVERSIONED_START = "0003_due_orphans"
MIGRATION_LOCK_KEY = 0x6D61696C676C  # "mailgl": any fixed bigint shared by every migrator


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _lock(connection: sa.Connection) -> None:
    """Take the migration lock by polling: a session waiting inside pg_advisory_lock holds a snapshot,
    and the CREATE INDEX CONCURRENTLY of the migrator holding the lock would wait for it: a deadlock."""
    while True:
        got = connection.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY}).scalar()
        connection.commit()
        if got:
            return
        time.sleep(0.2)


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=db_schema(),
        target_metadata=None,
    )
    _lock(connection)
    try:
        with context.begin_transaction():
            migration = context.get_context()
            if context.config.attributes.get("converge_unversioned") and migration.get_current_revision() is None:
                migration.stamp(context.script, UNVERSIONED_START)
            context.run_migrations()
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("mailglass migrations run online only: use `mailglass migrate`")
run_migrations_online()
