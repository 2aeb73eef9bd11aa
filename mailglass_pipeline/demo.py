"""Demo data: three tenants caught in the webhook race.

What a real install sees in its first minutes, per tenant:

* deliveries whose webhooks arrived after the delivery committed (linked
  events, no orphan);
* the race itself: webhooks that arrived a few minutes ago, before their
  delivery row committed (orphans the next sweep links);
* webhooks for mail this install never sent (never match, retried);
* events missing their message id (malformed: counted, never linked);
* 8-day-old orphans (past max age: reported stale, not scanned).

Everything is keyed deterministically (uuid5 ids, fixed idempotency keys,
``ON CONFLICT DO NOTHING``), so seeding twice adds nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import ledger
from mailglass_pipeline.db import run_transaction

TENANTS = ("acme", "globex", "initech")
PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")
NAMESPACE = uuid.UUID("6d61696c-676c-6173-732d-64656d6f0000")

#: (count per tenant) of each kind of row the demo makes.
LINKED_DELIVERIES = 12
RACED_ORPHANS = 8
NEVER_MATCHING = 4
MALFORMED = 2
STALE = 3


def _id(*parts: object) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts))


def _message_id(provider: str, tenant: str, kind: str, n: int) -> str:
    return f"{provider}-{tenant}-{kind}-{n:04d}"


def _delivery_params(tenant: str, provider: str, message_id: str, at: datetime) -> dict[str, Any]:
    recipient = f"{message_id}@{tenant}.example"
    return {
        "id": _id("delivery", tenant, message_id),
        "tenant_id": tenant,
        "recipient": recipient,
        "domain": f"{tenant}.example",
        "provider": provider,
        "pmid": message_id,
        "at": at,
        "key": f"demo:{tenant}:{message_id}",
    }


_INSERT_DELIVERY = sa.text(
    """
    INSERT INTO mailglass_deliveries
        (id, tenant_id, mailable, stream, recipient, recipient_domain, provider, provider_message_id,
         last_event_type, last_event_at, dispatched_at, idempotency_key, status, inserted_at, updated_at)
    VALUES (:id, :tenant_id, 'DemoMailer.receipt', 'transactional', :recipient, :domain, :provider, :pmid,
            'dispatched', :at, :at, :key, 'sent', :at, :at)
    ON CONFLICT DO NOTHING
    """
)


def _webhook_event(
    tenant: str,
    provider: str,
    message_id: str | None,
    event_type: str,
    at: datetime,
    *,
    key: str,
    delivery_id: uuid.UUID | None = None,
) -> ledger.NewEvent:
    metadata: dict[str, Any] = {"provider": provider, "provider_event_id": key}
    if message_id is not None:
        metadata["provider_message_id"] = message_id
    return ledger.NewEvent(
        id=_id("event", key),
        tenant_id=tenant,
        type=event_type,
        occurred_at=at,
        inserted_at=at + timedelta(seconds=2),
        delivery_id=delivery_id,
        idempotency_key=f"{provider}:{key}",
        metadata=metadata,
        normalized_payload={"event": event_type, "message_id": message_id, "demo": True},
        needs_reconciliation=delivery_id is None,
    )


def _seed_tenant(conn: Connection, tenant: str, now: datetime) -> dict[str, int]:
    events: list[ledger.NewEvent] = []
    deliveries: list[dict[str, Any]] = []
    for n in range(LINKED_DELIVERIES):
        provider = PROVIDERS[n % len(PROVIDERS)]
        mid = _message_id(provider, tenant, "sent", n)
        sent_at = now - timedelta(hours=2, minutes=n)
        params = _delivery_params(tenant, provider, mid, sent_at)
        deliveries.append(params)
        events.append(
            _webhook_event(
                tenant,
                provider,
                mid,
                "delivered",
                sent_at + timedelta(seconds=20),
                key=f"{tenant}-delivered-{n}",
                delivery_id=params["id"],
            )
        )
    for n in range(RACED_ORPHANS):
        provider = PROVIDERS[n % len(PROVIDERS)]
        mid = _message_id(provider, tenant, "race", n)
        arrived = now - timedelta(minutes=2 + n)
        event_type = ("delivered", "opened", "bounced", "clicked")[n % 4]
        events.append(_webhook_event(tenant, provider, mid, event_type, arrived, key=f"{tenant}-race-{n}"))
        # The delivery row committed after its webhook arrived: that is the race.
        deliveries.append(_delivery_params(tenant, provider, mid, arrived - timedelta(seconds=30)))
    for n in range(NEVER_MATCHING):
        provider = PROVIDERS[n % len(PROVIDERS)]
        events.append(
            _webhook_event(
                tenant,
                provider,
                _message_id(provider, tenant, "foreign", n),
                "delivered",
                now - timedelta(minutes=5 + n),
                key=f"{tenant}-foreign-{n}",
            )
        )
    for n in range(MALFORMED):
        events.append(
            _webhook_event(
                tenant, "postmark", None, "opened", now - timedelta(minutes=7 + n), key=f"{tenant}-malformed-{n}"
            )
        )
    for n in range(STALE):
        provider = PROVIDERS[n % len(PROVIDERS)]
        events.append(
            _webhook_event(
                tenant,
                provider,
                _message_id(provider, tenant, "stale", n),
                "delivered",
                now - timedelta(days=8, minutes=n),
                key=f"{tenant}-stale-{n}",
            )
        )
    made = conn.execute(_INSERT_DELIVERY, deliveries).rowcount
    inserted = ledger.append_events(conn, events)
    return {
        "deliveries": made,
        "events": len(inserted),
        "orphans": sum(e.id in inserted and e.needs_reconciliation for e in events),
    }


def seed(engine: Engine, tenants: tuple[str, ...] = TENANTS) -> dict[str, Any]:
    """Seed the demo tenants in one transaction; returns what was made per tenant."""
    now = datetime.now(UTC)

    def work(conn: Connection) -> dict[str, Any]:
        made = {tenant: _seed_tenant(conn, tenant, now) for tenant in tenants}
        return {
            "tenants": made,
            "expected_first_sweep": {
                "linked_per_tenant": RACED_ORPHANS,
                "unmatched_per_tenant": NEVER_MATCHING,
                "malformed_per_tenant": MALFORMED,
                "stale_per_tenant": STALE,
            },
            "already_seeded": all(counts["events"] == 0 for counts in made.values()),
        }

    return run_transaction(engine, work)


def is_empty(engine: Engine) -> bool:
    """True when the ledger holds no deliveries yet (the quick start seeds only then)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT NOT EXISTS (SELECT 1 FROM mailglass_deliveries)")).scalar_one()
