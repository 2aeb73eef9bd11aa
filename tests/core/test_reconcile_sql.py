"""The registered SQL: the registry's closed set of fragments, sqlfluff, one home for the backoff."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import sqlfluff

from mailglass_pipeline import deliveries, orphans, queries, settings
from mailglass_pipeline.ingest import core as ingest_core
from mailglass_pipeline.ingest import health, replay, tokens
from mailglass_pipeline.queries import Fragment, splice
from mailglass_pipeline.reconciliation.statements import STATEMENTS

REPO = Path(__file__).resolve().parents[2]
#: Every file of statements; the fragment files are listed in .sqlfluffignore (pieces do not parse alone).
SQL_PATHS = [
    REPO / "mailglass_pipeline" / "reconciliation" / "sql",
    REPO / "mailglass_pipeline" / "sql" / "orphans.sql",
    REPO / "mailglass_pipeline" / "sql" / "deliveries.sql",
    *sorted((REPO / "mailglass_pipeline" / "ingest" / "sql").glob("*.sql")),
]


def test_every_statement_is_registered_by_name() -> None:
    registered = queries.statements()
    for module_statements in (
        STATEMENTS,
        orphans.STATEMENTS,
        deliveries.STATEMENTS,
        ingest_core.STATEMENTS,
        tokens.STATEMENTS,
        replay.STATEMENTS,
        health.STATEMENTS,
    ):
        for name, clause in module_statements.items():
            assert registered[name] is clause
    assert {"find_tenant", "find_all", "write", "after_sweep", "due_summary", "known_tenants"} <= set(STATEMENTS)
    assert {"list_pending", "list_parked", "explain_orphan", "lookup_deliveries"} <= set(registered)
    with pytest.raises(KeyError, match="registered"):
        queries.statement("no_such_statement")


def test_spliced_statements_keep_no_placeholder_and_interpolate_no_value() -> None:
    for name, clause in queries.statements().items():
        assert queries._SPLICE.search(clause.text) is None, name
        assert "%(" not in clause.text and "{{" not in clause.text, name
        assert not clause.text.endswith(";") and "noqa" not in clause.text.splitlines()[-1], name


def test_an_unknown_fragment_fails_when_the_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mg_sql_probe"
    (package / "sql").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sql" / "probe.sql").write_text("-- name: probe_statement\nSELECT 1 WHERE {no_such_fragment};\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown fragment \{no_such_fragment\}"):
        queries.register("mg_sql_probe")
    assert importlib.util.find_spec("mg_sql_probe") is not None


def test_fragments_take_identifiers_and_check_their_arity() -> None:
    fragments = {"pair": Fragment("pair", ("a", "b"), "{a} = {b}"), "one": Fragment("one", (), "x > 1")}
    assert splice("WHERE {pair(q.x, y)}", fragments, "t") == "WHERE {pair(q.x, y)}"  # not an identifier: untouched
    assert splice("WHERE {pair(x, y)} AND {one}", fragments, "t") == "WHERE x = y AND x > 1"
    with pytest.raises(ValueError, match="takes 2 identifiers"):
        splice("{pair(x)}", fragments, "t")


def test_sqlfluff_lints_the_sql_files() -> None:
    """The command CI runs (postgres dialect, the repository's .sqlfluff)."""
    done = subprocess.run(
        [sys.executable, "-m", "sqlfluff", "lint", *(str(path.relative_to(REPO)) for path in SQL_PATHS)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_every_spliced_statement_parses() -> None:
    """Fragment files do not parse alone (their blocks are pieces); each statement with them spliced in does."""
    broken = sqlfluff.lint("SELECT FROM WHERE ((", dialect="postgres", rules=["LT01"])
    assert any(v["code"] == "PRS" for v in broken)  # the check below is not vacuous
    for name, clause in queries.statements().items():
        found = [v for v in sqlfluff.lint(clause.text, dialect="postgres", rules=["LT01"]) if v["code"] == "PRS"]
        assert not found, (name, found[:1])


def test_the_backoff_has_one_home_and_the_frozen_migration_agrees() -> None:
    """Migration 0003 is frozen and keeps its own copy of the steps: it must equal settings'."""
    path = next((REPO / "mailglass_pipeline" / "migrations" / "versions").glob("0003_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert migration.BACKOFF_MINUTES == settings.BACKOFF_MINUTES
    assert migration.BACKOFF_CAP_MINUTES == settings.BACKOFF_CAP_MINUTES
    # No other module spells the steps out.
    spelled = [
        p.relative_to(REPO)
        for p in [*(REPO / "mailglass_pipeline").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]
        if "(1, 2, 4, 8, 16)" in p.read_text(encoding="utf-8") and "migrations" not in p.parts
    ]
    assert spelled == [Path("mailglass_pipeline/settings.py")], spelled


def test_a_bind_parameter_in_a_comment_fails_when_the_file_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy would read it as a parameter every caller must bind (found by the schedule's tick)."""
    package = tmp_path / "mg_sql_comment_probe"
    (package / "sql").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sql" / "probe.sql").write_text("-- name: comment_probe\n-- takes :limit rows\nSELECT 1::int;\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="without ':' in comments"):
        queries.register("mg_sql_comment_probe")


def test_the_orphan_listing_shares_the_sweeps_due_rule() -> None:
    """`mailglass orphans` says due for what a sweep takes: its statements splice the sweep's own fragments."""
    shared = queries.fragments("mailglass_pipeline.reconciliation")
    listing = queries.statement("list_pending").text
    for name in ("fresh", "due_window", "in_scope"):
        assert shared[name].text in listing, name
    assert shared["in_scope"].text in queries.statement("list_parked").text
    with pytest.raises(KeyError, match="import it first"):
        queries.fragments("mg_no_such_package")
