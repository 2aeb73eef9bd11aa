"""The reconciler: link orphan webhook events to deliveries that committed later.

A port of Mailglass v1.0.0's ``Mailglass.Webhook.Reconciler`` with its data
model kept, and three decisions that make it better suited to run every
minute forever:

**Pending work lives in a queue, not in a scan of the ledger.** The ledger
is append-only, so a reconciled orphan can never be marked done; the original
re-reads every orphan of the last 7 days and anti-joins its ``reconciled``
event. Here a trigger on the ledger keeps ``mailglass_reconciliation_queue``
(one small row per pending orphan, removed when any writer appends its
``reconciled`` event), so a sweep's cost follows the backlog, not the
history. See migration ``0001_ledger``.

**No starvation.** A sweep takes at most ``limit`` orphans: never-attempted
ones first (oldest first), then the least recently attempted. Each examined
orphan gets ``last_attempted_at = now()``, so thousands of orphans that
never match rotate to the back and a fresh matchable orphan is taken by the
next sweep. Orphans that can never link (malformed: no provider or message
id) and orphans past ``max_age_minutes`` are *parked*: kept in the queue for
counting, out of the scan index.

**Set-based and exact under concurrency.** A batch costs a fixed number of
statements, never one per orphan: timeouts, find, lookup, lock the matched
deliveries in id order, ONE write statement (append the ``reconciled``
events, fold them into the projections, notify, record the attempts, park),
then count the backlog. Round trips and driver-side parameter escaping, not
the database work, were most of a batch's cost, hence the single write.
``find_orphans`` may lock its queue rows ``FOR UPDATE SKIP LOCKED`` so
concurrent sweeps take disjoint batches; whatever runs
concurrently, the partial unique index on ``idempotency_key =
'reconciled:' || orphan.id`` admits one ``reconciled`` event per orphan, and
projections are written only for events this sweep actually inserted.

The three steps hand pandas DataFrames along so the Dagster ops can wrap
exactly these functions; :func:`sweep` composes them in one transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import deliveries, projector
from mailglass_pipeline.db import get_engine, run_transaction
from mailglass_pipeline.errors import ConfigurationError

DEFAULT_LIMIT = 1000
DEFAULT_MAX_AGE_MINUTES = 7 * 24 * 60
DEFAULT_GRACE_SECONDS = 60
STALE_MESSAGE = "older than 7 days, unlikely to reconcile"

#: Columns of the DataFrame ``find_orphans`` returns (and ``attempt_link`` extends).
ORPHAN_COLUMNS = [
    "id", "tenant_id", "type", "occurred_at", "inserted_at", "attempts",
    "provider", "provider_message_id", "provider_event_id", "malformed",
]  # fmt: skip


def _positive_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; True as a limit is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class SweepConfig:
    """What one sweep may do. Invalid values raise ``ValueError`` on construction."""

    limit: int = DEFAULT_LIMIT
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    #: A delivery row locked elsewhere must not hang a minute-scheduled job.
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 120_000

    def __post_init__(self) -> None:
        _positive_int("limit", self.limit, 1)
        _positive_int("max_age_minutes", self.max_age_minutes, 1)
        _positive_int("grace_seconds", self.grace_seconds, 0)
        _positive_int("lock_timeout_ms", self.lock_timeout_ms, 1)
        _positive_int("statement_timeout_ms", self.statement_timeout_ms, 1)
        if self.grace_seconds >= self.max_age_minutes * 60:
            raise ConfigurationError("grace_seconds must be shorter than max_age_minutes")


def validate_tenant_id(tenant_id: object) -> str | None:
    if tenant_id is None:
        return None
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ConfigurationError(f"tenant_id must be a non-empty string, got {tenant_id!r}")
    if "\x00" in tenant_id:
        # PostgreSQL text cannot hold NUL: refuse it as a bad argument, not a database error.
        raise ConfigurationError("tenant_id must not contain NUL characters")
    return tenant_id


@dataclass
class SweepResult:
    """Counts of one sweep, overall and per tenant."""

    scanned: int = 0
    linked: int = 0
    unmatched: int = 0
    malformed: int = 0
    already_reconciled: int = 0
    remaining_orphans: int = 0
    stale_orphans: int = 0
    tenant_id: str | None = None
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_at(column: str, key: str) -> str:
    # Only a non-empty JSON string counts: a number, object or array under the
    # key makes the orphan malformed rather than matching something odd.
    return f"CASE WHEN jsonb_typeof(e.{column} -> '{key}') = 'string' THEN NULLIF(e.{column} ->> '{key}', '') END"


_MESSAGE_ID_KEYS = ("provider_message_id", "message_id", "sg_message_id")
_PROVIDER_SQL = f"COALESCE({_text_at('metadata', 'provider')}, {_text_at('normalized_payload', 'provider')})"
_MESSAGE_ID_SQL = (
    "COALESCE("
    + ", ".join(_text_at(column, key) for column in ("metadata", "normalized_payload") for key in _MESSAGE_ID_KEYS)
    + ")"
)
_EVENT_ID_SQL = (
    f"COALESCE({_text_at('metadata', 'provider_event_id')}, {_text_at('normalized_payload', 'provider_event_id')})"
)


def _find_sql(tenant_scoped: bool, lock: bool) -> sa.TextClause:
    tenant_filter = "AND q.tenant_id = :tenant_id" if tenant_scoped else ""
    locking = "FOR UPDATE OF q SKIP LOCKED" if lock else ""
    return sa.text(
        f"""
        SELECT e.id, e.tenant_id, e.type,
               -- 'infinity' is a valid timestamptz but no driver can load it: such an orphan is
               -- malformed (parked), not a row that fails every sweep of its tenant forever.
               CASE WHEN isfinite(e.occurred_at) THEN e.occurred_at END AS occurred_at,
               e.inserted_at, q.attempts,
               {_PROVIDER_SQL} AS provider,
               {_MESSAGE_ID_SQL} AS provider_message_id,
               {_EVENT_ID_SQL} AS provider_event_id
          FROM mailglass_reconciliation_queue q
          JOIN mailglass_events e ON e.id = q.event_id
         WHERE q.parked_at IS NULL
           {tenant_filter}
           AND q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
           AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
         ORDER BY q.last_attempted_at ASC NULLS FIRST, q.orphan_inserted_at ASC, q.event_id
         LIMIT :limit
         {locking}
        """
    )


def _set_timeouts(conn: Connection, config: SweepConfig) -> None:
    conn.execute(
        sa.text("SELECT set_config('lock_timeout', :lt, true), set_config('statement_timeout', :st, true)"),
        {"lt": f"{config.lock_timeout_ms}ms", "st": f"{config.statement_timeout_ms}ms"},
    )


def find_orphans(
    conn: Connection,
    tenant_id: str | None = None,
    config: SweepConfig | None = None,
    *,
    lock: bool = False,
) -> pd.DataFrame:
    """The batch to examine: pending orphans past grace and inside max age, in fair order.

    With ``lock=True`` (inside a sweep's transaction) the queue rows are
    locked ``SKIP LOCKED``, so a concurrent sweep takes other orphans instead
    of waiting.
    """
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)
    _set_timeouts(conn, config)
    params: dict[str, Any] = {
        "grace_seconds": config.grace_seconds,
        "max_age_minutes": config.max_age_minutes,
        "limit": config.limit,
    }
    if tenant_id is not None:
        params["tenant_id"] = tenant_id
    rows = conn.execute(_find_sql(tenant_id is not None, lock), params).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=ORPHAN_COLUMNS[:-1])
    frame["malformed"] = frame["provider"].isna() | frame["provider_message_id"].isna() | frame["occurred_at"].isna()
    return frame.astype({"malformed": bool})


def attempt_link(conn: Connection, orphans: pd.DataFrame) -> pd.DataFrame:
    """``orphans`` plus a ``delivery_id`` column: the matching delivery in the same tenant, or None.

    One lookup statement for the batch; malformed orphans are not looked up.
    """
    linked = orphans.copy()
    linked["delivery_id"] = pd.Series([None] * len(linked), index=linked.index, dtype=object)
    candidates = linked[~linked["malformed"]]
    if not candidates.empty:
        found = deliveries.lookup(
            conn,
            candidates["tenant_id"].tolist(),
            candidates["provider"].tolist(),
            candidates["provider_message_id"].tolist(),
        )
        linked.loc[candidates.index, "delivery_id"] = pd.Series(found, index=candidates.index, dtype=object)
    return linked


# The write step of a sweep as ONE statement (data-modifying CTEs), so a batch
# costs one round trip to write whatever its size. Its input is the linked
# batch as one JSON document (see ledger: one document is an order of
# magnitude cheaper to send than a dozen array parameters):
#
# * batch: that document (orphan id, delivery id, provider, provider event id,
#   malformed, place in the batch);
# * matched: the linked orphans with their type, times and tenant read from
#   their own ledger rows (append-only, so exactly what find_orphans read);
# * ins: the reconciled events (metadata and idempotency key per DESIGN.md
#   section 3, occurred_at = now() = sweep time); ON CONFLICT DO NOTHING makes
#   a second reconciled event for one orphan impossible, and RETURNING says
#   which events this sweep actually appended;
# * won: those orphans, numbered in batch order (the order they arrived in:
#   occurred_at, inserted_at, then find order), so ties resolve as a replay;
# * proj_agg/proj_upd: the projection rules, embedded from projector.py (their
#   one home), over the won orphans only;
# * notified: one notification per linked delivery naming its latest
#   reconciled orphan (projector.notify_select; a SELECT CTE runs only when
#   read, hence the count in the final SELECT);
# * attempted: the attempt recorded on every unlinked orphan of the batch;
#   malformed ones are parked, and so are ones that aged out since find (as
#   the stale parking below would have done right after);
# * parked: every other orphan past max age is parked as stale. The batch's
#   unlinked rows are left to `attempted`: one row must not be updated twice
#   in one statement. A linked stale orphan is parked here and then removed by
#   the ledger trigger, which fires at the end of the statement.
#
# All CTEs share one snapshot, so the backlog count (which must see the queue
# after the trigger removed the linked orphans) stays a separate statement.
_WRITE = """
    WITH batch AS (
        SELECT r.*
          FROM json_to_recordset(CAST(:rows AS json)) AS r(
               id uuid, delivery_id uuid, provider text, provider_event_id text, malformed boolean, pos integer)
    ), matched AS (
        -- The orphan's type, times and tenant come from its ledger row, which is append-only: the
        -- values find_orphans read, at the cost of a primary-key probe instead of serializing them.
        SELECT b.id, e.tenant_id, b.delivery_id, e.type, e.occurred_at, e.inserted_at,
               b.provider, b.provider_event_id, b.pos
          FROM batch b JOIN mailglass_events e ON e.id = b.id
         WHERE b.delivery_id IS NOT NULL
    ), ins AS (
        -- Every column explicit: a database created by Mailglass itself has fewer defaults.
        INSERT INTO mailglass_events
            (id, tenant_id, delivery_id, type, occurred_at, idempotency_key, reject_reason,
             normalized_payload, metadata, trace_id, needs_reconciliation, inserted_at)
        SELECT gen_random_uuid(), m.tenant_id, m.delivery_id, 'reconciled', now(), 'reconciled:' || m.id::text, NULL,
               '{{}}'::jsonb,
               jsonb_build_object('reconciled_from_event_id', m.id::text,
                                  'reconciled_provider', m.provider,
                                  'reconciled_provider_event_id', m.provider_event_id,
                                  'reconciled_event_type', m.type),
               NULL, false, now()
          FROM matched m
         ORDER BY m.pos
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, idempotency_key
    ), won AS (
        SELECT m.id, m.tenant_id, m.delivery_id, m.type, m.occurred_at, i.id AS reconciled_id,
               row_number() OVER (ORDER BY m.occurred_at, m.inserted_at, m.pos) AS ord
          FROM ins i JOIN matched m ON i.idempotency_key = 'reconciled:' || m.id::text
    ), {projection},
    latest AS (
        SELECT DISTINCT ON (w.delivery_id)
               w.tenant_id, w.delivery_id, 'reconciled'::text AS event_type, w.reconciled_id AS event_id,
               w.id AS from_id
          FROM won w
         ORDER BY w.delivery_id, w.ord DESC
    ), notified AS (
        {notify}
    ), cutoff AS (
        SELECT now() - make_interval(mins => :max_age_minutes) AS stale_before
    ), attempted AS (
        UPDATE mailglass_reconciliation_queue q
           SET attempts = q.attempts + 1,
               last_attempted_at = now(),
               parked_at = CASE WHEN b.malformed OR q.orphan_inserted_at <= c.stale_before THEN now() END,
               parked_reason = CASE WHEN b.malformed THEN 'malformed'
                                    WHEN q.orphan_inserted_at <= c.stale_before THEN 'stale' END
          FROM batch b, cutoff c
         WHERE q.event_id = b.id AND b.delivery_id IS NULL
        RETURNING q.event_id
    ), parked AS (
        UPDATE mailglass_reconciliation_queue q
           SET parked_at = now(), parked_reason = 'stale'
          FROM cutoff c
         WHERE q.parked_at IS NULL
           AND q.orphan_inserted_at <= c.stale_before
           {tenant_filter}
           AND NOT EXISTS (SELECT 1 FROM batch b WHERE b.id = q.event_id AND b.delivery_id IS NULL)
        RETURNING q.event_id
    )
    SELECT ARRAY(SELECT id FROM won) AS won,
           (SELECT count(*) FROM notified) AS notified,
           (SELECT count(*) FROM attempted) AS attempted,
           (SELECT count(*) FROM parked) AS parked
"""


def _write_sql(tenant_scoped: bool) -> sa.TextClause:
    return sa.text(
        _WRITE.format(
            projection=projector.projection_ctes("won"),
            notify=projector.notify_select("latest"),
            tenant_filter="AND q.tenant_id = :tenant_id" if tenant_scoped else "",
        )
    )


_WRITE_SQL = {scoped: _write_sql(scoped) for scoped in (False, True)}


def _text_or_none(values: Iterable[Any]) -> list[str | None]:
    # NaN, NaT, pd.NA and None all become None (JSON null): json.dumps would write NaN,
    # which PostgreSQL's JSON parser refuses.
    return [v if isinstance(v, str) else None for v in values]


def _batch_document(linked: pd.DataFrame) -> str:
    """The linked batch as one JSON array of objects: what the write statement needs, nothing more.

    Plain strings, booleans and integers only, so ``json.dumps`` runs in C
    without a ``default`` callback per value. A missing delivery id, provider
    or provider_event_id (None, or NaN after pandas) is JSON null. ``pos`` is
    the row's place in the batch (find order).
    """
    if linked.empty:
        return "[]"
    has_delivery = linked["delivery_id"].notna().tolist()
    rows = [
        {"id": str(orphan_id), "delivery_id": str(delivery_id) if linked_ else None, "provider": provider,
         "provider_event_id": event_id, "malformed": bool(malformed), "pos": pos}
        for pos, (orphan_id, delivery_id, linked_, provider, event_id, malformed) in enumerate(
            zip(linked["id"].tolist(), linked["delivery_id"].tolist(), has_delivery,
                _text_or_none(linked["provider"]), _text_or_none(linked["provider_event_id"]),
                linked["malformed"].tolist(), strict=True)
        )
    ]  # fmt: skip
    return json.dumps(rows, separators=(",", ":"))


_BACKLOG = """
    SELECT tenant_id,
           count(*) FILTER (WHERE parked_at IS NULL) AS remaining_orphans,
           count(*) FILTER (WHERE parked_reason = 'stale') AS stale_orphans
      FROM mailglass_reconciliation_queue
     {where}
     GROUP BY tenant_id
"""


def backlog(conn: Connection, tenant_id: str | None = None) -> dict[str, dict[str, int]]:
    """Per tenant: pending orphans (``remaining_orphans``) and parked stale ones (``stale_orphans``)."""
    where = "WHERE tenant_id = :tenant_id" if tenant_id is not None else ""
    params = {"tenant_id": tenant_id} if tenant_id is not None else {}
    return {
        row.tenant_id: {"remaining_orphans": row.remaining_orphans, "stale_orphans": row.stale_orphans}
        for row in conn.execute(sa.text(_BACKLOG.format(where=where)), params)
    }


def append_reconciled_events(
    conn: Connection,
    linked: pd.DataFrame,
    tenant_id: str | None = None,
    config: SweepConfig | None = None,
) -> SweepResult:
    """Write the sweep's outcome in the caller's transaction.

    Appends one ``reconciled`` event per matched orphan (idempotent), folds
    the orphans' events into their deliveries, queues the notifications,
    records the attempt for every examined orphan, parks malformed and aged-out
    ones, and counts what is left.
    """
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)
    _set_timeouts(conn, config)
    return _write(conn, linked, tenant_id, config)


def _write(conn: Connection, linked: pd.DataFrame, tenant_id: str | None, config: SweepConfig) -> SweepResult:
    """:func:`append_reconciled_events` once the timeouts are set: three statements whatever the batch.

    1. lock the matched deliveries ``ORDER BY id`` (two sweeps locking
       overlapping sets cannot deadlock; inside one data-modifying statement
       the UPDATE would lock in whatever order its plan visits rows);
    2. the write statement (``_WRITE``);
    3. the backlog count, which must see the queue after the write.
    """
    if not linked.empty:
        projector.lock(conn, (_as_uuid(d) for d in linked["delivery_id"].dropna()))
    params: dict[str, Any] = {"rows": _batch_document(linked), "max_age_minutes": config.max_age_minutes}
    if tenant_id is not None:
        params["tenant_id"] = tenant_id
    row = conn.execute(_WRITE_SQL[tenant_id is not None], params).one()
    return _summarize(linked, set(row.won), backlog(conn, tenant_id), tenant_id)


def _as_uuid(value: Any) -> uuid.UUID:
    # A batch that went through a Dagster IO manager may carry the ids as text.
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _summarize(
    linked: pd.DataFrame,
    won_ids: set[uuid.UUID],
    left: dict[str, dict[str, int]],
    tenant_id: str | None,
) -> SweepResult:
    result = SweepResult(tenant_id=tenant_id)
    # One pass over plain lists (a boolean mask per tenant would rescan the frame per tenant).
    per_tenant: dict[str, list[int]] = {}  # tenant -> [scanned, linked, malformed, matched]
    if not linked.empty:
        won_ids = {_as_uuid(i) for i in won_ids}
        for tenant, orphan_id, malformed, matched in zip(
            linked["tenant_id"].tolist(),
            linked["id"].tolist(),
            linked["malformed"].tolist(),
            linked["delivery_id"].notna().tolist(),
            strict=True,
        ):
            c = per_tenant.setdefault(tenant, [0, 0, 0, 0])
            c[0] += 1
            c[1] += _as_uuid(orphan_id) in won_ids
            c[2] += bool(malformed)
            c[3] += bool(matched)
    tenants: Iterable[str] = [tenant_id] if tenant_id is not None else sorted(set(per_tenant) | set(left))
    for tenant in tenants:
        scanned, linked_n, malformed_n, matched_n = per_tenant.get(tenant, [0, 0, 0, 0])
        counts = {
            "scanned": scanned,
            "linked": linked_n,
            "unmatched": scanned - matched_n - malformed_n,
            "malformed": malformed_n,
            "already_reconciled": matched_n - linked_n,
            **left.get(tenant, {"remaining_orphans": 0, "stale_orphans": 0}),
        }
        result.tenants[tenant] = counts
        for key, value in counts.items():
            setattr(result, key, getattr(result, key) + value)
    return result


def sweep(engine: Engine, tenant_id: str | None = None, config: SweepConfig | None = None) -> SweepResult:
    """One sweep in one transaction: find (locking), link, append. Retries deadlocks."""
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)

    def work(conn: Connection) -> SweepResult:
        orphans = find_orphans(conn, tenant_id, config, lock=True)  # sets the timeouts for the transaction
        linked = attempt_link(conn, orphans)
        return _write(conn, linked, tenant_id, config)

    return run_transaction(engine, work)


def reconcile(
    tenant_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    database_url: str | None = None,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
) -> dict[str, Any]:
    """Run one sweep (all tenants when ``tenant_id`` is None) and return its counts.

    ``{"scanned", "linked", "unmatched", "malformed", "already_reconciled",
    "remaining_orphans", "stale_orphans", "tenant_id", "tenants"}``. Arguments
    are validated before the database is touched (``ValueError``).
    """
    config = SweepConfig(limit=limit, max_age_minutes=max_age_minutes, grace_seconds=grace_seconds)
    tenant_id = validate_tenant_id(tenant_id)
    return sweep(get_engine(database_url), tenant_id, config).as_dict()


_DUE_TENANTS = sa.text(
    """
    SELECT tenant_id
      FROM mailglass_reconciliation_queue
     WHERE parked_at IS NULL
       AND orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)
       AND orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)
     GROUP BY tenant_id
     ORDER BY tenant_id
    """
)


def tenants_with_due_orphans(
    conn: Connection,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> list[str]:
    """Tenants with at least one orphan a sweep would examine now: one grouped query."""
    params = {"grace_seconds": grace_seconds, "max_age_minutes": max_age_minutes}
    return [row[0] for row in conn.execute(_DUE_TENANTS, params)]


# Loose index scans: distinct tenants in time proportional to the number of
# tenants, not rows (PostgreSQL has no skip scan before 18).
_KNOWN_TENANTS = sa.text(
    """
    WITH RECURSIVE d AS (
        (SELECT tenant_id FROM mailglass_deliveries ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT x.tenant_id FROM mailglass_deliveries x WHERE x.tenant_id > d.tenant_id
                 ORDER BY x.tenant_id LIMIT 1)
          FROM d WHERE d.tenant_id IS NOT NULL
    ), q AS (
        (SELECT tenant_id FROM mailglass_reconciliation_queue ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT x.tenant_id FROM mailglass_reconciliation_queue x WHERE x.tenant_id > q.tenant_id
                 ORDER BY x.tenant_id LIMIT 1)
          FROM q WHERE q.tenant_id IS NOT NULL
    )
    SELECT tenant_id FROM d WHERE tenant_id IS NOT NULL
    UNION
    SELECT tenant_id FROM q WHERE tenant_id IS NOT NULL
    ORDER BY 1
    """
)


def known_tenants(conn: Connection) -> list[str]:
    """Every tenant with a delivery or a queued orphan."""
    return [row[0] for row in conn.execute(_KNOWN_TENANTS)]


_OLDEST_STALE = sa.text(
    """
    SELECT count(*), EXTRACT(EPOCH FROM now() - min(orphan_inserted_at))
      FROM mailglass_reconciliation_queue
     WHERE (tenant_id = :tenant_id OR CAST(:tenant_id AS text) IS NULL)
       AND (parked_reason = 'stale'
            OR (parked_at IS NULL AND orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)))
    """
)


def stale_orphans(
    conn: Connection, tenant_id: str | None = None, max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES
) -> tuple[int, float | None]:
    """Orphans past max age still unreconciled: (count, age in seconds of the oldest)."""
    count, oldest = conn.execute(_OLDEST_STALE, {"tenant_id": tenant_id, "max_age_minutes": max_age_minutes}).one()
    return int(count), (float(oldest) if oldest is not None else None)
