"""Every SQL statement the package runs, by name, read from its ``.sql`` files (decision D14).

A file holds blocks, each opened by a line ``-- name: <name>`` and holding the
complete statement, exactly as PostgreSQL receives it: no splicing, no
templating. Bind parameters are ``:name``. The text before the first block is
the file's own comment. Shared rules are database functions of migration 0007
that the statements call and the planner inlines (decision D28); the three
data-modifying ones are copied, marked ``-- rule: <name>``, from their one
home ``sql/rules.sql`` and a test compares every copy with it.

Code fetches a statement with :func:`statement`; :data:`STATEMENTS` lists
them all for the tests (the plan tests explain each).
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

_BLOCK = re.compile(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", re.MULTILINE | re.DOTALL)
#: The final ';' ends a block for sqlfluff and psql (with a "-- noqa" after it); only comment lines follow.
_END = re.compile(r";[ \t]*(?:--[^\n]*)?((?:\s*--[^\n]*)*\s*)$")


def _load() -> dict[str, sa.TextClause]:
    found: dict[str, sa.TextClause] = {}
    for path in sorted(Path(__file__).parent.glob("**/sql/*.sql")):
        for name, body in _BLOCK.findall(path.read_text(encoding="utf-8")):
            if name in found:
                raise ValueError(f"{path.name}: statement {name} is defined twice")
            found[name] = sa.text(_END.sub(r"\1", body.strip()).strip())
    return found


STATEMENTS: dict[str, sa.TextClause] = _load()


def statement(name: str) -> sa.TextClause:
    """The statement ``name`` (``KeyError`` names the known ones)."""
    try:
        return STATEMENTS[name]
    except KeyError:
        raise KeyError(f"no SQL statement {name!r}; known: {', '.join(sorted(STATEMENTS))}") from None
