"""Decisions D4 and D8: which orphans a sweep examines, how they link, and in what order."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.reconciliation.sweep import find_orphans, sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import (
    QUEUE,
    bulk_unmatchable_orphans,
    insert_raw_orphan,
    make_delivery,
    make_orphan,
    pending_orphans,
    reconciled_from,
    rows,
)


def _found(engine: Engine, tenant_id: str | None = None, **config: int) -> list[uuid.UUID]:
    with engine.begin() as conn:
        return list(find_orphans(conn, tenant_id, SweepConfig(**config))["id"])


# -- grace window and max age ----------------------------------------------------------


def test_grace_window_edges(engine: Engine) -> None:
    make_delivery(engine, tenant_id="t1", message_id="m-59")
    make_delivery(engine, tenant_id="t1", message_id="m-61")
    past = make_orphan(engine, tenant_id="t1", message_id="m-61", age=timedelta(seconds=61))
    inside = make_orphan(
        engine, tenant_id="t1", message_id="m-59", age=timedelta(seconds=59)
    )  # ~1 s of slack before it turns 60
    assert _found(engine, "t1", grace_seconds=60) == [past]
    result = sweep(engine, "t1", SweepConfig(grace_seconds=60))
    assert (result.scanned, result.linked) == (1, 1)
    assert set(reconciled_from(engine)) == {past}
    assert inside in pending_orphans(engine)  # still waiting, not parked


def test_grace_window_boundary_is_inclusive_at_transaction_time(engine: Engine) -> None:
    # now() is fixed inside one transaction, so the boundary can be hit exactly.
    insert = sa.text(
        "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,"
        " inserted_at)"
        " VALUES (gen_random_uuid(), 't1', 'opened', now(),"
        ' \'{"provider": "postmark", "provider_message_id": "x"}\', true,'
        "         now() - make_interval(secs => :age)) RETURNING id"
    )
    with engine.begin() as conn:
        at_edge = conn.execute(insert, {"age": 60}).scalar_one()
        conn.execute(insert, {"age": 59.999})
        assert list(find_orphans(conn, "t1", SweepConfig(grace_seconds=60))["id"]) == [at_edge]


def test_max_age_edges_and_stale_orphans_are_parked(engine: Engine) -> None:
    young = make_orphan(engine, tenant_id="t1", message_id="m-young", age=timedelta(minutes=9, seconds=50))
    stale = make_orphan(engine, tenant_id="t1", message_id="m-stale", age=timedelta(minutes=10, seconds=10))
    make_delivery(engine, tenant_id="t1", message_id="m-young")
    make_delivery(engine, tenant_id="t1", message_id="m-stale")  # matchable, but too old to be looked at
    config = SweepConfig(max_age_minutes=10, grace_seconds=60)
    assert _found(engine, "t1", max_age_minutes=10) == [young]
    result = sweep(engine, "t1", config)
    assert (result.scanned, result.linked, result.stale_orphans, result.remaining_orphans) == (1, 1, 1, 0)
    assert set(reconciled_from(engine)) == {young}
    assert stale not in pending_orphans(engine)
    again = sweep(engine, "t1", config)
    assert (again.scanned, again.linked, again.stale_orphans) == (0, 0, 1)
    # Parked for good: a longer max age later does not resurrect it into the scan.
    assert sweep(engine, "t1", SweepConfig()).scanned == 0


def test_default_max_age_is_seven_days(engine: Engine) -> None:
    inside = make_orphan(engine, tenant_id="t1", message_id="m-in", age=timedelta(days=7) - timedelta(minutes=1))
    make_orphan(engine, tenant_id="t1", message_id="m-out", age=timedelta(days=7) + timedelta(minutes=1))
    assert _found(engine, "t1") == [inside]
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.unmatched, result.stale_orphans, result.remaining_orphans) == (1, 1, 1, 1)


# -- tenants ----------------------------------------------------------------------------


def test_message_id_colliding_across_tenants_never_links_across(engine: Engine) -> None:
    orphan_a = make_orphan(engine, tenant_id="tenant-a", message_id="shared-id")
    delivery_b = make_delivery(engine, tenant_id="tenant-b", message_id="shared-id")
    result = sweep(engine, None, SweepConfig())
    assert (result.scanned, result.linked, result.unmatched) == (1, 0, 1)
    assert reconciled_from(engine) == {}

    orphan_b = make_orphan(engine, tenant_id="tenant-b", message_id="shared-id")
    result = sweep(engine, None, SweepConfig(retry_all=True))
    assert (result.scanned, result.linked, result.unmatched) == (2, 1, 1)
    assert reconciled_from(engine) == {orphan_b: delivery_b}
    assert pending_orphans(engine) == {orphan_a}
    assert result.tenants["tenant-a"]["remaining_orphans"] == 1
    assert result.tenants["tenant-b"]["linked"] == 1


def test_sendgrid_prefix_match_never_crosses_tenants(engine: Engine) -> None:
    make_orphan(engine, tenant_id="tenant-a", message_id="abc123.filterdrecv-1", provider="sendgrid")
    make_delivery(engine, tenant_id="tenant-b", message_id="abc123", provider="sendgrid")
    assert sweep(engine, None, SweepConfig()).linked == 0


def test_tenant_scoped_sweep_leaves_other_tenants_alone(engine: Engine) -> None:
    mine = make_orphan(engine, tenant_id="t1", message_id="m-1")
    other = make_orphan(engine, tenant_id="t2", message_id="m-2")
    make_delivery(engine, tenant_id="t2", message_id="m-2")
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.tenant_id) == (1, 0, "t1")
    assert rows(engine, f"SELECT event_id, attempts FROM {QUEUE} ORDER BY attempts") == [(other, 0), (mine, 1)]


# -- where the message id comes from ------------------------------------------------------


MESSAGE_ID_KEYS = ("provider_message_id", "message_id", "sg_message_id")


def _prefixed(document: dict[str, str], prefix: str) -> dict[str, str]:
    """Give every message id a per-case prefix: the delivery unique index is global, cases share one database."""
    return {k: f"{prefix}{v}" if k in MESSAGE_ID_KEYS and v else v for k, v in document.items()}


LINK_CASES = [
    ({"provider": "postmark", "message_id": "mg-1"}, {}, "postmark", "mg-1"),
    ({"provider": "sendgrid", "sg_message_id": "sg-1"}, {}, "sendgrid", "sg-1"),
    ({"provider": "postmark"}, {"provider_message_id": "np-1"}, "postmark", "np-1"),
    ({"provider": "postmark"}, {"message_id": "np-2"}, "postmark", "np-2"),
    ({"provider": "sendgrid"}, {"sg_message_id": "np-3"}, "sendgrid", "np-3"),
    # SendGrid webhooks carry "<X-Message-Id>.filter..." while the sender stored the prefix.
    ({"provider": "sendgrid", "sg_message_id": "14c5d75ce93.filterdrecv-p3las1-1-5B.0"}, {}, "sendgrid", "14c5d75ce93"),
    ({"provider": "sendgrid", "message_id": "xyz.filter0001.16648.5"}, {}, "sendgrid", "xyz"),
    ({"provider": "sendgrid"}, {"sg_message_id": "qrs.filter0001"}, "sendgrid", "qrs"),
]


def test_rows_written_by_mailglass_link(engine: Engine) -> None:
    expected = {}
    for case, (metadata, payload, provider, stored) in enumerate(LINK_CASES):
        prefix = f"c{case}-"
        orphan = make_orphan(
            engine,
            tenant_id=f"t{case}",
            message_id=None,
            metadata=_prefixed(metadata, prefix),
            normalized_payload=_prefixed(payload, prefix),
        )
        expected[orphan] = make_delivery(engine, tenant_id=f"t{case}", message_id=prefix + stored, provider=provider)
    result = sweep(engine, None, SweepConfig())
    assert (result.scanned, result.linked, result.malformed) == (len(LINK_CASES), len(LINK_CASES), 0)
    assert reconciled_from(engine) == expected


PRECEDENCE_CASES = [
    ({"provider_message_id": "p", "message_id": "m", "sg_message_id": "s"}, {}, "p"),
    ({"message_id": "m", "sg_message_id": "s"}, {}, "m"),
    ({"sg_message_id": "s"}, {}, "s"),
    ({}, {"provider_message_id": "p", "message_id": "m", "sg_message_id": "s"}, "p"),
    ({}, {"message_id": "m", "sg_message_id": "s"}, "m"),
    ({"provider_message_id": "p"}, {"provider_message_id": "m"}, "p"),
    # "read provider_message_id, then message_id, then sg_message_id, first in metadata, then in
    # normalized_payload": any key in metadata beats every key in normalized_payload.
    ({"sg_message_id": "s"}, {"provider_message_id": "p"}, "s"),
    # Only a non-empty string counts; an empty value is skipped in favour of the next key.
    ({"provider_message_id": "", "message_id": "m"}, {}, "m"),
]


def test_message_id_precedence(engine: Engine) -> None:
    expected = {}
    for case, (metadata, payload, winner) in enumerate(PRECEDENCE_CASES):
        prefix = f"c{case}-"
        targets = {
            mid: make_delivery(engine, tenant_id=f"t{case}", message_id=prefix + mid, provider="sendgrid")
            for mid in "pms"
        }
        orphan = make_orphan(
            engine,
            tenant_id=f"t{case}",
            message_id=None,
            metadata={"provider": "sendgrid", **_prefixed(metadata, prefix)},
            normalized_payload=_prefixed(payload, prefix),
        )
        expected[orphan] = targets[winner]
    assert sweep(engine, None, SweepConfig()).linked == len(PRECEDENCE_CASES)
    assert reconciled_from(engine) == expected


def test_sendgrid_exact_match_beats_prefix_and_prefix_rule_is_sendgrid_only(engine: Engine) -> None:
    exact = make_delivery(engine, tenant_id="t1", message_id="abc.filter1", provider="sendgrid")
    make_delivery(engine, tenant_id="t1", message_id="abc", provider="sendgrid")
    make_delivery(engine, tenant_id="t1", message_id="def", provider="postmark")
    sg = make_orphan(engine, tenant_id="t1", message_id="abc.filter1", provider="sendgrid")
    pm = make_orphan(engine, tenant_id="t1", message_id="def.filter1", provider="postmark")
    other_provider = make_orphan(engine, tenant_id="t1", message_id="def", provider="mailgun")
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.unmatched) == (3, 1, 2)
    assert reconciled_from(engine) == {sg: exact}
    assert pending_orphans(engine) == {pm, other_provider}


# -- malformed orphans ---------------------------------------------------------------------

MALFORMED = [
    ({"provider_message_id": "m-1"}, {}),  # no provider
    ({"provider": "postmark"}, {}),  # no message id
    ({"provider": "postmark", "provider_message_id": ""}, {}),
    ({"provider": "postmark", "provider_message_id": 123}, {}),
    ({"provider": "postmark", "message_id": {"id": "m-1"}}, {}),
    ({"provider": "postmark", "sg_message_id": ["m-1"]}, {}),
    ({"provider": "postmark", "provider_message_id": None}, {"message_id": True}),
    ({"provider": 7, "provider_message_id": "m-1"}, {}),
    ({"provider": ["postmark"], "provider_message_id": "m-1"}, {}),
    ({"provider": {"name": "postmark"}, "provider_message_id": "m-1"}, {}),
    (["postmark", "m-1"], {}),  # metadata is a JSON array
    ("postmark m-1", {}),  # metadata is a JSON string
    (42, {"provider_message_id": "m-1"}),  # metadata is a number
    ({}, ["provider", "m-1"]),  # normalized_payload is an array
]


def test_malformed_orphans_are_counted_never_linked_never_rescanned(engine: Engine) -> None:
    # Deliveries whose ids equal what a sloppy text cast of the bad values would produce.
    for mid in ("m-1", "123", '{"id": "m-1"}', '["m-1"]', "true", "postmark m-1"):
        make_delivery(engine, tenant_id="t1", message_id=mid)
    orphans = {
        insert_raw_orphan(engine, tenant_id="t1", metadata_json=json.dumps(meta), payload_json=json.dumps(payload))
        for meta, payload in MALFORMED
    }
    good = make_orphan(engine, tenant_id="t1", message_id="m-1")
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.malformed, result.unmatched) == (
        len(MALFORMED) + 1,
        1,
        len(MALFORMED),
        0,
    )
    assert set(reconciled_from(engine)) == {good}
    assert pending_orphans(engine) == set()
    assert orphans.isdisjoint(reconciled_from(engine))
    again = sweep(engine, "t1", SweepConfig())
    assert (again.scanned, again.linked, again.malformed) == (0, 0, 0)


# -- order, limit, starvation -----------------------------------------------------------


def test_limit_takes_oldest_first(engine: Engine) -> None:
    ages = [3, 9, 5, 7, 4]
    ids = {age: make_orphan(engine, tenant_id="t1", message_id=f"m-{age}", age=timedelta(minutes=age)) for age in ages}
    assert _found(engine, "t1", limit=2) == [ids[9], ids[7]]
    assert _found(engine, "t1", limit=10) == [ids[a] for a in sorted(ages, reverse=True)]
    result = sweep(engine, "t1", SweepConfig(limit=2))
    assert result.scanned == 2


def _retry_now(engine: Engine, *orphans: uuid.UUID) -> None:
    """Let time pass for these orphans: their retry time has come (the examination times are kept)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {QUEUE} SET next_attempt_at = now() - interval '1 second' WHERE event_id = ANY(:ids)"),
            {"ids": list(orphans)},
        )


