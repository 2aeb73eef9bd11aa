"""Schema management: Alembic migrations shipped inside the package.

``upgrade`` is what ``mailglass migrate`` runs. The migration scripts live in
``mailglass_pipeline/migrations`` so an installed wheel can migrate without
the source tree; the Alembic configuration is built here in code for the same
reason (no alembic.ini to find on disk).
"""

from __future__ import annotations

import threading

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from mailglass_pipeline.db import connect, create_engine

VERSION_TABLE = "mailglass_alembic_version"

#: Alembic's ``context``/``op`` proxies are module globals, so two ``command.upgrade`` calls running
#: in threads of one process clobber each other (KeyError: 'config'). Serialise them here; across
#: processes the advisory lock taken in ``migrations/env.py`` does the same job.
_UPGRADE_LOCK = threading.Lock()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "mailglass_pipeline:migrations")
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://"))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with connect(engine) as conn:
            return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the schema to head; returns (revision before, revision after). Idempotent."""
    with _UPGRADE_LOCK:
        before = current_revision(url)
        engine = create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with connect(engine) as conn:
                config = alembic_config(url)
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
        finally:
            engine.dispose()
    return before, head_revision()
