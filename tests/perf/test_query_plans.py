"""Plan shape: the sweep's queries use indexes, never a sequential scan of the ledger or deliveries.

A sweep runs every minute for every tenant, so a plan that reads the whole
ledger would make its cost follow the history. The ledger here is large
enough (200k ledger rows of reconciled history, 100k deliveries) and ANALYZEd, so
the planner would pick a sequential scan if the query let it. The SQL
explained is the exact text the core runs (the statements of the package's
``.sql`` files, ``mailglass_pipeline.queries``) with the parameters it binds,
and every statement, the receiver's included, is explained in both scopes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import mailglass_pipeline
from benchmarks import datasets
from mailglass_pipeline import deliveries, orphans, queries, schema
from mailglass_pipeline.db import create_engine
from mailglass_pipeline.reconciliation.results import RunProgress
from mailglass_pipeline.reconciliation.sweep import BACKOFF_PARAMS, find_params
from mailglass_pipeline.settings import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_LIMIT,
    DEFAULT_MAX_AGE_MINUTES,
    SweepConfig,
)
from tests.databases import create_database, drop_database, with_database

HISTORY = 100_000  # reconciled orphans: 2 ledger rows each
PENDING_TENANTS = [f"t{i}" for i in range(10)]
PENDING_PER_TENANT = 300  # 3,000 pending orphans with deliveries
OTHER_DELIVERIES = 100_000
HOPELESS_TENANTS = [f"h{i}" for i in range(2_000)]
HOPELESS_PER_TENANT = 20  # 40,000 pending orphans that never match
BIG_TABLES = {"mailglass_events", "mailglass_deliveries"}


@pytest.fixture(scope="module")
def loaded(admin_url: str, admin_engine: Engine, template_database: str) -> Iterator[Engine]:
    """One loaded database for the whole module: loading is the slow part, EXPLAIN is not."""
    name = f"mg_plan_{uuid.uuid4().hex[:10]}"
    create_database(admin_engine, name, template=template_database)
    engine = create_engine(with_database(admin_url, name))
    try:
        _load(engine)
        yield engine
    finally:
        engine.dispose()
        drop_database(admin_engine, name)


def _load(engine: Engine) -> None:
    datasets.load_history(engine, "t0", 1, HISTORY)
    with engine.begin() as conn:
        datasets.load_matchable(conn, PENDING_TENANTS, PENDING_PER_TENANT, label="plan")
        # A burst of never-matching orphans beside them: the linkable ones must be found without reading these.
        datasets.load_orphans_only(conn, HOPELESS_TENANTS, HOPELESS_PER_TENANT, label="plan-hopeless")
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
        # As the sweep's transactions run (set_timeouts): one plan per execution, the bound variants folded.
        conn.execute(sa.text("SET plan_cache_mode = force_custom_plan"))
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
@pytest.mark.parametrize("link", [True, False], ids=["linked", "unlinked"])
@pytest.mark.parametrize("retry_all", [False, True], ids=["backoff", "retry-all"])
def test_find_orphans_uses_indexes(loaded: Engine, tenant_scoped: bool, link: bool, retry_all: bool) -> None:
    # The parameters the core binds (a run's quota bookkeeping included): the variants are bound values.
    run = RunProgress(used={"t1": 5})
    params = find_params("t0" if tenant_scoped else None, SweepConfig(retry_all=retry_all), run, link=link)
    plan = _explain(loaded, queries.statement("find_batch"), params)
    _assert_no_seq_scan_of_big_tables(plan)
    nodes = _nodes(plan)
    # The retry scan still reads its partial index whatever retry_all is bound to.
    # The retry scan reads its partial index whatever retry_all is bound to (the CASE folds to a constant).
    retry = [n for n in nodes if "next_attempt_at <=" in n.get("Index Cond", "") + n.get("Filter", "")]
    assert retry and all(n["Node Type"] != "Seq Scan" for n in retry), [
        (n["Node Type"], n.get("Filter")) for n in retry
    ]
    assert all("CASE" not in n.get("Index Cond", "") + n.get("Filter", "") for n in retry), retry


#: Statements that only ask whether a row exists: explained in the tenant scope for a tenant with no rows.
EXISTENCE_PROBES = {"tenant_known"}
#: Statements that stop at the first row of a table whatever the plan (the demo's "any delivery yet?").
FIRST_ROW = {"no_deliveries"}


def _every_statement_params(tenant_id: str | None) -> dict[str, Any]:
    """Values for every bind parameter any registered statement uses (as the core binds them)."""
    return {
        **find_params(None, SweepConfig(), RunProgress()),
        **BACKOFF_PARAMS,
        "lock_timeout": "5000ms",
        "statement_timeout": "120000ms",
        "rows": "[]",
        "won": "[]",
        "examined": "{t0}",
        "threshold_seconds": 300.0,
        "tenant_id": tenant_id,
        "tenant_ids": None if tenant_id is None else [tenant_id],
        "state": "due",
        "event_id": uuid.uuid4(),
        "message_ids": ["other-5"],
        "providers": ["postmark"],
        "provider": "postmark",
        "reason": "stale",
        "cutoff": "2026-01-01T00:00:00Z",
        "batch_size": 1000,
        # The ingest's own statements (ingest/sql): a token, ledger keys, a replay window.
        "retention": 3600,
        "token": "token-1",
        "digest": "0" * 64,
        "keys": ["postmark:other-5"],
        "since": "2026-01-01T00:00:00",
        "until": "2026-01-02T00:00:00",
        "id": uuid.uuid4(),
        # The receiver's store statements (ingest/sql/store.sql) and the delivery and ledger writes.
        "webhooks": "[]",
        "webhooks_received_at": "2026-01-01T00:00:00",
        "ids": "{}",
        "mailable": "M",
        "stream": "transactional",
        "recipient": "x@y.example",
        "domain": "y.example",
        "pmid": "other-5",
        "last_event_type": "dispatched",
        "last_event_at": None,
        "dispatched_at": None,
        "metadata": "{}",
        "idempotency_key": None,
        # The demo's (sql/demo.sql).
        "k": "demo:t0:x",
        "at": "2026-01-01T00:00:00Z",
        "key": "demo:t0:y",
        # `mailglass doctor`'s (sql/doctor.sql).
        "schema_name": "public",
        "names": ["mailglass_track_orphans"],
        "role": "postgres",
        "kinds": ["table"],
        "objects": ["public.mailglass_events"],
        "privileges": ["SELECT"],
        "tables": ["mailglass_events"],
        "tolerance_seconds": 1200,
        "retention_days": 30,
        "path": '"$user", public',
    }


def test_every_statement_the_package_names_is_explained() -> None:
    """The statements explained below are all the package runs: each is named in its code, and none is unknown."""
    sources = "\n".join(p.read_text(encoding="utf-8") for p in Path(mailglass_pipeline.__file__).parent.rglob("*.py"))
    unused = [name for name in queries.STATEMENTS if f'"{name}"' not in sources]
    assert unused == [], unused
    assert {"store_webhook", "store_webhooks_grouped"} <= set(queries.STATEMENTS)


@pytest.mark.parametrize("name", sorted(queries.STATEMENTS))
@pytest.mark.parametrize("tenant_id", [None, "t0"], ids=["all-tenants", "tenant"])
def test_every_registered_statement_explains(loaded: Engine, name: str, tenant_id: str | None) -> None:
    """Each statement plans on the loaded database, in both scopes, without a sequential scan of the
    ledger or the deliveries."""
    clause = queries.statement(name)
    if tenant_id is not None and name in EXISTENCE_PROBES:
        # An existence probe's costly case is the miss (it reads to the end); for a tenant holding most
        # rows a scan that stops at its first match is a fair plan, and PostgreSQL 18 picked it once.
        tenant_id = "no-such-tenant"
    params = _every_statement_params(tenant_id)
    params = {key: value for key, value in params.items() if f":{key}" in clause.text}
    plan = _explain(loaded, clause, params)
    nodes = _nodes(plan)
    seq = [n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"]
    assert not set(seq) & BIG_TABLES or (name in FIRST_ROW and plan["Plan Rows"] == 1), (name, seq)
    # The scope (and retry_all) are bound values the custom plan folds: no "NULL OR" test is left for
    # every row, so the tenant condition is a plain equality, as a statement per scope would have.
    unfolded = [n for n in nodes if "IS NULL) OR" in n.get("Filter", "") + n.get("Index Cond", "")]
    assert not unfolded, (name, json.dumps(plan, indent=1)[:3000])
    # The shared rules (migration 0007, decision D28) are inlined: no call of one is left in the plan.
    called = [
        rule
        for n in nodes
        for rule in RULE_FUNCTIONS
        if rule == n.get("Function Name") or any(f"{rule}(" in str(n.get(k, "")) for k in CONDITIONS)
    ]
    assert set(called) <= NOT_INLINED.get(name, set()), (name, called, json.dumps(plan, indent=1)[:3000])


#: Migration 0007's functions, which the planner must inline wherever a statement calls them.
RULE_FUNCTIONS = {f.name for f in schema.PROJECT_FUNCTIONS if f.arguments and not f.security_definer}
#: doctor's repair looks up each orphan's delivery by its key read from the JSON (x.message_id, a long
#: expression once the lateral row is pulled up): PostgreSQL inlines no function whose expensive argument it
#: would evaluate three times, so there the message ids are a call per orphan (still an index probe).
NOT_INLINED = {"doctor_queue_missing_rows": {"mailglass_reconciliation_message_ids"}}
CONDITIONS = ("Filter", "Index Cond", "Join Filter", "Hash Cond", "Recheck Cond", "One-Time Filter")


def test_delivery_lookup_uses_the_unique_index(loaded: Engine) -> None:
    with loaded.connect() as conn:
        keys = conn.execute(
            sa.text(
                """
                SELECT e.tenant_id, e.metadata ->> 'provider', e.metadata ->> 'provider_message_id'
                  FROM mailglass_reconciliation_queue q JOIN mailglass_events e ON e.id = q.event_id
                 WHERE q.linkable_at IS NOT NULL
                 LIMIT :n
                """
            ),
            {"n": DEFAULT_LIMIT},
        ).all()
    assert len(keys) == DEFAULT_LIMIT
    tenant_ids, providers, message_ids = (list(column) for column in zip(*keys, strict=True))
    # A SendGrid-style id exercises the split_part alternative of the lookup.
    message_ids[0] = message_ids[0] + ".filterdrecv-1"
    plan = _explain(
        loaded,
        queries.statement("lookup_deliveries"),
        {"tenant_ids": tenant_ids, "providers": providers, "message_ids": message_ids},
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
    plan = _explain(loaded, queries.statement("known_tenants"), {})
    scans = [(n["Node Type"], n.get("Relation Name")) for n in _nodes(plan) if n.get("Relation Name")]
    assert ("Seq Scan", "mailglass_reconciliation_queue") not in scans, scans
    assert any(rel == "mailglass_reconciliation_queue" for _, rel in scans), scans


def test_linkable_first_counts_linkable_orphans_from_their_index(loaded: Engine) -> None:
    """The all-tenant find counts each tenant's linkable orphans (its first allocation round) from the
    partial index of linkable rows: never a queue scan that reads the never-matching backlog too."""
    params = find_params(None, SweepConfig(), RunProgress(), link=True)
    plan = _explain(loaded, queries.statement("find_batch"), params)
    nodes = _nodes(plan)
    # No sequential scan of the queue filters on linkable_at (the linkable count would then read every row).
    seq = [n for n in nodes if n["Node Type"] == "Seq Scan" and "linkable_at IS NOT NULL" in n.get("Filter", "")]
    assert not seq, json.dumps(plan, indent=1)[:3000]
    # The count reads the linkable index across tenants (no tenant_id condition: not the per-tenant pick).
    linkable_index = "mailglass_reconciliation_queue_linkable_index"
    across = [n for n in nodes if n.get("Index Name") == linkable_index and "tenant_id" not in n.get("Index Cond", "")]
    assert across, [(n["Node Type"], n.get("Index Name"), n.get("Index Cond")) for n in nodes]


# A queue in every state (the loaded one holds only fresh rows, whose statistics would let the
# planner sort an "empty" retry range): inside a transaction rolled back after EXPLAIN.
_MIXED_QUEUE = """
    UPDATE mailglass_reconciliation_queue q
       SET attempts = 3,
           last_attempted_at = now() - make_interval(secs => (hashtext(q.event_id::text) & 1023)),
           next_attempt_at = now() + make_interval(secs => (hashtext(q.event_id::text) & 1023) - 600),
           parked_at = CASE WHEN hashtext(q.event_id::text) % 6 = 0 THEN now() END,
           parked_reason = CASE WHEN hashtext(q.event_id::text) % 6 = 0 THEN 'stale' END
     WHERE hashtext(q.event_id::text) % 3 <> 0
