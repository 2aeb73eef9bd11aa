"""The sweep: find the due orphans, link them to their deliveries, write the outcome.

A port of Mailglass v1.0.0's ``Mailglass.Webhook.Reconciler`` with its data
model kept (decisions D1 to D8 in docs/decisions.md say what changed and why):
pending work lives in a queue beside the ledger (D3); an orphan is examined
only when it can succeed (D4); one sweep covers every tenant in a constant
number of statements, bounded by ``max_total`` and fairly shared (D5, D10).

A batch costs a fixed number of statements, never one per orphan or tenant:
timeouts, find (locking its queue rows ``FOR UPDATE SKIP LOCKED`` and, in
:func:`sweep`, looking the deliveries up in the same statement), ONE write
statement, one statement for what is left, then, last before the commit, lock
the won deliveries in id order and project onto them (decision D30: a delivery
the sweep links is locked for milliseconds, not for the whole sweep). The
statements are named blocks of ``sql/sweep.sql``.

The batch is one representation throughout: a pandas DataFrame with the
columns :data:`ORPHAN_COLUMNS` (+ ``delivery_id``), as the per-tenant Dagster
graph hands it from op to op. The write statement receives it as one JSON
document written by pandas, where a missing value of any kind is ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection, Engine, Row

from mailglass_pipeline import deliveries, projector
from mailglass_pipeline.db import get_engine, run_transaction
from mailglass_pipeline.queries import statement
from mailglass_pipeline.reconciliation.results import RunProgress, SweepResult
from mailglass_pipeline.settings import (
    BACKOFF_CAP_MINUTES,
    BACKOFF_MINUTES,
    DEFAULT_GRACE_SECONDS,
    DEFAULT_LIMIT,
    DEFAULT_MAX_AGE_MINUTES,
    DEFAULT_MAX_TOTAL,
    SweepConfig,
    validate_tenant_id,
)

if TYPE_CHECKING:  # pandas is imported where a batch is built: `import mailglass_pipeline` stays cheap
    import pandas as pd

#: Columns of the DataFrame ``find_orphans`` returns (and ``attempt_link`` extends with ``delivery_id``).
ORPHAN_COLUMNS = [
    "id", "tenant_id", "type", "occurred_at", "inserted_at", "attempts",
    "provider", "provider_message_id", "provider_event_id", "malformed",
]  # fmt: skip
#: What the write statement binds for the backoff: the steps' one home is settings.py.
BACKOFF_PARAMS = {"backoff_steps": list(BACKOFF_MINUTES), "backoff_cap": BACKOFF_CAP_MINUTES}
#: What the write statement reads of a linked batch.
_DOCUMENT_COLUMNS = ["id", "delivery_id", "provider", "provider_event_id", "malformed"]


def set_timeouts(conn: Connection, config: SweepConfig) -> None:
    """The transaction's lock and statement timeouts, and one plan per execution (``sql/sweep.sql``)."""
    conn.execute(
        statement("set_timeouts"),
        {"lock_timeout": f"{config.lock_timeout_ms}ms", "statement_timeout": f"{config.statement_timeout_ms}ms"},
    )


def find_params(
    tenant_id: str | None, config: SweepConfig, run: RunProgress | None = None, *, link: bool = True
) -> dict[str, Any]:
    """What the find statements bind (``run``: what this run's earlier transactions did, if any)."""
    return {
        "tenant_id": tenant_id,
        "grace_seconds": config.grace_seconds,
        "max_age_minutes": config.max_age_minutes,
        "limit": config.limit,
        "max_total": config.max_total,
        "used": json.dumps(dict(run.used) if run else {}, separators=(",", ":")),
        "retry_all": config.retry_all,
        "run_started": run.started if run and config.retry_all else None,
        "link": link,
    }


def absorb_wakes(conn: Connection) -> tuple[int, int]:
    """Apply the triggers' signals (decision D27): ``(woken, removed)``. Commit it apart, before a find.

    Orphans whose delivery appeared become due and linkable; orphans reconciled by another writer while a
    sweep held them leave the queue. It locks the rows it changes, so it runs in a short transaction of its
    own (the rows it woke are then free for any sweep): :func:`sweep` does, and so do the schedule's tick
    and the tenant graph's find op.
    """
    row = conn.execute(statement("absorb_wakes")).one()
    return int(row.woken), int(row.removed)


def _find(
    conn: Connection,
    tenant_id: str | None,
    config: SweepConfig,
    run: RunProgress | None,
    *,
    link: bool,
) -> pd.DataFrame:
    set_timeouts(conn, config)
    find = statement("find_batch")
    rows = conn.execute(find, find_params(tenant_id, config, run, link=link)).all()
    return _batch_frame(rows)


def _batch_frame(rows: Sequence[Row[Any]]) -> pd.DataFrame:
    import pandas as pd

    columns = [c for c in ORPHAN_COLUMNS if c != "malformed"] + ["delivery_id"]
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    frame["malformed"] = (
        frame["provider"].isna() | frame["provider_message_id"].isna() | frame["occurred_at"].isna()
    ).astype(bool)
    frame = frame[[*ORPHAN_COLUMNS, "delivery_id"]].astype({"delivery_id": object})
    frame["delivery_id"] = frame["delivery_id"].where(frame["delivery_id"].notna(), None)
    return frame


