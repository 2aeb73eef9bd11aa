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

**An orphan is examined only when it can succeed** (DESIGN.md section 1,
migration ``0003_due_orphans``). It is *due* when past grace, inside max age
and (a) never examined, (b) a delivery that can match it was inserted, or
updated to carry its key, since its last examination (a trigger on
``mailglass_deliveries`` sets ``next_attempt_at = NULL`` for any writer), or
(c) its retry time came: each unmatched examination sets ``next_attempt_at``
1, 2, 4, 8, 16, then every 30 minutes ahead (about 340 examinations in 7
days instead of 10,080). A sweep takes per tenant at most ``limit`` due
orphans: fresh ones, (a) and (b), oldest first, those whose delivery is
known to be there (``linkable_at``) ahead of the others, then (c), least
recently examined first. So an orphan whose delivery commits is linked by
the next sweep however many hopeless orphans its tenant holds.
``retry_all`` ignores the backoff (an operator's manual sweep). Orphans that
can never link (malformed: no provider or message id) and orphans past
``max_age_minutes`` are *parked*: kept in the queue for counting, out of the
scan indexes.

**One sweep over every tenant, bounded and fair.** With no tenant, one sweep
covers every tenant with due orphans in the same constant number of
statements (never one per tenant): the find statement counts each tenant's
due orphans from two partial indexes that hold only due-able rows and shares
``max_total`` among the tenants in two rounds: first the orphans whose
delivery is known to be there (``linkable_at``) across all tenants, then the
other due orphans in what is left; each round gives each tenant's first k
before anyone's k+1 (leftover slots to the tenants waiting longest). Each
tenant's share is then taken with index range scans. ``max_total`` bounds one
*transaction*: the all-tenant sweep drains about 5,500 to 7,900 linked
orphans a second (docs/performance.md), so 20,000 hold their row locks for 3
to 4 s. A scheduled run loops over such transactions until its time budget
is spent (``drain.sweep_until``, which keeps ``limit`` a quota per run).

**Set-based and exact under concurrency.** A batch costs a fixed number of
statements, never one per orphan or per tenant: timeouts, find, lookup, lock
the matched deliveries in id order, ONE write statement (append the
``reconciled`` events, fold them into the projections, notify, record the
examinations and retry times, park), then one statement for what is left.
Round trips and driver-side parameter escaping, not the database work, were
most of a batch's cost, hence the single write.
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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
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
#: Most orphans one sweep examines in all (see the module doc: "Bounded runs").
DEFAULT_MAX_TOTAL = 20_000
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
    """What one sweep may do. Invalid values raise ``ValueError`` on construction.

    ``limit``: most due orphans per tenant per sweep. ``max_total``: most
    orphans one sweep examines in all (an all-tenant sweep is a bounded run;
    see ``DEFAULT_MAX_TOTAL``). ``retry_all``: ignore the backoff and retry
    every pending orphan (an operator's manual sweep).
    """

    limit: int = DEFAULT_LIMIT
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    #: A delivery row locked elsewhere must not hang a minute-scheduled job.
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 120_000
    max_total: int = DEFAULT_MAX_TOTAL
    retry_all: bool = False

    def __post_init__(self) -> None:
        _positive_int("limit", self.limit, 1)
        _positive_int("max_age_minutes", self.max_age_minutes, 1)
        _positive_int("grace_seconds", self.grace_seconds, 0)
        _positive_int("lock_timeout_ms", self.lock_timeout_ms, 1)
        _positive_int("statement_timeout_ms", self.statement_timeout_ms, 1)
        _positive_int("max_total", self.max_total, 1)
        if not isinstance(self.retry_all, bool):
            raise ConfigurationError(f"retry_all must be a boolean, got {self.retry_all!r}")
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
    """Counts of one sweep, overall and per tenant.

    ``scanned`` .. ``already_reconciled`` count this sweep's examinations;
    ``remaining_orphans`` and ``stale_orphans`` are the backlog left in scope
    (the tenant, or every tenant) after it. ``tenants`` holds the per-tenant
    counts (same keys) of the tenants examined in this sweep, or with
    orphans it parked as stale (``newly_stale``), never all tenants (a
    tenant-scoped sweep: that tenant, always). ``tenants_swept``:
    how many tenants had an orphan examined. ``due_remaining``: orphans still
    due in scope after the sweep (left by the caps). ``oldest_due_age_seconds``:
    how long the longest-waiting of those has been due. ``lag_seconds``: the
    longest time an orphan linked by this sweep, or still linkable and
    pending after it, had waited since it became linkable (past grace, its
    delivery committed); None when there was none.
    """

    scanned: int = 0
    linked: int = 0
    unmatched: int = 0
    malformed: int = 0
    already_reconciled: int = 0
    newly_stale: int = 0
    remaining_orphans: int = 0
    stale_orphans: int = 0
    tenant_id: str | None = None
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    tenants_swept: int = 0
    due_remaining: int = 0
    oldest_due_age_seconds: float | None = None
    lag_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DueSummary:
    """What the schedule's tick asks before launching a sweep."""

    tenants: int
    orphans: int
    oldest_due_age_seconds: float | None


@dataclass(frozen=True)
class LagSummary:
    """Linkable orphans still pending beyond the threshold."""

    count: int
    longest_wait_seconds: float | None


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


#: Minutes an orphan waits after its n-th unmatched examination (n = 1..5), then BACKOFF_CAP_MINUTES.
BACKOFF_MINUTES = (1, 2, 4, 8, 16)
BACKOFF_CAP_MINUTES = 30
_BACKOFF_SQL = "make_interval(mins => COALESCE((ARRAY[{steps}])[{{attempts}}], {cap}))".format(
    steps=", ".join(map(str, BACKOFF_MINUTES)), cap=BACKOFF_CAP_MINUTES
)

# The due rule (module doc, migration 0003) as SQL over the queue alias q. "fresh": never examined, or
# a delivery that can match appeared since the last examination; "retry": its retry time has come.
_WINDOW = (
    "q.orphan_inserted_at <= now() - make_interval(secs => :grace_seconds)"
    " AND q.orphan_inserted_at > now() - make_interval(mins => :max_age_minutes)"
)
_FRESH = "q.parked_at IS NULL AND q.next_attempt_at IS NULL"
_RETRY = {
    False: "q.parked_at IS NULL AND q.next_attempt_at <= now()",
    # retry_all: ignore the backoff, but once per run: a run of several transactions (drain.sweep_until)
    # binds its start, so an orphan it already examined is not taken again.
    True: "q.parked_at IS NULL AND q.next_attempt_at IS NOT NULL"
    " AND (CAST(:run_started AS timestamptz) IS NULL OR q.last_attempted_at < CAST(:run_started AS timestamptz))",
}
#: When a due orphan became due: past grace and linkable (fresh), or its retry time (retry).
_FRESH_SINCE = "GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.linkable_at)"
_RETRY_SINCE = "GREATEST(q.orphan_inserted_at + make_interval(secs => :grace_seconds), q.next_attempt_at)"


def _due_rows_sql(tenant_filter: str, retry_all: bool = False) -> str:
    """Every due orphan in scope as (tenant_id, due_since): two range scans of partial indexes."""
    return f"""
        SELECT q.tenant_id, {_FRESH_SINCE} AS due_since
          FROM mailglass_reconciliation_queue q
         WHERE {_FRESH} AND {_WINDOW} {tenant_filter}
        UNION ALL
        SELECT q.tenant_id, {_RETRY_SINCE} AS due_since
          FROM mailglass_reconciliation_queue q
         WHERE {_RETRY[retry_all]} AND {_WINDOW} {tenant_filter}"""


# Fair shares when the total cap binds ("water filling"), over `{source}` (tenant_id, take, since) and a
# one-row `{cap}`: sorted by take, a tenant is served whole when, were every larger tenant cut to its
# take, the total still fits the cap. The others share what is left equally: quota q each, and the
# `extra` left over goes one each to the tenants waiting longest. So each tenant's first k orphans are
# taken before any tenant's (k+1)-th, in one statement whatever the number of tenants.
_WATER_FILL = """
    {name}_sized AS (
        SELECT tenant_id, take, since,
               CAST(sum(take) OVER (ORDER BY take, tenant_id ROWS UNBOUNDED PRECEDING) AS bigint) AS prefix,
               row_number() OVER (ORDER BY take, tenant_id) AS pos,
               count(*) OVER () AS tenants
          FROM {source}
         WHERE take > 0
    ), {name}_flagged AS (
        SELECT s.*, s.prefix + s.take * (s.tenants - s.pos) <= c.cap AS whole FROM {name}_sized s CROSS JOIN {cap} c
    ), {name}_fill AS (
        SELECT count(*) FILTER (WHERE whole) AS whole_n,
               CAST(COALESCE(sum(take) FILTER (WHERE whole), 0) AS bigint) AS whole_sum,
               count(*) AS tenants
          FROM {name}_flagged
    ), {name} AS (
        SELECT f.tenant_id,
               CASE WHEN f.whole THEN f.take
                    ELSE (c.cap - x.whole_sum) / NULLIF(x.tenants - x.whole_n, 0)
                         + CASE WHEN row_number() OVER (PARTITION BY f.whole ORDER BY f.since, f.tenant_id)
                                     <= (c.cap - x.whole_sum) % NULLIF(x.tenants - x.whole_n, 0)
                                THEN 1 ELSE 0 END
               END AS take
          FROM {name}_flagged f CROSS JOIN {name}_fill x CROSS JOIN {cap} c
    )"""

# The all-tenant allocation in two rounds of water filling: first the orphans whose delivery is known to
# be there (linkable_at, set by the triggers) across all tenants, then the other due orphans in what the
# cap leaves. `used` (tenant -> orphans already examined by this run's earlier transactions, JSON) keeps
# `limit` a per-run quota when drain.sweep_until loops; a single sweep binds '{{}}'.
_ALLOC_ALL = (
    """
    used AS (
        SELECT key AS tenant_id, CAST(value AS bigint) AS used FROM json_each_text(CAST(:used AS json))
    ), due_n AS (
        SELECT tenant_id, count(*) AS n, min(due_since) AS since
          FROM ({due_rows}) d
         GROUP BY tenant_id
    ), due AS (
        SELECT d.tenant_id, LEAST(d.n, :limit - COALESCE(u.used, 0)) AS want, d.since
          FROM due_n d LEFT JOIN used u ON u.tenant_id = d.tenant_id
    ), linkable_n AS (
        SELECT q.tenant_id, count(*) AS n, min({linkable_since}) AS since
          FROM mailglass_reconciliation_queue q
         WHERE q.linkable_at IS NOT NULL AND {fresh} AND {window}
         GROUP BY q.tenant_id
    ), first_want AS (
        SELECT d.tenant_id, LEAST(l.n, d.want) AS take, l.since FROM due d JOIN linkable_n l USING (tenant_id)
    ), first_cap AS (SELECT CAST(:max_total AS bigint) AS cap
    ),"""
    + _WATER_FILL.format(name="first_alloc", source="first_want", cap="first_cap")
    + """,
    rest_want AS (
        SELECT d.tenant_id, d.want - COALESCE(f.take, 0) AS take, d.since
          FROM due d LEFT JOIN first_alloc f USING (tenant_id)
    ), rest_cap AS (
        SELECT CAST(:max_total AS bigint) - CAST(COALESCE(sum(take), 0) AS bigint) AS cap FROM first_alloc
    ),"""
    + _WATER_FILL.format(name="rest_alloc", source="rest_want", cap="rest_cap")
    + """,
    alloc AS (
        SELECT tenant_id, CAST(sum(take) AS bigint) AS take
          FROM (SELECT * FROM first_alloc UNION ALL SELECT * FROM rest_alloc) x
         GROUP BY tenant_id
    )"""
)

_ALLOC_ONE = """
    alloc AS (SELECT CAST(:tenant_id AS text) AS tenant_id, LEAST(:limit, :max_total) AS take)"""


def _find_sql(tenant_scoped: bool, lock: bool, retry_all: bool = False, link: bool = False) -> sa.TextClause:
    """The due batch: at most ``limit`` per tenant, ``max_total`` in all, fresh before retry.

    Per tenant: fresh orphans whose delivery is known to be there (the
    triggers set ``linkable_at``), then the other fresh ones, each oldest
    first, then retry-due ones least recently examined first (``UNION ALL ...
    LIMIT``: a later scan runs only when the earlier ones come back short).
    With ``lock`` each scan locks ``SKIP LOCKED`` below its LIMIT, so a
    concurrent sweep takes the next orphans instead of waiting.
    """
    locking = "FOR UPDATE OF q SKIP LOCKED" if lock else ""
    # link: also look the delivery up in the same statement (what sweep() runs: one round trip fewer and
    # no batch-sized arrays to send back for attempt_link's lookup). Same rule: deliveries.lookup_lateral.
    link_column = ", lk.id AS delivery_id" if link else ""
    link_join = (
        "LEFT JOIN LATERAL (SELECT p.tenant_id, p.provider, p.provider_message_id AS message_id"
        " WHERE p.provider IS NOT NULL AND p.provider_message_id IS NOT NULL AND isfinite(e.occurred_at)) k ON true"
        f" LEFT JOIN {deliveries.lookup_lateral('k')} lk ON true"
        if link
        else ""
    )
    alloc = (
        _ALLOC_ONE
        if tenant_scoped
        else _ALLOC_ALL.format(
            due_rows=_due_rows_sql("", retry_all), linkable_since=_FRESH_SINCE, fresh=_FRESH, window=_WINDOW
        )
    )
    return sa.text(
        f"""
        WITH {alloc},
        picked AS (
            SELECT p.*
              FROM alloc a
             CROSS JOIN LATERAL (
                   SELECT * FROM (
                       SELECT q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
                              0 AS cls, q.orphan_inserted_at AS k1, NULL::timestamptz AS k2
                         FROM mailglass_reconciliation_queue q
                        WHERE q.tenant_id = a.tenant_id AND q.linkable_at IS NOT NULL AND {_FRESH} AND {_WINDOW}
                        ORDER BY q.orphan_inserted_at, q.event_id
                        LIMIT a.take
                        {locking}) linkable
                   UNION ALL
                   SELECT * FROM (
                       SELECT q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
                              1 AS cls, q.orphan_inserted_at AS k1, NULL::timestamptz AS k2
                         FROM mailglass_reconciliation_queue q
                        WHERE q.tenant_id = a.tenant_id AND q.linkable_at IS NULL AND {_FRESH} AND {_WINDOW}
                        ORDER BY q.orphan_inserted_at, q.event_id
                        LIMIT a.take
                        {locking}) fresh
                   UNION ALL
                   SELECT * FROM (
                       SELECT q.event_id, q.tenant_id, q.attempts, q.provider, q.provider_message_id,
                              2 AS cls, q.last_attempted_at AS k1, q.orphan_inserted_at AS k2
                         FROM mailglass_reconciliation_queue q
                        WHERE q.tenant_id = a.tenant_id AND {_RETRY[retry_all]} AND {_WINDOW}
                        ORDER BY q.last_attempted_at, q.orphan_inserted_at, q.event_id
                        LIMIT a.take
                        {locking}) retry
                   LIMIT a.take) p
             WHERE a.take > 0
        )
        SELECT e.id, e.tenant_id, e.type,
               -- 'infinity' is a valid timestamptz but no driver can load it: such an orphan is
               -- malformed (parked), not a row that fails every sweep of its tenant forever.
               CASE WHEN isfinite(e.occurred_at) THEN e.occurred_at END AS occurred_at,
               e.inserted_at, p.attempts, p.provider, p.provider_message_id,
               {_EVENT_ID_SQL} AS provider_event_id
               {link_column}
          FROM picked p
          JOIN mailglass_events e ON e.id = p.event_id
          {link_join}
         ORDER BY p.tenant_id, p.cls, p.k1, p.k2, p.event_id
        """
    )


_FIND_SQL = {
    (scoped, lock, retry_all): _find_sql(scoped, lock, retry_all)
    for scoped in (False, True)
    for lock in (False, True)
    for retry_all in (False, True)
}
_FIND_LINKED_SQL = {
    (scoped, retry_all): _find_sql(scoped, True, retry_all, link=True)
    for scoped in (False, True)
    for retry_all in (False, True)
}


def _set_timeouts(conn: Connection, config: SweepConfig) -> None:
    # plan_cache_mode: psycopg prepares a statement after 5 executions and PostgreSQL may then switch to a
    # generic plan; for these statements, whose best plan depends on the batch and backlog sizes bound in,
    # that made one transaction of a run 5 s instead of 0.7 s (a 100,000-tenant burst). Plan per execution.
    conn.execute(
        sa.text(
            "SELECT set_config('lock_timeout', :lt, true), set_config('statement_timeout', :st, true),"
            " set_config('plan_cache_mode', 'force_custom_plan', true)"
        ),
        {"lt": f"{config.lock_timeout_ms}ms", "st": f"{config.statement_timeout_ms}ms"},
    )


def find_orphans(
    conn: Connection,
    tenant_id: str | None = None,
    config: SweepConfig | None = None,
    *,
    lock: bool = False,
) -> pd.DataFrame:
    """The batch to examine: due orphans (past grace, inside max age, due now), in fair order.

    At most ``config.limit`` per tenant and ``config.max_total`` in all (all
    tenants when ``tenant_id`` is None, fairly shared). With ``lock=True``
    (inside a sweep's transaction) the queue rows are locked ``SKIP LOCKED``,
    so a concurrent sweep takes other orphans instead of waiting.
    """
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)
    _set_timeouts(conn, config)
    params = _find_params(tenant_id, config)
    rows = conn.execute(_FIND_SQL[tenant_id is not None, lock, config.retry_all], params).all()
    return _orphan_frame(rows)


