"""The ingest path: verify, normalize, then store every event of a webhook in one transaction.

Why the order matters: nothing from an unauthenticated body is trusted, so
each provider module checks the signature (or Basic auth) and the signed
timestamp before it normalizes anything; a failure raises before the
database is touched. Storage then happens in ONE transaction, so a webhook is
stored entirely or not at all:

1. (Mailgun) claim the request's single-use token (``tokens``);
2. one statement (:func:`store_statement`) does the rest: look each event's
   delivery up inside the tenant by ``(provider, provider_message_id)`` (the
   rule of ``deliveries.lookup``); append one ledger event per normalized
   event. Found: the event carries ``delivery_id``. Not found: it is an
   **orphan** (``delivery_id`` NULL, ``needs_reconciliation`` TRUE) whose
   metadata holds exactly the keys the reconciler reads: ``provider``,
   ``provider_event_id``, ``provider_message_id`` (the Elixir original wrote
   other keys, so its orphans never reconciled). An event with no message id
   at all cannot ever be linked; it is stored for the record with
   ``needs_reconciliation`` FALSE (counted as ``unlinkable``) rather than
   parked forever as a malformed orphan. Fold the events actually inserted
   (never duplicates) into their deliveries' projections, and record each
   provider event in ``mailglass_webhook_events`` (a SendGrid batch: one row
   per element; ``webhook_events``);
3. if the ledger skipped a key, refuse it when another tenant holds it (409).

Why one statement: each round trip costs the receiver more CPU than the SQL
itself. The commonest webhook (one event) goes further: one autocommitted
statement that writes everything or nothing, Mailgun's token included
(:func:`store_at_once`), so no BEGIN and no COMMIT; whatever is already
stored (the event, or the token) sends it down the transaction above.
``mailglass serve`` goes further still: one-event webhooks that arrive
together share one such statement (:mod:`.grouped`).

Idempotency is the ledger's unique ``idempotency_key``
(``"<provider>:<provider_event_id>"``): the same webhook delivered twice
stores nothing new and reports ``duplicates``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import ledger, projector, queries
from mailglass_pipeline.db import (
    RETRYABLE_SQLSTATES,
    compact,
    driver_cursor,
    driver_statement,
    execute_autocommitted,
    get_engine,
    is_connection_failure,
    run_transaction,
    sqlstate_of,
    unreachable,
)
from mailglass_pipeline.deliveries import lookup_lateral
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
from mailglass_pipeline.ingest.errors import IngestConfigurationError, TenantConflictError
from mailglass_pipeline.ingest.storable import bounded_key, storable_events
from mailglass_pipeline.ingest.tenants import TenantSettings, check_tenant_id
from mailglass_pipeline.ingest.tokens import claim_token, prune_due, token_parameters

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


#: The ingest's own statements (``ingest/sql/store.sql``), by name.
STATEMENTS: dict[str, sa.TextClause] = queries.register("mailglass_pipeline.ingest", files=["store.sql"])


def refuse_cross_tenant(conn: Connection, keys: list[str], tenant_id: str) -> None:
    """Raise :class:`TenantConflictError` if any of ``keys`` is stored under another tenant.

    Runs only for the keys the insert skipped: a concurrent insert of the same
    key by another tenant has committed by then (the insert waited for it).
    """
    if not keys:
        return
    clash = conn.execute(STATEMENTS["other_tenant_key"], {"keys": keys, "tenant_id": tenant_id}).scalar()
    if clash is not None:
        raise TenantConflictError(
            f"event {clash!r} is already stored for another tenant; refused for tenant {tenant_id!r} "
            "(check the webhook URL configured at the provider)"
        )


def _metadata(parsed: ParsedWebhook, event: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "provider_event": event.provider_event,
        "recipient": event.recipient,
        "verified": parsed.verified,
        "source": "mailglass_pipeline.ingest",
    }
    metadata.update(event.extra_metadata)
    # The three keys the reconciler reads come last so nothing can shadow them.
    metadata["provider"] = parsed.provider
    metadata["provider_event_id"] = event.provider_event_id
    metadata["provider_message_id"] = event.provider_message_id
    return {key: value for key, value in metadata.items() if value is not None}


def found_cte(extra: Sequence[tuple[str, str]] = (), where: str | None = None) -> str:
    """The CTE ``found``: the ledger rows of ``:rows``, each with its delivery if there is one.

    The delivery lookup is ``deliveries.lookup``'s rule, embedded. ``extra``:
    more ``(column, type)`` of each row, carried along; rows are kept where
    the SQL condition ``where`` holds (default: all).
    """
    condition = f"WHERE {where}" if where else ""
    declared = "".join(f", {name} {kind}" for name, kind in extra)
    carried = "".join(f", r.{name}" for name, _ in extra)
    return f"""found AS (
        SELECT r.id, r.tenant_id, d.id AS delivery_id, r.type, r.occurred_at, r.idempotency_key, r.reject_reason,
               r.normalized_payload, r.metadata, r.trace_id,
               d.id IS NULL AND r.message_id IS NOT NULL AS needs_reconciliation,
               r.inserted_at, r.ord, r.provider{carried}
          FROM json_to_recordset(CAST(:rows AS json))
               AS r({ledger.RECORD_COLUMNS}, provider text, message_id text, ord integer{declared})
          LEFT JOIN {lookup_lateral("r")} d ON true
         {condition}
    )"""


def store_statement(all_or_nothing: bool, *, token: bool = False) -> str:
    """The whole store in ONE statement (one round trip), in the driver's placeholder style.

    The raw records, the delivery lookup (``deliveries.lookup``'s rule,
    embedded), the ledger insert and the projection of the events actually
    inserted, each from its one home. The cross-tenant check cannot join it:
    it must see what a concurrent insert committed while this statement waited
    on the key, which a later statement's snapshot does (and only when
    something was skipped). ``all_or_nothing``: the raw records are written
    only if the ledger took an event; for a one-event request, either
    everything is written or nothing. ``token`` (with ``all_or_nothing``):
    also claim a single-use token (Mailgun's; parameters of
    :func:`.tokens.token_parameters`) with the ledger event, by a plain insert: a
    token already claimed fails the whole statement (unique violation), so a
    replay writes nothing. Compacted to stay under
    ``db.DRIVER_CACHED_QUERY_BYTES`` (tested).
    """
    gate = "EXISTS (SELECT 1 FROM appended)" if all_or_nothing else "true"
    claim = (
        f"tok AS (INSERT INTO mailglass_webhook_tokens (provider, token, tenant_id, body_sha256)"
        f" SELECT :provider, :token, :tenant_id, :digest WHERE {gate}),"
        if token
        else ""
    )
    sql = f"""
    WITH {found_cte()}, appended AS ({ledger.insert_from("found AS r")}
    ), linked AS (
        SELECT f.delivery_id, f.type, f.occurred_at, f.ord
          FROM found f JOIN appended a ON a.id = f.id
         WHERE f.delivery_id IS NOT NULL
    ), {projector.locked_projection_ctes("linked")}, {claim}
    {webhook_events.rows_cte(gate)}
    SELECT f.id, f.delivery_id, f.needs_reconciliation, a.id IS NOT NULL AS inserted
      FROM found f LEFT JOIN appended a ON a.id = f.id
     ORDER BY f.ord
    """
    return driver_statement(sa.text(compact(sql)))


_STORE = store_statement(all_or_nothing=False)
_STORE_AT_ONCE = store_statement(all_or_nothing=True)
_STORE_AT_ONCE_TOKEN = store_statement(all_or_nothing=True, token=True)
#: SQLSTATEs on which the one-statement path leaves the request to the transaction, which answers it
#: as before: a token already claimed (unique violation), the token table missing (a configuration error).
_LEAVE_TO_TRANSACTION = RETRYABLE_SQLSTATES | {"23505", "42P01"}


def ledger_rows(
    parsed: ParsedWebhook, events: list[NormalizedEvent], tenant_id: str, received_at: datetime | None
) -> list[dict[str, Any]]:
    """The rows of ``:rows`` (the CTE ``found``): one ledger record per event, with provider, message id, order."""
    rows = []
    for ord_, event in enumerate(events):
        row = ledger.record(
            ledger.NewEvent(
                tenant_id=tenant_id,
                type=event.type,
                occurred_at=event.occurred_at,
                idempotency_key=bounded_key(
                    event.idempotency_key or f"{parsed.provider}:{event.provider_event_id}", parsed.provider
                ),
                reject_reason=event.reject_reason,
                normalized_payload=event.payload,
                metadata=_metadata(parsed, event),
                inserted_at=received_at,
            )
        )
        row.update(provider=parsed.provider, message_id=event.provider_message_id, ord=ord_)
        rows.append(row)
    return rows


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


def counts_of(results: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The result of the store statement's rows: (id, delivery_id, needs_reconciliation, inserted)."""
    written = [(event_id, delivery_id, orphan) for event_id, delivery_id, orphan, inserted in results if inserted]
    return {
        "events": len(written),
        "linked": sum(1 for _, delivery_id, _ in written if delivery_id is not None),
        "orphans": sum(1 for _, _, orphan in written if orphan),
        "unlinkable": sum(1 for _, delivery_id, orphan in written if delivery_id is None and not orphan),
        "duplicates": len(results) - len(written),
        "event_ids": [str(event_id) for event_id, _, _ in written],
    }


