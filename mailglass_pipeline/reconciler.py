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
statements (find, lookup, insert, lock, update, notify, bookkeeping), never
one per orphan. ``find_orphans`` may lock its queue rows ``FOR UPDATE SKIP
LOCKED`` so concurrent sweeps take disjoint batches; whatever runs
concurrently, the partial unique index on ``idempotency_key =
'reconciled:' || orphan.id`` admits one ``reconciled`` event per orphan, and
projections are written only for events this sweep actually inserted.

The three steps hand pandas DataFrames along so the Dagster ops can wrap
exactly these functions; :func:`sweep` composes them in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import deliveries, ledger, projector
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


_PARK_STALE = """
    UPDATE mailglass_reconciliation_queue q
       SET parked_at = now(), parked_reason = 'stale'
     WHERE q.parked_at IS NULL
       AND q.orphan_inserted_at <= now() - make_interval(mins => :max_age_minutes)
       {tenant_filter}
"""

_MARK_ATTEMPTED = sa.text(
    """
    UPDATE mailglass_reconciliation_queue q
       SET attempts = q.attempts + 1,
           last_attempted_at = now(),
           parked_at = CASE WHEN m.malformed THEN now() END,
           parked_reason = CASE WHEN m.malformed THEN 'malformed' END
      FROM unnest(CAST(:ids AS uuid[]), CAST(:malformed AS boolean[])) AS m(id, malformed)
     WHERE q.event_id = m.id
    """
)

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

    matched = linked[linked["delivery_id"].notna()] if not linked.empty else linked
    reconciled_ids = {orphan_id: uuid.uuid4() for orphan_id in matched["id"]} if not matched.empty else {}
    sweep_time = _now(conn) if not matched.empty else None  # one query per sweep, not one per orphan
    events = [
        ledger.NewEvent(
            id=reconciled_ids[row.id],
            tenant_id=row.tenant_id,
            type="reconciled",
            delivery_id=row.delivery_id,
            occurred_at=sweep_time,
            idempotency_key=f"reconciled:{row.id}",
            metadata={
                "reconciled_from_event_id": str(row.id),
                "reconciled_provider": _text_or_none(row.provider),
                "reconciled_provider_event_id": _text_or_none(row.provider_event_id),
                "reconciled_event_type": row.type,
            },
        )
        for row in matched.itertuples(index=False)
    ]
    inserted = ledger.append_events(conn, events)
    won = matched[[reconciled_ids[i] in inserted for i in matched["id"]]] if not matched.empty else matched

    # Batch order = the order the orphans arrived in, so ties resolve as a replay would.
    ordered = won.sort_values(["occurred_at", "inserted_at"], kind="stable") if not won.empty else won
    projector.apply(
        conn,
        [
            projector.ProjectedEvent(delivery_id=row.delivery_id, type=row.type, occurred_at=row.occurred_at)
            for row in ordered.itertuples(index=False)
        ],
    )
    # One announcement per linked delivery, naming its latest reconciled orphan.
    latest = ordered.drop_duplicates("delivery_id", keep="last") if not ordered.empty else ordered
    projector.announce(
        conn,
        [
            projector.Announcement(
                tenant_id=row.tenant_id,
                delivery_id=row.delivery_id,
                event_id=reconciled_ids[row.id],
                reconciled_from_event_id=row.id,
            )
            for row in latest.itertuples(index=False)
        ],
    )

    unlinked = linked[linked["delivery_id"].isna()] if not linked.empty else linked
    if not unlinked.empty:
        conn.execute(
            _MARK_ATTEMPTED,
            {"ids": unlinked["id"].tolist(), "malformed": unlinked["malformed"].tolist()},
        )
    tenant_filter = "AND q.tenant_id = :tenant_id" if tenant_id is not None else ""
    park_params: dict[str, Any] = {"max_age_minutes": config.max_age_minutes}
    if tenant_id is not None:
        park_params["tenant_id"] = tenant_id
    conn.execute(sa.text(_PARK_STALE.format(tenant_filter=tenant_filter)), park_params)

    return _summarize(linked, set(won["id"]) if not won.empty else set(), backlog(conn, tenant_id), tenant_id)


def _text_or_none(value: object) -> str | None:
    # pandas' string dtype turns a missing text value into NaN, and json.dumps writes NaN, which
    # jsonb refuses: one orphan without a provider_event_id (legal) would fail the whole batch.
    return None if value is None or pd.isna(value) else str(value)


def _now(conn: Connection) -> Any:
    # Transaction time: every reconciled event of one sweep carries the same sweep time.
    return conn.execute(sa.text("SELECT now()")).scalar_one()


def _summarize(
    linked: pd.DataFrame,
    won_ids: set[uuid.UUID],
    left: dict[str, dict[str, int]],
    tenant_id: str | None,
) -> SweepResult:
    result = SweepResult(tenant_id=tenant_id)
    tenants: Iterable[str] = sorted(set(linked["tenant_id"]) | set(left)) if not linked.empty else sorted(left)
    if tenant_id is not None:
        tenants = [tenant_id]
    for tenant in tenants:
        rows = linked[linked["tenant_id"] == tenant] if not linked.empty else linked
        scanned = len(rows)
        linked_n = int(rows["id"].isin(won_ids).sum()) if scanned else 0
        malformed = int(rows["malformed"].sum()) if scanned else 0
        matched = int(rows["delivery_id"].notna().sum()) if scanned else 0
        counts = {
            "scanned": scanned,
            "linked": linked_n,
            "unmatched": scanned - matched - malformed,
            "malformed": malformed,
            "already_reconciled": matched - linked_n,
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
        orphans = find_orphans(conn, tenant_id, config, lock=True)
        linked = attempt_link(conn, orphans)
        return append_reconciled_events(conn, linked, tenant_id, config)

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