def test_never_examined_first_then_least_recently_examined(engine: Engine) -> None:
    config = SweepConfig(limit=1)
    newer = make_orphan(engine, tenant_id="t1", message_id="m-newer", age=timedelta(minutes=5))
    assert sweep(engine, "t1", config).scanned == 1  # examines `newer` first (it is alone)
    # An older orphan arrives later (a backdated insert by another writer): never examined, so it goes first.
    older = make_orphan(engine, tenant_id="t1", message_id="m-older", age=timedelta(minutes=10))
    assert _found(engine, "t1", limit=1) == [older]
    sweep(engine, "t1", config)
    assert _found(engine, "t1", limit=3) == []  # both examined, both backing off
    _retry_now(engine, newer, older)
    # Both due again: `newer` was examined longest ago, so it comes back first despite being younger.
    assert _found(engine, "t1", limit=3) == [newer, older]
    fresh = make_orphan(engine, tenant_id="t1", message_id="m-fresh", age=timedelta(minutes=2))
    assert _found(engine, "t1", limit=3) == [fresh, newer, older]


def test_thousands_of_unmatchable_orphans_do_not_starve_a_matchable_one(engine: Engine) -> None:
    bulk_unmatchable_orphans(engine, tenant_id="t1", count=3000, oldest_age_seconds=3600)
    matchable = make_orphan(engine, tenant_id="t1", message_id="m-good", age=timedelta(minutes=5))
    target = make_delivery(engine, tenant_id="t1", message_id="m-good")
    # Its delivery is there, so it goes before the 3,000 older never-examined orphans.
    result = sweep(engine, "t1", SweepConfig(limit=1000))
    assert (result.scanned, result.linked) == (1000, 1)
    assert reconciled_from(engine) == {matchable: target}


