"""Plan shape: the sweep's queries use indexes, never a sequential scan of the ledger or deliveries.

A sweep runs every minute for every tenant, so a plan that reads the whole
ledger would make its cost follow the history. The ledger here is large
enough (200k ledger rows of reconciled history, 100k deliveries) and ANALYZEd, so
the planner would pick a sequential scan if the query let it. The SQL
explained is the exact text the core runs (``reconciler._find_sql``,
``deliveries._LOOKUP``) with the parameters it binds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import _create_database, _drop_database, _with_database
from sqlalchemy.engine import Engine

from benchmarks import datasets
from mailglass_pipeline import deliveries, reconciler
from mailglass_pipeline.db import create_engine

HISTORY = 100_000  # reconciled orphans: 2 ledger rows each
PENDING_TENANTS = [f"t{i}" for i in range(10)]
PENDING_PER_TENANT = 300  # 3,000 pending orphans with deliveries
OTHER_DELIVERIES = 100_000
BIG_TABLES = {"mailglass_events", "mailglass_deliveries"}


@pytest.fixture(scope="module")
def loaded(admin_url: str, admin_engine: Engine, template_database: str) -> Iterator[Engine]:
    """One loaded database for the whole module: loading is the slow part, EXPLAIN is not."""
    name = f"mg_plan_{uuid.uuid4().hex[:10]}"
    _create_database(admin_engine, name, template=template_database)
    engine = create_engine(_with_database(admin_url, name))
    try:
        _load(engine)
        yield engine
    finally:
        engine.dispose()
        _drop_database(admin_engine, name)


def _load(engine: Engine) -> None:
    datasets.load_history(engine, "t0", 1, HISTORY)
    with engine.begin() as conn:
        datasets.load_matchable(conn, PENDING_TENANTS, PENDING_PER_TENANT, label="plan")
        # Deliveries the orphans do not point at: the table the lookup must not scan.
        conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_deliveries (id, tenant_id, mailable, stream, recipient, recipient_domain,
                       provider, provider_message_id, last_event_type, last_event_at, inserted_at, updated_at)
                SELECT gen_random_uuid(), 't' || (g % 10), 'M', 'transactional', 'x@y.example', 'y.example',
                       'postmark', 'other-' || g, 'delivered', now(), now(), now()
                  FROM generate_series(1, :n) AS g
                """
            ),
            {"n": OTHER_DELIVERIES},
        )
    datasets.vacuum_analyze(engine)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


def _explain(engine: Engine, clause: sa.TextClause, params: dict[str, Any]) -> dict[str, Any]:
    with engine.connect() as conn:
        raw = conn.execute(sa.text("EXPLAIN (FORMAT JSON) " + clause.text), params).scalar_one()
    document = raw if isinstance(raw, list) else json.loads(raw)
    return document[0]["Plan"]


def _assert_no_seq_scan_of_big_tables(plan: dict[str, Any]) -> None:
    nodes = _nodes(plan)
    scans = [(n["Node Type"], n.get("Relation Name")) for n in nodes if n.get("Relation Name")]
    seq = [rel for kind, rel in scans if kind == "Seq Scan" and rel in BIG_TABLES]
    assert not seq, f"sequential scan of {seq}: {json.dumps(plan, indent=1)[:3000]}"
    assert any(rel in BIG_TABLES for _, rel in scans), "the plan does not read the table it should"


@pytest.mark.parametrize("tenant_scoped", [True, False], ids=["tenant", "all-tenants"])
@pytest.mark.parametrize("lock", [True, False], ids=["locked", "unlocked"])
def test_find_orphans_uses_indexes(loaded: Engine, tenant_scoped: bool, lock: bool) -> None:
    params: dict[str, Any] = {
        "grace_seconds": reconciler.DEFAULT_GRACE_SECONDS,
        "max_age_minutes": reconciler.DEFAULT_MAX_AGE_MINUTES,
        "limit": reconciler.DEFAULT_LIMIT,
        "max_total": reconciler.DEFAULT_MAX_TOTAL,
    }
    if tenant_scoped:
        params["tenant_id"] = "t0"
    plan = _explain(loaded, reconciler._find_sql(tenant_scoped, lock), params)
    _assert_no_seq_scan_of_big_tables(plan)


def test_delivery_lookup_uses_the_unique_index(loaded: Engine) -> None:
    with loaded.connect() as conn:
        keys = conn.execute(
            sa.text(
                """
                SELECT e.tenant_id, e.metadata ->> 'provider', e.metadata ->> 'provider_message_id'
                  FROM mailglass_reconciliation_queue q JOIN mailglass_events e ON e.id = q.event_id
                 LIMIT :n
                """
            ),
            {"n": reconciler.DEFAULT_LIMIT},
        ).all()
    assert len(keys) == reconciler.DEFAULT_LIMIT
    tenant_ids, providers, message_ids = (list(column) for column in zip(*keys, strict=True))
    # A SendGrid-style id exercises the split_part alternative of the lookup.
    message_ids[0] = message_ids[0] + ".filterdrecv-1"
    plan = _explain(
        loaded, deliveries._LOOKUP, {"tenant_id": tenant_ids, "provider": providers, "message_id": message_ids}
    )
    _assert_no_seq_scan_of_big_tables(plan)
    with loaded.connect() as conn:
        found = deliveries.lookup(conn, tenant_ids, providers, message_ids)
    assert sum(f is not None for f in found) >= len(found) - 1


def test_the_check_catches_a_sequential_scan(loaded: Engine) -> None:
    """The assertion above is not vacuous: a query that must read the whole ledger fails it."""
    plan = _explain(loaded, sa.text("SELECT count(*) FROM mailglass_events WHERE type = 'reconciled'"), {})
    with pytest.raises(AssertionError, match="sequential scan"):
        _assert_no_seq_scan_of_big_tables(plan)


def test_known_tenants_walks_indexes_not_the_queue(loaded: Engine) -> None:
    """The sensor's tenant list every 30 s: a loose index scan per step, never a queue scan per step.

    Every queue index leading with tenant_id is partial; a step without the index's predicate was
    a sequential scan per tenant (measured 12 s at 10,000 tenants).
    """
    plan = _explain(loaded, reconciler._KNOWN_TENANTS, {})
    scans = [(n["Node Type"], n.get("Relation Name")) for n in _nodes(plan) if n.get("Relation Name")]
    assert ("Seq Scan", "mailglass_reconciliation_queue") not in scans, scans
    assert any(rel == "mailglass_reconciliation_queue" for _, rel in scans), scans
