"""``mailglass doctor``: a live database checked against what the product relies on.

Each check reads the catalog or the rows and yields :class:`Problem`\\ s, each one line saying what is
wrong and how to fix it (docs/contract.md, `mailglass doctor`). What is checked, and why it matters:

* **schema**: ``MAILGLASS_DB_SCHEMA`` names a schema holding Mailglass's tables (else nothing else
  can be checked, and the line names where they are);
* **stamp and revision**: Mailglass's stamp (its migrator reads it: without it Mailglass would redo
  its versions) and the project's Alembic revision at the code's head;
* **functions and triggers**: the project's (``schema.PROJECT_FUNCTIONS``, ``PROJECT_TRIGGERS``)
  present, enabled, owned by the role the migrations ran as (the queue's owner: a ``SECURITY DEFINER``
  function runs with its owner's rights) and with the ``SECURITY DEFINER`` and ``search_path`` they
  were created with;
* **grants**: a service role holds every privilege of its grants file (``sql/grants.sql``,
  ``sql/grants_receiver.sql``) and nothing more on the tables that file revokes first;
* **writers' clocks**: pending orphans whose stored ``inserted_at`` lies ahead of now, or hours off
  the instant in their own UUIDv7 id, betray a session writing the ledger in another time zone
  (the grace window counts from ``inserted_at``, in Mailglass too);
* **queue**: every pending orphan has its queue row and every queue row a pending orphan (a
  data-only restore with triggers disabled, or a logical-replication subscriber, fires no trigger);
  ``repair`` rebuilds the missing rows as the ledger trigger builds them and drops the leftovers;
* **citext**: the extension where a Mailglass app's default ``search_path`` finds it, else its
  sessions compare ``mailglass_suppressions.address`` as text, case-sensitively.

Domain core: no Dagster. SQL in ``sql/doctor.sql``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import grants, queries, schema, settings
from mailglass_pipeline.db import connect, db_schema, run_transaction

#: An orphan's stored instant this far from what it should be betrays another zone (zones differ by
#: 30 minutes or more); a clock merely drifting stays inside it.
CLOCK_TOLERANCE_SECONDS = 20 * 60
#: Trigger states that fire in an ordinary session (O: origin and local, A: always).
FIRING = ("O", "A")
TRIGGER_STATES = {"D": "disabled", "R": "enabled for replica sessions only"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong, and how to fix it."""

    check: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.check}: {self.problem}; fix: {self.fix}"


@dataclass
class Report:
    """What ``diagnose`` found: the problems, what was checked (the "ok" summary) and what was repaired."""

    schema: str
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        done = [f"repaired: {what} {count}" for what, count in self.repaired.items()]
        if self.problems:
            return done + [p.line() for p in self.problems]
        return [*done, f"ok: schema {self.schema!r}: " + "; ".join(self.checked)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "schema": self.schema,
            "problems": [{"check": p.check, "problem": p.problem, "fix": p.fix} for p in self.problems],
            "checked": self.checked,
            "repaired": self.repaired,
        }


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(conn: Connection, name: str, **params: Any) -> list[sa.Row[Any]]:
    return list(conn.execute(queries.statement(name), params))


def diagnose(engine: Engine, *, role: str | None = None, service: str = "reconciler", repair: bool = False) -> Report:
    """Every check against ``engine``'s database (the Mailglass schema of ``MAILGLASS_DB_SCHEMA``)."""
    name = db_schema()
    report = Report(name)
    with connect(engine) as conn:
        found = [r.schema_name for r in _rows(conn, "doctor_mailglass_schemas")]
        if name not in found:
            elsewhere = f"; Mailglass's tables are in {', '.join(_q(s) for s in found)}" if found else ""
            fix = (
                f"set {settings.DB_SCHEMA.env}={found[0]} (schema names are case-sensitive)"
                if len(found) == 1
                else "set MAILGLASS_DB_SCHEMA to the schema of Mailglass's tables, or run `mailglass migrate`"
            )
            report.problems.append(
                Problem(
                    "schema", f"schema {_q(name)} ({settings.DB_SCHEMA.env}) holds no mailglass_events{elsewhere}", fix
                )
            )
            return report
        state = _rows(conn, "doctor_schema_state", schema_name=name)[0]
        conn.rollback()
    if repair and state.migration_owner is not None:
        report.repaired.update(_repair(engine))
    with connect(engine) as conn:
        for check in (_stamp_and_revision, _functions_and_triggers, _queue, _clocks, _citext):
            report.problems.extend(check(conn, report, state))
            conn.rollback()
        report.problems.extend(_grants(conn, report, state, role, service))
        conn.rollback()
    return report


