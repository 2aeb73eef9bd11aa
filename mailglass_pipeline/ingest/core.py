"""The ingest path: verify, normalize, then store every event of a webhook in one transaction.

Why the order matters: nothing from an unauthenticated body is trusted, so
each provider module checks the signature (or Basic auth) and the signed
timestamp before it normalizes anything; a failure raises before the
database is touched. Storage then happens in ONE transaction, so a webhook is
stored entirely or not at all:

1. (Mailgun) claim the request's single-use token (``tokens``);
2. one statement (``store_webhook`` in ``sql/store.sql``) does the rest but the
   projection: look each event's delivery up inside the tenant by ``(provider,
   provider_message_id)`` (the lookup rule); append one ledger event per normalized
   event. Found: the event carries ``delivery_id``. Not found: it is an
   **orphan** (``delivery_id`` NULL, ``needs_reconciliation`` TRUE) whose
   metadata holds exactly the keys the reconciler reads: ``provider``,
   ``provider_event_id``, ``provider_message_id`` (the Elixir original wrote
   other keys, so its orphans never reconciled). An event with no message id
   at all cannot ever be linked; it is stored for the record with
   ``needs_reconciliation`` FALSE (counted as ``unlinkable``) rather than
   parked forever as a malformed orphan. Record each provider event in
   ``mailglass_webhook_events`` (a SendGrid batch: one row per element;
   ``webhook_events``);
3. fold the events actually inserted (never duplicates) into their
   deliveries' projections: :func:`.projector.project` (its
   lock in id order, then the rules' one home), which the sweep runs too
   (decision D6); no round trip when no inserted event has a delivery;
4. if the ledger skipped a key, refuse it when another tenant holds it (409).

Why one statement for the rest: each round trip costs the receiver more CPU
than the SQL itself. The commonest webhook (one event) goes further: one
statement that writes everything or nothing, Mailgun's token included, then
its projection, in one transaction (:mod:`.grouped`); whatever is already
stored (the event, or the token) sends it down the transaction above.
``mailglass serve`` goes further: one-event webhooks that arrive together
share one such statement.

Idempotency is the ledger's unique ``idempotency_key``
(``"<provider>:<provider_event_id>"``): the same webhook delivered twice
stores nothing new and reports ``duplicates``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import ledger, projector
from mailglass_pipeline.db import RawStatement, driver_cursor, get_engine, run_transaction, sqlstate_of
from mailglass_pipeline.ingest import mailgun, postmark, resend, sendgrid, ses, webhook_events
from mailglass_pipeline.ingest.base import (
    PROVIDERS,
    Headers,
    IngestSettings,
    NormalizedEvent,
    ParsedWebhook,
    check_size,
    now_utc,
)
from mailglass_pipeline.ingest.errors import DeliveryLockedError, IngestConfigurationError, TenantConflictError
from mailglass_pipeline.ingest.grouped import groupable, store_grouped
from mailglass_pipeline.ingest.rows import counts_of, ledger_rows
from mailglass_pipeline.ingest.storable import storable_events
from mailglass_pipeline.ingest.tenants import TenantSettings, check_tenant_id
from mailglass_pipeline.ingest.tokens import claim_token, prune_due
from mailglass_pipeline.queries import statement

log = logging.getLogger(__name__)

Parser = Callable[..., ParsedWebhook]
PARSERS: dict[str, Parser] = {
    "postmark": postmark.parse,
    "sendgrid": sendgrid.parse,
    "mailgun": mailgun.parse,
    "ses": ses.parse,
    "resend": resend.parse,
}
assert tuple(PARSERS) == PROVIDERS


def _check_provider(provider: object) -> str:
    if not isinstance(provider, str) or provider.lower() not in PARSERS:
        raise IngestConfigurationError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    return provider.lower()


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"body must be bytes, got {type(body).__name__}")


def parse_webhook(
    provider: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    verify: bool = True,
    settings: IngestSettings | None = None,
    now: datetime | None = None,
) -> ParsedWebhook:
    """Verify and normalize without touching the database (raises the typed ingest errors)."""
    name = _check_provider(provider)
    settings = settings or IngestSettings.from_env()
    data = _as_bytes(body)
    # What every provider needs first, done once here: a bounded body and one clock reading.
    check_size(data, settings)
    parsed = PARSERS[name](data, Headers(headers), verify_signature=verify, settings=settings, now=now_utc(now))
    return dataclasses.replace(parsed, body=data)


def refuse_cross_tenant(conn: Connection, keys: list[str], tenant_id: str) -> None:
    """Raise :class:`TenantConflictError` if any of ``keys`` is stored under another tenant.

    Runs only for the keys the insert skipped: a concurrent insert of the same
    key by another tenant has committed by then (the insert waited for it).
    """
    if not keys:
        return
    clash = conn.execute(statement("other_tenant_key"), {"keys": keys, "tenant_id": tenant_id}).scalar()
    if clash is not None:
        raise TenantConflictError(
            f"event {clash!r} is already stored for another tenant; refused for tenant {tenant_id!r} "
            "(check the webhook URL configured at the provider)"
        )


#: The store inside the transaction (``sql/store.sql``), sent as is by psycopg's raw cursor.
_STORE = RawStatement.of(statement("store_webhook"))


def _parameters(
    parsed: ParsedWebhook,
    events: list[NormalizedEvent],
    tenant_id: str,
    received_at: datetime | None,
    webhook_key: str | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = ledger_rows(parsed, events, tenant_id, received_at)
    params = {"tenant_id": tenant_id, "provider": parsed.provider, "rows": ledger.to_json(rows)}
    params.update(webhook_events.parameters(parsed, events, parsed.body, received_at=received_at, key=webhook_key))
    return params, rows


def store(
    conn: Connection,
    parsed: ParsedWebhook,
    tenant_id: str,
    *,
    received_at: datetime | None = None,
    webhook_key: str | None = None,
    prune_tokens: bool | None = None,
) -> dict[str, Any]:
    """Append ``parsed``'s events and their ``mailglass_webhook_events`` rows inside the caller's transaction.

    ``received_at`` is when the webhook originally arrived (the rows'
    ``inserted_at``, which the reconciler's grace and max-age windows read);
    default ``now()``. Replays of captures and the demo set it.
    ``webhook_key`` pins the key of a single webhook row for the whole request
    (a replay reuses the stored row's, since the body it rebuilds is not
    byte-identical). ``prune_tokens``: see :func:`.tokens.claim_token`. Returns the counts.
    """
    if parsed.replay_token is not None:
        claim_token(conn, parsed.replay_token, tenant_id, prune=prune_tokens)
    events = storable_events(parsed.events)
    if not events and not parsed.malformed:
        return counts_of([])
    params, rows = _parameters(parsed, events, tenant_id, received_at, webhook_key)
    with driver_cursor(conn) as cursor:
        results = cursor.execute(_STORE.text, _STORE.values(params)).fetchall()
    # The events inserted that have a delivery; the statement's rows come in the webhook's order, as rows.
    won = [
        {"delivery_id": result[1], "type": row["type"], "occurred_at": row["occurred_at"], "ord": row["ord"]}
        for row, result in zip(rows, results, strict=True)
        if result[3] and result[1] is not None
    ]
    projector.project(conn, won)
    skipped = {result[0] for result in results if not result[3]}
    refuse_cross_tenant(conn, [row["idempotency_key"] for row in rows if row["id"] in skipped], tenant_id)
    return counts_of(results)


def ingest(
    provider: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tenant_id: str,
    database_url: str | None = None,
    verify: bool = True,
    settings: IngestSettings | None = None,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Verify, normalize and store one provider webhook for ``tenant_id``.

    Returns ``{"provider", "tenant_id", "verified", "received", "malformed", "events",
    "linked", "orphans", "unlinkable", "duplicates", "event_ids"}``:
    ``received`` provider events in the request, ``malformed`` those of them
    that are not events (batch elements kept as raw records with status
    ``failed``), ``events`` new ledger rows (``linked`` + ``orphans`` +
    ``unlinkable``), ``duplicates`` already stored.
    SNS confirmations add ``sns_type``, ``topic_arn`` and ``subscribe_url``.

    Raises :class:`WebhookSignatureError` / :class:`WebhookPayloadError`
    (nothing written), :class:`TenantConflictError` when an event is already
    stored for another tenant (nothing written), :class:`InvalidTenantIdError`
    for an unfit tenant id, :class:`IngestConfigurationError` for a missing
    secret or bad argument. ``verify=False`` skips signature, auth, timestamp and
    token checks: only for captures verified when they were received.
    ``settings`` defaults to the environment, with the tenant's own entry
    from ``MAILGLASS_WEBHOOK_SECRETS`` when it has one; ``now`` pins the clock for the
    timestamp tolerance (tests, replays); ``engine`` (default: the process-wide
    one for ``database_url``) lets the receiver use its own pool.
    """
    name = _check_provider(provider)
    check_tenant_id(tenant_id)
    if settings is None:
        settings = TenantSettings.from_env().for_tenant(tenant_id, name)
    parsed = parse_webhook(name, body, headers, verify=verify, settings=settings, now=now)
    if not verify:
        log.info("ingesting a %s webhook WITHOUT signature verification", name)
    return result_of(parsed, tenant_id, store_parsed(engine or get_engine(database_url), parsed, tenant_id))


def store_parsed(
    engine: Engine,
    parsed: ParsedWebhook,
    tenant_id: str,
    *,
    prune: bool | None = None,
    try_group: bool = True,
    lock_timeout: float | None = None,
) -> dict[str, Any]:
    """Store a verified webhook; returns the counts.

    A one-event webhook as a group of one (:func:`.grouped.store_grouped`, one
    statement and its projection, pipelined); a batch, a Mailgun claim due to prune the expired
    tokens, or a webhook the group left out in :func:`store_alone`. ``prune``:
    the caller's draw of :func:`prunes_tokens` (else drawn here); ``try_group=False``:
    the caller already offered it to a group (``mailglass serve`` groups requests);
    ``lock_timeout``: see :func:`store_alone`.
    """
    if not needs_storing(parsed):
        return counts_of([])
    prune = prunes_tokens(parsed) if prune is None else prune
    if try_group and joins_group(parsed, prune=prune):
        counts = store_grouped(engine, [(parsed, tenant_id)])[0]
        # Not stored by the group (left out, or its delivery locked: BUSY): its own transaction.
        if isinstance(counts, dict):
            return counts
    return store_alone(engine, parsed, tenant_id, prune=prune, lock_timeout=lock_timeout)


def joins_group(parsed: ParsedWebhook, *, prune: bool) -> bool:
    """Whether ``parsed`` is stored in a group statement: one event, and no token pruning due."""
    return not prune and groupable(parsed)


def needs_storing(parsed: ParsedWebhook) -> bool:
    """Whether ``parsed`` has anything to store: events, malformed elements to keep, or a Mailgun token to claim."""
    return bool(parsed.events) or bool(parsed.malformed) or parsed.replay_token is not None


def prunes_tokens(parsed: ParsedWebhook) -> bool:
    """Whether storing ``parsed`` also deletes the expired Mailgun tokens (about one claim in ``PRUNE_EVERY``)."""
    return parsed.replay_token is not None and prune_due()


#: SQLSTATE lock_not_available: a lock wait ran past ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"


def store_alone(
    engine: Engine, parsed: ParsedWebhook, tenant_id: str, *, prune: bool, lock_timeout: float | None = None
) -> dict[str, Any]:
    """Store ``parsed`` in its own transaction (:func:`store`), retried on a deadlock; returns the counts.

    ``lock_timeout``: seconds the transaction may wait for a row lock (a
    delivery held by an application's long transaction); past it, nothing is
    stored and :class:`DeliveryLockedError` is raised, so the receiver never
    parks a thread behind one locked row. None (the command line, the API):
    wait as long as it takes.
    """

    def work(conn: Connection) -> dict[str, Any]:
        if lock_timeout is not None:  # an integer of milliseconds, so formatting it in is safe
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout * 1000))}")
        return store(conn, parsed, tenant_id, prune_tokens=prune)

    try:
        return run_transaction(engine, work)
    except sa.exc.DBAPIError as exc:
        if sqlstate_of(exc) == LOCK_NOT_AVAILABLE:
            raise DeliveryLockedError(
                f"a row this {parsed.provider} webhook updates is locked by another transaction; nothing stored"
            ) from exc
        raise


def result_of(parsed: ParsedWebhook, tenant_id: str, counts: dict[str, Any]) -> dict[str, Any]:
    """The answer of :func:`ingest` for ``parsed`` stored with ``counts``."""
    result: dict[str, Any] = {
        "provider": parsed.provider,
        "tenant_id": tenant_id,
        "verified": parsed.verified,
        "received": len(parsed.events) + len(parsed.malformed),
        # Elements of an authentic batch that are not events: kept as raw records (status failed), not refused.
        "malformed": len(parsed.malformed),
    }
    result.update(counts)
    result.update(parsed.notice)
    return result
