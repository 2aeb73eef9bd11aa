"""Item 2: 16 concurrent sweeps, a feeder and an optimistic-locking app writer lose nothing.

For ``MAILGLASS_SOAK_SECONDS`` (30 by default, what ``.ci/run`` uses; set it
lower for a quick local run) 16 processes loop sweeps with small batches over
8 tenants (sometimes all tenants at once), a feeder writes orphans and commits
their deliveries a moment later (a tenth never match), and an application
writer saves the very deliveries the sweeps are updating, ORM-style: it
writes back every column it read, guarded by ``lock_version``.

Then, after a final drain: no orphan has two ``reconciled`` events, every
linkable orphan is linked, every projection field equals what the linked
events imply (a writer save based on a stale read would have reverted one),
every writer save survived, each refused save was a real conflict, and no
worker died of an unhandled error (a deadlock that escaped the retry would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import fetch
from tests.reliability._soak_worker import DELIVERY_EPOCH

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("MAILGLASS_SOAK_SECONDS", "30"))
SWEEPERS = 16
WORKER = Path(__file__).with_name("_soak_worker.py")


def _start(role: str, index: int, url: str, rundir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), role, url, str(rundir), str(index)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _drain(engine: Engine) -> int:
    """Sweep everything until a sweep links nothing more."""
    total = 0
    while True:
        linked = sweep(engine, None, SweepConfig(limit=5000, grace_seconds=0)).linked
        total += linked
        if linked == 0:
            return total


EXPECTED_PROJECTIONS = """
WITH linked AS (
    SELECT r.delivery_id, o.type, o.occurred_at
      FROM mailglass_events r
      JOIN mailglass_events o ON o.id = CAST(r.metadata ->> 'reconciled_from_event_id' AS uuid)
     WHERE r.type = 'reconciled'
), expected AS (
    SELECT d.id,
           COALESCE((SELECT l.type FROM linked l WHERE l.delivery_id = d.id ORDER BY l.occurred_at DESC LIMIT 1),
                    'dispatched') AS last_event_type,
           GREATEST(:epoch, (SELECT max(l.occurred_at) FROM linked l WHERE l.delivery_id = d.id)) AS last_event_at,
           (SELECT min(l.occurred_at) FROM linked l WHERE l.delivery_id = d.id AND l.type = 'delivered')
               AS delivered_at,
           (SELECT min(l.occurred_at) FROM linked l WHERE l.delivery_id = d.id AND l.type = 'bounced') AS bounced_at,
           (SELECT min(l.occurred_at) FROM linked l WHERE l.delivery_id = d.id AND l.type = 'complained')
               AS complained_at,
           COALESCE((SELECT bool_or(l.type IN ('delivered', 'bounced', 'complained', 'rejected', 'failed',
                                               'suppressed'))
                       FROM linked l WHERE l.delivery_id = d.id), false) AS terminal
      FROM mailglass_deliveries d
)
SELECT d.id, d.last_event_type, e.last_event_type AS want_type, d.last_event_at, e.last_event_at AS want_at,
       d.delivered_at, e.delivered_at AS want_delivered, d.bounced_at, e.bounced_at AS want_bounced,
       d.complained_at, e.complained_at AS want_complained, d.terminal, e.terminal AS want_terminal
  FROM mailglass_deliveries d JOIN expected e ON e.id = d.id
 WHERE (d.last_event_type, d.last_event_at, d.delivered_at, d.bounced_at, d.complained_at, d.terminal)
       IS DISTINCT FROM
       (e.last_event_type, e.last_event_at, e.delivered_at, e.bounced_at, e.complained_at, e.terminal)
"""


def test_concurrent_sweeps_and_optimistic_writer_lose_nothing(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    workers = [_start("sweeper", i, database_url, tmp_path) for i in range(SWEEPERS)]
    workers += [_start("feeder", 0, database_url, tmp_path), _start("writer", 0, database_url, tmp_path)]
    try:
        started = time.monotonic()
        while len(list(tmp_path.glob("ready-*"))) < len(workers):
            failed = [w for w in workers if w.poll() is not None]
            assert not failed, failed[0].communicate()[1]
            assert time.monotonic() - started < 120, "workers did not start"
            time.sleep(0.05)
        (tmp_path / "go.tmp").write_text(str(time.time() + SECONDS))
        (tmp_path / "go.tmp").rename(tmp_path / "go")
        outputs = [w.communicate(timeout=SECONDS + 120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    errors = [(w.args[2], err) for w, (_, err) in zip(workers, outputs, strict=True) if w.returncode != 0]
    assert not errors, f"{len(errors)} worker(s) failed; first: {errors[0]}"
    reports: list[dict[str, Any]] = [json.loads(out) for out, _ in outputs]
    sweeps = [r for r in reports if r["role"] == "sweeper"]
    [feed] = [r for r in reports if r["role"] == "feeder"]
    [app] = [r for r in reports if r["role"] == "writer"]

    drained = _drain(engine)
    print(
        f"soak: {sum(r['sweeps'] for r in sweeps)} sweeps, {feed['orphans']} orphans, writer {app['successes']} saves, "
        f"{app['conflicts']} conflicts; drained {drained}"
    )
    assert sum(r["sweeps"] for r in sweeps) > SWEEPERS  # every sweeper really swept, repeatedly
    assert feed["orphans"] > 100 and app["successes"] > 0
    if SECONDS >= 10:
        assert app["conflicts"] > 0, "the writer never raced a sweep: the soak proved nothing about lost updates"

    # 1. No orphan reconciled twice, and the sweeps' own counts add up to the ledger's.
    assert (
        fetch(
            engine,
            """
        SELECT metadata ->> 'reconciled_from_event_id' FROM mailglass_events WHERE type = 'reconciled'
         GROUP BY 1 HAVING count(*) > 1
        """,
        )
        == []
    )
    reconciled = fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type = 'reconciled'")[0].n
    assert reconciled == sum(r["linked"] for r in sweeps) + drained

    # 2. Every linkable orphan is linked; what is left in the queue has no delivery.
    assert (
        fetch(
            engine,
            """
        SELECT q.event_id FROM mailglass_reconciliation_queue q
          JOIN mailglass_events e ON e.id = q.event_id
          JOIN mailglass_deliveries d ON d.tenant_id = e.tenant_id AND d.provider = e.metadata ->> 'provider'
                                     AND d.provider_message_id = e.metadata ->> 'provider_message_id'
        """,
        )
        == []
    )
    linked_orphans = fetch(
        engine,
        """
        SELECT count(*) AS n FROM mailglass_events e
         WHERE e.needs_reconciliation
           AND EXISTS (SELECT 1 FROM mailglass_deliveries d WHERE d.tenant_id = e.tenant_id
                          AND d.provider_message_id = e.metadata ->> 'provider_message_id')
        """,
    )[0].n
    assert linked_orphans == reconciled

    # 3. No lost projection field: each equals what the linked events imply.
    wrong = fetch(engine, EXPECTED_PROJECTIONS, epoch=DELIVERY_EPOCH)
    assert wrong == [], f"{len(wrong)} deliveries with a lost projection, e.g. {wrong[0]._asdict()}"

    # 4. No lost application write: each delivery holds the writer's last successful save.
    rows = fetch(engine, "SELECT id::text AS id, metadata FROM mailglass_deliveries WHERE id::text = ANY(:ids)",
                 ids=list(app["writes"]))  # fmt: skip
    assert {r.id: r.metadata["app_seq"] for r in rows} == app["writes"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM mailglass_deliveries")).scalar_one() == feed["deliveries"]
