"""One process of the concurrency soak (``test_soak.py``): a sweeper, the feeder or the app writer.

Run as ``python _soak_worker.py ROLE URL RUNDIR INDEX``. The worker imports,
connects, touches ``RUNDIR/ready-ROLE-INDEX`` and waits for ``RUNDIR/go``
(which holds the deadline as a UNIX time), so slow start-ups on a small
machine do not eat into the soak. It prints one JSON report on stdout; any
unhandled exception prints its traceback on stderr and exits 1.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from mailglass_pipeline import deliveries, ledger
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig

TENANTS = [f"soak-{i}" for i in range(8)]
#: Deliveries start before every event, so every event advances last_event_* by its own time.
DELIVERY_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
SET_ONCE = {"delivered", "bounced", "complained"}
TYPES = ["delivered", "bounced", "complained", "opened", "clicked", "deferred", "rejected", "sent"]


def wait_for_go(rundir: Path, role: str, index: int) -> float:
    (rundir / f"ready-{role}-{index}").touch()
    go = rundir / "go"
    while not go.exists():
        time.sleep(0.01)
    time.sleep(0.01)
    return float(go.read_text())


def sweeper(engine: sa.Engine, deadline: float, rng: random.Random) -> dict[str, Any]:
    sweeps = linked = 0
    while time.time() < deadline:
        tenant = None if rng.random() < 0.1 else rng.choice(TENANTS)
        result = sweep(engine, tenant, SweepConfig(limit=rng.choice([5, 20, 50]), grace_seconds=0))
        sweeps += 1
        linked += result.linked
    return {"sweeps": sweeps, "linked": linked}


def feeder(engine: sa.Engine, deadline: float, rng: random.Random) -> dict[str, Any]:
    """Webhook-before-delivery races: orphans first, their deliveries a little later; some never match."""
    pending: list[tuple[float, str, str]] = []  # (commit at, tenant, message id)
    orphans = committed = 0
    base = datetime.now(UTC)
    tick = 0
    while time.time() < deadline:
        events = []
        for _ in range(10):
            tenant = rng.choice(TENANTS)
            message = f"{tenant}/m-{uuid.uuid4().hex[:12]}"
            kinds = rng.sample(TYPES, rng.randint(1, 3))  # distinct: at most one of each set-once type
            for kind in kinds:
                tick += 1
                events.append(
                    ledger.NewEvent(
                        tenant_id=tenant,
                        type=kind,
                        # distinct times: no ties for last_event_type to break
                        occurred_at=base - timedelta(seconds=rng.randint(0, 3600), microseconds=tick),
                        idempotency_key=f"soak:{uuid.uuid4()}",
                        metadata={"provider": "postmark", "provider_message_id": message,
                                  "provider_event_id": f"evt-{tick}"},
                        needs_reconciliation=True,
                    )
                )  # fmt: skip
            if rng.random() < 0.9:  # the rest never match
                pending.append((time.time() + rng.uniform(0, 0.5), tenant, message))
        with engine.begin() as conn:
            ledger.append_events(conn, events)
        orphans += len(events)
        due = [p for p in pending if p[0] <= time.time()]
        pending = [p for p in pending if p[0] > time.time()]
        with engine.begin() as conn:
            for _, tenant, message in due:
                deliveries.create(
                    conn, tenant_id=tenant, provider="postmark", provider_message_id=message,
                    last_event_at=DELIVERY_EPOCH, metadata={"app_seq": 0},
                )  # fmt: skip
        committed += len(due)
        time.sleep(0.02)
    with engine.begin() as conn:  # every delivery that was going to commit does
        for _, tenant, message in pending:
            deliveries.create(
                conn, tenant_id=tenant, provider="postmark", provider_message_id=message,
                last_event_at=DELIVERY_EPOCH, metadata={"app_seq": 0},
            )  # fmt: skip
    return {"orphans": orphans, "deliveries": committed + len(pending)}


_READ = sa.text(
    """
    SELECT id, lock_version, metadata, status, last_event_type, last_event_at, terminal, dispatched_at,
           delivered_at, bounced_at, complained_at, suppressed_at
      FROM mailglass_deliveries WHERE id = :id
    """
)
#: An ORM-style save: every column it read goes back, guarded by lock_version.
_SAVE = sa.text(
    """
    UPDATE mailglass_deliveries
       SET metadata = CAST(:metadata AS jsonb), status = :status, last_event_type = :last_event_type,
           last_event_at = :last_event_at, terminal = :terminal, dispatched_at = :dispatched_at,
           delivered_at = :delivered_at, bounced_at = :bounced_at, complained_at = :complained_at,
           suppressed_at = :suppressed_at, lock_version = lock_version + 1, updated_at = now()
     WHERE id = :id AND lock_version = :lock_version
    """
)
#: Deliveries whose orphans are still queued: the ones the sweeps are about to update.
_HOT = sa.text(
    """
    SELECT d.id FROM mailglass_reconciliation_queue q
      JOIN mailglass_events e ON e.id = q.event_id
      JOIN mailglass_deliveries d
        ON d.provider = 'postmark' AND d.provider_message_id = e.metadata ->> 'provider_message_id'
     LIMIT 50
    """
)


def writer(engine: sa.Engine, deadline: float, rng: random.Random) -> dict[str, Any]:
    writes: dict[str, int] = {}
    conflicts = successes = 0
    while time.time() < deadline:
        with engine.connect() as conn:
            hot = [row[0] for row in conn.execute(_HOT)]
        if not hot:
            time.sleep(0.01)
            continue
        for delivery_id in rng.sample(hot, min(10, len(hot))):
            for _attempt in range(50):
                with engine.connect() as conn:
                    row = conn.execute(_READ, {"id": delivery_id}).one()._asdict()
                time.sleep(rng.uniform(0, 0.003))  # the application thinks
                seq = int(row["metadata"].get("app_seq", 0)) + 1
                params = {**row, "metadata": json.dumps({**row["metadata"], "app_seq": seq})}
                with engine.begin() as conn:
                    saved = conn.execute(_SAVE, params).rowcount
                if saved == 1:
                    successes += 1
                    writes[str(delivery_id)] = seq
                    break
                conflicts += 1
                with engine.connect() as conn:
                    now_version = conn.execute(_READ, {"id": delivery_id}).one().lock_version
                if now_version == row["lock_version"]:
                    raise AssertionError(f"update of {delivery_id} refused without a concurrent change")
            else:
                raise AssertionError(f"{delivery_id}: 50 conflicts in a row")
    return {"writes": writes, "conflicts": conflicts, "successes": successes}


def main() -> int:
    role, url, rundir, index = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    engine = create_engine(url, pool_size=2)
    rng = random.Random(f"{role}-{index}")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        deadline = wait_for_go(rundir, role, index)
        report = {"sweeper": sweeper, "feeder": feeder, "writer": writer}[role](engine, deadline, rng)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        engine.dispose()
    print(json.dumps({"role": role, "index": index, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
