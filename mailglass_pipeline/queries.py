"""The one registry of named SQL statements, kept as ``.sql`` files inside the package.

SQL reads best as SQL: one file per feature, one commented block per statement,
each opened by a line ``-- name: <name>``. The comment lines after it say what
the statement is for; they stay in the text (PostgreSQL ignores them, and a
``pg_stat_statements`` reader sees them).

Shared pieces of SQL are *fragments*: a block opened by ``-- fragment: <name>``
(or ``-- fragment: <name>(<param>, ...)``), spliced where a statement or another
fragment writes ``{name}`` (or ``{name(arg, ...)}``, arguments being SQL
identifiers only). The set of fragments is closed: those of the package's files
plus the few the caller passes in (SQL whose one home is a Python module, e.g.
the projection rules, or another package's fragments: :func:`fragments`); an
unknown name fails when the module loads, never at run time. Splicing happens
once, at import; values are always bind parameters (``:name``), never text in
the statement. A variant (one tenant or all, a state) is a bound value too,
which the custom plan the callers ask for folds to a constant (statement
``custom_plans``).

:func:`register` loads a package's ``sql/*.sql`` and registers its statements;
:func:`statement` and :func:`statements` read them (the plan tests iterate over
every registered statement).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

import sqlalchemy as sa

_BLOCK = re.compile(r"^-- (name|fragment): (\w+)(?:\(([\w\s,]*)\))?\s*$", re.MULTILINE)
_SPLICE = re.compile(r"\{(\w+)(?:\(([\w\s,]*)\))?\}")
_END = re.compile(r";[ \t]*(--[^\n]*)?$")
_COMMENT_LINE = re.compile(r"^\s*--.*$\n?", re.MULTILINE)
_BIND_IN_COMMENT = re.compile(r"(?<![:\w]):\w")

_STATEMENTS: dict[str, sa.TextClause] = {}
#: The fragments each package's registration spliced from (another package may share them).
_FRAGMENTS: dict[str, dict[str, Fragment]] = {}


@dataclass(frozen=True)
class Fragment:
    """A named piece of SQL and the identifiers it takes."""

    name: str
    params: tuple[str, ...]
    text: str


def _args(raw: str | None) -> tuple[str, ...]:
    return tuple(a.strip() for a in raw.split(",")) if raw and raw.strip() else ()


def _parse(where: str, text: str) -> tuple[dict[str, Fragment], dict[str, str]]:
    fragments: dict[str, Fragment] = {}
    statements: dict[str, str] = {}
    parts = _BLOCK.split(text)  # header, then (kind, name, params, body) per block
    for kind, name, params, body in zip(parts[1::4], parts[2::4], parts[3::4], parts[4::4], strict=True):
        if name in fragments or name in statements:
            raise ValueError(f"{where}: {name} is defined twice")
        if kind == "fragment":
            # A fragment is spliced mid-line: its comment lines (its documentation) stay in the file.
            sql = _COMMENT_LINE.sub("", body).strip()
            if "--" in sql:
                raise ValueError(f"{where}: fragment {name}: a comment inside a fragment would swallow its line")
            fragments[name] = Fragment(name, _args(params), sql)
        else:
            if params:
                raise ValueError(f"{where}: statement {name} takes no parameters")
            # The ';' (and a sqlfluff "-- noqa" after it) ends the block for sqlfluff only.
            statements[name] = _END.sub("", body.strip())
            for line in _COMMENT_LINE.findall(body):
                if _BIND_IN_COMMENT.search(line):
                    # SQLAlchemy reads :name in a comment as a bind parameter the caller must supply.
                    raise ValueError(f"{where}: statement {name}: write parameters without ':' in comments")
    return fragments, statements


def splice(text: str, fragments: Mapping[str, Fragment], where: str, bound: Mapping[str, str] | None = None) -> str:
    """``text`` with every ``{name}`` / ``{name(args)}`` replaced; ``ValueError`` for a name not in the set."""
    bound = bound or {}

    def one(match: re.Match[str]) -> str:
        name, args = match.group(1), _args(match.group(2))
        if name in bound and not args:
            return bound[name]
        fragment = fragments.get(name)
        if fragment is None:
            raise ValueError(f"{where}: unknown fragment {{{name}}} (known: {', '.join(sorted(fragments))})")
        if len(args) != len(fragment.params):
            raise ValueError(f"{where}: {{{name}}} takes {len(fragment.params)} identifiers, got {len(args)}")
        inner = dict(zip(fragment.params, (bound.get(a, a) for a in args), strict=True))
        return splice(fragment.text, fragments, f"{where} > {name}", inner)

    return _SPLICE.sub(one, text)


def register(
    package: str, extra: Mapping[str, str | Fragment] | None = None, *, files: Iterable[str] | None = None
) -> dict[str, sa.TextClause]:
    """Load ``<package>/sql/*.sql`` (or only ``files`` there), splice its fragments and ``extra``,
    register and return its statements."""
    sql_dir = resources.files(package).joinpath("sql")
    names = sorted(f.name for f in sql_dir.iterdir() if f.name.endswith(".sql")) if files is None else list(files)
    fragments = {
        name: sql if isinstance(sql, Fragment) else Fragment(name, (), sql) for name, sql in (extra or {}).items()
    }
    raw: dict[str, tuple[str, str]] = {}
    for filename in names:
        where = f"{package}/sql/{filename}"
        found, statements = _parse(where, sql_dir.joinpath(filename).read_text(encoding="utf-8"))
        for name in [*found, *statements]:
            if name in fragments or name in raw:
                raise ValueError(f"{where}: {name} is defined twice")
        fragments.update(found)
        raw.update({name: (where, sql) for name, sql in statements.items()})
    for fragment in fragments.values():  # every fragment is checked, used or not
        splice(fragment.text, fragments, fragment.name, dict.fromkeys(fragment.params, "x"))
    clauses = {name: sa.text(splice(sql, fragments, f"{where}: {name}")) for name, (where, sql) in raw.items()}
    clash = {n for n, c in clauses.items() if n in _STATEMENTS and _STATEMENTS[n].text != c.text}
    if clash:
        raise ValueError(f"{package}: statement names already registered: {sorted(clash)}")
    _STATEMENTS.update(clauses)
    _FRAGMENTS.setdefault(package, {}).update(fragments)
    return clauses


def fragments(package: str) -> dict[str, Fragment]:
    """The fragments ``package``'s registration spliced from, to pass as another's ``extra``."""
    try:
        return dict(_FRAGMENTS[package])
    except KeyError:
        raise KeyError(f"{package} has registered no SQL yet (import it first)") from None


def statement(name: str) -> sa.TextClause:
    """The registered statement ``name`` (``KeyError`` names the known ones)."""
    try:
        return _STATEMENTS[name]
    except KeyError:
        raise KeyError(f"no SQL statement {name!r}; registered: {', '.join(sorted(_STATEMENTS))}") from None


def statements() -> dict[str, sa.TextClause]:
    """Every registered statement by name (import the modules that register them first)."""
    return dict(_STATEMENTS)