def _find_params(tenant_id: str | None, config: SweepConfig, run: RunProgress | None = None) -> dict[str, Any]:
    """What the find statements bind (``run``: what this run's earlier transactions did, if any)."""
    params: dict[str, Any] = {
        "grace_seconds": config.grace_seconds,
        "max_age_minutes": config.max_age_minutes,
        "limit": config.limit,
        "max_total": config.max_total,
    }
    if tenant_id is not None:
        params["tenant_id"] = tenant_id
    else:
        params["used"] = json.dumps(dict(run.used) if run else {}, separators=(",", ":"))
    if config.retry_all:
        params["run_started"] = run.started if run else None
    return params


@dataclass
class RunProgress:
    """A run of several sweep transactions so far: when it started (database clock) and the orphans
    each tenant had examined. Keeps ``limit`` a quota per run and ``retry_all`` once per orphan per run."""

    started: datetime | None = None
    used: dict[str, int] = field(default_factory=dict)


def _orphan_frame(rows: Sequence[sa.Row[Any]], linked: bool = False) -> pd.DataFrame:
    columns = ORPHAN_COLUMNS[:-1] + (["delivery_id"] if linked else [])
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    frame["malformed"] = frame["provider"].isna() | frame["provider_message_id"].isna() | frame["occurred_at"].isna()
    frame = frame.astype({"malformed": bool})
    if linked:  # attempt_link's shape: ORPHAN_COLUMNS then delivery_id (None where nothing matched)
        frame = frame[[*ORPHAN_COLUMNS, "delivery_id"]].astype({"delivery_id": object})
        frame["delivery_id"] = frame["delivery_id"].where(frame["delivery_id"].notna(), None)
    return frame


