"""Least-privilege GRANTs for the reconciler's database role.

The reconciler runs every minute, unattended, with the ledger of every email
an operator sends: it should hold exactly what a sweep needs (SELECT/INSERT on
the ledger, SELECT/UPDATE on deliveries, the work queue) and nothing that
could destroy history (no UPDATE/DELETE/TRUNCATE on the ledger, no DDL).

The privileges live in one documented SQL file, ``sql/grants.sql``, usable
directly with ``psql -v role=NAME -f``; :func:`render_grants` substitutes the
same psql variable in Python so the CLI and the tests apply the very text an
operator reads. Nothing here creates a role: the operator owns that decision
(password, LOGIN, connection limits).
"""

from __future__ import annotations

from importlib import resources

import sqlalchemy as sa

from mailglass_pipeline.db import connect, create_engine, db_schema
from mailglass_pipeline.errors import ConfigurationError

#: The psql variables the SQL file uses for the role and the Mailglass schema, as identifiers.
ROLE_PLACEHOLDER = ':"role"'
SCHEMA_PLACEHOLDER = ':"schema"'


def grants_sql() -> str:
    """The shipped ``grants.sql``, unrendered (with the psql variable)."""
    return resources.files("mailglass_pipeline").joinpath("sql/grants.sql").read_text(encoding="utf-8")


def quote_identifier(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier: any role name, no injection."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError("role must be a non-empty string")
    if "\x00" in name:
        raise ConfigurationError("role must not contain NUL characters")
    if len(name.encode("utf-8")) > 63:
        # PostgreSQL would silently truncate it and grant to another role.
        raise ConfigurationError("role name longer than 63 bytes")
    return '"' + name.replace('"', '""') + '"'


def render_grants(role: str, schema: str | None = None) -> str:
    """``grants.sql`` with ``role`` and the schema (``MAILGLASS_DB_SCHEMA``) substituted as quoted identifiers."""
    quoted_schema = quote_identifier(schema or db_schema())
    return grants_sql().replace(SCHEMA_PLACEHOLDER, quoted_schema).replace(ROLE_PLACEHOLDER, quote_identifier(role))


def statements(role: str, schema: str | None = None) -> list[str]:
    """The rendered file split into statements (comments dropped).

    Split before substituting: a role name may itself contain ``;``.
    """
    quoted = quote_identifier(role)
    quoted_schema = quote_identifier(schema or db_schema())
    body = "\n".join(line for line in grants_sql().splitlines() if not line.lstrip().startswith("--"))
    return [
        s.strip().replace(SCHEMA_PLACEHOLDER, quoted_schema).replace(ROLE_PLACEHOLDER, quoted)
        for s in body.split(";")
        if s.strip()
    ]


def apply_grants(url: str, role: str) -> list[str]:
    """Run the rendered GRANTs against ``url`` (as the schema owner) in one transaction.

    All or nothing: a missing role or table rolls every statement back.
    Returns the statements executed.
    """
    todo = statements(role)
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with connect(engine) as conn, conn.begin():
            for statement in todo:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
    return todo
