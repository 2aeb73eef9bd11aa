"""Docs cannot drift: every repository path that README.md and docs/*.md cite exists.

Cited means a relative link (``[text](path)``, resolved from the document) or an inline code span
that reads as a repository path: its first folder is one at the root or in the package
(``defs/ops.py`` is read as ``mailglass_pipeline/defs/ops.py``), or it is a bare file name of a kind
this repository holds (``test_soak.py``: some file of that name exists). ``file.py::name`` also needs
``def name`` or ``class name`` in that file. Spans that are other things (Dagster asset keys like
``mailglass/tenant``, Mailglass's own Elixir paths, run-time folders like ``.mailglass/``) do not read
as repository paths by these rules, so they are not checked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mailglass_pipeline"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FILE_KINDS = (".py", ".sql", ".md", ".yaml", ".yml", ".toml", ".json", ".ini", ".png", ".cfg", ".sh")
#: Files the docs name that a run writes, not the repository.
OUTPUTS = {"sweep_vs_history.png", "results.json"}
SKIP_DIRS = {".git", ".venv", ".mailglass", ".dagster_home", "__pycache__", "node_modules"}


def _repository_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(folder, name) for name in files]
    return found


FILES = _repository_files()
NAMES = {path.name for path in FILES}


def _cited(doc: Path) -> list[tuple[str, str]]:
    """``(kind, target)`` for every link and inline code span of ``doc`` outside fenced code blocks."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    links = [("link", m.group(1)) for m in re.finditer(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)]
    spans = [("code", m.group(1)) for m in re.finditer(r"`([^`\n]+)`", text)]
    return [
        (kind, target)
        for kind, target in links + spans
        if " " not in target and "://" not in target and not target.startswith(("mailto:", "/", "$", "-", "~"))
    ]


def _missing(doc: Path, kind: str, target: str) -> str | None:
    """Why ``target`` is a cited repository path that does not exist, or None."""
    if kind == "link":
        return None if (doc.parent / target).exists() else "no such file"
    path, _, name = target.partition("::")
    if any(ch in path for ch in "<>=()'\",") or path.startswith("."):
        return None
    if "/" not in path:
        if not path.endswith(FILE_KINDS) or path in OUTPUTS:
            return None
        candidates = [f for f in FILES if f.name == path]
    else:
        first = path.split("/")[0]
        bases = [base for base in (REPO, PACKAGE) if (base / first).exists()]
        if not bases:
            return None  # not a path of this repository (an asset key, Mailglass's own files)
        pattern = path.rstrip("/")
        candidates = [match for base in bases for match in (base.glob(pattern) if "*" in pattern else [base / pattern])]
        candidates = [c for c in candidates if c.exists()]
    if not candidates:
        return "no such file"
    if name and not any(
        re.search(rf"^\s*(?:async def|def|class) {re.escape(name)}\b", c.read_text(), re.M) for c in candidates
    ):
        return f"no {name} in it"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_cited_repository_path_exists(doc: Path) -> None:
    broken = sorted({f"{target}: {why}" for kind, target in _cited(doc) if (why := _missing(doc, kind, target))})
    assert not broken, f"{doc.relative_to(REPO)} cites paths that do not exist:\n" + "\n".join(broken)


def test_the_check_sees_a_broken_path() -> None:
    """Not vacuous: a moved module, a removed test and a dead link are each found."""
    doc = REPO / "docs" / "decisions.md"
    assert _missing(doc, "code", "defs/no_such_module.py") == "no such file"
    assert _missing(doc, "code", "test_docs.py::test_no_such_test") == "no test_no_such_test in it"
    assert _missing(doc, "link", "no_such_page.md") == "no such file"
    assert _missing(doc, "code", "defs/resources.py") is None
    assert _missing(doc, "code", "mailglass/tenant") is None  # an asset key, not a path