def _find_linked(
    conn: Connection, tenant_id: str | None, config: SweepConfig, run: RunProgress | None = None
) -> pd.DataFrame:
    """:func:`find_orphans` (locking) and :func:`attempt_link` in ONE statement: what :func:`sweep` runs."""
    _set_timeouts(conn, config)
    params = _find_params(tenant_id, config, run)
    rows = conn.execute(_FIND_LINKED_SQL[tenant_id is not None, config.retry_all], params).all()
    return _orphan_frame(rows, linked=True)


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
# * attempted: the examination recorded on every unlinked orphan of the batch:
#   attempts + 1, last_attempted_at, next_attempt_at by the backoff, and
#   linkable_at cleared (it did not link after all); malformed ones are parked,
#   and so are ones that aged out since find (as the stale parking below would
#   have done right after);
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
               -- From the minute the sweep belongs to, not from now(): a sweep starts seconds after its
               -- tick, so now() + 1 minute would miss the next tick ("retry in 1 minute" = next tick).
               next_attempt_at = date_trunc('minute', now()) + {backoff},
               linkable_at = NULL,
               parked_at = CASE WHEN b.malformed OR q.orphan_inserted_at <= c.stale_before THEN now() END,
               parked_reason = CASE WHEN b.malformed THEN 'malformed'
                                    WHEN q.orphan_inserted_at <= c.stale_before THEN 'stale' END
          FROM batch b, cutoff c
         WHERE q.event_id = b.id AND b.delivery_id IS NULL
        RETURNING q.event_id, q.tenant_id, q.parked_reason
    ), parked AS (
        UPDATE mailglass_reconciliation_queue q
           SET parked_at = now(), parked_reason = 'stale'
          FROM cutoff c
         WHERE q.parked_at IS NULL
           AND q.orphan_inserted_at <= c.stale_before
           {tenant_filter}
           AND NOT EXISTS (SELECT 1 FROM batch b WHERE b.id = q.event_id AND b.delivery_id IS NULL)
        RETURNING q.event_id, q.tenant_id
    ), newly_stale AS (
        SELECT tenant_id, count(*) AS n
          FROM (SELECT tenant_id FROM attempted WHERE parked_reason = 'stale'
                UNION ALL SELECT tenant_id FROM parked) s
         GROUP BY tenant_id
    )
    SELECT ARRAY(SELECT id FROM won) AS won,
           -- The queue rows of the won orphans are removed by the ledger trigger at the end of this
           -- statement; the statement's snapshot still sees them.
           (SELECT EXTRACT(EPOCH FROM max(now() - GREATEST(
                       COALESCE(q.linkable_at, q.orphan_inserted_at),
                       q.orphan_inserted_at + make_interval(secs => :grace_seconds))))
              FROM won w JOIN mailglass_reconciliation_queue q ON q.event_id = w.id) AS linked_lag,
           (SELECT count(*) FROM notified) AS notified,
           (SELECT count(*) FROM attempted) AS attempted,
           (SELECT count(*) FROM parked) AS parked,
           -- Per tenant, orphans this statement parked as stale: a change worth a materialization.
           (SELECT COALESCE(json_agg(json_build_array(tenant_id, n)), '[]') FROM newly_stale) AS newly_stale