def _start_early_in_a_minute(engine: Engine) -> None:
    """Backoff counts minute ticks: a retry set just before a boundary is due just after it. Start well
    inside a minute (by the database's clock), so the sweeps that follow see the backoff, not the boundary."""
    with engine.connect() as conn:
        second = float(conn.execute(sa.text("SELECT EXTRACT(SECOND FROM now())")).scalar_one())
    if second > 40:
        time.sleep(60.2 - second)


def test_unmatched_backlog_waits_for_its_retry_time_and_a_delivery_wakes_its_orphan(engine: Engine) -> None:
    orphans = [make_orphan(engine, tenant_id="t1", message_id=f"m-{i}", age=timedelta(minutes=5 + i)) for i in range(5)]
    _start_early_in_a_minute(engine)
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.unmatched, result.remaining_orphans) == (5, 0, 5, 5)
    for _ in range(2):
        result = sweep(engine, "t1", SweepConfig())
        assert (result.scanned, result.remaining_orphans) == (0, 5)
    target = make_delivery(engine, tenant_id="t1", message_id="m-3")
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.remaining_orphans) == (1, 1, 4)
    assert reconciled_from(engine) == {orphans[3]: target}


def test_second_sweep_is_empty_when_everything_matched(engine: Engine) -> None:
    for i in range(20):
        make_orphan(engine, tenant_id=f"t{i % 3}", message_id=f"m-{i}", event_type="opened" if i % 2 else "delivered")
        make_delivery(engine, tenant_id=f"t{i % 3}", message_id=f"m-{i}")
    first = sweep(engine, None, SweepConfig())
    assert (first.scanned, first.linked, first.remaining_orphans) == (20, 20, 0)
    second = sweep(engine, None, SweepConfig())
    assert (second.scanned, second.linked) == (0, 0)
    assert len(reconciled_from(engine)) == 20


