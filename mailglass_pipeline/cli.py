"""The ``mailglass`` command: its subcommands, each calling the same functions as the Python API.

Every subcommand reports through one error contract (``cli_output.py``): the result alone on
stdout, any failure one line on stderr, exit 2 for a bad argument or setting, 1 for a runtime
failure, 130 interrupted.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
import sqlalchemy as sa

from mailglass_pipeline import db, settings
from mailglass_pipeline.cli_output import MailglassGroup, emit, one_line, say_database
from mailglass_pipeline.ingest.cli import ingest_command
from mailglass_pipeline.ingest.serve import serve_command
from mailglass_pipeline.setting import Setting


@click.group(cls=MailglassGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailglass-pipeline")
def cli() -> None:
    """Keep the mailglass delivery ledger correct (reconciler, ingest, Dagster)."""
    for setting in settings.ENVIRONMENT:  # a misconfigured environment is refused before anything is done
        setting.read()


@cli.command()
def migrate() -> None:
    """Create or upgrade the schema (idempotent)."""
    from mailglass_pipeline import schema

    url = db.resolve_database_url()
    say_database(url)
    before, after = schema.upgrade(url)
    emit({"from_revision": before, "to_revision": after, "changed": before != after})


@cli.command()
@click.option("--tenant-id", default=None, help="Sweep one tenant (default: all tenants).")
@settings.LIMIT.option("--batch-size")
@settings.MAX_AGE_MINUTES.option("--max-age-minutes")
@settings.GRACE_SECONDS.option("--grace-seconds")
@settings.MAX_TOTAL.option("--max-total")
@settings.RETRY_ALL.option("--retry-all")
def reconcile(
    tenant_id: str | None,
    limit: int,
    max_age_minutes: int,
    grace_seconds: int,
    max_total: int,
    retry_all: bool,
) -> None:
    """Run one reconciliation sweep (all tenants by default); prints one JSON object."""
    from mailglass_pipeline.reconciliation.sweep import reconcile as sweep_once

    tenant_id = settings.validate_tenant_id(tenant_id)
    url = db.resolve_database_url()
    say_database(url)
    # The Python API's own function: `mailglass reconcile` and reconcile() cannot drift apart.
    result = sweep_once(
        tenant_id,
        limit,
        database_url=url,
        max_age_minutes=max_age_minutes,
        grace_seconds=grace_seconds,
        max_total=max_total,
        retry_all=retry_all,
    )
    emit(result)
    if tenant_id is not None and result["scanned"] == 0:
        with db.connect(db.get_engine(url)) as conn:
            _hint_unknown_tenant(conn, tenant_id)


@cli.command()
@click.option(
    "--late",
    is_flag=True,
    help="Play the race live: webhooks now, their deliveries a minute and two minutes later (runs ~2 min).",
)
@click.option("--late-waves", default="60,120", show_default=True, help="Seconds after the webhooks of each wave.")
def demo(late: bool, late_waves: str) -> None:
    """Seed demo tenants with a realistic webhook race (idempotent); --late adds a live one."""
    from mailglass_pipeline import demo as demo_module
    from mailglass_pipeline import schema

    try:
        waves = [float(w) for w in late_waves.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter(f"not a list of seconds: {late_waves!r}", param_hint="--late-waves") from None
    url = db.resolve_database_url()
    say_database(url)
    schema.upgrade(url)
    if not late:
        emit(demo_module.seed(db.get_engine(url)))
        return
    say = lambda line: click.echo(f"mailglass: {line}", err=True)  # noqa: E731
    emit(demo_module.late(db.get_engine(url), waves=waves, say=say))


def _service_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--for reconciler|receiver``: whose grants (`grants` prints them, `doctor` checks them)."""
    choice = click.Choice(["reconciler", "receiver"])
    return click.option("--for", "service", type=choice, default="reconciler", show_default=True, help=help)


@cli.command()
@click.option("--role", required=True, help="Existing database role the service connects as.")
@_service_option("Whose grants: the reconciler's, or the webhook receiver's (mailglass serve).")
@click.option("--apply", "apply_now", is_flag=True, help="Run the GRANTs as MAILGLASS_DATABASE_URL (the owner).")
def grants(role: str, service: str, apply_now: bool) -> None:
    """Print (or --apply) the least-privilege GRANTs for the reconciler's (or the receiver's) role."""
    from mailglass_pipeline import grants as grants_module

    if not apply_now:
        click.echo(grants_module.render_grants(role, service=service))
        return
    url = db.resolve_database_url()
    say_database(url)
    applied = grants_module.apply_grants(url, role, service=service)
    emit({"role": role, "service": service, "statements": len(applied)})


