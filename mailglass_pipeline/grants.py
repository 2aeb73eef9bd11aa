"""Least-privilege GRANTs for the reconciler's and the webhook receiver's database roles.

The reconciler runs every minute, unattended, with the ledger of every email
an operator sends: it should hold exactly what a sweep needs (SELECT/INSERT on
the ledger, SELECT/UPDATE on deliveries, the work queue) and nothing that
could destroy history (no UPDATE/DELETE/TRUNCATE on the ledger, no DDL).

The webhook receiver (``mailglass serve``) faces the open internet, so it gets
less still: what storing a webhook needs (``sql/grants_receiver.sql``), no
read of the ledger's payloads, and nothing that changes a stored event.

Each role's privileges live in one documented SQL file, ``sql/grants.sql`` (the reconciler)
or ``sql/grants_receiver.sql`` (the receiver), usable
directly with ``psql -v role=NAME -f``; :func:`render_grants` substitutes the
same psql variables in Python (the role, and the schema: ``MAILGLASS_DB_SCHEMA``,
where Mailglass was installed under a prefix) so the CLI and the tests apply
the very text an operator reads. Nothing here creates a role: the operator owns that decision
(password, LOGIN, connection limits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import sqlalchemy as sa

from mailglass_pipeline.db import connect, create_engine, db_schema
from mailglass_pipeline.errors import ConfigurationError

#: The psql variables the SQL file uses for the role and the Mailglass schema, as identifiers.
ROLE_PLACEHOLDER = ':"role"'
SCHEMA_PLACEHOLDER = ':"schema"'


#: Which SQL file holds each service's grants (``mailglass grants --for``).
GRANT_FILES = {"reconciler": "sql/grants.sql", "receiver": "sql/grants_receiver.sql"}


def grants_sql(service: str = "reconciler") -> str:
    """The shipped grants file of ``service``, unrendered (with the psql variables)."""
    if service not in GRANT_FILES:
        raise ConfigurationError(f"no grants for {service!r}; expected one of {', '.join(GRANT_FILES)}")
    return resources.files("mailglass_pipeline").joinpath(GRANT_FILES[service]).read_text(encoding="utf-8")


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


def render_grants(role: str, *, service: str = "reconciler") -> str:
    """``service``'s grants file with ``role`` and the schema (``MAILGLASS_DB_SCHEMA``) as quoted identifiers."""
    quoted_schema = quote_identifier(db_schema())
    return (
        grants_sql(service).replace(SCHEMA_PLACEHOLDER, quoted_schema).replace(ROLE_PLACEHOLDER, quote_identifier(role))
    )


def statements(role: str, schema: str | None = None, *, service: str = "reconciler") -> list[str]:
    """The rendered file split into statements (comments dropped).

    Split before substituting: a role name may itself contain ``;``.
    """
    quoted = quote_identifier(role)
    quoted_schema = quote_identifier(schema or db_schema())
    body = "\n".join(line for line in grants_sql(service).splitlines() if not line.lstrip().startswith("--"))
    return [
        s.strip().replace(SCHEMA_PLACEHOLDER, quoted_schema).replace(ROLE_PLACEHOLDER, quoted)
        for s in body.split(";")
        if s.strip()
    ]


def apply_grants(url: str, role: str, *, service: str = "reconciler") -> list[str]:
    """Run the rendered GRANTs against ``url`` (as the schema owner) in one transaction.

    All or nothing: a missing role or table rolls every statement back.
    Returns the statements executed.
    """
    todo = statements(role, service=service)
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with connect(engine) as conn, conn.begin():
            for statement in todo:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
    return todo


@dataclass(frozen=True)
class ExpectedPrivileges:
    """What a service's grants file leaves its role with (``mailglass doctor`` checks a live role against it)."""

    #: (kind, object, privilege): kind is table, column (object ``table#column``), schema or function.
    privileges: list[tuple[str, str, str]]
    #: The tables the file revokes everything on first, each with the table privileges it grants back.
    revoked: dict[str, set[str]]


_REVOKE = re.compile(r"REVOKE ALL ON TABLE (?P<targets>.+?) FROM ", re.S)
_GRANT = re.compile(r"GRANT (?P<privileges>.+?) ON (?P<kind>TABLE|SCHEMA|FUNCTION) (?P<target>.+?) TO ", re.S)
_COLUMNS = re.compile(r"(?P<privilege>\w+)\s*\((?P<columns>[^)]*)\)", re.S)


def _table(target: str) -> str:
    return target.strip().rsplit(".", 1)[-1]


def expected_privileges(role: str, schema: str | None = None, *, service: str = "reconciler") -> ExpectedPrivileges:
    """The privileges ``service``'s grants file gives ``role``, read from the very statements it runs."""
    privileges: list[tuple[str, str, str]] = []
    revoked: list[str] = []
    granted: dict[str, set[str]] = {}
    for statement in statements(role, schema, service=service):
        if found := _REVOKE.match(statement):
            revoked += [_table(t) for t in found["targets"].split(",")]
        elif found := _GRANT.match(statement):
            kind, target = found["kind"].lower(), found["target"].strip()
            if kind == "schema":  # has_schema_privilege takes the name itself, not an identifier
                target = target[1:-1].replace('""', '"')
            if columns := _COLUMNS.fullmatch(found["privileges"].strip()):
                privileges += [
                    ("column", f"{target}#{c.strip()}", columns["privilege"]) for c in columns["columns"].split(",")
                ]
                continue
            for privilege in (p.strip() for p in found["privileges"].split(",")):
                privileges.append((kind, target, privilege))
                if kind == "table":
                    granted.setdefault(_table(target), set()).add(privilege)
    return ExpectedPrivileges(privileges, {table: granted.get(table, set()) for table in revoked})
