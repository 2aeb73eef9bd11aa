"""Mailgun's single-use webhook tokens, kept in the database so any worker can refuse a replay.

Mailgun signs a timestamp and a random token; the signature alone would let a
captured request be replayed within the timestamp tolerance. So each token is
claimed once, in ``mailglass_webhook_tokens`` (primary key ``(provider,
token)``), inside the transaction that stores the webhook: the database, not a
worker's memory, decides, so the receiver scales horizontally. The row keeps
the tenant and the body's digest: a token seen for another tenant is a 409
(the same webhook, or its token re-signed with the other tenant's key), a
token seen for this tenant with another body a replay (refused as not
authentic). The common
one-event path claims the token inside the store statement itself
(:mod:`.grouped`) with :func:`token_parameters`.
"""

from __future__ import annotations

import random

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mailglass_pipeline.db import sqlstate_of
from mailglass_pipeline.ingest.base import ReplayToken
from mailglass_pipeline.ingest.errors import IngestConfigurationError, TenantConflictError, WebhookSignatureError
from mailglass_pipeline.ingest.storable import bounded_key
from mailglass_pipeline.queries import statement

#: Seen tokens are kept this long; a token older than the timestamp tolerance is refused anyway.
TOKEN_RETENTION_SECONDS = 3600
#: One token claim in this many also deletes the expired tokens.
PRUNE_EVERY = 100


def token_parameters(token: ReplayToken, tenant_id: str) -> dict[str, str]:
    """The bind parameters of a token's row (``:provider``, ``:token``, ``:tenant_id``, ``:digest``)."""
    value = bounded_key(token.token, token.provider)  # a primary-key entry must stay small
    return {"provider": token.provider, "token": value, "tenant_id": tenant_id, "digest": token.body_sha256}


def prune_due() -> bool:
    """Whether this claim also deletes the expired tokens.

    Housekeeping, not a guard (an old token fails the timestamp tolerance
    anyway): about one claim in :data:`PRUNE_EVERY` pays for it, so the hot
    path keeps one statement.
    """
    return random.random() < 1 / PRUNE_EVERY


def claim_token(conn: Connection, token: ReplayToken, tenant_id: str, *, prune: bool | None = None) -> None:
    """Record a single-use token; refuse it if it was seen with another body or tenant.

    A concurrent claim of the same token waits on the primary key until the
    first transaction ends, then sees its row: exactly one of two racing
    replays can win. ``prune``: delete the expired tokens first (default:
    :func:`prune_due`).
    """
    params = token_parameters(token, tenant_id)
    try:
        if prune if prune is not None else prune_due():
            conn.execute(statement("prune_tokens"), {"retention": TOKEN_RETENTION_SECONDS})
        if conn.execute(statement("claim_token"), params).first():
            return
    except sa.exc.ProgrammingError as exc:
        if sqlstate_of(exc) == "42P01":
            raise IngestConfigurationError(
                "table mailglass_webhook_tokens is missing: run `mailglass migrate`"
            ) from exc
        raise
    seen = conn.execute(statement("seen_token"), params).first()
    if seen is not None and seen.tenant_id != tenant_id:
        # The same webhook, or its token re-signed for this tenant: either way another tenant's (409, counted).
        what = "webhook" if seen.body_sha256 == token.body_sha256 else "webhook's token"
        raise TenantConflictError(
            f"this {token.provider} {what} was already stored for another tenant; refused for tenant {tenant_id!r}"
        )
    if seen is None or (seen.tenant_id, seen.body_sha256) != (tenant_id, token.body_sha256):
        raise WebhookSignatureError(f"{token.provider} webhook token was already used: replay refused")
