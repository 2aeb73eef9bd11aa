"""Decision D4, "retry when it can succeed, never starve": the due rule, its triggers and the fair sweep.

Time is simulated by moving an orphan's ``last_attempted_at``/``next_attempt_at``
back (the sweep reads ``now()``); everything else runs as the product does,
against a real PostgreSQL.
"""

from __future__ import annotations

import io
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from mailglass_pipeline import schema
from mailglass_pipeline.db import create_engine, run_transaction
from mailglass_pipeline.reconciliation.monitoring import due_summary, reconciliation_lag
from mailglass_pipeline.reconciliation.results import DueSummary, LagSummary
from mailglass_pipeline.reconciliation.sweep import absorb_wakes, find_orphans, sweep
from mailglass_pipeline.settings import BACKOFF_CAP_MINUTES, BACKOFF_MINUTES, SweepConfig
from tests.core.core_support import statements_sent
from tests.databases import libpq_url
from tests.factories import QUEUE, bulk_unmatchable_orphans, make_delivery, make_orphan, reconciled_from, rows, scalar

_DELIVERY = (
    "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain, provider,"
    " provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)"
    " VALUES (gen_random_uuid(), :t, 'M', 'transactional', 'a@b.c', 'b.c', :p, :m, 'dispatched',"
    " now() - interval '1 hour', now(), now())"
)


def _state(engine: Engine, orphan: uuid.UUID) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT attempts, last_attempted_at, next_attempt_at, linkable_at, provider, provider_message_id,"
                f" parked_at FROM {QUEUE} WHERE event_id = :o"
            ),
            {"o": orphan},
        ).one()


def _back_off(engine: Engine) -> None:
    """Every pending orphan examined just now and unmatched (as a sweep leaves it)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {QUEUE} SET attempts = attempts + 1, last_attempted_at = now(),"
                " next_attempt_at = now() + interval '8 minutes', linkable_at = NULL WHERE parked_at IS NULL"
            )
        )


def _shift(engine: Engine, seconds: float) -> None:
    """Let ``seconds`` pass for the queue: every examination and retry time moves back."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {QUEUE} SET last_attempted_at = last_attempted_at - make_interval(secs => :s),"
                " next_attempt_at = next_attempt_at - make_interval(secs => :s)"
            ),
            {"s": seconds},
        )


def _db_now(engine: Engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT now()")).scalar_one()


def _absorb(engine: Engine) -> None:
    """What a sweep does first: apply the delivery triggers' signals (decision D27)."""
    run_transaction(engine, absorb_wakes)


def _is_due_and_linkable(engine: Engine, orphan: uuid.UUID) -> bool:
    """Due and linkable as the next sweep sees it: once the signals are absorbed."""
    _absorb(engine)
    state = _state(engine, orphan)
    return state.next_attempt_at is None and state.linkable_at is not None


# -- the deliveries trigger ------------------------------------------------------------------------


def test_plain_sql_insert_of_its_delivery_makes_a_backed_off_orphan_due(engine: Engine) -> None:
    orphan = make_orphan(engine, tenant_id="t1", message_id="m-1")
    other = make_orphan(engine, tenant_id="t1", message_id="m-2")
    assert sweep(engine, "t1", SweepConfig()).unmatched == 2
    assert sweep(engine, "t1", SweepConfig()).scanned == 0  # backing off
    with engine.begin() as conn:
        conn.execute(sa.text(_DELIVERY), {"t": "t1", "p": "postmark", "m": "m-1"})
        conn.execute(sa.text(_DELIVERY), {"t": "t2", "p": "postmark", "m": "m-2x"})  # another tenant, no match
    assert _is_due_and_linkable(engine, orphan)
    assert _state(engine, other).next_attempt_at is not None
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked) == (1, 1)
    assert set(reconciled_from(engine)) == {orphan}