def find_orphans(
    conn: Connection,
    tenant_id: str | None = None,
    config: SweepConfig | None = None,
    *,
    lock: bool = False,
) -> pd.DataFrame:
    """The batch to examine: due orphans (past grace, inside max age, due now), in fair order.

    At most ``config.limit`` per tenant and ``config.max_total`` in all (all
    tenants when ``tenant_id`` is None, fairly shared). The statement is the
    sweep's own and skips queue rows a concurrent sweep holds. With
    ``lock=True`` the rows stay locked until the caller's transaction ends;
    otherwise the locks are released on return (a savepoint rolled back).
    """
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)
    if lock:
        return _find(conn, tenant_id, config, None, link=False)[ORPHAN_COLUMNS]
    # FOR UPDATE cannot be a bind parameter: the locks are taken in a savepoint and released with it.
    savepoint = conn.begin_nested()
    try:
        return _find(conn, tenant_id, config, None, link=False)[ORPHAN_COLUMNS]
    finally:
        savepoint.rollback()


def attempt_link(conn: Connection, orphans: pd.DataFrame) -> pd.DataFrame:
    """``orphans`` plus a ``delivery_id`` column: the matching delivery in the same tenant, or None.

    One lookup statement for the batch (``deliveries.lookup``: the same rule
    the sweep's find embeds); malformed orphans are not looked up.
    """
    import pandas as pd

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
    set_timeouts(conn, config)
    return _write(conn, linked, tenant_id, config)


def batch_document(linked: pd.DataFrame) -> str:
    """The linked batch as one JSON array of objects: what the write statement reads, nothing more.

    ``pos`` is the row's place in the batch (find order). pandas writes any
    missing value (None, NaN, NaT) as ``null`` and ids (UUID or text) as text.
    """
    if linked.empty:
        return "[]"
    document = linked[_DOCUMENT_COLUMNS].assign(pos=range(len(linked)))
    return document.to_json(orient="records", default_handler=str)


def _write(conn: Connection, linked: pd.DataFrame, tenant_id: str | None, config: SweepConfig) -> SweepResult:
    """:func:`append_reconciled_events` once the timeouts are set: four statements whatever the batch.

    1. the write statement (reconciled events, examinations, parking), which locks no delivery;
    2. what is left (``after_sweep``), which must see the queue after the write;
    3. lock the won orphans' deliveries ``ORDER BY id`` (two sweeps locking overlapping sets cannot
       deadlock; inside one data-modifying statement the UPDATE would lock in whatever order its plan
       visits rows);
    4. the projection onto them (:func:`.projector.project`, the rules' one home). Steps 3 and 4 come
       last, just before the caller's commit: a delivery the sweep links is locked for milliseconds, not
       for the whole sweep (decision D30).
    """
    params: dict[str, Any] = {
        "rows": batch_document(linked),
        "tenant_id": tenant_id,
        "max_age_minutes": config.max_age_minutes,
        "grace_seconds": config.grace_seconds,
        **BACKOFF_PARAMS,
    }
    row = conn.execute(statement("write"), params).one()
    newly_stale = {str(t): int(n) for t, n in row.newly_stale}
    examined = [tenant_id] if tenant_id is not None else sorted(set(linked["tenant_id"].tolist()) | set(newly_stale))
    after = conn.execute(
        statement("after_sweep"),
        {
            **params,
            "examined": "{" + ",".join(_array_item(t) for t in examined) + "}",
            "retry_all": False,
            "run_started": None,
        },
    ).one()
    projector.project(conn, row.won_rows)  # locks the won deliveries in id order, then projects
    result = _summarize(linked, {str(i) for i in row.won}, after, tenant_id, newly_stale)
    lags = [float(v) for v in (row.linked_lag, after.pending_lag) if v is not None]
    result.lag_seconds = max(lags) if lags else None
    return result


def _array_item(text: str) -> str:
    # One text[] literal for the whole list: the driver would otherwise dump a list element by element.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _summarize(
    linked: pd.DataFrame, won_ids: set[str], after: Any, tenant_id: str | None, newly_stale: dict[str, int]
) -> SweepResult:
    result = SweepResult(tenant_id=tenant_id)
    # One pass over plain lists (a boolean mask per tenant would rescan the frame per tenant).
    per_tenant: dict[str, list[int]] = {}  # tenant -> [scanned, linked, malformed, matched]
    if not linked.empty:
        for tenant, orphan_id, malformed, matched in zip(
            linked["tenant_id"].tolist(),
            linked["id"].map(str).tolist(),
            linked["malformed"].tolist(),
            linked["delivery_id"].notna().tolist(),
            strict=True,
        ):
            c = per_tenant.setdefault(tenant, [0, 0, 0, 0])
            c[0] += 1
            c[1] += orphan_id in won_ids
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
    """One sweep: the triggers' signals applied (:func:`absorb_wakes`, a short transaction of its own), then one
    transaction: find (locking) and link in one statement, then write. Retries deadlocks.

    All tenants when ``tenant_id`` is None: the same statements, never one per tenant. ``run``: the
    progress of a run this transaction belongs to (``drain.sweep_due_tenants``).
    """
    config = config or SweepConfig()
    tenant_id = validate_tenant_id(tenant_id)

    def work(conn: Connection) -> SweepResult:
        linked = _find(conn, tenant_id, config, run, link=True)  # sets the timeouts for the transaction
        return _write(conn, linked, tenant_id, config)

    run_transaction(engine, absorb_wakes)
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
    validated before the database is touched (``ValueError``). ``mailglass
    reconcile`` calls this function.
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