"""


def _write_sql(tenant_scoped: bool) -> sa.TextClause:
    return sa.text(
        _WRITE.format(
            projection=projector.projection_ctes("won"),
            notify=projector.notify_select("latest"),
            tenant_filter="AND q.tenant_id = :tenant_id" if tenant_scoped else "",
            backoff=_BACKOFF_SQL.format(attempts="q.attempts + 1"),
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


# Linkable and still pending: its delivery committed (linkable_at), past grace, inside max age.
_LINKABLE = f"""
        SELECT q.tenant_id,
               now() - GREATEST(q.linkable_at, q.orphan_inserted_at + make_interval(secs => :grace_seconds)) AS waited
          FROM mailglass_reconciliation_queue q
         WHERE q.parked_at IS NULL AND q.linkable_at IS NOT NULL AND {_WINDOW} {{tenant_filter}}"""

# What is left after a sweep, in one statement: the examined tenants' backlog, the scope's totals,
# the due orphans the caps left, and the longest wait of a linkable orphan still pending.
_AFTER = """
    WITH per_tenant AS (
        SELECT tenant_id,
               count(*) FILTER (WHERE parked_at IS NULL) AS remaining_orphans,
               count(*) FILTER (WHERE parked_reason = 'stale') AS stale_orphans
          FROM mailglass_reconciliation_queue
         WHERE tenant_id = ANY(CAST(:examined AS text[]))
         GROUP BY tenant_id
    ), due AS ({due_rows}
    ), linkable AS ({linkable}
    )
    SELECT (SELECT COALESCE(json_agg(json_build_array(tenant_id, remaining_orphans, stale_orphans)), '[]')
              FROM per_tenant) AS per_tenant,
           (SELECT count(*) FROM mailglass_reconciliation_queue q WHERE q.parked_at IS NULL {tenant_filter})
               AS remaining_orphans,
           (SELECT count(*) FROM mailglass_reconciliation_queue q
             WHERE q.parked_at IS NOT NULL AND q.parked_reason = 'stale' {tenant_filter}) AS stale_orphans,
           (SELECT count(*) FROM due) AS due_remaining,
           (SELECT EXTRACT(EPOCH FROM now() - min(due_since)) FROM due) AS oldest_due_age,
           (SELECT EXTRACT(EPOCH FROM max(waited)) FROM linkable) AS pending_lag
