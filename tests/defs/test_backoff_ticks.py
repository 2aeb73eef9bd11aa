"""Backoff in schedule ticks: "retry in N minutes" is honoured by the tick N minutes later.

The clock moves, nobody waits: the database's ``now()`` is a test clock (a
``now()`` function in a schema placed before ``pg_catalog`` on the test
connections' search path), set to each tick of the real minute schedule
``reconcile_every_minute`` (its evaluation, with ``build_schedule_context``) and
to a few seconds after the tick when the sweep it requested runs, as a run
launched by the daemon would. A never-matching orphan must then be examined at
the ticks 1, 2, 4, 8, 16, 30 and 30 minutes apart. Before the fix the retry
time counted from the sweep's ``now()`` (seconds after its tick), so each retry
missed its tick: 2, 3, 5, 9, 17, 31.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import sqlalchemy as sa
from dagster import RunRequest, build_schedule_context, instance_for_test
from sqlalchemy.engine import Engine

from mailglass_pipeline.db import create_engine
from mailglass_pipeline.definitions import defs
from mailglass_pipeline.defs.resources import MailglassDatabase
from mailglass_pipeline.defs.scheduled_sweep.schedules import reconcile_every_minute
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import make_orphan

RUN_START_DELAY = timedelta(seconds=4)  # a launched run sweeps seconds after its tick


def _install_clock(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA test_clock"))
        conn.execute(sa.text("CREATE TABLE test_clock.clock (t timestamptz NOT NULL)"))
        conn.execute(sa.text("INSERT INTO test_clock.clock VALUES (now())"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION test_clock.now() RETURNS timestamptz LANGUAGE sql STABLE"
                " AS 'SELECT t FROM test_clock.clock'"
            )
        )


def _set_clock(engine: Engine, at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE test_clock.clock SET t = :t"), {"t": at})


def _attempts(engine: Engine, event_id) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT attempts FROM mailglass_reconciliation_queue WHERE event_id = :id"), {"id": event_id}
        ).scalar_one()


def test_backoff_follows_the_minute_ticks(engine: Engine, database_url: str) -> None:
    assert reconcile_every_minute.cron_schedule == "* * * * *"
    _install_clock(engine)
    clocked_url = (
        database_url
        + ("&" if "?" in database_url else "?")
        + "options="
        + quote("-c search_path=test_clock,pg_catalog,public")
    )
    clocked = create_engine(clocked_url)
    try:
        with clocked.connect() as conn:  # the clock is really in use on these connections
            _set_clock(engine, datetime(2030, 1, 1, tzinfo=UTC))
            assert conn.execute(sa.text("SELECT now()")).scalar_one().year == 2030
        orphan = make_orphan(engine, tenant_id="acme", message_id="never-delivered", age=timedelta(minutes=5))
        first_tick = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
        examined_at: list[int] = []
        skipped = 0
        with instance_for_test() as instance:
            for minute in range(0, 95):
                tick = first_tick + timedelta(minutes=minute)
                _set_clock(engine, tick + timedelta(milliseconds=300))  # the daemon evaluates just after the tick
                with build_schedule_context(
                    instance=instance,
                    scheduled_execution_time=tick,
                    resources={"mailglass_db": MailglassDatabase(database_url=clocked_url)},
                    repository_def=defs.get_repository_def(),
                ) as context:
                    data = reconcile_every_minute.evaluate_tick(context)
                requests = [r for r in (data.run_requests or []) if isinstance(r, RunRequest)]
                if not requests:
                    skipped += 1
                    continue
                _set_clock(engine, tick + RUN_START_DELAY)
                before = _attempts(engine, orphan)
                result = sweep(clocked, None, SweepConfig())  # what the requested run sweeps
                assert result.linked == 0
                if _attempts(engine, orphan) == before + 1:
                    examined_at.append(minute)
        gaps = [b - a for a, b in itertools.pairwise(examined_at)]
        assert gaps[:7] == [1, 2, 4, 8, 16, 30, 30], examined_at
        assert skipped == 95 - len(examined_at)  # every other tick: skipped, nothing due
    finally:
        clocked.dispose()
