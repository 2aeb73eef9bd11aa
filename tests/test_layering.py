"""Layering: the core runs without Dagster (decision D12 in docs/decisions.md); the Dagster layer's private
imports have one home and its modules import each other without a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE_MODULES = [
    "mailglass_pipeline",
    "mailglass_pipeline.db",
    "mailglass_pipeline.schema",
    "mailglass_pipeline.ledger",
    "mailglass_pipeline.projector",
    "mailglass_pipeline.deliveries",
    "mailglass_pipeline.reconciliation",
    "mailglass_pipeline.queries",
    "mailglass_pipeline.ingest",
]


@pytest.mark.process
def test_core_modules_load_no_dagster() -> None:
    # A fresh interpreter: this test process has Dagster loaded already.
    probe = "; ".join(
        [
            *(f"import {name}" for name in CORE_MODULES),
            "import sys",
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"the core pulled in Dagster modules: {out[:300]}"


# -- the Dagster layer: private names in one package, no import circle ---------------------------------

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mailglass_pipeline"
SUPPORT = PACKAGE / "dagster_support"


def _is_module(name: str) -> bool:
    relative = REPO.joinpath(*name.split("."))
    return relative.with_suffix(".py").is_file() or (relative / "__init__.py").is_file()


def _imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` reads, function-level imports included.

    ``from package import submodule`` reads the submodule, not the package's ``__init__``.
    """
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            names += submodules if len(submodules) == len(node.names) else [node.module, *submodules]
    return names


def test_only_dagster_support_imports_private_dagster_names() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for folder in ("mailglass_pipeline", "tests", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
        if SUPPORT not in path.parents
        for name in _imported_modules(path)
        if name.startswith("dagster._")
    ]
    assert offenders == [], "import dagster._* through mailglass_pipeline.dagster_support:\n" + "\n".join(offenders)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_circle() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    graph = {
        name: {m for m in _imported_modules(path) if m in modules and m != name and m != "mailglass_pipeline"}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_definitions_import_no_tooling() -> None:
    """``defs/`` holds definitions only: the code location never imports ``devtools``."""
    offenders = [
        str(path.relative_to(REPO))
        for path in [PACKAGE / "definitions.py", *(PACKAGE / "defs").rglob("*.py"), *SUPPORT.rglob("*.py")]
        if any(name.startswith("mailglass_pipeline.devtools") for name in _imported_modules(path))
    ]
    assert offenders == []


def test_only_the_dagster_layer_imports_dagster() -> None:
    """Decision D12: Dagster is imported by ``definitions.py``, ``defs/`` and ``dagster_support/`` only."""
    layer = {PACKAGE / "definitions.py", *(PACKAGE / "defs").rglob("*.py"), *SUPPORT.rglob("*.py")}
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in layer and any(name.split(".")[0] == "dagster" for name in _imported_modules(path))
    ]
    assert offenders == []


@pytest.mark.process
def test_every_module_imports_by_its_dotted_name() -> None:
    # One import path per concept: nothing shadows a package (the contract's function `reconcile` once did).
    probe = (
        "import importlib, pkgutil, mailglass_pipeline as m; "
        "[importlib.import_module(x.name) for x in pkgutil.walk_packages(m.__path__, 'mailglass_pipeline.')]; "
        "import mailglass_pipeline.reconciliation.sweep as s; assert m.reconcile is s.reconcile"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