"""


def _after_sql(tenant_scoped: bool) -> sa.TextClause:
    tenant_filter = "AND q.tenant_id = :tenant_id" if tenant_scoped else ""
    return sa.text(
        _AFTER.format(
            due_rows=_due_rows_sql(tenant_filter),
            linkable=_LINKABLE.format(tenant_filter=tenant_filter),
            tenant_filter=tenant_filter,
        )
    )


_AFTER_SQL = {scoped: _after_sql(scoped) for scoped in (False, True)}


def append_reconciled_events(
    conn: Connection,
    linked: pd.DataFrame,
    tenant_id: str | None = None,
    config: SweepConfig | None = None,
) -> SweepResult:
    """Write the sweep's outcome in the caller's transaction.

    Appends one ``reconciled`` event per matched orphan (idempotent), folds
    the orphans' events into their deliveries, queues the notifications,
    records the examination (and the next retry time) for every unlinked
    orphan, parks malformed and aged-out ones, and counts what is left.
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
    3. what is left (``_AFTER``), which must see the queue after the write.
    """
    if not linked.empty:
        projector.lock(conn, (_as_uuid(d) for d in linked["delivery_id"].dropna()))
    scoped = tenant_id is not None
    params: dict[str, Any] = {
        "rows": _batch_document(linked),
        "max_age_minutes": config.max_age_minutes,
        "grace_seconds": config.grace_seconds,
    }
    if scoped:
        params["tenant_id"] = tenant_id
    row = conn.execute(_WRITE_SQL[scoped], params).one()
    newly_stale = {str(t): int(n) for t, n in row.newly_stale}
    examined = sorted(set(linked["tenant_id"].tolist()) | set(newly_stale)) if not scoped else [tenant_id]
    after = conn.execute(
        _AFTER_SQL[scoped],
        {**params, "examined": "{" + ",".join(_array_item(t) for t in examined) + "}"},
    ).one()
    result = _summarize(linked, set(row.won), after, tenant_id, newly_stale)
    lags = [float(v) for v in (row.linked_lag, after.pending_lag) if v is not None]
    result.lag_seconds = max(lags) if lags else None
    return result


def _array_item(text: str) -> str:
    # One text[] literal for the whole list: the driver would otherwise dump a list element by element.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _as_uuid(value: Any) -> uuid.UUID:
    # A batch that went through a Dagster IO manager may carry the ids as text.
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _summarize(
    linked: pd.DataFrame,
    won_ids: set[uuid.UUID],
    after: Any,
    tenant_id: str | None,
    newly_stale: dict[str, int] | None = None,
) -> SweepResult:
    newly_stale = newly_stale or {}
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
    left = {t: (int(r), int(s)) for t, r, s in after.per_tenant}
    tenants = [tenant_id] if tenant_id is not None else sorted(set(per_tenant) | set(newly_stale))
    for tenant in tenants:
        scanned, linked_n, malformed_n, matched_n = per_tenant.get(tenant, [0, 0, 0, 0])
        remaining, stale = left.get(tenant, (0, 0))
        counts = {
            "scanned": scanned,
            "linked": linked_n,
            "unmatched": scanned - matched_n - malformed_n,
            "malformed": malformed_n,
            "already_reconciled": matched_n - linked_n,
            "remaining_orphans": remaining,
            "stale_orphans": stale,
            "newly_stale": newly_stale.get(tenant, 0),
        }
        result.tenants[tenant] = counts
        for key in ("scanned", "linked", "unmatched", "malformed", "already_reconciled", "newly_stale"):
            setattr(result, key, getattr(result, key) + counts[key])
    result.tenants_swept = len(per_tenant)
    result.remaining_orphans = int(after.remaining_orphans)
    result.stale_orphans = int(after.stale_orphans)
    result.due_remaining = int(after.due_remaining)
    result.oldest_due_age_seconds = float(after.oldest_due_age) if after.oldest_due_age is not None else None
    return result


def sweep(
    engine: Engine,
    tenant_id: str | None = None,
    config: SweepConfig | None = None,
    *,
    run: RunProgress | None = None,
) -> SweepResult:
    """One sweep in one transaction: find (locking) and link in one statement, then append. Retries deadlocks.

    All tenants when ``tenant_id`` is None: the same statements, never one per tenant. ``run``: the
    progress of a run this transaction belongs to (``drain.sweep_until``).
    """
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)

    def work(conn: Connection) -> SweepResult:
        linked = _find_linked(conn, tenant_id, config, run)  # sets the timeouts for the transaction
        return _write(conn, linked, tenant_id, config)

    return run_transaction(engine, work)


def reconcile(
    tenant_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    database_url: str | None = None,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_total: int = DEFAULT_MAX_TOTAL,
    retry_all: bool = False,
) -> dict[str, Any]:
    """Run one sweep (all tenants when ``tenant_id`` is None) and return its counts.

    The :class:`SweepResult` fields as a dict (``scanned``, ``linked``, ...,
    ``tenants``, ``tenants_swept``, ``due_remaining``, ...). Arguments are
    validated before the database is touched (``ValueError``).
    """
    config = SweepConfig(
        limit=limit,
        max_age_minutes=max_age_minutes,
        grace_seconds=grace_seconds,
        max_total=max_total,
        retry_all=retry_all,
    )
    tenant_id = validate_tenant_id(tenant_id)
    return sweep(get_engine(database_url), tenant_id, config).as_dict()


_DUE_SUMMARY = sa.text(
    f"""
    SELECT count(DISTINCT tenant_id) AS tenants, count(*) AS orphans,
           EXTRACT(EPOCH FROM now() - min(due_since)) AS oldest
      FROM ({_due_rows_sql("")}) d
    """
)


def due_summary(
    conn: Connection,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> DueSummary:
    """Tenants and orphans due now, and how long the longest-waiting one has been due.

    One statement over two partial indexes that hold only fresh and retry
    rows: its cost follows the due orphans, not the tenants or the history.
    """
    row = conn.execute(_DUE_SUMMARY, {"grace_seconds": grace_seconds, "max_age_minutes": max_age_minutes}).one()
    return DueSummary(int(row.tenants), int(row.orphans), float(row.oldest) if row.oldest is not None else None)


def _lag_sql(tenant_scoped: bool) -> sa.TextClause:
    linkable = _LINKABLE.format(tenant_filter="AND q.tenant_id = :tenant_id" if tenant_scoped else "")
    return sa.text(
        f"""
        SELECT count(*) AS n, EXTRACT(EPOCH FROM max(waited)) AS longest
          FROM ({linkable}) l
         WHERE waited > make_interval(secs => :threshold_seconds)
        """
    )


_LAG_SQL = {scoped: _lag_sql(scoped) for scoped in (False, True)}


def reconciliation_lag(
    conn: Connection,
    tenant_id: str | None = None,
    threshold_seconds: float = 300,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> LagSummary:
    """Pending orphans linkable now (past grace, delivery committed) waiting longer than the threshold.

    The wait runs from when the orphan became linkable:
    ``GREATEST(linkable_at, orphan_inserted_at + grace)``.
    """
    params: dict[str, Any] = {
        "grace_seconds": grace_seconds,
        "max_age_minutes": max_age_minutes,
        "threshold_seconds": float(threshold_seconds),
    }
    if tenant_id is not None:
        params["tenant_id"] = tenant_id
    row = conn.execute(_LAG_SQL[tenant_id is not None], params).one()
    return LagSummary(int(row.n), float(row.longest) if row.longest is not None else None)


_DUE_TENANTS = sa.text(
    f"""
    SELECT DISTINCT tenant_id FROM ({_due_rows_sql("")}) d ORDER BY tenant_id
    """
)


def tenants_with_due_orphans(
    conn: Connection,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> list[str]:
    """Tenants with at least one orphan a sweep would examine now: one query."""
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
        -- Every queue index that leads with tenant_id is partial: each scan names its index's
        -- predicate (pending: the age index; parked: the parked index), or it is a sequential scan
        -- per step (12 s at 10,000 tenants instead of tens of ms).
        (SELECT tenant_id FROM mailglass_reconciliation_queue WHERE parked_at IS NULL ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT x.tenant_id FROM mailglass_reconciliation_queue x
                 WHERE x.parked_at IS NULL AND x.tenant_id > q.tenant_id ORDER BY x.tenant_id LIMIT 1)
          FROM q WHERE q.tenant_id IS NOT NULL
    ), p AS (
        (SELECT tenant_id FROM mailglass_reconciliation_queue WHERE parked_at IS NOT NULL ORDER BY tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT x.tenant_id FROM mailglass_reconciliation_queue x
                 WHERE x.parked_at IS NOT NULL AND x.tenant_id > p.tenant_id ORDER BY x.tenant_id LIMIT 1)
          FROM p WHERE p.tenant_id IS NOT NULL
    )
    SELECT tenant_id FROM d WHERE tenant_id IS NOT NULL
    UNION
    SELECT tenant_id FROM q WHERE tenant_id IS NOT NULL
    UNION
    SELECT tenant_id FROM p WHERE tenant_id IS NOT NULL
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
