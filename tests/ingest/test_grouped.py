"""The receiver's group commit: several one-event webhooks in ONE statement, each all or nothing.

Against a real PostgreSQL: each request of a group gets the counts it would
get alone, or None (stored nothing: the receiver then takes the ordinary
path, which answers duplicate, 409 or replay); a failed statement stores
nothing at all. The coalescer that forms the groups is tested on a real
event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.db import create_engine, get_engine
from mailglass_pipeline.errors import DatabaseUnavailableError
from mailglass_pipeline.ingest import IngestSettings, ingest
from mailglass_pipeline.ingest.base import ParsedWebhook
from mailglass_pipeline.ingest.coalescer import Coalescer
from mailglass_pipeline.ingest.core import parse_webhook, store_alone
from mailglass_pipeline.ingest.errors import DeliveryLockedError, TenantConflictError
from mailglass_pipeline.ingest.grouped import BUSY, MAX_GROUP, groupable, store_grouped
from mailglass_pipeline.ingest.samples import SampleKeys, build_webhook
from tests.factories import count_events, delivery, make_delivery


def parsed(
    provider: str, message_id: str, keys: SampleKeys, settings: IngestSettings, kind: str = "delivered"
) -> ParsedWebhook:
    body, headers = build_webhook(provider, message_id, kind, keys=keys)
    return parse_webhook(provider, body, headers, settings=settings)


def table_counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("mailglass_events", "mailglass_webhook_events", "mailglass_webhook_tokens")
        )


def webhook_rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text("SELECT tenant_id, provider FROM mailglass_webhook_events"))]


def test_each_request_of_a_group_is_stored_alone_or_not_at_all(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    linked_id = make_delivery(engine, tenant_id="t1", provider="postmark", message_id="g-linked", dispatched=True)
    # Stored before the group: an event of t1 (redelivered in the group, and sent again to t2's URL),
    # and a Mailgun token (its replay with another body is in the group).
    dup_body, dup_headers = build_webhook("resend", "g-dup", keys=keys)
    ingest("resend", dup_body, dup_headers, tenant_id="t1", database_url=database_url, settings=settings)
    mailgun_body, mailgun_headers = build_webhook("mailgun", "g-mg-first", keys=keys)
    ingest("mailgun", mailgun_body, mailgun_headers, tenant_id="t1", database_url=database_url, settings=settings)
    forged, _ = build_webhook("mailgun", "g-mg-forged", "bounced", keys=keys)
    replay = {**json.loads(forged), "signature": json.loads(mailgun_body)["signature"]}
    before = table_counts(engine)

    twice = parsed("sendgrid", "g-twice", keys, settings)
    group = [
        (parsed("postmark", "g-linked", keys, settings), "t1"),  # its delivery exists: linked
        (parsed("ses", "g-orphan", keys, settings), "t2"),  # an orphan of another tenant
        (parse_webhook("resend", dup_body, dup_headers, settings=settings), "t1"),  # a redelivery
        (parse_webhook("resend", dup_body, dup_headers, settings=settings), "t2"),  # a key t1 holds
        (parse_webhook("mailgun", json.dumps(replay).encode(), {}, settings=settings), "t1"),  # a claimed token
        (parsed("mailgun", "g-mg-new", keys, settings), "t2"),  # a new token: claimed with its event
        (twice, "t1"),
        (twice, "t1"),  # the same event twice in the group
    ]
    assert all(groupable(request) for request, _ in group)
    results = store_grouped(get_engine(database_url, pre_ping=False), group)

    linked, orphan, dup, foreign, replayed, new_token, first, second = results
    assert linked is not None and (linked["events"], linked["linked"]) == (1, 1)
    assert orphan is not None and (orphan["events"], orphan["orphans"]) == (1, 1)
    assert new_token is not None and new_token["events"] == 1
    assert (dup, foreign, replayed) == (None, None, None)
    assert [first is None, second is None].count(True) == 1
    # Four requests stored: four ledger events, four raw records, one more token; nothing for the rest.
    assert table_counts(engine) == (before[0] + 4, before[1] + 4, before[2] + 1)
    assert delivery(engine, linked_id).last_event_type == "delivered"
    assert webhook_rows(engine).count(("t2", "ses")) == 1 and webhook_rows(engine).count(("t2", "mailgun")) == 1

    # The ordinary path answers the ones left out exactly as before.
    again = ingest("resend", dup_body, dup_headers, tenant_id="t1", database_url=database_url, settings=settings)
    assert again["duplicates"] == 1
    with pytest.raises(TenantConflictError):
        ingest("resend", dup_body, dup_headers, tenant_id="t2", database_url=database_url, settings=settings)


def test_a_failed_group_statement_stores_nothing(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    # Two requests claiming the same Mailgun token with different bodies (one a forgery): the token's
    # unique key fails the statement, and nothing of the group is written, not even the honest request.
    body, headers = build_webhook("mailgun", "g-race", keys=keys)
    forged, _ = build_webhook("mailgun", "g-race-forged", "bounced", keys=keys)
    replay = {**json.loads(forged), "signature": json.loads(body)["signature"]}
    group = [
        (parsed("postmark", "g-bystander", keys, settings), "t1"),
        (parse_webhook("mailgun", body, headers, settings=settings), "t1"),
        (parse_webhook("mailgun", json.dumps(replay).encode(), {}, settings=settings), "t1"),
    ]
    assert store_grouped(get_engine(database_url, pre_ping=False), group) == [None, None, None]
    assert table_counts(engine) == (0, 0, 0)
    # Alone, the honest ones are stored and the forgery refused.
    results = store_grouped(get_engine(database_url, pre_ping=False), group[:2])
    assert [result and result["events"] for result in results] == [1, 1]
    assert store_grouped(get_engine(database_url, pre_ping=False), group[2:]) == [None]
    assert count_events(engine) == 2


def test_only_one_event_requests_are_grouped(keys: SampleKeys, settings: IngestSettings) -> None:
    batch = json.dumps([json.loads(build_webhook("sendgrid", f"b{i}")[0])[0] for i in range(2)]).encode()
    assert not groupable(parse_webhook("sendgrid", batch, {}, verify=False, settings=settings))
    assert groupable(parsed("postmark", "one", keys, settings))


async def settle() -> None:
    """Let every ready task run until each waits (a few turns of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_coalescer_flushes_a_lone_item_at_once_and_groups_a_burst() -> None:
    flushed: list[list[int]] = []

    async def scenario() -> list[int]:
        release = asyncio.Event()

        async def flush(items: Sequence[int]) -> list[int]:
            flushed.append(list(items))
            await release.wait()
            return [item * 10 for item in items]

        coalescer: Coalescer[int, int] = Coalescer(flush, max_group=3, max_in_flight=1, patience=0)
        first = asyncio.ensure_future(coalescer.submit(0))
        await settle()
        assert flushed == [[0]]  # nothing else waiting: flushed alone, at once
        burst = [asyncio.ensure_future(coalescer.submit(i)) for i in range(1, 6)]
        await settle()
        assert flushed == [[0]]  # the only slot is busy: the burst queues
        release.set()
        return [await first, *await asyncio.gather(*burst)]

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50]
    assert flushed == [[0], [1, 2, 3], [4, 5]]  # the queue went out in groups of at most max_group


