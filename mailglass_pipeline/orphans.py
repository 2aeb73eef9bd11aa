"""Every orphan's fate: list the work queue by state, explain one orphan, prune parked rows.

Operators ask "why did this event never link?". The reconciler's counts cannot
answer it; these functions read the work queue (``mailglass_reconciliation_queue``,
one row per orphan not yet reconciled) and the ledger, and say for any orphan
its state (``due``, ``waiting`` until when, ``stale``, ``malformed``, or linked)
and the reason: no delivery with its key, a delivery with that message id under
another tenant or provider, a missing key, its age. It is an operator's tool:
it names the other tenant on purpose.

Every list statement is bounded by its limit (index ranges whose predicate is
the state; see ``sql/orphans.sql``),
so listing costs the same with a backlog of ten orphans or ten million. The retention of parked rows
(:func:`prune_parked`) deletes queue rows only, in small batches: the ledger
keeps every event.

No Dagster here: the CLI and the Dagster check and retention job call these.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mailglass_pipeline import deliveries, settings
from mailglass_pipeline.errors import ConfigurationError, MailglassError
from mailglass_pipeline.queries import statement
from mailglass_pipeline.settings import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_AGE_MINUTES,
    stale_message,
    validate_tenant_id,
)

STATES = ("due", "waiting", "stale", "malformed")
PARKED_REASONS = ("stale", "malformed")
#: Where an orphan's message id is read, in order (as migration 0003's queue trigger extracts it: tested).
_MESSAGE_ID_KEYS = ("provider_message_id", "message_id", "sg_message_id")

#: The statement listing each state (the state itself is bound).
LIST_STATEMENT = {"due": "list_pending", "waiting": "list_pending", "stale": "list_parked", "malformed": "list_parked"}


def _read(conn: Connection, name: str, params: Mapping[str, Any]) -> sa.CursorResult[Any]:
    # The scope and the state are bound values that only a custom plan folds (see sql/orphans.sql);
    # the sweep's retry rule is bound as a scheduled sweep binds it (no manual retry_all, no run).
    conn.execute(statement("custom_plans"))
    return conn.execute(statement(name), {"retry_all": False, "run_started": None, **params})


class OrphanNotFoundError(MailglassError):
    """No ledger event has that id."""


@dataclass(frozen=True)
class OrphanRow:
    """One queued orphan as ``mailglass orphans`` lists it (times in UTC, ISO 8601)."""

    event_id: str
    tenant_id: str
    state: str
    provider: str | None
    provider_message_id: str | None
    attempts: int
    age_seconds: float
    inserted_at: str
    last_attempted_at: str | None
    next_attempt_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _utc(value: datetime | None) -> datetime | None:
    # Ecto's `timestamp` columns hold UTC without a zone; the queue's are timestamptz.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat(timespec="seconds") if value is not None else None


def list_orphans(
    conn: Connection,
    tenant_id: str | None = None,
    state: str | None = None,
    limit: int = settings.LIST_LIMIT.default,
    *,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> list[OrphanRow]:
    """Queued orphans, at most ``limit``: of one ``state``, or of every state in the order of ``STATES``.

    Within a state: due in the order the sweep takes them, waiting by next attempt, stale and
    malformed oldest first. Each state reads at most ``limit`` rows from its own index ranges.
    """
    limit = settings.LIST_LIMIT.check(limit)
    tenant_id = validate_tenant_id(tenant_id)
    if state is not None and state not in STATES:
        raise ConfigurationError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    params: dict[str, Any] = {
        "tenant_id": tenant_id,
        "grace_seconds": grace_seconds,
        "max_age_minutes": max_age_minutes,
    }
    rows: list[OrphanRow] = []
    now = conn.execute(statement("run_started")).scalar_one()
    for name in [state] if state else STATES:
        if len(rows) >= limit:
            break
        params.update(state=name, limit=limit - len(rows))
        for r in _read(conn, LIST_STATEMENT[name], params).mappings():
            next_attempt = None
            if r["state"] == "due":
                next_attempt = now
            elif r["state"] == "waiting":
                grace_end = r["orphan_inserted_at"] + timedelta(seconds=grace_seconds)
                next_attempt = max(grace_end, r["next_attempt_at"] or grace_end)
            rows.append(
                OrphanRow(
                    event_id=str(r["event_id"]),
                    tenant_id=r["tenant_id"],
                    state=r["state"],
                    provider=r["provider"],
                    provider_message_id=r["provider_message_id"],
                    attempts=int(r["attempts"]),
                    age_seconds=round((now - r["orphan_inserted_at"]).total_seconds(), 1),
                    inserted_at=_iso(r["orphan_inserted_at"]) or "",
                    last_attempted_at=_iso(r["last_attempted_at"]),
                    next_attempt_at=_iso(next_attempt),
                )
            )
    return rows


def counts_by_state(
    conn: Connection,
    tenant_ids: Iterable[str],
    *,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> dict[str, dict[str, int]]:
    """``{tenant: {"due": n, "waiting": n, "stale": n, "malformed": n}}`` for these tenants (0 when none)."""
    tenants = sorted(set(tenant_ids))
    counts = {t: dict.fromkeys(STATES, 0) for t in tenants}
    if not tenants:
        return counts
    params = {"tenant_ids": tenants, "grace_seconds": grace_seconds, "max_age_minutes": max_age_minutes}
    for row in _read(conn, "counts_by_state", params).mappings():
        counts[row["tenant_id"]] = {state: int(row[state]) for state in STATES}
    return counts


def totals_by_state(
    conn: Connection,
    *,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> dict[str, int]:
    """The whole queue by state: ``{"due": n, "waiting": n, "stale": n, "malformed": n}``."""
    params = {"tenant_ids": None, "grace_seconds": grace_seconds, "max_age_minutes": max_age_minutes}
    row = _read(conn, "counts_by_state", params).mappings().one_or_none()
    return {state: int(row[state]) if row is not None else 0 for state in STATES}


def oldest_stale(
    conn: Connection,
    tenant_id: str | None = None,
    limit: int = 20,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> list[dict[str, Any]]:
    """The oldest stale orphans: tenant, provider, message id, event type, age (the check's table)."""
    params = {
        "state": "stale",
        "tenant_id": tenant_id,
        "limit": settings.LIST_LIMIT.check(limit),
        "max_age_minutes": max_age_minutes,
    }
    return [dict(r) for r in _read(conn, "oldest_stale", params).mappings()]


def tenant_known(conn: Connection, tenant_id: str) -> bool:
    """Whether any delivery or queued orphan has ``tenant_id``."""
    return bool(conn.execute(statement("tenant_known"), {"tenant_id": tenant_id}).scalar_one())


# -- explain ---------------------------------------------------------------------------------------------


def _first_text(documents: Iterable[Mapping[str, Any]], keys: Iterable[str]) -> str | None:
    # The reconciler's rule: a non-empty JSON string only, metadata before normalized_payload.
    keys = tuple(keys)
    for document in documents:
        for key in keys:
            value = document.get(key) if isinstance(document, Mapping) else None
            if isinstance(value, str) and value:
                return value
    return None


def _message_id_variants(provider: str, message_id: str) -> list[str]:
    # The lookup's message ids (mailglass_reconciliation_message_ids, migration 0007): the stored id may be the
    # part before ".filter" or the first dot.
    if provider != "sendgrid":
        return [message_id]
    return list(dict.fromkeys([message_id, message_id.split(".filter", 1)[0], message_id.split(".", 1)[0]]))


def parse_event_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        raise ConfigurationError(f"not an event id (a UUID): {text!r}") from None


def explain(
    conn: Connection,
    event_id: str | uuid.UUID,
    *,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    max_age_minutes: int = DEFAULT_MAX_AGE_MINUTES,
) -> dict[str, Any]:
    """Why ``event_id`` is not linked (or by what it was): ``state``, ``reason`` and one-line ``message``.

    Reasons: ``linked``, ``not_an_orphan``, ``malformed`` (``missing`` names the keys), ``stale``,
    ``delivery_found`` (due: the next sweep links it), ``delivery_other_tenant``,
    ``delivery_other_provider``, ``no_delivery``. Raises :class:`OrphanNotFoundError` for an
    unknown id and ``ConfigurationError`` for text that is not a UUID.
    """
    event_uuid = event_id if isinstance(event_id, uuid.UUID) else parse_event_id(str(event_id))
    row = conn.execute(statement("explain_orphan"), {"event_id": event_uuid}).mappings().one_or_none()
    if row is None:
        raise OrphanNotFoundError(f"no event {event_uuid} in the ledger")
    now: datetime = row["now"]
    inserted = _utc(row["inserted_at"])
    assert inserted is not None
    documents = [row["metadata"] or {}, row["normalized_payload"] or {}]
    provider = _first_text(documents, ["provider"])
    message_id = _first_text(documents, _MESSAGE_ID_KEYS)
    out: dict[str, Any] = {
        "event_id": str(event_uuid),
        "tenant_id": row["tenant_id"],
        "type": row["type"],
        "provider": provider,
        "provider_message_id": message_id,
        "age_seconds": round((now - inserted).total_seconds(), 1),
        "queued": bool(row["queued"]),
        "attempts": row["attempts"],
        "last_attempted_at": _iso(row["last_attempted_at"]),
        "next_attempt_at": None,
        "missing": [],
        "delivery": None,
        "reconciled_event_id": None,
    }

    def done(state: str, reason: str, message: str) -> dict[str, Any]:
        return {**out, "state": state, "reason": reason, "message": message}

    if row["reconciled_id"] is not None:
        out["reconciled_event_id"] = str(row["reconciled_id"])
        out["delivery"] = {"id": str(row["reconciled_delivery_id"]), "tenant_id": row["tenant_id"]}
        return done(
            "linked",
            "linked",
            f"linked to delivery {row['reconciled_delivery_id']} by reconciled event {row['reconciled_id']}"
            f" at {_iso(row['reconciled_at'])}",
        )
    if row["delivery_id"] is not None or not row["needs_reconciliation"]:
        out["delivery"] = {"id": str(row["delivery_id"])} if row["delivery_id"] else None
        where = f"it belongs to delivery {row['delivery_id']}" if row["delivery_id"] else "it needs no reconciliation"
        return done("linked", "not_an_orphan", f"not an orphan: {where}")
    removed = "" if row["queued"] else " (its work-queue row was removed after the parked-row retention period)"
    missing = [name for name, value in (("provider", provider), ("provider_message_id", message_id)) if not value]
    if not row["occurred_at_finite"]:
        missing.append("occurred_at (not a finite time)")
    if missing or row["parked_reason"] == "malformed":
        out["missing"] = missing
        looked = "metadata/normalized_payload keys " + ", ".join(["provider", *_MESSAGE_ID_KEYS])
        return done("malformed", "malformed", f"malformed: missing {', '.join(missing)} (read {looked}){removed}")
    assert provider is not None and message_id is not None
    variants = _message_id_variants(provider, message_id)
    params = {"message_ids": variants, "tenant_id": row["tenant_id"], "provider": provider}
    candidates = [dict(d) for d in conn.execute(statement("deliveries_with_message_id"), params).mappings()]
    own = deliveries.lookup(conn, [row["tenant_id"]], [provider], [message_id])[0]
    stale = row["parked_reason"] == "stale" or now - inserted > timedelta(minutes=max_age_minutes)
    if stale:
        found = f"; a matching delivery {own} exists now (run a sweep with a larger --max-age-minutes)" if own else ""
        days = out["age_seconds"] / 86400
        return done("stale", "stale", f"stale: {stale_message(max_age_minutes)} ({days:.1f} days){found}{removed}")
    if not row["queued"]:
        return done("unknown", "not_queued", "pending but not in the work queue (was the queue row deleted by hand?)")
    grace_end = inserted + timedelta(seconds=grace_seconds)
    next_at = row["next_attempt_at"]
    waiting_until = max(grace_end, next_at) if next_at is not None else grace_end
    state = "waiting" if waiting_until > now else "due"
    out["next_attempt_at"] = _iso(waiting_until if state == "waiting" else now)
    when = f"waiting until {_iso(waiting_until)}" if state == "waiting" else "due: the next sweep examines it"
    if own is not None:
        out["delivery"] = next((c for c in candidates if str(c["id"]) == str(own)), {"id": own})
        if state == "waiting" and row["linkable_at"] is None and next_at is not None:
            when = f"waiting until {_iso(waiting_until)} (its delivery appeared without waking it)"
        return done(state, "delivery_found", f"its delivery {own} exists; {when}")
    for reason, label, test in (
        ("delivery_other_tenant", "tenant", lambda c: c["tenant_id"] != row["tenant_id"]),
        ("delivery_other_provider", "provider", lambda c: c["provider"] != provider),
    ):
        match = next((c for c in candidates if test(c)), None)
        if match is not None:
            match = {k: str(v) for k, v in match.items()}
            out["delivery"] = match
            return done(
                state,
                reason,
                f"a delivery with message id {match['provider_message_id']!r} exists under another {label}: "
                f"delivery {match['id']} (tenant {match['tenant_id']!r}, provider {match['provider']!r}); "
                f"never linked across {label}s; {when}",
            )
    return done(
        state,
        "no_delivery",
        f"no delivery with (tenant {row['tenant_id']!r}, provider {provider!r}, message id {message_id!r}); {when}",
    )


# -- retention of parked rows ----------------------------------------------------------------------------


def prune_parked(
    engine: Engine,
    retention_days: int | None = None,
    *,
    batch_size: int = 1000,
    max_rows: int = 1_000_000,
    now: datetime | None = None,
) -> dict[str, int]:
    """Delete queue rows parked more than ``retention_days`` ago, ``batch_size`` per transaction.

    Each batch is its own short transaction (row locks held for one batch, rows locked by a
    sweep skipped), so a first run over a year of parked rows never holds locks for long; it
    stops after ``max_rows`` and the next run continues. The ledger is never touched.
    """
    days = (
        settings.PARKED_RETENTION_DAYS.read()
        if retention_days is None
        else settings.PARKED_RETENTION_DAYS.check(retention_days)
    )
    if batch_size < 1 or max_rows < 1:
        raise ConfigurationError("batch_size and max_rows must be >= 1")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = dict.fromkeys(PARKED_REASONS, 0)
    batches = 0
    for reason in PARKED_REASONS:
        while sum(deleted.values()) < max_rows:
            size = min(batch_size, max_rows - sum(deleted.values()))
            with engine.begin() as conn:
                conn.execute(statement("prune_lock_timeout"))
                params = {"reason": reason, "cutoff": cutoff, "batch_size": size}
                n = int(conn.execute(statement("delete_parked"), params).scalar_one())
            batches += 1
            deleted[reason] += n
            if n < size:
                break
    return {
        "deleted_stale": deleted["stale"],
        "deleted_malformed": deleted["malformed"],
        "batches": batches,
        "retention_days": days,
    }