def test_orphan_with_infinite_occurred_at_is_malformed_not_a_poison_pill(engine: Engine) -> None:
    # 'infinity' is a valid timestamptz a plain-SQL writer can store, but no Python driver can load it.
    target = make_delivery(engine, tenant_id="t1", message_id="m-1")
    good = make_orphan(engine, tenant_id="t1", message_id="m-1")
    with engine.begin() as conn:
        for value in ("infinity", "-infinity"):
            conn.execute(
                sa.text(
                    "INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,"
                    " inserted_at) VALUES (gen_random_uuid(), 't1', 'opened', CAST(:v AS timestamptz),"
                    ' \'{"provider": "postmark", "provider_message_id": "m-1"}\', true,'
                    " now() - interval '5 minutes')"
                ),
                {"v": value},
            )
    result = sweep(engine, "t1", SweepConfig())
    assert (result.scanned, result.linked, result.malformed) == (3, 1, 2)
    assert reconciled_from(engine) == {good: target}
    assert (sweep(engine, "t1", SweepConfig()).scanned, pending_orphans(engine)) == (0, set())


# -- linkable first across tenants (the all-tenant sweep) --------------------------------


def test_linkable_orphan_goes_first_across_tenants_in_the_first_bounded_transaction(engine: Engine) -> None:
    # One tenant holds 100,000 never-matching orphans, all older (waiting longer) than the other
    # tenant's single orphan, whose delivery exists.
    bulk_unmatchable_orphans(engine, tenant_id="hopeless", count=100_000, oldest_age_seconds=3600)
    linkable = make_orphan(engine, tenant_id="small", message_id="m-good", age=timedelta(minutes=2))
    target = make_delivery(engine, tenant_id="small", message_id="m-good")
    # Even a transaction with room for one orphan spends it on the linkable one.
    first = sweep(engine, None, SweepConfig(max_total=1))
    assert (first.scanned, first.linked, first.tenants_swept) == (1, 1, 1)
    assert reconciled_from(engine) == {linkable: target}
    assert first.due_remaining == 100_000
    # The never-matching orphans are then examined with the room left: per-tenant quota, oldest first.
    second = sweep(engine, None, SweepConfig(max_total=2000, limit=1500))
    assert (second.scanned, second.linked, second.unmatched) == (1500, 0, 1500)


