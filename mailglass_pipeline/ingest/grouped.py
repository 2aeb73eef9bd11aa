"""Several one-event webhooks stored by ONE statement: the receiver's group commit.

Why: under load, the receiver's cost per webhook is mostly fixed cost per
statement, not per row: the round trip and its wake-ups, the executor's
start, the ledger trigger (once per statement), the commit and its WAL
flush. A statement of a few dozen rows costs little more than a statement of
one. So ``mailglass serve`` hands the one-event webhooks that arrive while a
statement is running to the next statement together (:mod:`.coalescer`): no
timer, so a lone webhook waits for nothing, and a burst is stored in groups
that grow with the load.

Each request keeps the answer it would get alone, because each is all or
nothing on its own inside the group:

- its raw record (statement ``store_webhooks_grouped``) and
  Mailgun's token are written only with its own ledger event, and its
  delivery's projection (:func:`.projector.project`, the rules' one home,
  decision D6) only from that event, in the same transaction;
- a request whose event is already stored (a redelivery, a key of another
  tenant, or the same event twice in the group) writes nothing, and a
  request whose token was already claimed is left out of the statement;
  both come back as ``None``, and the receiver sends them down the
  ordinary path (:func:`.core.store_alone`), which answers duplicate, 409 or
  replay exactly as before;
- a transaction that fails (a token claimed concurrently, a deadlock, a
  connection the server dropped) writes nothing at all, and every request of
  the group takes the ordinary path on its own; a database that cannot be
  reached at all answers the whole group 503 at once.

**One locked delivery never holds up the group.** The statement locks the
group's deliveries first, ``FOR NO KEY UPDATE SKIP LOCKED``: a delivery that
another transaction holds (an application's long transaction, say) is not
waited for; the requests whose event belongs to it stay out of the statement
and come back :data:`BUSY`, to be tried again by themselves a little later
(``mailglass serve`` does, within its lock wait, then answers 503 with
``Retry-After``). ``NO KEY``: the projection's UPDATE needs no more, and
the key-share locks of concurrent inserts that reference the delivery do not
conflict with it. The transaction holds these locks until its commit, so the
projection after the statement takes no other lock (``locked=True``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from mailglass_pipeline import ledger, projector
from mailglass_pipeline.db import (
    RETRYABLE_SQLSTATES,
    RawStatement,
    connect,
    driver_cursor,
    pipelined_transaction,
    sqlstate_of,
)
from mailglass_pipeline.errors import DatabaseUnavailableError
from mailglass_pipeline.ingest import webhook_events
from mailglass_pipeline.ingest.base import ParsedWebhook
from mailglass_pipeline.ingest.rows import counts_of, ledger_rows
from mailglass_pipeline.ingest.storable import storable_events
from mailglass_pipeline.ingest.tokens import token_parameters
from mailglass_pipeline.queries import statement

log = logging.getLogger(__name__)

#: Failures a group meets in normal operation: a token claimed concurrently (unique violation), a
#: deadlock or serialization failure, a dropped connection (SQLSTATE 08xxx; also when there is none).
_EXPECTED = RETRYABLE_SQLSTATES | {"23505", "08000", "08003", "08006", None}

#: Requests per statement at most (a burst beyond it is stored by the following statements).
MAX_GROUP = 100

#: A request of the group: the verified webhook and its tenant.
Request = tuple[ParsedWebhook, str]


class Busy:
    """The answer for a request whose delivery another transaction holds locked: not stored, try again later."""

    def __repr__(self) -> str:
        return "BUSY"


BUSY = Busy()

#: What :func:`store_grouped` answers per request: its counts, None (take the ordinary path) or BUSY.
Outcome = dict[str, Any] | Busy | None


def groupable(parsed: ParsedWebhook) -> bool:
    """Whether ``parsed`` can be stored in a group: exactly one event (any batch takes its own transaction)."""
    return len(parsed.events) == 1 and not parsed.malformed


#: The statement storing a group (``sql/store.sql``), sent as is by psycopg's raw cursor.
_STORE_GROUP = RawStatement.of(statement("store_webhooks_grouped"))


def parameters(requests: Sequence[Request]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The bind parameters of ``store_webhooks_grouped`` for ``requests`` (each :func:`groupable`), and
    each request's ledger row by its place in the group (``ord``)."""
    rows: list[dict[str, Any]] = []
    webhooks: list[tuple[str, dict[str, Any]]] = []
    for ord_, (parsed, tenant_id) in enumerate(requests):
        events = storable_events(parsed.events)
        (row,) = ledger_rows(parsed, events, tenant_id, None)
        token = token_parameters(parsed.replay_token, tenant_id) if parsed.replay_token is not None else {}
        row.update(ord=ord_, token=token.get("token"), digest=token.get("digest"))
        rows.append(row)
        webhooks += [(parsed.provider, dict(w, ord=ord_)) for w in webhook_events.rows(parsed, events, parsed.body)]
    # Inserted in key order, so two groups racing for the same keys wait on each other in one order
    # instead of deadlocking (a deadlock would only cost them the ordinary path, but costs).
    rows.sort(key=lambda row: row["idempotency_key"])
    webhooks.sort(key=lambda item: (item[0], item[1]["provider_event_id"]))
    params = {
        "rows": ledger.to_json(rows),
        "webhooks": webhook_events.encode([webhook for _, webhook in webhooks]),
        "webhooks_received_at": webhook_events.received_at_parameter(),
    }
    return params, {row["ord"]: row for row in rows}


