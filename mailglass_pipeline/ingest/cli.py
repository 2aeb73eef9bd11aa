"""``mailglass ingest``: replay a captured provider webhook through the ingest path.

The lead's ``mailglass_pipeline/cli.py`` calls :func:`register` on its
``click`` group. The command prints the ingest result as one JSON object on
stdout; any deliberate error is one line on stderr and a non-zero exit, so
scripts can replay a directory of captures and stop at the first refusal.
"""

from __future__ import annotations

import json
import sys
from typing import IO

import click
import sqlalchemy as sa

from mailglass_pipeline.errors import MailglassError
from mailglass_pipeline.ingest.base import PROVIDERS, IngestSettings
from mailglass_pipeline.ingest.core import ingest

EXIT_ERROR = 1


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise click.BadParameter(f"expected 'Name: value', got {text!r}", param_hint="--header")
    return name.strip(), value.strip()


@click.command("ingest")
@click.option("--provider", required=True, type=click.Choice(PROVIDERS), help="Which provider sent the webhook.")
@click.option("--tenant-id", required=True, help="Tenant the webhook belongs to.")
@click.option(
    "--header",
    "header_lines",
    multiple=True,
    metavar="'Name: value'",
    help="A request header as captured (repeatable; names are case-insensitive).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip signature and timestamp checks (only for captures verified when received).",
)
@click.argument("source", metavar="FILE|-", type=click.File("rb"))
def ingest_command(
    provider: str, tenant_id: str, header_lines: tuple[str, ...], no_verify: bool, source: IO[bytes]
) -> None:
    """Feed one provider webhook body (FILE, or - for stdin) into the ledger."""
    headers = dict(parse_header(line) for line in header_lines)
    try:
        settings = IngestSettings.from_env()
        # One byte over the limit is enough for ingest to refuse it; never read an unbounded stream.
        body = source.read(settings.max_body_bytes + 1)
        if no_verify:
            click.echo(
                f"mailglass: warning: --no-verify: {provider} signature and timestamp checks are SKIPPED", err=True
            )
        result = ingest(provider, body, headers, tenant_id=tenant_id, verify=not no_verify, settings=settings)
    except MailglassError as exc:
        click.echo(f"mailglass: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except sa.exc.SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        click.echo(f"mailglass: database error: {first[0] if first else type(exc).__name__}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(json.dumps(result, sort_keys=True))


def register(cli_group: click.Group) -> click.Command:
    """Add the ``ingest`` and ``serve`` commands to ``cli_group``; returns the ``ingest`` command."""
    from mailglass_pipeline.ingest.serve import serve_command

    cli_group.add_command(ingest_command)
    if "serve" not in cli_group.commands:
        cli_group.add_command(serve_command)
    return ingest_command
