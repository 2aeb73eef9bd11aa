"""The database resource: one SQLAlchemy engine per run (or sensor/schedule tick).

The URL follows the core's resolution order (``mailglass_pipeline.db``): the
configured value, else ``MAILGLASS_DATABASE_URL``, else the embedded server.
The code location binds ``EnvVar("MAILGLASS_DATABASE_URL")`` when that variable
is set, so the UI shows where runs write; Dagster refuses an unset ``EnvVar``,
which is why the embedded default is expressed as "no value" rather than as an
``EnvVar`` with a fallback.

The engine is created on first use and disposed when the run or tick ends. It
uses no pool: a run opens three or four short connections and a sensor tick
one, so pooling saves nothing, while a pool that outlived a tick would hold
connections open in the long-lived code server between ticks.
"""

from __future__ import annotations

import sqlalchemy as sa
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from mailglass_pipeline import db, settings


class MailglassDatabase(ConfigurableResource):
    """The application database holding the ``mailglass_*`` tables."""

    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the application database. Unset: MAILGLASS_DATABASE_URL, "
            "else the embedded PostgreSQL under .mailglass/."
        ),
    )

    _engine: Engine | None = PrivateAttr(default=None)

    def resolved_url(self) -> str:
        """The URL runs will use (starts the embedded server when nothing is configured)."""
        return db.resolve_database_url(self.database_url)

    def get_engine(self) -> Engine:
        """The engine this resource owns, created on first use."""
        if self._engine is None:
            self._engine = db.create_engine(self.resolved_url(), poolclass=sa.pool.NullPool)
        return self._engine

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def default_database_resource() -> MailglassDatabase:
    """The resource bound in the code location: ``EnvVar`` when set, the core's default otherwise."""
    if settings.DATABASE_URL.read():
        return MailglassDatabase(database_url=EnvVar(settings.DATABASE_URL.env))
    return MailglassDatabase()
