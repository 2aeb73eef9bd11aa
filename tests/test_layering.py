"""Layering: the core runs without Dagster (decision D12 in docs/decisions.md); the Dagster layer's private
imports have one home in the package and one in tests/ (which does not ship), and its modules import each
other without a circle."""

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


PRIVATE = SUPPORT / "private.py"
#: The tests' and benchmarks' own non-public Dagster names: never shipped, never imported by the package.
TEST_PRIVATE = REPO / "tests" / "dagster_private.py"
#: The pins and this test name private Dagster names to check them.
CHECKERS = {REPO / "tests" / "dagster_support" / "test_private_dagster.py", Path(__file__).resolve()}


def _python_files() -> list[Path]:
    return [
        path
        for folder in ("mailglass_pipeline", "tests", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
    ]


def _private_home(path: Path) -> Path:
    """Where ``path`` must take a non-public Dagster name from: the package from ``private``, the rest from
    tests/dagster_private.py."""
    return PRIVATE if path.is_relative_to(PACKAGE) else TEST_PRIVATE


def test_only_the_private_modules_import_private_dagster_names() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {name} (import it through {_private_home(path).relative_to(REPO)})"
        for path in _python_files()
        if path not in {PRIVATE, TEST_PRIVATE, *CHECKERS}
        for name in _imported_modules(path)
        if name.startswith("dagster._")
    ]
    assert offenders == [], "\n".join(offenders)


def _non_public_dagster_attributes() -> set[str]:
    """``NON_PUBLIC_ATTRIBUTES`` and every ``_name`` of the Dagster classes the project holds objects of."""
    from dagster import DagsterInstance, DagsterRun, OpExecutionContext
    from dagster_graphql import DagsterGraphQLClient

    from tests.dagster_private import NON_PUBLIC_ATTRIBUTES

    underscored = {
        name
        for cls in (DagsterInstance, DagsterRun, OpExecutionContext, DagsterGraphQLClient)
        for name in dir(cls)
        if name.startswith("_") and not name.startswith("__") and name != "_asdict"  # _asdict: namedtuple's API
    }
    return {*NON_PUBLIC_ATTRIBUTES, *underscored}


def test_only_the_private_modules_call_non_public_dagster_methods() -> None:
    """``client._execute(...)``, ``instance.add_run_tags(...)``, ``run.run_op_concurrency``: the package calls
    them in ``private`` only, the tests and benchmarks in tests/dagster_private.py only."""
    names = _non_public_dagster_attributes()
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr} (call it in {_private_home(path).relative_to(REPO)})"
        for path in _python_files()
        if path not in {PRIVATE, TEST_PRIVATE, *CHECKERS}
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute)
        and node.attr in names
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert offenders == [], "\n".join(offenders)


def test_the_package_calls_the_non_public_methods_tests_use_only_through_private() -> None:
    """``resolve_job_def``, ``get_asset_materialization_events``, ``get_repository_def``: Dagster's testing idiom,
    called directly by tests and benchmarks; the package calls them through ``private`` only."""
    from tests.dagster_private import NON_PUBLIC_ATTRIBUTES_TESTS_CALL

    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PRIVATE
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr in NON_PUBLIC_ATTRIBUTES_TESTS_CALL
    ]
    assert offenders == [], "call it through mailglass_pipeline.dagster_support.private:\n" + "\n".join(offenders)


def test_nothing_test_only_ships_in_private() -> None:
    """Each name ``private`` exports is used by the package (another module, or another function of
    ``private``): a name only tests or benchmarks use belongs in tests/dagster_private.py."""
    from mailglass_pipeline.dagster_support import private

    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                used.add(node.id)
            elif path != PRIVATE and isinstance(node, ast.alias):
                used.add(node.asname or node.name)
            elif path != PRIVATE and isinstance(node, ast.Attribute):
                used.add(node.attr)
    assert sorted(set(private.__all__) - used) == []


def test_the_package_imports_no_test_or_benchmark_module() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] in ("tests", "benchmarks")
    ]
    assert offenders == []


def test_the_package_calls_only_public_dagster_instance_methods() -> None:
    """Dagster marks ``DagsterInstance``'s public API with ``@public``; the package calls nothing else on an
    instance (an expression naming ``instance``) outside ``private``."""
    import inspect

    from dagster import DagsterInstance
    from dagster._annotations import is_public

    def public(name: str) -> bool:
        value = inspect.getattr_static(DagsterInstance, name)
        return is_public(value.fget if isinstance(value, property) else getattr(value, "__func__", value))

    non_public = {name for name in dir(DagsterInstance) if not name.startswith("__") and not public(name)}
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PRIVATE
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr in non_public and "instance" in ast.unparse(node.value).lower()
    ]
    assert offenders == [], "call it through mailglass_pipeline.dagster_support.private:\n" + "\n".join(offenders)


def test_shared_dagster_helpers_import_no_definitions_or_tooling() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sorted(SUPPORT.rglob("*.py"))
        for name in _imported_modules(path)
        if name.startswith(
            ("mailglass_pipeline.defs", "mailglass_pipeline.definitions", "mailglass_pipeline.dagster_devtools")
        )
    ]
    assert offenders == []


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
    """``defs/`` holds definitions only: the code location never imports ``dagster_devtools``."""
    offenders = [
        str(path.relative_to(REPO))
        for path in [PACKAGE / "definitions.py", *(PACKAGE / "defs").rglob("*.py"), *SUPPORT.rglob("*.py")]
        if any(name.startswith("mailglass_pipeline.dagster_devtools") for name in _imported_modules(path))
    ]
    assert offenders == []


def test_only_the_dagster_layer_imports_dagster() -> None:
    """Decision D12: Dagster is imported by ``definitions.py``, ``defs/``, ``dagster_support/`` and the tooling
    that drives it (``dagster_devtools/``) only."""
    layer = {
        PACKAGE / "definitions.py",
        *(PACKAGE / "defs").rglob("*.py"),
        *SUPPORT.rglob("*.py"),
        *(PACKAGE / "dagster_devtools").rglob("*.py"),
    }
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


def test_the_command_and_the_core_load_no_pandas() -> None:
    """pandas (a third of a CLI process's start-up) loads only where a sweep batch is built."""
    probe = "import sys, mailglass_pipeline.cli, mailglass_pipeline.ingest.server; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
