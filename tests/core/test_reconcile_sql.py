"""The statements as files: loaded whole by name, linted, and every copy of a shared rule equal to its one home.

No database: these run in the fast tier.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from mailglass_pipeline import orphans, projector, queries, settings
from mailglass_pipeline import schema as package_schema
from mailglass_pipeline.reconciliation.sweep import BACKOFF_PARAMS

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mailglass_pipeline"
SQL_FILES = sorted(PACKAGE.glob("**/sql/*.sql"))
RULES = PACKAGE / "sql" / "rules.sql"

_OPEN = re.compile(r"^\s*-- rule: (\w+)((?: \S+=\S+)*)\s*$")
_INLINE = re.compile(r"^(.*\S)\s+-- rule: (\w+)((?: \S+=\S+)*)\s*$")
_CLOSE = re.compile(r"^\s*-- end rule\s*$")


def _regions(text: str) -> list[tuple[str, dict[str, str], str]]:
    """Every marked copy in ``text`` as (rule, renames, its code): blocks (nested ones too) and one-line copies."""
    found: list[tuple[str, dict[str, str], str]] = []
    stack: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        if m := _OPEN.match(line):
            stack.append((m.group(1), m.group(2), []))
        elif _CLOSE.match(line):
            assert stack, f"-- end rule without a rule: {line!r}"
            name, renames, body = stack.pop()
            found.append((name, dict(r.split("=") for r in renames.split()), "\n".join(body)))
        else:
            for _, _, body in stack:
                body.append(line)
            if m := _INLINE.match(line):
                found.append((m.group(2), dict(r.split("=") for r in m.group(3).split()), m.group(1)))
    assert not stack, f"rule {stack[-1][0]} is never ended"
    return found


def _normal(sql: str) -> str:
    """Code only, one space between tokens, none inside parentheses, no final ';' or ','."""
    code = " ".join(line.split("--", 1)[0] for line in sql.splitlines())
    code = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(code.split())))
    return code.rstrip(";,").strip()


def _renamed(sql: str, renames: dict[str, str]) -> str:
    for old, new in sorted(renames.items(), key=lambda item: -len(item[0])):
        sql = re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, sql)
    return sql


CANONICAL = {name: _normal(code) for name, renames, code in _regions(RULES.read_text()) if not renames}


def _agrees(rule: str, renames: dict[str, str], copy: str) -> bool:
    return _renamed(CANONICAL[rule], renames) in _normal(copy)


def _migration(prefix: str) -> ModuleType:
    path = next((PACKAGE / "migrations" / "versions").glob(f"{prefix}_*.py"))
    spec = importlib.util.spec_from_file_location(f"migration_{prefix}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_statement_is_loaded_whole_by_name() -> None:
    names = set(queries.STATEMENTS)
    assert {"find_batch", "write", "after_sweep", "due_summary", "known_tenants"} <= names
    assert {"list_pending", "list_parked", "explain_orphan", "lookup_deliveries"} <= names
    assert {"store_webhook", "store_webhooks_grouped", "append_events", "lock_deliveries"} <= names
    with pytest.raises(KeyError, match="known"):
        queries.statement("no_such_statement")
    # What runs is the block of the file, as written (comments included), without its final ';'.
    for name, clause in queries.STATEMENTS.items():
        assert queries.statement(name) is clause
        assert ";" not in clause.text.split("\n-- end rule")[0][-3:] and "noqa" not in clause.text, name
        homes = [path for path in SQL_FILES if f"-- name: {name}\n" in path.read_text()]
        assert len(homes) == 1, (name, homes)
        block = homes[0].read_text().split(f"-- name: {name}\n", 1)[1].split("\n-- name: ", 1)[0]
        assert clause.text.splitlines()[0] == block.splitlines()[0], name  # its comment too
        assert _normal(clause.text) == _normal(block), name


#: Where text is spliced into SQL on purpose: identifiers, which no bind parameter can carry.
IDENTIFIER_SPLICES = {
    Path("mailglass_pipeline/db.py"): 1,  # CREATE DATABASE "<name>" (the embedded server's database)
    Path("mailglass_pipeline/grants.py"): 1,  # grants_sql: the grants script with its role and schema
}


def test_no_statement_is_assembled_in_python() -> None:
    """No SQL text built from f-strings or fragments outside the migrations: statements live in the .sql files."""
    builders = re.compile(r"(?:sa\.text|text)\(\s*f[\"']|\.format\(|def \w+_(?:ctes?|sql|select|lateral)\(")
    found = {
        p.relative_to(REPO): len(builders.findall(p.read_text(encoding="utf-8")))
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts and builders.search(p.read_text(encoding="utf-8"))
    }
    assert found == IDENTIFIER_SPLICES, found
    # Every statement text the package runs is a block of a .sql file, bar the migration runner's catalog
    # checks before the schema exists (schema.py) and the embedded server's bootstrap (db.py).
    inline = sorted(
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts and "sa.text(" in p.read_text(encoding="utf-8")
    )
    assert inline == ["mailglass_pipeline/db.py", "mailglass_pipeline/queries.py", "mailglass_pipeline/schema.py"]


def test_no_bind_parameter_in_a_comment() -> None:
    """SQLAlchemy reads :name in a comment as a parameter every caller must bind (found by the schedule's tick)."""
    for name, clause in queries.STATEMENTS.items():
        for line in clause.text.splitlines():
            comment = line.split("--", 1)[1] if "--" in line else ""
            assert not re.search(r"(?<![:\w]):\w", comment), (name, line)


def test_every_copy_of_a_rule_equals_its_one_home() -> None:
    """Each marked copy holds the rule's text, whitespace aside (only the ledger insert's head is copied)."""
    assert set(CANONICAL) == {"ledger_insert"}
    used: set[str] = set()
    sources = [*SQL_FILES, REPO / "benchmarks" / "lower_bound.py"]
    for path in sources:
        for rule, renames, copy in _regions(path.read_text(encoding="utf-8")):
            assert rule in CANONICAL, (path.name, rule)
            assert _agrees(rule, renames, copy), (path.name, rule, _normal(copy)[:300])
            if path != RULES:
                used.add(rule)
    assert used == set(CANONICAL), set(CANONICAL) - used


def test_the_check_catches_a_copy_that_drifted() -> None:
    drifted = CANONICAL["ledger_insert"].replace("COALESCE(r.inserted_at, now())", "now()")
    ((rule, renames, copy),) = _regions(f"-- rule: ledger_insert\n{drifted}\n-- end rule\n")
    assert not _agrees(rule, renames, copy)
    assert _agrees(rule, renames, CANONICAL["ledger_insert"])


RULES_MIGRATION = PACKAGE / "migrations" / "versions" / "0007_shared_rules.py"


def _function(name: str) -> str:
    """The CREATE FUNCTION of migration 0007 for ``name``, as written (its schema placeholder too)."""
    text = RULES_MIGRATION.read_text(encoding="utf-8")
    return text.split(f"CREATE OR REPLACE FUNCTION {{q}}.{name}(", 1)[1].split('$$"""', 1)[0]


def _message_id_match() -> str:
    """The lookup's message-id match, from its one home (0007's message_ids), as the triggers write it."""
    ids = _normal(_function("mailglass_reconciliation_message_ids").split("ARRAY[", 1)[1].rsplit("]", 1)[0])
    ids = _renamed(ids, {"message_id": "k.message_id", "provider": "k.provider"})
    return f"d.provider_message_id IN ({ids})"


def test_the_rules_are_functions_the_planner_inlines() -> None:
    """Migration 0007's functions: SQL, one statement, not STRICT, no SECURITY DEFINER, no SET (decision D28)."""
    migration = _migration("0007")
    names = {sig.split("(", 1)[0] for sig in migration.SIGNATURES}
    assert names == {f.name for f in package_schema.PROJECT_FUNCTIONS if f.name in names}
    for sql in migration.FUNCTIONS:
        header = sql.split("$$", 1)[0]
        assert "LANGUAGE sql" in header and "STRICT" not in header and "SECURITY DEFINER" not in header, header
        assert " SET " not in header and sql.count("$$") == 2, header
        assert ("STABLE" in header or "IMMUTABLE" in header) != ("_notify(" in header), header
    for function in package_schema.PROJECT_FUNCTIONS:
        if function.name in names:
            assert not function.security_definer and function.search_path == "none", function
            signature = f"{function.name}({function.arguments})"
            assert signature in migration.SIGNATURES, signature


def test_the_orphan_listing_shares_the_sweeps_due_rule() -> None:
    """`mailglass orphans` says due for what a sweep takes: both call the same functions of migration 0007."""
    for name in ("list_pending", "counts_by_state"):
        text = queries.statement(name).text
        assert "mailglass_reconciliation_in_window(" in text and "mailglass_reconciliation_retry_due(" in text, name
    for name in ("find_batch", "after_sweep", "due_summary", "due_tenants"):
        assert "mailglass_reconciliation_due(" in queries.statement(name).text, name
    assert "mailglass_reconciliation_pick(" in queries.statement("find_batch").text
    for name in ("list_parked", "oldest_stale"):
        assert "mailglass_reconciliation_parked(" in queries.statement(name).text, name
    # The functions themselves share the window and the retry rule.
    for name in ("mailglass_reconciliation_due", "mailglass_reconciliation_pick"):
        body = _function(name)
        assert "mailglass_reconciliation_in_window(" in body and "mailglass_reconciliation_retry_due(" in body
    assert "mailglass_reconciliation_in_window(" in _function("mailglass_reconciliation_linkable")
    # One lookup: the sweep's find, the lookup, the receiver's store and doctor's repair call it.
    for name in ("find_batch", "lookup_deliveries", "store_webhook", "store_webhooks_grouped"):
        assert "mailglass_reconciliation_delivery(" in queries.statement(name).text, name
    assert "mailglass_reconciliation_delivery(" in queries.statement("doctor_queue_missing_rows").text
    assert "mailglass_reconciliation_message_ids(" in _function("mailglass_reconciliation_delivery")


def test_the_migrations_triggers_use_the_lookups_message_id_match() -> None:
    """The wake triggers (0003, and 0004's frozen copy) link an orphan to a delivery by the lookup's own rule.

    Migrations are frozen, so the triggers keep their copies: this test holds them equal to the lookup's home.
    """
    due, schema = _migration("0003"), _migration("0004")
    wake, wake_on_rekey = schema._wake_sql("public")
    for delivery, sqls in (("n", [due.UPGRADE, wake]), ("NEW", [due.UPGRADE, wake_on_rekey])):
        renames = {"d": delivery, "k.message_id": "q.provider_message_id", "k.provider": "q.provider"}
        for sql in sqls:
            assert _renamed(_message_id_match(), renames) in _normal(sql), delivery
    # The queue trigger's message-id keys are the ones `mailglass orphans explain` and doctor's repair read.
    assert due._MESSAGE_ID_KEYS == schema._MESSAGE_ID_KEYS == orphans._MESSAGE_ID_KEYS
    keys = re.findall(r"json_text\((\w+), '(\w+)'\)", _function("mailglass_reconciliation_event_message_id"))
    assert keys == [(c, k) for c in ("metadata", "normalized_payload") for k in due._MESSAGE_ID_KEYS], keys
    assert due.message_id_sql("n") == schema.message_id_sql("n")
    # 0004's frozen copy builds 0003's triggers exactly (its probes and the ledger trigger's SendGrid rule).
    assert due._wake_probe("n") == schema._wake_probe("n") and due._DELIVERY_EXISTS == schema._DELIVERY_EXISTS
    # 0006 (decision D27) moves the match into the sweep's absorb: its frozen copy is 0004's rules, and the
    # absorb's probe (a key k of a signal against a pending orphan o) is the lookup's match.
    head = _migration("0006")
    assert head._MESSAGE_ID_KEYS == schema._MESSAGE_ID_KEYS
    assert head.message_id_sql("n") == schema.message_id_sql("n") and head.provider_sql("n") == schema.provider_sql("n")
    assert (
        head._delivery_exists("q").replace("q.mailglass_deliveries", "mailglass_deliveries") == schema._DELIVERY_EXISTS
    )
    renames = {"d": "k", "k.message_id": "o.provider_message_id", "k.provider": "o.provider"}
    assert _renamed(_message_id_match(), renames) in _normal(head._absorb("public"))


def test_migrations_are_frozen() -> None:
    """No revision imports or executes another: editing one never changes what another creates."""
    for path in (PACKAGE / "migrations" / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "importlib" not in text and "spec_from_file_location" not in text, path.name
        assert not re.search(r"^from \S*versions|^import \S*versions", text, re.MULTILINE), path.name


def test_the_backoff_has_one_home_and_the_frozen_migration_agrees() -> None:
    """Migration 0003 is frozen and keeps its own copy of the steps: it must equal settings'."""
    migration = _migration("0003")
    assert migration.BACKOFF_MINUTES == settings.BACKOFF_MINUTES
    assert migration.BACKOFF_CAP_MINUTES == settings.BACKOFF_CAP_MINUTES
    assert BACKOFF_PARAMS["backoff_steps"] == list(settings.BACKOFF_MINUTES)
    assert BACKOFF_PARAMS["backoff_cap"] == settings.BACKOFF_CAP_MINUTES
    assert ":backoff_steps" in queries.statement("write").text
    # No other module spells the steps out.
    spelled = [
        p.relative_to(REPO)
        for p in [*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"), *SQL_FILES]
        if "(1, 2, 4, 8, 16)" in p.read_text(encoding="utf-8") and "migrations" not in p.parts
    ]
    assert spelled == [Path("mailglass_pipeline/settings.py")], spelled


#: A part of the projection's UPDATE no other statement may hold: one home (decision D6).
_PROJECTION_UPDATE = "last_event_type = CASE WHEN a.latest_at > d.last_event_at"


def test_the_projection_has_one_home() -> None:
    """Only the statement project updates the deliveries' projection; every writer runs it (projector.project)."""
    holders = [name for name, clause in queries.STATEMENTS.items() if "last_event_type =" in clause.text]
    assert holders == ["project"], holders
    assert _PROJECTION_UPDATE in _normal(queries.statement("project").text)
    sources = [*PACKAGE.rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"), RULES]
    copies = [p.relative_to(REPO) for p in sources if _PROJECTION_UPDATE in _normal(p.read_text(encoding="utf-8"))]
    assert copies == [], copies
    # Its callers: the sweep, the receiver's transaction and its group statement.
    for caller in ("reconciliation/sweep.py", "ingest/core.py", "ingest/grouped.py"):
        assert "projector.project(conn, " in (PACKAGE / caller).read_text(encoding="utf-8"), caller


def test_the_projection_rule_says_what_projector_documents() -> None:
    projection = _normal(queries.statement("project").text)
    assert f"bool_or(type IN ({', '.join(repr(t) for t in projector.TERMINAL_TYPES)}))" in projection
    for event_type, column in projector.SET_ONCE_COLUMNS.items():
        assert f"min(occurred_at) FILTER (WHERE type = '{event_type}') AS {column}" in projection
        assert f"{column} = COALESCE(d.{column}, a.{column})" in projection
    notify = _function("mailglass_reconciliation_notify")
    assert f"'{projector.NOTIFY_CHANNEL}'" in notify and f"> {projector.MAX_NOTIFY_TENANT_BYTES} " in notify