@cli.command()
@click.option("--repair", is_flag=True, help="Rebuild what can be rebuilt: the queue rows of orphans no trigger saw.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
@click.option("--role", default=None, help="Role whose grants to check (default: the connected role).")
@_service_option("Which grants file the role is checked against.")
def doctor(repair: bool, as_json: bool, role: str | None, service: str) -> None:
    """Check the database against what the product relies on: one line per problem with its fix; exit 1 if any."""
    from mailglass_pipeline import doctor as doctor_module

    url = db.resolve_database_url()
    say_database(url)
    report = doctor_module.diagnose(db.get_engine(url), role=role, service=service, repair=repair)
    if as_json:
        emit(report.as_dict())
    else:
        for line in report.lines():
            click.echo(line)
    if not report.ok:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--tenant-id", "tenant_ids", multiple=True, help="Tenant partition to run (default: every tenant).")
@click.option("--no-demo", is_flag=True, help="Do not seed the demo tenants into an empty database.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def run(tenant_ids: tuple[str, ...], no_demo: bool, as_json: bool) -> None:
    """Migrate, seed the demo when empty, and run the Dagster job once per tenant partition.

    The runs are recorded in the Dagster instance `mailglass dev` shows.
    """
    from mailglass_pipeline import demo as demo_module
    from mailglass_pipeline.dagster_devtools import dev as dev_module
    from mailglass_pipeline.dagster_devtools.local_run import materialize_tenants
    from mailglass_pipeline.defs.tenant_reconciliation.ops import COUNT_KEYS

    embedded = dev_module.uses_embedded_server()
    if embedded and _embedded_server_down():
        click.echo(f"mailglass: starting the embedded PostgreSQL ({db.mailglass_home()})", err=True)
    env = dev_module.prepare_dev_environment(quiet=True)  # same instance and databases as `mailglass dev`
    url = env[settings.DATABASE_URL.env]
    say_database(url)
    click.echo(f"mailglass: dagster instance {env['DAGSTER_HOME']} (shown by `mailglass dev`)", err=True)
    engine = db.get_engine(url)
    if not no_demo and demo_module.is_empty(engine):
        demo_module.seed(engine)
        click.echo("mailglass: empty database, seeded the demo tenants", err=True)
    if tenant_ids:
        # Same hint as `reconcile`; the tenant gets no run and no partition (materialize_tenants skips it).
        with db.connect(engine) as conn:
            for tenant in dict.fromkeys(tenant_ids):
                _hint_unknown_tenant(conn, tenant)
    results = materialize_tenants(list(tenant_ids) or None, database_url=url)
    if embedded:
        click.echo(f"mailglass: {dev_module.embedded_server_note()}", err=True)
    if as_json:
        emit(results)
        return
    width = max([len("tenant"), *(len(t) for t in results)])
    click.echo("tenant".ljust(width) + "".join(f"  {c:>{len(c)}}" for c in COUNT_KEYS))
    for tenant, counts in results.items():
        click.echo(tenant.ljust(width) + "".join(f"  {counts.get(c, 0):>{len(c)}}" for c in COUNT_KEYS))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@Setting("port", 3000, 1, 65535).option("--port")
def dev(host: str, port: int) -> None:
    """Embedded database if needed, migrations, then the Dagster UI and daemon (Ctrl-C or SIGTERM stops both)."""
    from mailglass_pipeline.dagster_devtools.dev import run_dev

    raise click.exceptions.Exit(run_dev(host, port))


@cli.command()
def stop() -> None:
    """Stop the embedded PostgreSQL of this MAILGLASS_HOME (started by run, dev, demo or the tests)."""
    from mailglass_pipeline.dagster_devtools.dev import stop_embedded_server

    home = db.mailglass_home()
    pid = stop_embedded_server(home)
    if pid is None:
        click.echo(f"mailglass: no embedded PostgreSQL running for {home}", err=True)
        return
    click.echo(f"mailglass: stopped the embedded PostgreSQL for {home} (pid {pid})", err=True)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@cli.group(invoke_without_command=True)
@click.option("--tenant-id", default=None, help="Only this tenant's orphans.")
@click.option("--state", type=click.Choice(["due", "waiting", "stale", "malformed"]), default=None)
@settings.LIST_LIMIT.option("--limit")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def orphans(ctx: click.Context, tenant_id: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List pending orphans with their state, age, attempts and next attempt.

    States: due (the next sweep examines it), waiting (grace window or backoff, until NEXT),
    stale (past max age), malformed (no provider or message id). Without --state: due,
    then waiting, stale, malformed, LIMIT rows in all. `mailglass orphans explain EVENT_ID`
    says why one orphan is not linked.
    """
    if ctx.invoked_subcommand is not None:
        return
    from mailglass_pipeline import orphans as orphans_module

    url = db.resolve_database_url()
    say_database(url)
    with db.connect(db.get_engine(url)) as conn:
        rows = orphans_module.list_orphans(conn, tenant_id, state, limit)
        if tenant_id is not None:
            _hint_unknown_tenant(conn, tenant_id)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_dict()))
        return
    header = ("event_id", "tenant", "state", "age", "attempts", "next_attempt", "provider", "message_id")
    table = [
        (r.event_id, r.tenant_id, r.state, _age(r.age_seconds), str(r.attempts), r.next_attempt_at or "-",
         r.provider or "-", r.provider_message_id or "-")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(header)]
    for line in [header, *table]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    click.echo(f"mailglass: {len(rows)} orphan(s) listed (limit {limit})", err=True)


@orphans.command()
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def explain(event_id: str, as_json: bool) -> None:
    """Say why the orphan EVENT_ID is not linked (or by which reconciled event it was).

    Reasons: no delivery with its (tenant, provider, message id); a delivery with that message
    id under another tenant or provider; malformed (which key is missing); stale; waiting until
    when; due. This is an operator's tool: it names the OTHER tenant and its delivery on purpose
    (a misrouted webhook or a tenant mix-up shows up that way). Unknown id: exit 1.
    """
    from mailglass_pipeline import orphans as orphans_module

    event_uuid = orphans_module.parse_event_id(event_id)  # a bad argument before any connection
    url = db.resolve_database_url()
    with db.connect(db.get_engine(url)) as conn:
        try:
            result = orphans_module.explain(conn, event_uuid)
        except orphans_module.OrphanNotFoundError as exc:
            # One line for an unknown id, naming the database it was looked up in.
            raise orphans_module.OrphanNotFoundError(f"{exc} of database {db.describe_url(url)}") from None
    say_database(url)
    if as_json:
        emit(result)
        return
    click.echo(f"{result['event_id']}: {result['state']} ({result['reason']})")
    click.echo(f"  {result['message']}")
    click.echo(
        f"  tenant {result['tenant_id']!r}, type {result['type']}, provider {result['provider']!r}, "
        f"message id {result['provider_message_id']!r}, age {_age(result['age_seconds'])}, "
        f"attempts {result['attempts'] if result['attempts'] is not None else '-'}"
    )


def _hint_unknown_tenant(conn: sa.Connection, tenant_id: str) -> bool:
    """A typo in --tenant-id answers zeros: say on stderr when no delivery or orphan knows the tenant (True)."""
    from mailglass_pipeline import orphans as orphans_module
    from mailglass_pipeline.reconciliation.monitoring import known_tenants

    if orphans_module.tenant_known(conn, tenant_id):
        return False
    known = known_tenants(conn)
    close = difflib.get_close_matches(tenant_id, known, n=3)
    suggestion = f"; did you mean {', '.join(repr(t) for t in close)}?" if close else ""
    click.echo(f"mailglass: hint: no delivery or orphan has tenant {tenant_id!r}{suggestion}", err=True)
    return True


cli.add_command(ingest_command)
cli.add_command(serve_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: the group's one error path, then the embedded server's notice."""
    args = list(argv) if argv is not None else sys.argv[1:]
    embedded_was_down = _embedded_server_down()
    try:
        code = cli.main(args=args, prog_name="mailglass", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `mailglass`: the help, as a usage error
        exc.show()
        code = exc.exit_code
    except (click.ClickException, click.Abort) as exc:
        failed = one_line(exc)
        failed.show()
        code = failed.exit_code
    if embedded_was_down and not _embedded_server_down() and args[:1] not in (["dev"], ["run"], ["stop"]):
        # `dev` and `run` say it themselves; any other command that started it says so here.
        click.echo(
            f"mailglass: started the embedded PostgreSQL ({db.mailglass_home()}); it keeps running after this "
            "command: stop it with `mailglass stop`",
            err=True,
        )
    return code if isinstance(code, int) else 0


def _embedded_server_down() -> bool:
    """True when no database URL is configured and the embedded PostgreSQL is not running (a pid check)."""
    if settings.DATABASE_URL.read():
        return False
    from mailglass_pipeline.dagster_devtools.dev import embedded_server_pid

    return embedded_server_pid() is None


if __name__ == "__main__":
    sys.exit(main())