def test_linkable_orphans_share_the_cap_fairly_before_any_other_due_orphan(engine: Engine) -> None:
    linkable: dict[str, list[uuid.UUID]] = {}
    for tenant in ("l0", "l1", "l2"):
        linkable[tenant] = [
            make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-m{i}", age=timedelta(minutes=2))
            for i in range(4)
        ]
        for i in range(4):
            make_delivery(engine, tenant_id=tenant, message_id=f"{tenant}-m{i}")
        make_orphan(engine, tenant_id=tenant, message_id=f"{tenant}-never", age=timedelta(minutes=50))
    for i in range(20):  # tenants with only never-matching orphans, all waiting longer
        make_orphan(engine, tenant_id=f"n{i}", message_id=f"n{i}-never", age=timedelta(minutes=30))
    # 6 slots: 2 linkable per linkable tenant (fair), none to the 23 never-matching orphans.
    result = sweep(engine, None, SweepConfig(max_total=6))
    assert (result.scanned, result.linked) == (6, 6)
    assert {t: c["linked"] for t, c in result.tenants.items()} == {"l0": 2, "l1": 2, "l2": 2}
    # 10 slots: the 6 linkable left first, then 4 of the others, the longest waiting first.
    result = sweep(engine, None, SweepConfig(max_total=10))
    assert (result.scanned, result.linked, result.unmatched) == (10, 6, 4)
    assert len(reconciled_from(engine)) == 12