def test_update_that_sets_or_changes_the_key_wakes_and_unrelated_updates_do_not(engine: Engine) -> None:
    by_id = make_orphan(engine, tenant_id="t1", message_id="m-late")
    by_tenant = make_orphan(engine, tenant_id="t1", message_id="m-moved")
    by_provider = make_orphan(engine, tenant_id="t1", message_id="m-prov", provider="mailgun")
    sending = make_delivery(
        engine, tenant_id="t1", message_id=None
    )  # Mailglass inserts first, the provider's id comes later
    moved = make_delivery(engine, tenant_id="t-wrong", message_id="m-moved")
    reprov = make_delivery(engine, tenant_id="t1", message_id="m-prov", provider="postmark")
    assert sweep(engine, "t1", SweepConfig()).unmatched == 3
    before = {o: _state(engine, o) for o in (by_id, by_tenant, by_provider)}

    # Updates that do not touch the key, or set it to the value it has: nothing happens.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mailglass_deliveries SET status = 'sent', lock_version = lock_version + 1"))
        conn.execute(sa.text("UPDATE mailglass_deliveries SET provider_message_id = provider_message_id"))
        conn.execute(sa.text("UPDATE mailglass_deliveries SET tenant_id = tenant_id, provider = provider"))
    assert {o: _state(engine, o) for o in before} == before

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mailglass_deliveries SET provider_message_id = 'm-late' WHERE id = :d"),
                     {"d": sending})  # fmt: skip
    assert _is_due_and_linkable(engine, by_id)
    assert not _is_due_and_linkable(engine, by_tenant)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE mailglass_deliveries SET tenant_id = 't1' WHERE id = :d"), {"d": moved})
        conn.execute(sa.text("UPDATE mailglass_deliveries SET provider = 'mailgun' WHERE id = :d"), {"d": reprov})
    assert _is_due_and_linkable(engine, by_tenant) and _is_due_and_linkable(engine, by_provider)
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked) == (3, 3)


def test_bulk_insert_and_copy_wake_every_matching_orphan(database_url: str, engine: Engine) -> None:
    bulk_unmatchable_orphans(engine, tenant_id="t1", count=600, oldest_age_seconds=3600)  # message ids nomatch-1..600
    _back_off(engine)
    with engine.begin() as conn:
        # One statement: 1,000 deliveries, 400 of them matching.
        conn.execute(
            sa.text(
                "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                " provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)"
                " SELECT gen_random_uuid(), 't1', 'M', 'transactional', 'a@b.c', 'b.c', 'postmark',"
                "        CASE WHEN g <= 400 THEN 'nomatch-' || g ELSE 'other-' || g END, 'dispatched', now(),"
                "        now(), now()"
                "   FROM generate_series(1, 1000) AS g"
            )
        )
    _absorb(engine)
    assert scalar(engine, f"SELECT count(*) FROM {QUEUE} WHERE next_attempt_at IS NULL") == 400
    import psycopg

    with psycopg.connect(libpq_url(database_url)) as conn, conn.cursor() as cur:
        lines = "".join(
            f"{uuid.uuid4()}\tt1\tM\ttransactional\ta@b.c\tb.c\tpostmark\tnomatch-{g}\tdispatched"
            "\t2026-01-01 00:00:00+00\t2026-01-01 00:00:00+00\t2026-01-01 00:00:00+00\n"
            for g in range(401, 451)
        )
        with cur.copy(
            "COPY mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain, provider,"
            " provider_message_id, last_event_type, last_event_at, inserted_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(io.StringIO(lines).read())
    _absorb(engine)
    assert scalar(engine, f"SELECT count(*) FROM {QUEUE} WHERE next_attempt_at IS NULL") == 450
    assert scalar(engine, f"SELECT count(*) FROM {QUEUE} WHERE linkable_at IS NOT NULL") == 450
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked) == (450, 450)