"""
# A month of parked rows (the retention period's worth), queue-only as the retention leaves them.
# Stale rows keep their provider and message id; only the malformed ones lack them.
_PARKED_BACKLOG = """
    INSERT INTO mailglass_reconciliation_queue (event_id, tenant_id, orphan_inserted_at, attempts, parked_at,
                                                parked_reason, provider, provider_message_id)
    SELECT gen_random_uuid(), 't' || (g % 10), now() - interval '8 days' - g * interval '20 seconds', 1,
           now() - g * interval '20 seconds', CASE WHEN g % 4 = 0 THEN 'malformed' ELSE 'stale' END,
           CASE WHEN g % 4 <> 0 THEN 'postmark' END, CASE WHEN g % 4 <> 0 THEN 'parked-' || g END
      FROM generate_series(1, 100000) AS g
"""


@pytest.mark.parametrize("tenant_scoped", [True, False], ids=["tenant", "all-tenants"])
@pytest.mark.parametrize("state", orphans.STATES)
def test_orphan_listing_is_bounded_by_its_limit(loaded: Engine, state: str, tenant_scoped: bool) -> None:
    """`mailglass orphans`: every state reads index ranges and stops at LIMIT, never the whole queue.

    The state and the scope are bound values: under the custom plan orphans.py asks for, each folds
    to the branch of its state and scope, which keeps its partial index."""
    params: dict[str, Any] = {
        "state": state,
        "tenant_id": "t0" if tenant_scoped else None,
        "limit": 50,
        "grace_seconds": DEFAULT_GRACE_SECONDS,
        "max_age_minutes": DEFAULT_MAX_AGE_MINUTES,
        # The sweep's retry rule, bound as orphans.py binds it.
        "retry_all": False,
        "run_started": None,
    }
    with loaded.connect() as conn, conn.begin() as tx:
        # Without the module's burst of 40,000 never-matching orphans inserted this very minute: inside the
        # grace window they are "waiting", and an all-tenant listing walks that window (known limit).
        conn.execute(sa.text("DELETE FROM mailglass_reconciliation_queue WHERE tenant_id LIKE 'h%'"))
        conn.execute(sa.text(_MIXED_QUEUE))
        conn.execute(sa.text(_PARKED_BACKLOG))
        conn.execute(sa.text("ANALYZE mailglass_reconciliation_queue"))
        conn.execute(queries.statement("custom_plans"))
        clause = queries.statement(orphans.LIST_STATEMENT[state])
        queue_rows = conn.execute(sa.text("SELECT count(*) FROM mailglass_reconciliation_queue")).scalar_one()
        raw = conn.execute(sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + clause.text), params).scalar_one()
        tx.rollback()
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    nodes = _nodes(plan)
    scans = [n for n in nodes if n.get("Relation Name") == "mailglass_reconciliation_queue"]
    assert plan["Node Type"] == "Limit", plan["Node Type"]
    assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), [n["Node Type"] for n in scans]
    # The bound state and scope folded: no scan tests them row by row.
    conditions = [n.get("Filter", "") + n.get("Index Cond", "") + n.get("Recheck Cond", "") for n in scans]
    assert not [c for c in conditions if "CASE" in c or "IS NULL) OR" in c], conditions
    # What the queue scans actually read (rows returned + rows filtered out, all loops) stays a small
    # part of a queue of over 100k rows of every state: the LIMIT, or a short index range (the planner
    # may bitmap-read a range of a few thousand rows, e.g. the not yet examined orphans for the
    # malformed ones among them, rather than walk an index in order).
    read = sum((n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1) for n in scans)
    print(f"{state}/{'tenant' if tenant_scoped else 'all'}: read {read} of {queue_rows} queue rows")
    assert queue_rows > 100_000
    assert read <= 0.04 * queue_rows, (read, json.dumps(plan, indent=1)[:3000])


def test_explain_lookups_use_indexes(loaded: Engine) -> None:
    """`mailglass orphans explain`: the other-tenant/provider lookup probes the unique index per provider."""
    plan = _explain(
        loaded,
        queries.statement("deliveries_with_message_id"),
        {"message_ids": ["other-5"], "tenant_id": "t0", "provider": "postmark"},
    )
    _assert_no_seq_scan_of_big_tables(plan)
    # The case the check exists for is a typo: no row has the tenant, so every probe runs to the end and a
    # sequential scan would read the whole table. (For a tenant holding most rows, a scan that stops at the
    # first match is a fair plan, and the planner may pick it.)
    for tenant in ("no-such-tenant", "h5"):
        plan = _explain(loaded, queries.statement("tenant_known"), {"tenant_id": tenant})
        _assert_no_seq_scan_of_big_tables(plan)