def store_grouped(engine: Engine, requests: Sequence[Request]) -> list[Outcome]:
    """Store ``requests`` in one transaction (:func:`_store`); per request its counts, None or BUSY: not stored.

    None sends that request down :func:`.core.store_alone`; :data:`BUSY`: its
    delivery is locked by another transaction (see the module doc). If the transaction
    fails, nothing is stored and every answer is None (the error is not
    raised: each request meets it again, if it persists, on its own path).
    A database that cannot be reached at all raises
    :class:`~mailglass_pipeline.errors.DatabaseUnavailableError` for the
    whole group (503 at once, not one more connect timeout per request).
    """
    if not requests:
        return []
    params, rows = parameters(requests)
    try:
        results = _store(engine, params, rows)
    except DatabaseUnavailableError:
        raise
    except Exception as exc:  # nothing was written; each request retries on its own path
        if sqlstate_of(exc) not in _EXPECTED:
            log.warning("storing %d webhooks together failed; storing them one by one: %s", len(requests), exc)
        return [None] * len(requests)
    stored = {row[0]: row[1:4] for row in results if not row[4]}
    busy = {row[0] for row in results if row[4]}
    return [
        counts_of([(*stored[ord_], True)]) if ord_ in stored else BUSY if ord_ in busy else None
        for ord_ in range(len(requests))
    ]


def _store(engine: Engine, params: dict[str, Any], rows: dict[int, dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The group statement and the projection of what it stored, in one transaction; the statement's rows.

    Two round trips (:func:`.db.pipelined_transaction`): BEGIN with the statement, whose rows name the
    stored events and their deliveries; then the projection, if any stored event has a delivery, with
    COMMIT. (Projecting every request's event unread, in one round trip, ran the projection for every
    group, orphans only too, and cost the receiver more under load: decision D34.)
    """
    with connect(engine) as conn, driver_cursor(conn) as cursor, pipelined_transaction(conn):
        results = cursor.execute(_STORE_GROUP.text, _STORE_GROUP.values(params)).fetchall()
        # locked=True: the statement locked every stored row's delivery itself (FOR NO KEY UPDATE
        # SKIP LOCKED, in id order), and this transaction holds those locks until its commit.
        stored = [
            {"delivery_id": r[2], "type": rows[r[0]]["type"], "occurred_at": rows[r[0]]["occurred_at"], "ord": r[0]}
            for r in results
            if not r[4] and r[2] is not None
        ]
        projector.project(conn, stored, locked=True)
    return results