def store_at_once(engine: Engine, parsed: ParsedWebhook, tenant_id: str) -> dict[str, Any] | None:
    """Store a one-event request as ONE autocommitted statement; None if it wrote nothing.

    The common webhook, in one round trip instead of three (no BEGIN, no
    COMMIT; a Mailgun request: five): the statement is its own transaction,
    and its all-or-nothing variant writes the raw record (and the token) only
    with the ledger event, so when the event was already stored (a
    redelivery, a key of another tenant, a race) nothing at all is written
    and None sends the request down the ordinary transaction of
    :func:`store`, which answers it exactly as before (duplicate, or 409). A
    token already claimed, a deadlock or a serialization failure also
    return None (the transaction refuses the replay, or retries).
    """
    events = storable_events(parsed.events)
    if len(events) != 1:
        return None
    params, _ = _parameters(parsed, events, tenant_id, None, None)
    statement = _STORE_AT_ONCE
    if parsed.replay_token is not None:
        params.update(token_parameters(parsed.replay_token, tenant_id))
        statement = _STORE_AT_ONCE_TOKEN
    try:
        results = execute_autocommitted(engine, statement, params)
    except sa.exc.DBAPIError as exc:
        if sqlstate_of(exc) in _LEAVE_TO_TRANSACTION:
            return None
        if is_connection_failure(exc):
            raise unreachable(engine, exc) from exc
        raise
    if not all(result[3] for result in results):
        return None
    return counts_of(results)


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
    if not events:
        return counts_of([])
    params, rows = _parameters(parsed, events, tenant_id, received_at, webhook_key)
    with driver_cursor(conn) as cursor:
        results = cursor.execute(_STORE, params).fetchall()
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

    Returns ``{"provider", "tenant_id", "verified", "received", "events",
    "linked", "orphans", "unlinkable", "duplicates", "event_ids"}``:
    ``received`` provider events in the request, ``events`` new ledger rows
    (``linked`` + ``orphans`` + ``unlinkable``), ``duplicates`` already stored.
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
    needs_store = parsed.events or parsed.replay_token is not None
    counts = store_parsed(engine or get_engine(database_url), parsed, tenant_id) if needs_store else counts_of([])
    return result_of(parsed, tenant_id, counts)


def store_parsed(engine: Engine, parsed: ParsedWebhook, tenant_id: str, *, prune: bool | None = None) -> dict[str, Any]:
    """Store a verified webhook: the one statement when it can, else the transaction; returns the counts.

    ``prune``: whether a Mailgun token claim also deletes the expired tokens (default: :func:`.tokens.prune_due`).
    """
    # The expired tokens are pruned in the transaction: a claim due for it skips the one statement.
    if prune is None:
        prune = parsed.replay_token is not None and prune_due()
    counts = None if prune else store_at_once(engine, parsed, tenant_id)
    if counts is None:
        counts = run_transaction(engine, lambda conn: store(conn, parsed, tenant_id, prune_tokens=prune))
    return counts


def result_of(parsed: ParsedWebhook, tenant_id: str, counts: dict[str, Any]) -> dict[str, Any]:
    """The answer of :func:`ingest` for ``parsed`` stored with ``counts``."""
    result: dict[str, Any] = {
        "provider": parsed.provider,
        "tenant_id": tenant_id,
        "verified": parsed.verified,
        "received": len(parsed.events),
    }
    result.update(counts)
    result.update(parsed.notice)
    return result