def _stamp_and_revision(conn: Connection, report: Report, state: sa.Row[Any]) -> Iterator[Problem]:
    stamp = (state.stamp or "").strip()
    if not stamp.isdigit():
        yield Problem(
            "stamp",
            f"{state.quoted}.mailglass_events carries no Mailglass version stamp (COMMENT ON TABLE, found"
            f" {state.stamp!r}): Mailglass's migrator would run all its versions again",
            f"COMMENT ON TABLE {state.quoted}.mailglass_events IS '<Mailglass's version>' (7 where `mailglass migrate`"
            " built the schema)",
        )
    elif int(stamp) < 4:
        yield Problem(
            "stamp",
            f"Mailglass's stamp is {stamp}, older than Mailglass 1.0.0 (4)",
            "run Mailglass's own migrations (Mailglass.Migration.up) first",
        )
    else:
        report.checked.append(f"Mailglass stamp {stamp}")
    head = schema.head_revision()
    revision = _rows(conn, "doctor_revision")[0].version_num if state.versioned else None
    if revision == head:
        report.checked.append(f"revision {head}")
    elif revision is None or revision in schema.known_revisions():
        yield Problem(
            "revision",
            f"the project's schema is at {revision or 'no revision'}, not at this release's {head}",
            "`mailglass migrate` as the owner of Mailglass's tables",
        )
    else:
        yield Problem(
            "revision",
            f"the database is at revision {revision}, which this release does not know (a newer release migrated it)",
            "run the release that migrated it",
        )


def _function_ref(quoted: str, function: schema.ProjectFunction) -> str:
    return f"{quoted}.{function.name}({function.arguments})"


def _functions_and_triggers(conn: Connection, report: Report, state: sa.Row[Any]) -> Iterator[Problem]:
    quoted, owner = state.quoted, state.migration_owner
    recreate = (
        f"as the owner, DELETE FROM {quoted}.mailglass_alembic_version, then `mailglass migrate` (its revisions from"
        " 0004 on re-create the project's objects), then `mailglass doctor --repair`"
    )
    if owner is None:
        yield Problem("queue", f"{quoted}.mailglass_reconciliation_queue is missing", recreate)
        return
    names = [f.name for f in schema.PROJECT_FUNCTIONS]
    catalog = {r.function_name: r for r in _rows(conn, "doctor_functions", schema_name=report.schema, names=names)}
    pinned = f"search_path=pg_catalog, {quoted}, pg_temp"
    for function in schema.PROJECT_FUNCTIONS:
        ref = _function_ref(quoted, function)
        row = catalog.get(function.name)
        if row is None:
            yield Problem("functions", f"function {ref} is missing", recreate)
            continue
        if row.owner != owner:
            yield Problem(
                "functions",
                f"function {ref} is owned by {row.owner!r}, not by {owner!r}, the owner of the queue the migrations"
                " created" + (" (it runs with its owner's rights)" if function.security_definer else ""),
                f"ALTER FUNCTION {ref} OWNER TO {_q(owner)}",
            )
        if row.security_definer != function.security_definer:
            kind = "SECURITY DEFINER" if function.security_definer else "SECURITY INVOKER"
            yield Problem("functions", f"function {ref} is no longer {kind}", f"ALTER FUNCTION {ref} {kind}")
        if function.search_path == "none":
            continue  # no SET clause on the sender's hot path, every relation qualified (decision D27)
        expected = pinned if function.search_path == "pinned" else 'search_path=""'
        # PostgreSQL writes the schema as quote_ident does (quoted only when it must be): so is `quoted`.
        if row.search_path != expected:
            value = expected.split("=", 1)[1] if function.search_path == "pinned" else "''"
            yield Problem(
                "functions",
                f"function {ref} runs with {row.search_path or 'the caller`s search_path'}, not the pinned one",
                f"ALTER FUNCTION {ref} SET search_path = {value}",
            )
    triggers = {(r.table_name, r.trigger_name): r for r in _rows(conn, "doctor_triggers", schema_name=report.schema)}
    for trigger in schema.PROJECT_TRIGGERS:
        row = triggers.get((trigger.table, trigger.name))
        where = f"trigger {trigger.name} on {quoted}.{trigger.table}"
        if row is None or row.function_name != trigger.function:
            what = "is missing" if row is None else f"calls {row.function_name}(), not {trigger.function}()"
            yield Problem("triggers", f"{where} {what}", recreate)
        elif row.enabled not in FIRING:
            yield Problem(
                "triggers",
                f"{where} is {TRIGGER_STATES.get(row.enabled, row.enabled)}: writes it misses leave the queue behind",
                f"ALTER TABLE {quoted}.{trigger.table} ENABLE TRIGGER {trigger.name} (ENABLE ALWAYS TRIGGER on a"
                " logical-replication subscriber), then `mailglass doctor --repair`",
            )
    report.checked.append(
        f"{len(schema.PROJECT_FUNCTIONS)} functions and {len(schema.PROJECT_TRIGGERS)} triggers owned by {owner!r}"
    )


