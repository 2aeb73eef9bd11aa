"""Demo data: three tenants caught in the webhook race, seeded through the ingest path.

What a real install sees in its first minutes, per tenant:

* deliveries whose webhooks arrived after the delivery committed (ingested
  as linked events, projections updated, no orphan);
* the race itself: webhooks that arrived a few minutes ago, before their
  delivery row committed (ingested as orphans; the delivery rows are
  inserted afterwards; the next sweep links them);
* webhooks for mail this install never sent (orphans that never match);
* orphans another writer stored without a message id (malformed: counted,
  never linked; the ingest path itself never writes such an orphan, so these
  are written to the ledger directly, as plain SQL or an old client would);
* 8-day-old orphans (past max age: reported stale, not scanned).

Webhook bodies are the providers' formats built by
:mod:`mailglass_pipeline.ingest.samples` and go through the same
normalizers as real traffic (``verify=False``: nothing is signed here).
A tenant already seeded is left alone, so seeding twice adds nothing.

``late`` (``mailglass demo --late``) plays the race live: webhooks for mail
sent just now arrive first (orphans), and their deliveries commit a minute or
two later, in waves. With the schedule on, an operator watches the orphans
wait, then ``linked`` rise and the lag fall as each wave is swept. Each call
makes new orphans (a batch id in the message ids), so it can be repeated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import ledger
from mailglass_pipeline.db import run_transaction
from mailglass_pipeline.ingest.core import parse_webhook, store
from mailglass_pipeline.ingest.samples import build_webhook
from mailglass_pipeline.queries import statement

TENANTS = ("acme", "globex", "initech")
PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")
NAMESPACE = uuid.UUID("6d61696c-676c-6173-732d-64656d6f0000")

#: How many of each kind of row the demo makes per tenant.
LINKED_DELIVERIES = 10
RACED_ORPHANS = 8
NEVER_MATCHING = 4
MALFORMED = 2
STALE = 3
RACE_TYPES = ("delivered", "opened", "bounced", "clicked")


def _id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts))


def _message_id(provider: str, tenant: str, kind: str, n: int) -> str:
    return f"{provider}-{tenant}-{kind}-{n:04d}"


def _recipient(tenant: str, n: int) -> str:
    return f"customer{n}@{tenant}.example"


def _insert_deliveries(conn: Connection, tenant: str, rows: list[tuple[str, str, datetime, int]]) -> int:
    if not rows:
        return 0
    params = [
        {
            "id": _id("delivery", tenant, mid),
            "tenant_id": tenant,
            "recipient": _recipient(tenant, n),
            "domain": f"{tenant}.example",
            "provider": provider,
            "pmid": mid,
            "at": at,
            "key": f"demo:{tenant}:{mid}",
        }
        for provider, mid, at, n in rows
    ]
    return conn.execute(statement("demo_insert_delivery"), params).rowcount


def _webhook(
    conn: Connection, tenant: str, provider: str, message_id: str, event_type: str, at: datetime, n: int
) -> dict[str, Any]:
    body, headers = build_webhook(
        provider,
        message_id,
        event_type,
        occurred_at=at,
        recipient=_recipient(tenant, n),
        event_id=str(_id("webhook", tenant, message_id, event_type)),  # stable: a re-seed is a duplicate
    )
    parsed = parse_webhook(provider, body, headers, verify=False)
    # Received a couple of seconds after the provider's event time.
    return store(conn, parsed, tenant, received_at=at + timedelta(seconds=2))


def _seed_tenant(conn: Connection, tenant: str, now: datetime) -> dict[str, int]:
    counts = {"deliveries": 0, "events": 0, "orphans": 0, "linked": 0}
    # Event times are relative to now (and some providers' event ids include
    # the time), so re-seeding is guarded by the tenant's first demo delivery.
    first_key = f"demo:{tenant}:{_message_id(PROVIDERS[0], tenant, 'sent', 0)}"
    if conn.execute(statement("demo_seeded"), {"k": first_key}).first():
        return counts

    def add(result: dict[str, Any]) -> None:
        for key in ("events", "orphans", "linked"):
            counts[key] += result[key]

    # 1. Sent two hours ago; webhooks arrived after the delivery committed.
    sent = []
    for n in range(LINKED_DELIVERIES):
        provider = PROVIDERS[n % len(PROVIDERS)]
        sent.append((provider, _message_id(provider, tenant, "sent", n), now - timedelta(hours=2, minutes=n), n))
    counts["deliveries"] += _insert_deliveries(conn, tenant, sent)
    for provider, mid, at, n in sent:
        add(_webhook(conn, tenant, provider, mid, "delivered", at + timedelta(seconds=20), n))

    # 2. The race: webhook first, delivery row committed afterwards.
    raced = []
    for n in range(RACED_ORPHANS):
        provider = PROVIDERS[n % len(PROVIDERS)]
        mid = _message_id(provider, tenant, "race", n)
        at = now - timedelta(minutes=2 + n)
        add(_webhook(conn, tenant, provider, mid, RACE_TYPES[n % len(RACE_TYPES)], at, 100 + n))
        raced.append((provider, mid, at - timedelta(seconds=30), 100 + n))
    counts["deliveries"] += _insert_deliveries(conn, tenant, raced)

    # 3. Mail this install never sent.
    for n in range(NEVER_MATCHING):
        provider = PROVIDERS[(n + 1) % len(PROVIDERS)]
        mid = _message_id(provider, tenant, "foreign", n)
        add(_webhook(conn, tenant, provider, mid, "delivered", now - timedelta(minutes=5 + n), 200 + n))

    # 4. Past max age.
    for n in range(STALE):
        provider = PROVIDERS[(n + 2) % len(PROVIDERS)]
        mid = _message_id(provider, tenant, "stale", n)
        add(_webhook(conn, tenant, provider, mid, "delivered", now - timedelta(days=8, minutes=n), 300 + n))

    # 5. Another writer's orphans without a message id.
    malformed = [
        ledger.NewEvent(
            id=_id("malformed", tenant, n),
            tenant_id=tenant,
            type="opened",
            occurred_at=now - timedelta(minutes=7 + n),
            inserted_at=now - timedelta(minutes=7 + n),
            idempotency_key=f"demo-legacy:{tenant}:{n}",
            metadata={"provider": "postmark", "note": "legacy writer, message id lost"},
            needs_reconciliation=True,
        )
        for n in range(MALFORMED)
    ]
    inserted = ledger.append_events(conn, malformed)
    counts["events"] += len(inserted)
    counts["orphans"] += len(inserted)
    return counts


def seed(engine: Engine) -> dict[str, Any]:
    """Seed the demo tenants in one transaction; returns what was made per tenant."""
    now = datetime.now(UTC)

    def work(conn: Connection) -> dict[str, Any]:
        made = {tenant: _seed_tenant(conn, tenant, now) for tenant in TENANTS}
        return {
            "tenants": made,
            "expected_first_sweep_per_tenant": {
                "linked": RACED_ORPHANS,
                "unmatched": NEVER_MATCHING,
                "malformed": MALFORMED,
                "stale_orphans": STALE,
            },
            "already_seeded": all(counts["events"] == 0 for counts in made.values()),
        }

    return run_transaction(engine, work)


def is_empty(engine: Engine) -> bool:
    """True when the ledger holds no deliveries yet (the quick start seeds only then)."""
    with engine.connect() as conn:
        return conn.execute(statement("no_deliveries")).scalar_one()


#: Seconds after the webhooks at which each wave of late deliveries commits.
LATE_WAVES = (60, 120)
LATE_PER_TENANT = 6


def late(
    engine: Engine,
    *,
    waves: Sequence[float] = LATE_WAVES,
    say: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Webhooks now, their deliveries ``waves`` seconds later (split evenly); returns what was made."""
    if not waves or any(w < 0 for w in waves):
        raise ValueError("late: waves must be non-negative seconds")
    batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    started = time.monotonic()
    now = datetime.now(UTC) - timedelta(seconds=2)  # the provider's event time: received (stored) now
    pending: list[tuple[str, str, str, int]] = []  # tenant, provider, message id, n

    def arrive(conn: Connection) -> int:
        orphans = 0
        for tenant in TENANTS:
            for n in range(LATE_PER_TENANT):
                provider = PROVIDERS[n % len(PROVIDERS)]
                mid = f"{provider}-{tenant}-late-{batch}-{n:02d}"
                result = _webhook(conn, tenant, provider, mid, RACE_TYPES[n % len(RACE_TYPES)], now, 400 + n)
                orphans += result["orphans"]
                pending.append((tenant, provider, mid, 400 + n))
        return orphans

    orphans = run_transaction(engine, arrive)
    say(f"{orphans} webhook(s) arrived before their deliveries ({len(TENANTS)} tenant(s)); deliveries follow "
        f"in {len(waves)} wave(s) at {', '.join(f'+{w:g} s' for w in waves)}")  # fmt: skip
    committed: list[int] = []
    order = sorted(waves)
    for i, delay in enumerate(order):
        share = pending[i * len(pending) // len(order) : (i + 1) * len(pending) // len(order)]
        time.sleep(max(0.0, delay - (time.monotonic() - started)))
        at = datetime.now(UTC)

        def commit(conn: Connection, share: list[tuple[str, str, str, int]] = share, at: datetime = at) -> int:
            return sum(_insert_deliveries(conn, t, [(p, mid, at, n)]) for t, p, mid, n in share)

        committed.append(run_transaction(engine, commit))
        say(f"+{delay:g} s: {committed[-1]} late deliveries committed")
    return {"batch": batch, "orphans": orphans, "late_deliveries": committed, "waves_seconds": list(order)}