def test_sendgrid_rule_of_the_lookup_is_kept_exactly(engine: Engine) -> None:
    raw = make_orphan(engine, tenant_id="t1", message_id="abc.filterdrecv-p3las1-1", provider="sendgrid")
    old_style = make_orphan(engine, tenant_id="t1", message_id="14c5d75ce93.dfd.64b469.filter0001", provider="sendgrid")
    _back_off(engine)
    make_delivery(
        engine, tenant_id="t1", message_id="abc.other", provider="sendgrid"
    )  # same part before the dot, not a match
    make_delivery(engine, tenant_id="t1", message_id="14c5d75ce93.dfd", provider="postmark")  # other provider
    assert not _is_due_and_linkable(engine, raw) and not _is_due_and_linkable(engine, old_style)
    make_delivery(engine, tenant_id="t1", message_id="abc", provider="sendgrid")
    make_delivery(engine, tenant_id="t1", message_id="14c5d75ce93.dfd.64b469", provider="sendgrid")
    assert _is_due_and_linkable(engine, raw) and _is_due_and_linkable(engine, old_style)
    assert sweep(engine, "t1", SweepConfig()).linked == 2


def test_ledger_trigger_extracts_the_key_and_notices_a_delivery_already_there(engine: Engine) -> None:
    make_delivery(engine, tenant_id="t1", message_id="m-first")
    early = make_orphan(engine, tenant_id="t1", message_id="m-first")
    late = make_orphan(engine, tenant_id="t1", message_id="m-none")
    mailglass_style = make_orphan(
        engine,
        tenant_id="t1",
        message_id=None,
        metadata={"provider": "sendgrid"},
        normalized_payload={"sg_message_id": "x.filter1"},
    )
    assert _state(engine, early).linkable_at is not None
    assert _state(engine, late).linkable_at is None
    state = _state(engine, mailglass_style)
    assert (state.provider, state.provider_message_id) == ("sendgrid", "x.filter1")


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_schedule_and_no_examination_before_the_retry_time(engine: Engine) -> None:
    orphan = make_orphan(engine, tenant_id="t1", message_id="m-never")
    expected = [*BACKOFF_MINUTES, BACKOFF_CAP_MINUTES, BACKOFF_CAP_MINUTES]
    assert expected == [1, 2, 4, 8, 16, 30, 30]
    waits = []
    for number, _minutes in enumerate(expected, start=1):
        result = sweep(engine, "t1", SweepConfig())
        assert (result.scanned, result.unmatched) == (1, 1)
        state = _state(engine, orphan)
        assert state.attempts == number
        # Counted from the minute tick the sweep belongs to (tests/defs/test_backoff_ticks.py).
        tick = state.last_attempted_at.replace(second=0, microsecond=0)
        waits.append((state.next_attempt_at - tick) / timedelta(minutes=1))
        # One second before its retry time it is not examined; at its retry time it is.
        until = (state.next_attempt_at - _db_now(engine)).total_seconds()
        _shift(engine, until - 1)
        assert sweep(engine, "t1", SweepConfig()).scanned == 0
        _shift(engine, 1.5)
    assert waits == expected


def test_retry_all_ignores_the_backoff(engine: Engine) -> None:
    orphans = {make_orphan(engine, tenant_id=f"t{i % 2}", message_id=f"m-{i}") for i in range(6)}
    assert sweep(engine, None, SweepConfig()).scanned == 6
    assert sweep(engine, None, SweepConfig()).scanned == 0
    forced = sweep(engine, None, SweepConfig(retry_all=True))
    assert (forced.scanned, forced.unmatched, forced.tenants_swept) == (6, 6, 2)
    assert {r[0] for r in rows(engine, f"SELECT event_id FROM {QUEUE} WHERE attempts = 2")} == orphans
    assert sweep(engine, "t0", SweepConfig(retry_all=True)).scanned == 3