def _queue(conn: Connection, report: Report, state: sa.Row[Any]) -> Iterator[Problem]:
    if state.migration_owner is None:
        return
    days = settings.PARKED_RETENTION_DAYS.read()
    missing = _rows(conn, "doctor_unqueued_orphans", retention_days=days)[0]
    if missing.orphans:
        yield Problem(
            "queue",
            f"{missing.orphans} pending orphans have no queue row (e.g. event {missing.example_id}), so no sweep will"
            " link them: written while the ledger trigger did not fire (a data-only restore with triggers disabled,"
            " a logical-replication subscriber)",
            "`mailglass doctor --repair` (queues them as the trigger would)",
        )
    leftovers = _rows(conn, "doctor_queue_leftovers")[0]
    if leftovers.queue_rows:
        yield Problem(
            "queue",
            f"{leftovers.queue_rows} queue rows belong to orphans gone from the ledger or already reconciled"
            f" (e.g. event {leftovers.example_id})",
            "`mailglass doctor --repair` (deletes them)",
        )
    if not missing.orphans and not leftovers.queue_rows:
        report.checked.append("queue consistent with the ledger")


def _repair(engine: Engine) -> dict[str, int]:
    days = settings.PARKED_RETENTION_DAYS.read()

    def work(conn: Connection) -> dict[str, int]:
        queued = conn.execute(queries.statement("doctor_queue_missing_rows"), {"retention_days": days}).rowcount
        dropped = conn.execute(queries.statement("doctor_drop_leftovers")).rowcount
        return {"orphans queued": queued, "queue rows deleted": dropped}

    return run_transaction(engine, work)


def _clocks(conn: Connection, report: Report, state: sa.Row[Any]) -> Iterator[Problem]:
    if state.migration_owner is None:
        return
    fix = (
        "run every session that writes Mailglass's tables in UTC, as Mailglass assumes"
        " (ALTER ROLE <the app's role> SET timezone = 'UTC'); the grace window counts from inserted_at"
    )
    for row in _rows(conn, "doctor_writer_clocks", tolerance_seconds=CLOCK_TOLERANCE_SECONDS):
        if not row.orphans:
            continue
        hours = float(row.offset_seconds) / 3600
        example = f"e.g. event {row.example_id} of tenant {row.example_tenant!r}"
        if row.kind == "ahead":
            what = f"stored {hours:.1f} h ahead of now ({example}): a session east of UTC wrote its local time"
        else:
            side = "ahead of" if hours > 0 else "behind"
            what = (
                f"stored {abs(hours):.1f} h {side} the instant in their own UUIDv7 id ({example}):"
                " a session in another time zone wrote its local time"
            )
        yield Problem("clocks", f"{row.orphans} pending orphans {what}", fix)
    report.checked.append("pending orphans' times in UTC")