def test_coalescer_gives_a_failed_flush_to_every_waiter() -> None:
    async def scenario() -> list[Any]:
        async def flush(items: Sequence[int]) -> list[int]:
            raise RuntimeError("flush failed")

        coalescer: Coalescer[int, int] = Coalescer(flush, max_group=MAX_GROUP, max_in_flight=1, patience=0)
        return await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)

    assert [str(result) for result in asyncio.run(scenario())] == ["flush failed"] * 3


def test_coalescer_starts_another_flush_beside_one_that_is_stuck() -> None:
    # A group statement stuck on a lock must not hold up every webhook behind it.
    flushed: list[list[int]] = []

    async def scenario() -> list[int]:
        stuck, release = asyncio.Event(), asyncio.Event()

        async def flush(items: Sequence[int]) -> list[int]:
            flushed.append(list(items))
            if 0 in items:
                stuck.set()
                await release.wait()
            return list(items)

        coalescer: Coalescer[int, int] = Coalescer(flush, max_group=MAX_GROUP, max_in_flight=2, patience=0.2)
        first = asyncio.ensure_future(coalescer.submit(0))
        await stuck.wait()
        others = asyncio.gather(*(coalescer.submit(i) for i in (1, 2)))
        await settle()
        assert flushed == [[0]]  # the running flush is young: the others wait for it
        assert await others == [1, 2]  # ... until it has run for `patience`: then they go, beside it
        assert not first.done()
        release.set()
        return [await first]

    assert asyncio.run(scenario()) == [0]
    assert flushed == [[0], [1, 2]]


def test_an_unreachable_database_fails_the_whole_group_at_once(keys: SampleKeys, settings: IngestSettings) -> None:
    # Not one more connect timeout per request: the receiver answers every request of the group 503.
    nowhere = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing", pre_ping=False)
    group = [(parsed("postmark", f"g-down-{index}", keys, settings), "t1") for index in range(3)]
    with pytest.raises(DatabaseUnavailableError, match="unreachable"):
        store_grouped(nowhere, group)


def test_a_group_leaves_out_a_request_whose_delivery_is_locked(
    database_url: str, engine: Engine, keys: SampleKeys, settings: IngestSettings
) -> None:
    held = make_delivery(engine, tenant_id="t1", provider="postmark", message_id="g-held", dispatched=True)
    make_delivery(engine, tenant_id="t1", provider="postmark", message_id="g-free", dispatched=True)
    requests = [
        (parsed("postmark", "g-held", keys, settings), "t1"),
        (parsed("postmark", "g-free", keys, settings), "t1"),
        (parsed("resend", "g-orphan", keys, settings), "t1"),
    ]
    before = delivery(engine, held).lock_version
    with engine.connect() as holder:  # an application's long transaction holding the delivery
        holder.execute(sa.text("SELECT 1 FROM mailglass_deliveries WHERE id = :i FOR UPDATE"), {"i": held})
        started = time.monotonic()
        outcomes = store_grouped(engine, requests)
        assert time.monotonic() - started < 2  # not waited for
        assert outcomes[0] is BUSY
        assert isinstance(outcomes[1], dict) and outcomes[1]["linked"] == 1
        assert isinstance(outcomes[2], dict) and outcomes[2]["orphans"] == 1
        assert count_events(engine, "t1") == 2 and delivery(engine, held).lock_version == before
        # Its own transaction, with a lock timeout: refused at once, nothing stored.
        with pytest.raises(DeliveryLockedError):
            store_alone(engine, requests[0][0], "t1", prune=False, lock_timeout=0.1)
        holder.rollback()
    # Released: the same request is stored, in a group as alone.
    (counts,) = store_grouped(engine, requests[:1])
    assert isinstance(counts, dict) and counts["linked"] == 1
    assert delivery(engine, held).last_event_type == "delivered"
