"""Alembic environment for mailglass's own schema.

Run programmatically by :func:`mailglass_pipeline.schema.upgrade`. The
version table is ``mailglass_alembic_version`` so that an application using
Alembic for its own tables in the same database keeps its ``alembic_version``.
A transaction-scoped advisory lock serialises concurrent ``mailglass migrate``
calls (Dagster processes and the CLI may all start at once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

VERSION_TABLE = "mailglass_alembic_version"
MIGRATION_LOCK_KEY = 0x6D61696C676C  # "mailgl": any fixed bigint shared by every migrator


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE, target_metadata=None)
    with context.begin_transaction():
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("mailglass migrations run online only: use `mailglass migrate`")
run_migrations_online()
