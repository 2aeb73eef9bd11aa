"""Delivery rows (``mailglass_deliveries``): the sending application's side.

The lookup here (statement ``lookup_deliveries``, the function ``mailglass_reconciliation_delivery`` of
migration 0007, decision D28) is the rule that decides whether a provider event
belongs to a delivery. It matches on ``(provider, provider_message_id)``
(the global unique index) *and* the tenant, so a message id that collides
across tenants never links across them.

SendGrid rule: the send API returns ``X-Message-Id`` and the sender stores
that, while event webhooks carry ``sg_message_id`` = that id plus a suffix
starting ``.filter`` (``LRzXl_NHStOGhQ4kofSm_A.filterdrecv-...``; old-format
ids contain dots themselves: ``14c5d75ce93.dfd.64b469.filter0001...``). For
provider ``sendgrid`` the lookup also tries the part before ``.filter`` and
the part before the first dot, preferring an exact match (``mailglass_reconciliation_message_ids``). Ingest already
stores the stripped id; the fallback serves orphans Mailglass wrote with the
raw ``sg_message_id``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from mailglass_pipeline import ids
from mailglass_pipeline.ledger import to_json
from mailglass_pipeline.queries import statement


def lookup(
    conn: Connection,
    tenant_ids: Sequence[str],
    providers: Sequence[str | None],
    message_ids: Sequence[str | None],
) -> list[uuid.UUID | None]:
    """Delivery id for each (tenant, provider, message id), ``None`` where nothing matches.

    One statement for the whole batch, answered from the unique index.
    """
    if not tenant_ids:
        return []
    rows = conn.execute(
        statement("lookup_deliveries"),
        {"tenant_ids": list(tenant_ids), "providers": list(providers), "message_ids": list(message_ids)},
    ).all()
    return [row[1] for row in rows]


def create(
    conn: Connection,
    *,
    tenant_id: str,
    provider: str | None,
    provider_message_id: str | None,
    recipient: str = "someone@example.com",
    mailable: str = "Mailer.welcome",
    stream: str = "transactional",
    last_event_type: str = "dispatched",
    last_event_at: datetime | None = None,
    dispatched_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    delivery_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Insert a delivery as a sending application would (used by demo, tests, benchmarks)."""
    new_id = delivery_id or ids.new_id()
    conn.execute(
        statement("create_delivery"),
        {
            "id": new_id,
            "tenant_id": tenant_id,
            "mailable": mailable,
            "stream": stream,
            "recipient": recipient,
            "domain": recipient.rpartition("@")[2],
            "provider": provider,
            "pmid": provider_message_id,
            "last_event_type": last_event_type,
            "last_event_at": last_event_at,
            "dispatched_at": dispatched_at,
            "metadata": to_json(metadata or {}),
            "idempotency_key": idempotency_key,
        },
    )
    return new_id