def test_delivery_committing_is_linked_next_sweep_behind_thousands_of_examined_never_matching(
    engine: Engine,
) -> None:
    bulk_unmatchable_orphans(engine, tenant_id="t1", count=3000, oldest_age_seconds=3600)
    matchable = make_orphan(engine, tenant_id="t1", message_id="m-good", age=timedelta(minutes=5))
    config = SweepConfig(limit=1000)
    while sweep(engine, "t1", config).scanned:  # examine everything once
        pass
    _shift(engine, 3600)  # every retry time has come: 3,001 orphans due for retry, more than the limit
    target = make_delivery(engine, tenant_id="t1", message_id="m-good")
    result = sweep(engine, "t1", config)
    assert (result.scanned, result.linked) == (1000, 1)
    assert reconciled_from(engine) == {matchable: target}


# -- one sweep over many tenants ----------------------------------------------------------------


def test_one_tenant_with_100k_due_orphans_does_not_delay_the_others(engine: Engine) -> None:
    bulk_unmatchable_orphans(
        engine, tenant_id="big", count=100_000, oldest_age_seconds=7200
    )  # older than everyone else
    expected = {}
    for i in range(50):
        for k in range(2):
            orphan = make_orphan(engine, tenant_id=f"small-{i:02d}", message_id=f"s-{i}-{k}")
            expected[orphan] = make_delivery(engine, tenant_id=f"small-{i:02d}", message_id=f"s-{i}-{k}")
    result = sweep(engine, None, SweepConfig(limit=1000))
    assert reconciled_from(engine) == expected
    assert (result.scanned, result.linked, result.tenants_swept) == (1100, 100, 51)
    assert result.tenants["big"]["scanned"] == 1000
    assert set(result.tenants) == {"big", *(f"small-{i:02d}" for i in range(50))}
    assert result.due_remaining == 99_000
    assert result.remaining_orphans == 100_000
    assert result.oldest_due_age_seconds is not None and result.oldest_due_age_seconds > 7000


def test_total_cap_is_shared_fairly(engine: Engine) -> None:
    wanted = {"a": 1, "b": 3, "c": 40, "d": 40, "e": 40}
    for tenant, count in wanted.items():
        bulk_unmatchable_orphans(engine, tenant_id=tenant, count=count, oldest_age_seconds=600)
    # 50 in all: a and b whole (4), then 46 for three tenants: 16, 15, 15; the longest-waiting gets the extra.
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {QUEUE} SET orphan_inserted_at = orphan_inserted_at - interval '1 minute'"
                             " WHERE tenant_id = 'd'"))  # fmt: skip
    result = sweep(engine, None, SweepConfig(max_total=50))
    assert {t: c["scanned"] for t, c in result.tenants.items()} == {"a": 1, "b": 3, "c": 15, "d": 16, "e": 15}
    assert (result.scanned, result.due_remaining) == (50, 124 - 50)
    # The next sweeps take the rest, still fairly, and nothing starves.
    second = sweep(engine, None, SweepConfig(max_total=50))
    assert {t: c["scanned"] for t, c in second.tenants.items()} == {"c": 17, "d": 17, "e": 16}
    third = sweep(engine, None, SweepConfig(max_total=50))
    assert third.scanned == 24 and third.due_remaining == 0
    # Fewer slots than tenants: one each for the longest-waiting tenants.
    _shift(engine, 3600)
    tiny = sweep(engine, None, SweepConfig(max_total=2))
    assert tiny.scanned == 2 and tiny.tenants_swept == 2
    # Per-tenant limit and total cap together; a tenant-scoped sweep obeys both.
    assert sweep(engine, "c", SweepConfig(limit=5, max_total=3)).scanned == 3


