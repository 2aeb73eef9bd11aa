"""``GET /healthz``: the database answers and its schema is at this code's head revision.

A receiver whose database is down, or migrated to another version, must be
taken out of the load balancer (readiness) rather than answer providers with
errors, so the check runs a real query on the same pool the ingest uses. The
public body says only ``unavailable``; why (the database's address, the
driver's error) goes to the log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import sqlalchemy as sa

from mailglass_pipeline.db import first_line, get_engine
from mailglass_pipeline.errors import MailglassError
from mailglass_pipeline.queries import statement

log = logging.getLogger(__name__)


@functools.cache
def head() -> str:
    from mailglass_pipeline.schema import head_revision  # Alembic's script scan: once per process

    return head_revision()


def check_health(database_url: str | None = None) -> tuple[bool, dict[str, Any]]:
    """``(healthy, payload)``; never raises for a database problem."""
    expected = head()
    try:
        with get_engine(database_url).connect() as conn:
            revisions = [row[0] for row in conn.execute(statement("schema_revision"))]
    except (MailglassError, sa.exc.SQLAlchemyError) as exc:
        # The database's address and the driver's words are for the operator's log, not the public body.
        orig = getattr(exc, "orig", None) or exc
        log.warning("health check: database unreachable or unusable: %s", first_line(orig))
        return False, {"status": "unavailable", "database": "unavailable"}
    if revisions != [expected]:
        return False, {"status": "unavailable", "database": "ok", "schema": revisions, "expected_schema": expected}
    return True, {"status": "ok", "database": "ok", "schema": expected}