def default_search_path_schemas(conn: Connection) -> tuple[str, list[str]]:
    """The search_path a session without options starts with, and the existing schemas it resolves to."""
    path = str(_rows(conn, "doctor_default_search_path")[0].search_path)
    conn.execute(queries.statement("doctor_set_path"), {"path": path})
    schemas = list(_rows(conn, "doctor_schemas_on_path")[0].schemas)
    conn.rollback()  # the path was set for that transaction only: back to the Mailglass schema
    return path, schemas


def _citext(conn: Connection, report: Report, state: sa.Row[Any]) -> Iterator[Problem]:
    row = _rows(conn, "doctor_citext", schema_name=report.schema)[0]
    if row.address_type_schema is None:
        return  # no suppressions table, or the text stand-in of a server without citext (migration 0004)
    path, schemas = default_search_path_schemas(conn)
    if row.address_type_schema in schemas:
        report.checked.append(f"citext in {_q(row.address_type_schema)}")
        return
    target = schemas[0] if schemas else "public"
    yield Problem(
        "citext",
        f"the citext extension is in schema {_q(row.address_type_schema)}, outside the default search_path ({path}):"
        " a Mailglass app's sessions compare mailglass_suppressions.address as text, case-sensitively",
        f"ALTER EXTENSION citext SET SCHEMA {_q(target)} (where Mailglass's migrator creates it)",
    )


def _grants(conn: Connection, report: Report, state: sa.Row[Any], role: str | None, service: str) -> Iterator[Problem]:
    named = role is not None
    found = _rows(conn, "doctor_role", schema_name=report.schema, role=role)
    role = str(found[0].role_name) if found else str(role)
    apply = f"`mailglass grants --role {role} --for {service} --apply` as the owner"
    if not found:
        yield Problem("grants", f"role {role!r} does not exist", f"CREATE ROLE {_q(role)} LOGIN, then {apply}")
        return
    if found[0].superuser or found[0].owner:
        if named:
            who = "a superuser" if found[0].superuser else "the owner of Mailglass's tables"
            yield Problem(
                "grants",
                f"role {role!r} is {who}: the {service} should connect as a least-privilege role",
                f"create a role for the {service} and run `mailglass grants --role <it> --for {service} --apply`",
            )
        else:
            report.checked.append(f"grants not checked (connected as the owner {role!r}: name a role with --role)")
        return
    expected = grants.expected_privileges(role, report.schema, service=service)
    wanted = expected.privileges
    missing = _rows(
        conn,
        "doctor_missing_privileges",
        role=role,
        kinds=[k for k, _, _ in wanted],
        objects=[o for _, o, _ in wanted],
        privileges=[p for _, _, p in wanted],
    )
    if missing:
        listed = ", ".join(f"{r.privilege} on {r.object_name.replace('#', ' column ')}" for r in missing)
        yield Problem(
            "grants", f"role {role!r} lacks {len(missing)} privileges of the {service}'s grants: {listed}", apply
        )
    extra = sorted(
        f"{r.privilege_type} on {r.table_name}"
        for r in _rows(conn, "doctor_table_acl", schema_name=report.schema, role=role, tables=list(expected.revoked))
        if r.privilege_type not in expected.revoked[r.table_name]
    )
    if extra:
        yield Problem(
            "grants",
            f"role {role!r} holds {len(extra)} privileges beyond the {service}'s grants: {', '.join(extra)}",
            f"{apply} (it revokes them first)",
        )
    if not missing and not extra:
        report.checked.append(f"grants of role {role!r} as the {service}'s")