def test_statement_count_does_not_grow_with_the_tenants(engine: Engine) -> None:
    def seed(prefix: str, tenants: int) -> None:
        with engine.begin() as conn:
            for sql in (
                "INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,"
                " provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)"
                " SELECT gen_random_uuid(), :p || g, 'M', 'transactional', 'a@b.c', 'b.c', 'postmark', :p || g,"
                " 'dispatched', now(), now(), now()"
                "   FROM generate_series(1, :n) g",
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,"
                " inserted_at)"
                " SELECT gen_random_uuid(), :p || g, 'opened', now(),"
                "        jsonb_build_object('provider', 'postmark', 'provider_message_id', :p || g), true,"
                "        now() - interval '5 minutes' FROM generate_series(1, :n) g",
                "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,"
                " inserted_at)"
                " SELECT gen_random_uuid(), :p || g, 'opened', now(),"
                "        jsonb_build_object('provider', 'postmark', 'provider_message_id', 'none-' || :p || g), true,"
                "        now() - interval '5 minutes' FROM generate_series(1, :n) g",
            ):
                conn.execute(sa.text(sql), {"p": prefix, "n": tenants})

    counts = []
    for prefix, tenants in (("one-", 1), ("many-", 500)):
        seed(prefix, tenants)
        with statements_sent(engine) as seen:
            result = sweep(engine, None, SweepConfig())
        assert (result.tenants_swept, result.linked, result.unmatched) == (tenants, tenants, tenants)
        counts.append(len(seen))
        # Tick backoff: past a minute boundary this round's unmatched orphans would be due in the next.
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {QUEUE} SET next_attempt_at = now() + interval '1 hour'"))
    assert counts[0] == counts[1], counts


def test_concurrent_all_tenant_sweeps_take_disjoint_orphans(engine: Engine) -> None:
    for i in range(6):
        make_orphan(engine, tenant_id=f"t{i % 3}", message_id=f"m-{i}")
        make_delivery(engine, tenant_id=f"t{i % 3}", message_id=f"m-{i}")
    with engine.connect() as first:
        first.begin()
        held = set(find_orphans(first, None, SweepConfig(limit=1), lock=True)["id"])
        assert len(held) == 3
        result = sweep(engine, None, SweepConfig())
        assert result.linked == 3 and held.isdisjoint(reconciled_from(engine))
        first.rollback()
    assert sweep(engine, None, SweepConfig()).linked == 3


# -- summaries -------------------------------------------------------------------------------------


def test_due_summary_and_reconciliation_lag(engine: Engine) -> None:
    with engine.connect() as conn:
        assert due_summary(conn) == DueSummary(0, 0, None)
    make_orphan(engine, tenant_id="t1", message_id="m-1", age=timedelta(minutes=10))  # due for 9 minutes (grace 60 s)
    make_orphan(engine, tenant_id="t1", message_id="m-2", age=timedelta(minutes=3))
    make_orphan(engine, tenant_id="t2", message_id="m-3", age=timedelta(minutes=2))
    make_orphan(engine, tenant_id="t3", message_id="m-young", age=timedelta(seconds=10))  # inside grace: not due
    with engine.connect() as conn:
        summary = due_summary(conn)
    assert (summary.tenants, summary.orphans) == (2, 3)
    assert summary.oldest_due_age_seconds is not None and abs(summary.oldest_due_age_seconds - 540) < 30

    sweep(engine, None, SweepConfig())  # all unmatched: nothing due now, no lag (nothing linkable)
    with engine.connect() as conn:
        assert due_summary(conn).orphans == 0
        assert reconciliation_lag(conn, threshold_seconds=0) == LagSummary(0, None)
    make_delivery(engine, tenant_id="t1", message_id="m-1")
    make_delivery(engine, tenant_id="t2", message_id="m-3")
    _absorb(engine)  # as the schedule's tick does before it reads (decision D27)
    with engine.begin() as conn:  # t1's delivery committed 400 s ago, t2's just now
        conn.execute(sa.text(f"UPDATE {QUEUE} SET linkable_at = now() - interval '400 seconds' WHERE tenant_id = 't1'"
                             " AND linkable_at IS NOT NULL"))  # fmt: skip
    with engine.connect() as conn:
        lag = reconciliation_lag(conn)
        assert lag.count == 1 and lag.longest_wait_seconds is not None and abs(lag.longest_wait_seconds - 400) < 30
        assert reconciliation_lag(conn, "t2").count == 0
        assert reconciliation_lag(conn, threshold_seconds=0).count == 2
        assert due_summary(conn).tenants == 2
    result = sweep(engine, None, SweepConfig())
    assert result.linked == 2
    assert result.lag_seconds is not None and abs(result.lag_seconds - 400) < 30
    with engine.connect() as conn:
        assert reconciliation_lag(conn, threshold_seconds=0).count == 0


