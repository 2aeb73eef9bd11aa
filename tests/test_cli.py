"""One error contract for every ``mailglass`` command (cli_output.py's docstring, the README's command-line section).

In process with click's CliRunner: a bad argument, option or setting is one line on stderr and exit 2,
before anything is done; a runtime failure (here: a database that refuses connections) is one line
after the database line and exit 1; never a traceback. One real subprocess checks the console script.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result

from mailglass_pipeline import settings
from mailglass_pipeline.cli import cli

#: Nothing listens on port 1: every connection is refused at once.
DOWN = "postgresql+psycopg://mailglass:s3cret@127.0.0.1:1/mailglass"
EVENT_ID = "3f1e9f7c-5d0e-4a43-9f3b-0b6f2a0c9d11"

#: (command line, what the one line must say): bad arguments, options and settings, exit 2.
BAD_ARGUMENTS = [
    (["migrate", "--bogus"], "No such option '--bogus'"),
    (["reconcile", "--tenant-id", ""], "tenant_id must be a non-empty string, got ''"),
    (["reconcile", "--batch-size", "abc"], "--batch-size must be a whole number from 1 to 100000, got 'abc'"),
    (["reconcile", "--max-total", "0"], "--max-total must be a whole number from 1 to 1000000, got '0'"),
    (["demo", "--late-waves", "soon"], "not a list of seconds: 'soon'"),
    (["grants"], "Missing option '--role'"),
    (["grants", "--role", "r", "--for", "everyone"], "'everyone' is not one of 'reconciler', 'receiver'"),
    (["run", "--bogus"], "No such option '--bogus'"),
    (["dev", "--port", "http"], "--port must be a whole number from 1 to 65535, got 'http'"),
    (["stop", "--bogus"], "No such option '--bogus'"),
    (["orphans", "--limit", "abc"], "--limit must be a whole number from 1 to 10000, got 'abc'"),
    (["orphans", "--state", "lost"], "'lost' is not one of 'due', 'waiting', 'stale', 'malformed'"),
    (["orphans", "explain", "nope"], "not an event id (a UUID): 'nope'"),
    (["ingest", "--provider", "postmark", "--tenant-id", " bad", "-"], "tenant id has surrounding whitespace: ' bad'"),
    (["ingest", "--provider", "postmark", "--tenant-id", "t", "--header", "no colon", "-"], "expected 'Name: value'"),
    (["ingest", "--replay", "--tenant-id", "t"], "--replay needs --since and --until"),
    (["serve", "--threads", "0"], "--threads must be a whole number from 1 to 256, got '0'"),
    (["serve", "--port", "http"], "--port must be a whole number from 1 to 65535, got 'http'"),
    (["serve", "--workers", "0"], "--workers must be a whole number from 1 to 64, got '0'"),
    (["serve", "--body-timeout", "nan"], "--body-timeout must be a number of seconds from 0.1 to 600, got 'nan'"),
    (["doctor", "--for", "everyone"], "'everyone' is not one of 'reconciler', 'receiver'"),
    (["nosuch"], "No such command 'nosuch'"),
]

#: Command lines that reach the database: with it down, exit 1.
NEEDS_THE_DATABASE = [
    ["migrate"],
    ["reconcile"],
    ["demo"],
    ["grants", "--role", "r", "--apply"],
    ["run", "--no-demo"],
    ["orphans"],
    ["orphans", "explain", EVENT_ID],
    ["doctor"],
    ["ingest", "--provider", "postmark", "--tenant-id", "t", "--no-verify", "-"],
    ["ingest", "--replay", "--tenant-id", "t", "--since", "2026-01-01", "--until", "2026-01-02"],
]


def invoke(args: list[str], **env: str) -> Result:
    base = {settings.DATABASE_URL.env: DOWN, settings.CONNECT_TIMEOUT.env: "2"}
    return CliRunner().invoke(cli, args, env={**base, **env}, input=b'{"RecordType": "Delivery"}')


def error_lines(result: Result) -> list[str]:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Usage:" not in result.stderr, result.stderr
    said = ("mailglass: database postgresql", "mailglass: warning: ")  # which database; --no-verify's warning
    lines = [line for line in result.stderr.splitlines() if not line.startswith(said)]
    assert all(line.startswith("mailglass: ") for line in lines), result.stderr
    return lines


@pytest.mark.parametrize(("args", "says"), BAD_ARGUMENTS, ids=lambda value: " ".join(value)[:40])
def test_a_bad_argument_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = error_lines(result)
    assert says in line, line
    assert "mailglass: database postgresql" not in result.stderr  # refused before any connection


@pytest.mark.parametrize("args", NEEDS_THE_DATABASE, ids=" ".join)
def test_a_runtime_failure_is_one_line_and_exit_1(args: list[str]) -> None:
    result = invoke(args)
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert line.startswith(("mailglass: database unreachable", "mailglass: database error")), line
    assert "Connection refused" in line, line
    assert "s3cret" not in result.output


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_a_bad_setting_is_refused_by_every_command_before_it_starts(command: str) -> None:
    result = invoke([command], **{settings.CONNECT_TIMEOUT.env: "ten"})
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line == "mailglass: MAILGLASS_CONNECT_TIMEOUT must be a whole number of seconds >= 1, got 'ten'"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_a_prefix_mailglass_would_refuse_is_refused_by_every_command_before_it_starts(command: str) -> None:
    result = invoke([command], **{settings.DB_SCHEMA.env: "Mg-Upper"})
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line == "mailglass: MAILGLASS_DB_SCHEMA must be text matching [a-zA-Z_][a-zA-Z0-9_]{0,62}, got 'Mg-Upper'"


def test_every_command_is_in_this_contract() -> None:
    tested = {args[0] for args, _ in BAD_ARGUMENTS} | {args[0] for args in NEEDS_THE_DATABASE}
    assert set(cli.commands) <= tested, set(cli.commands) - tested


def test_help_shows_each_settings_default_and_range() -> None:
    result = CliRunner().invoke(cli, ["reconcile", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"[default: {settings.MAX_TOTAL.default}; 1<=x<=1000000]" in result.output


def test_the_console_script_refuses_a_bad_setting_in_one_line() -> None:
    """The real process: no traceback (it printed 16 lines when db.py read the timeout at import)."""
    env = {**os.environ, settings.CONNECT_TIMEOUT.env: "ten", settings.DATABASE_URL.env: DOWN}
    script = "import sys; from mailglass_pipeline.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", script, "reconcile"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr == "mailglass: MAILGLASS_CONNECT_TIMEOUT must be a whole number of seconds >= 1, got 'ten'\n"
