"""What every ``mailglass`` command prints: its result on stdout, any failure as one line on stderr.

stdout carries only the result (one JSON object where there is one, :func:`emit`); any failure is
one line on stderr, ``mailglass: <what>``, never a traceback, mapped by one function
(:func:`one_line`). Exit codes: 0 success; 2 a bad argument, option or setting (a usage error, a
``ValueError`` such as ``ConfigurationError``: nothing was done); 1 a runtime failure (the database
down or refusing, a webhook refused, an unknown id); 130 interrupted. Which database is used is
said on stderr, with the password masked (:func:`say_database`). The commands are in ``cli.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import sqlalchemy as sa

from mailglass_pipeline import db, settings
from mailglass_pipeline.errors import MailglassError
from mailglass_pipeline.ingest.errors import IngestError


def say_database(url: str) -> None:
    click.echo(f"mailglass: database {db.describe_url(url)}", err=True)


def emit(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result, default=str, sort_keys=False))


class CommandFailed(click.ClickException):
    """A failure as the contract shows it: ``mailglass: <message>`` on stderr, then ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"mailglass: {self.format_message()}", err=True)


#: What the contract reports in one line; anything else is a bug, whose traceback is the useful report.
_REPORTED = (click.ClickException, click.Abort, KeyboardInterrupt, ValueError, MailglassError, sa.exc.SQLAlchemyError)


def one_line(exc: BaseException) -> CommandFailed:
    """The one mapping from an error to its line and exit code (the module docstring's contract)."""
    if isinstance(exc, click.ClickException):  # usage errors and bad options: exit 2, without the usage text
        return CommandFailed(exc.format_message(), exc.exit_code)
    if isinstance(exc, click.Abort | KeyboardInterrupt):
        return CommandFailed("aborted", 130)
    if isinstance(exc, ValueError):  # ConfigurationError, an unfit tenant id, a bad setting
        return CommandFailed(db.first_line(exc), 2)
    if isinstance(exc, IngestError):  # a refused webhook: its kind tells a replaying script why
        return CommandFailed(f"{type(exc).__name__}: {db.first_line(exc)}", 1)
    if isinstance(exc, MailglassError):
        return CommandFailed(db.first_line(exc), 1)
    said = f"database error: {db.first_line(getattr(exc, 'orig', None) or exc)}"
    # Undefined table, or function (a sweep's first call is the project's absorb, migration 0006): most often
    # the wrong schema, or never migrated.
    if db.sqlstate_of(exc) in ("42P01", "42883"):
        said += (
            f" in schema {db.quote_ident(db.db_schema())} ({settings.DB_SCHEMA.env}): `mailglass doctor` says where"
            " Mailglass's tables are; `mailglass migrate` creates them"
        )
    return CommandFailed(said, 1)


@contextmanager
def errors_as_one_line() -> Iterator[None]:
    try:
        yield
    except (CommandFailed, click.exceptions.Exit, click.exceptions.NoArgsIsHelpError):
        raise
    except _REPORTED as exc:
        raise one_line(exc) from None


class MailglassGroup(click.Group):
    """The group every subcommand runs under: parsing and running both report through :func:`one_line`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with errors_as_one_line():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with errors_as_one_line():
            return super().invoke(ctx)