# -- migration ------------------------------------------------------------------------------------


def test_migration_from_0002_keeps_pending_orphans_and_makes_them_due_correctly(blank_database_url: str) -> None:
    engine = create_engine(blank_database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            config = schema.alembic_config(blank_database_url)
            config.attributes["connection"] = conn
            command.upgrade(config, "0002_ingest")
            conn.commit()
        assert schema.current_revision(blank_database_url) == "0002_ingest"
        fresh = make_orphan(engine, tenant_id="t1", message_id="m-fresh", age=timedelta(minutes=20))
        retry_due = make_orphan(
            engine, tenant_id="t1", message_id="m-retry-due", age=timedelta(hours=2)
        )  # 3rd wait: 4 min
        backing_off = make_orphan(
            engine, tenant_id="t1", message_id="m-backing-off", age=timedelta(hours=3)
        )  # 6th wait: 30 min
        linkable = make_orphan(
            engine, tenant_id="t2", message_id="m-linkable", age=timedelta(hours=1)
        )  # examined, delivery since
        parked = make_orphan(engine, tenant_id="t2", message_id=None)  # malformed, parked
        with engine.begin() as conn:
            examined = (
                (retry_due, 3, 10),
                (backing_off, 6, 5),
                (linkable, 2, 0.5),
            )
            for orphan, attempts, minutes_ago in examined:
                conn.execute(
                    sa.text(f"UPDATE {QUEUE} SET attempts = :a, last_attempted_at = now() - make_interval(secs => :s)"
                            " WHERE event_id = :o"),
                    {"a": attempts, "s": minutes_ago * 60, "o": orphan},
                )  # fmt: skip
            conn.execute(sa.text(f"UPDATE {QUEUE} SET attempts = 1, last_attempted_at = now(), parked_at = now(),"
                                 " parked_reason = 'malformed' WHERE event_id = :o"), {"o": parked})  # fmt: skip
            conn.execute(sa.text(_DELIVERY), {"t": "t2", "p": "postmark", "m": "m-linkable"})
        before = {
            r[0]: r[1:] for r in rows(engine, f"SELECT event_id, attempts, last_attempted_at, parked_at FROM {QUEUE}")
        }

        schema.upgrade(blank_database_url)

        after = {
            r[0]: r[1:] for r in rows(engine, f"SELECT event_id, attempts, last_attempted_at, parked_at FROM {QUEUE}")
        }
        assert after == before  # state kept
        states = {o: _state(engine, o) for o in before}
        assert states[fresh].next_attempt_at is None and states[fresh].linkable_at is None
        assert states[retry_due].next_attempt_at - states[retry_due].last_attempted_at == timedelta(minutes=4)
        assert states[backing_off].next_attempt_at - states[backing_off].last_attempted_at == timedelta(minutes=30)
        assert states[linkable].next_attempt_at is None and states[linkable].linkable_at is not None
        assert (states[linkable].provider, states[linkable].provider_message_id) == ("postmark", "m-linkable")
        assert states[parked].parked_at is not None
        with engine.connect() as conn:
            assert set(find_orphans(conn, None, SweepConfig())["id"]) == {fresh, retry_due, linkable}
        result = sweep(engine, None, SweepConfig())
        assert (result.scanned, result.linked) == (3, 1)
        assert set(reconciled_from(engine)) == {linkable}
        # And the new triggers work on the upgraded database.
        make_delivery(engine, tenant_id="t1", message_id="m-backing-off")
        assert _is_due_and_linkable(engine, backing_off)
    finally:
        engine.dispose()
