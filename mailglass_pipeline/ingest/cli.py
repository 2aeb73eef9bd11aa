"""``mailglass ingest``: feed a captured provider webhook through the ingest path, or replay stored ones.

``mailglass_pipeline/cli.py`` registers it. The command prints the ingest result as one JSON
object on stdout; errors go through the CLI's one error path (one line on stderr, exit 2 for a bad
argument, 1 for a refused webhook or a database failure), so scripts can replay a directory of
captures and stop at the first refusal.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import IO

import click

from mailglass_pipeline.errors import MailglassError
from mailglass_pipeline.ingest.base import PROVIDERS
from mailglass_pipeline.ingest.tenants import TenantSettings

DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"]


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise click.BadParameter(f"expected 'Name: value', got {text!r}", param_hint="--header")
    return name.strip(), value.strip()


@click.command("ingest")
@click.option(
    "--provider", type=click.Choice(PROVIDERS), help="Which provider sent the webhook (with --replay: a filter)."
)
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
@click.option(
    "--replay",
    is_flag=True,
    help="Re-ingest the tenant's stored webhooks (mailglass_webhook_events) received in [--since, --until).",
)
@click.option("--since", type=click.DateTime(DATE_FORMATS), help="With --replay: start of the range (UTC, inclusive).")
@click.option("--until", type=click.DateTime(DATE_FORMATS), help="With --replay: end of the range (UTC, exclusive).")
@click.argument("source", metavar="FILE|-", type=click.File("rb"), required=False)
def ingest_command(
    provider: str | None,
    tenant_id: str,
    header_lines: tuple[str, ...],
    no_verify: bool,
    replay: bool,
    since: datetime | None,
    until: datetime | None,
    source: IO[bytes] | None,
) -> None:
    """Feed one provider webhook body (FILE, or - for stdin) into the ledger, or --replay stored ones."""
    if replay:
        if source is not None or header_lines or no_verify:
            raise click.UsageError("--replay reads stored webhooks: no FILE, --header or --no-verify")
        if since is None or until is None:
            raise click.UsageError("--replay needs --since and --until")
        run_replay(tenant_id, since, until, provider)
        return
    if provider is None or source is None:
        raise click.UsageError("give --provider and FILE|- (or --replay with --since/--until)")
    from mailglass_pipeline.ingest.core import ingest

    headers = dict(parse_header(line) for line in header_lines)
    settings = TenantSettings.from_env().for_tenant(tenant_id, provider)
    # One byte over the limit is enough for ingest to refuse it; never read an unbounded stream.
    body = source.read(settings.max_body_bytes + 1)
    if no_verify:
        click.echo(f"mailglass: warning: --no-verify: {provider} signature and timestamp checks are SKIPPED", err=True)
    result = ingest(provider, body, headers, tenant_id=tenant_id, verify=not no_verify, settings=settings)
    click.echo(json.dumps(result, sort_keys=True))


def run_replay(tenant_id: str, since: datetime, until: datetime, provider: str | None) -> None:
    from mailglass_pipeline.ingest.replay import replay

    result = replay(tenant_id, since, until, provider=provider)
    click.echo(json.dumps(result, sort_keys=True))
    if result["failed"]:
        raise MailglassError(f"{result['failed']} stored webhook(s) could not be replayed (see the JSON above)")
