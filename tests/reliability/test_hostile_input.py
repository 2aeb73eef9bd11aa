"""Item 4: hostile tenant ids and metadata never break a sweep or link across tenants.

Tenant ids and event metadata come from webhooks and from other writers of
a shared database: anything a ``text`` or ``jsonb`` column can hold may turn
up. Every value travels as a bound parameter and every JSON field is
type-checked in SQL, so the sweep returns normally, links only inside the
orphan's tenant, and counts what it could not use as ``malformed``.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from dagster import SensorResult, build_sensor_context, instance_for_test
from sqlalchemy.engine import Engine

from mailglass_pipeline.errors import ConfigurationError
from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import fetch, make_delivery, make_orphan
from tests.processes import mailglass

SWEEP = SweepConfig(grace_seconds=0)

HOSTILE_TENANTS = [
    "o'brien",
    "t'; DROP TABLE mailglass_events; --",
    "a,b,c",
    'dou"ble',
    "%(tenant_id)s",
    "back\\slash",
    "ténant-日本-🙂",
    " padded ",
    "line\nbreak",
    "t" + "é;'," * 2500,  # 10,001 characters
]


def _ledger_row(engine: Engine, tenant_id: str, metadata_sql: str, **params: Any) -> uuid.UUID:
    """An orphan whose metadata is arbitrary jsonb (array, string, ...) written by plain SQL."""
    orphan_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"""
                INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, normalized_payload,
                                              needs_reconciliation, inserted_at)
                VALUES (:id, :tenant, 'delivered', now() - interval '5 minutes', {metadata_sql},
                        CAST(:payload AS jsonb), true, now() - interval '5 minutes')
                """
            ),
            {"id": orphan_id, "tenant": tenant_id, "payload": params.pop("payload", "{}"), **params},
        )
    return orphan_id


def _reconciled(engine: Engine) -> dict[str, tuple[str, uuid.UUID]]:
    """orphan id -> (tenant of the reconciled event, delivery id), checking the tenant matches the delivery's."""
    rows = fetch(
        engine,
        """
        SELECT r.metadata ->> 'reconciled_from_event_id' AS orphan, r.tenant_id, r.delivery_id,
               o.tenant_id AS orphan_tenant, d.tenant_id AS delivery_tenant
          FROM mailglass_events r
          JOIN mailglass_events o ON o.id::text = r.metadata ->> 'reconciled_from_event_id'
          JOIN mailglass_deliveries d ON d.id = r.delivery_id
         WHERE r.type = 'reconciled'
        """,
    )
    for row in rows:
        assert row.tenant_id == row.orphan_tenant == row.delivery_tenant, "linked across tenants"
    return {row.orphan: (row.tenant_id, row.delivery_id) for row in rows}


@pytest.mark.parametrize("tenant", HOSTILE_TENANTS, ids=lambda t: repr(t[:12]))
def test_hostile_tenant_ids_sweep_normally_and_stay_isolated(engine: Engine, tenant: str) -> None:
    # A near-twin tenant holds a delivery with a message id the hostile tenant's orphan also uses.
    twin = tenant[:-1] if len(tenant) > 1 else tenant + "x"
    mine = make_delivery(engine, tenant_id=tenant, message_id="m-own")
    make_delivery(engine, tenant_id=twin, message_id="m-twin")
    own_orphan = make_orphan(engine, tenant_id=tenant, message_id="m-own")
    make_orphan(
        engine, tenant_id=tenant, message_id="m-twin"
    )  # same provider and message id as the twin tenant's delivery
    make_orphan(engine, tenant_id=tenant, message_id=None)  # malformed

    result = sweep(engine, tenant, SWEEP)
    assert result.tenant_id == tenant
    assert (result.scanned, result.linked, result.unmatched, result.malformed) == (3, 1, 1, 1)
    assert list(result.tenants) == [tenant]
    assert _reconciled(engine) == {str(own_orphan): (tenant, mine)}

    # The all-tenants sweep (retrying the unmatched orphan at once) reports the hostile tenant under its
    # exact id, and still never crosses.
    everyone = sweep(engine, None, SweepConfig(grace_seconds=0, retry_all=True))
    assert everyone.linked == 0 and everyone.tenants[tenant]["unmatched"] == 1
    assert len(_reconciled(engine)) == 1


def test_hostile_tenant_ids_through_the_cli(engine: Engine, database_url: str) -> None:
    env = {"MAILGLASS_DATABASE_URL": database_url}
    for tenant in HOSTILE_TENANTS[:7]:
        make_orphan(engine, tenant_id=tenant, message_id="m-1")
        make_delivery(engine, tenant_id=tenant, message_id=f"m-{uuid.uuid4()}")
        proc = mailglass("reconcile", "--tenant-id", tenant, "--grace-seconds", "0", env=env)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert (out["tenant_id"], out["scanned"], out["unmatched"]) == (tenant, 1, 1)
    # Every table is still there and untouched by the "DROP TABLE" tenant.
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_events")[0].n == 7


def test_nul_in_tenant_id_is_a_bad_argument_not_a_database_error(engine: Engine, database_url: str) -> None:
    with pytest.raises(ConfigurationError):
        sweep(engine, "a\x00b", SWEEP)
    with pytest.raises(ValueError):
        sweep(engine, "", SWEEP)


MALFORMED_METADATA: list[tuple[str, str, dict[str, Any]]] = [
    # (case id, SQL expression for the metadata column, params)
    ("provider-number", "jsonb_build_object('provider', 7, 'provider_message_id', 'm-1')", {}),
    ("message-id-number", "jsonb_build_object('provider', 'postmark', 'provider_message_id', 1)", {}),
    ("message-id-array", """'{"provider": "postmark", "provider_message_id": ["m-1"]}'::jsonb""", {}),
    ("message-id-object", """'{"provider": "postmark", "provider_message_id": {"id": "m-1"}}'::jsonb""", {}),
    ("provider-object", """'{"provider": {"name": "postmark"}, "provider_message_id": "m-1"}'::jsonb""", {}),
    ("message-id-bool", """'{"provider": "postmark", "provider_message_id": true}'::jsonb""", {}),
    ("message-id-null", """'{"provider": "postmark", "provider_message_id": null}'::jsonb""", {}),
    ("message-id-empty", """'{"provider": "postmark", "provider_message_id": ""}'::jsonb""", {}),
    ("metadata-array", """'["postmark", "m-1"]'::jsonb""", {}),
    ("metadata-string", """'"postmark m-1"'::jsonb""", {}),
    ("metadata-number", "'42'::jsonb", {}),
    ("metadata-empty", "'{}'::jsonb", {}),
]


def test_malformed_metadata_is_counted_never_linked_never_fatal(engine: Engine) -> None:
    tenant = "meta"
    target = make_delivery(engine, tenant_id=tenant, message_id="m-1")
    malformed_ids = [_ledger_row(engine, tenant, sql, **params) for _, sql, params in MALFORMED_METADATA]
    # normalized_payload of the wrong shape too (a JSON array), metadata empty
    malformed_ids.append(_ledger_row(engine, tenant, "'{}'::jsonb", payload='[{"provider_message_id": "m-1"}]'))
    # Wrong-typed metadata but a usable normalized_payload: the documented fallback links it.
    fallback = _ledger_row(
        engine,
        tenant,
        """'{"provider": 7, "provider_message_id": ["m-1"]}'::jsonb""",
        payload='{"provider": "postmark", "message_id": "m-1"}',
    )

    result = sweep(engine, tenant, SWEEP)
    assert result.scanned == len(malformed_ids) + 1
    assert result.malformed == len(malformed_ids)
    assert result.linked == 1 and result.unmatched == 0
    assert _reconciled(engine) == {str(fallback): (tenant, target)}
    parked = fetch(engine, "SELECT event_id FROM mailglass_reconciliation_queue WHERE parked_reason = 'malformed'")
    assert {r.event_id for r in parked} == set(malformed_ids)
    # Parked: the next sweep neither errors nor re-examines them.
    again = sweep(engine, tenant, SWEEP)
    assert (again.scanned, again.malformed, again.linked) == (0, 0, 0)


def test_huge_strings_in_metadata(engine: Engine) -> None:
    tenant = "huge"
    megabyte = "m" * (1 << 20)
    target = make_delivery(engine, tenant_id=tenant, message_id="m-1")
    linked = make_orphan(
        engine,
        tenant_id=tenant,
        message_id="m-1",
        metadata={"provider": "postmark", "provider_message_id": "m-1", "provider_event_id": "e" * (1 << 20)},
    )
    make_orphan(
        engine, tenant_id=tenant, message_id=megabyte
    )  # a 1 MB message id: looked up, unmatched, no index error
    make_orphan(
        engine, tenant_id=tenant, message_id=None, metadata={"provider": "p" * (1 << 20), "provider_message_id": "m-1"}
    )
    make_orphan(
        engine,
        tenant_id=tenant,
        message_id=None,
        metadata={"provider": "postmark", "blob": {"deep": ["x" * (1 << 20)]}},
    )

    result = sweep(engine, tenant, SWEEP)
    assert (result.scanned, result.linked, result.unmatched, result.malformed) == (4, 1, 2, 1)
    assert _reconciled(engine) == {str(linked): (tenant, target)}
    [rec] = fetch(engine, "SELECT metadata FROM mailglass_events WHERE type = 'reconciled'")
    assert len(rec.metadata["reconciled_provider_event_id"]) == 1 << 20


def test_message_id_colliding_across_tenants_never_links_across(engine: Engine) -> None:
    """(provider, message id) is unique globally, so the id lives in one tenant; others must not get it."""
    owner = make_delivery(engine, tenant_id="acme", message_id="shared-1")
    make_delivery(engine, tenant_id="acme", message_id="sgid", provider="sendgrid")
    foreign = [
        make_orphan(engine, tenant_id=tenant, message_id="shared-1")
        for tenant in ("globex", "ACME", "acme ", "acme'", "acme;", "acme,")
    ]
    sendgrid_foreign = make_orphan(engine, tenant_id="globex", message_id="sgid.filterdrecv-1", provider="sendgrid")
    own = make_orphan(engine, tenant_id="acme", message_id="shared-1", age=timedelta(minutes=4))
    own_sendgrid = make_orphan(engine, tenant_id="acme", message_id="sgid.filterdrecv-1", provider="sendgrid")

    everyone = sweep(engine, None, SWEEP)
    assert everyone.linked == 2
    assert everyone.unmatched == len(foreign) + 1
    links = _reconciled(engine)
    assert set(links) == {str(own), str(own_sendgrid)}
    assert links[str(own)] == ("acme", owner)
    assert str(sendgrid_foreign) not in links
    for tenant in ("globex", "ACME", "acme ", "acme'"):
        assert sweep(engine, tenant, SWEEP).linked == 0
    assert fetch(engine, "SELECT count(*) AS n FROM mailglass_events WHERE type = 'reconciled'")[0].n == 2


def test_hostile_tenants_as_partition_keys_are_reported_not_fatal(engine: Engine, database_url: str) -> None:
    from mailglass_pipeline.defs.resources import MailglassDatabase
    from mailglass_pipeline.defs.tenant_reconciliation.sensors import tenant_partitions

    for tenant in [*HOSTILE_TENANTS, "acme"]:
        make_orphan(engine, tenant_id=tenant, message_id="m-1", age=timedelta(minutes=1))
    with (
        instance_for_test() as instance,
        build_sensor_context(
            instance=instance, resources={"mailglass_db": MailglassDatabase(database_url=database_url)}
        ) as context,
    ):
        result = tenant_partitions(context)
    assert isinstance(result, SensorResult)
    [request] = result.dynamic_partitions_requests
    assert list(request.partition_keys) == ["acme"]


def test_orphan_timestamps_at_the_edges(engine: Engine) -> None:
    """occurred_at far in the past/future or 'infinity' from a foreign writer: never fatal."""
    tenant = "edges"
    make_delivery(engine, tenant_id=tenant, message_id="m-1")
    make_delivery(engine, tenant_id=tenant, message_id="m-2")
    make_orphan(engine, tenant_id=tenant, message_id="m-1", occurred_at=datetime(1970, 1, 1, tzinfo=UTC))
    make_orphan(engine, tenant_id=tenant, message_id="m-2", occurred_at=datetime(9999, 12, 31, tzinfo=UTC))
    _ledger_row(engine, tenant, """'{"provider": "postmark", "provider_message_id": "m-1"}'::jsonb""")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                INSERT INTO mailglass_events (id, tenant_id, type, occurred_at, metadata, needs_reconciliation,
                                              inserted_at)
                VALUES (gen_random_uuid(), :t, 'bounced', 'infinity',
                        '{"provider": "postmark", "provider_message_id": "m-1"}', true, now() - interval '5 minutes')
                """
            ),
            {"t": tenant},
        )
    result = sweep(engine, tenant, SWEEP)
    assert result.scanned == 4 and result.linked == 3 and result.malformed == 1


def test_orphan_without_provider_event_id_links_and_does_not_poison_the_batch(engine: Engine) -> None:
    """Plain-SQL and Mailglass-written orphans may lack provider_event_id: legal, must link."""
    first = make_delivery(engine, tenant_id="bare", message_id="m-1")
    second = make_delivery(engine, tenant_id="bare", message_id="m-2")
    bare = _ledger_row(engine, "bare", """'{"provider": "postmark", "message_id": "m-1"}'::jsonb""")
    make_orphan(engine, tenant_id="bare", message_id="m-2")
    result = sweep(engine, None, SWEEP)
    assert (result.scanned, result.linked) == (2, 2)
    links = _reconciled(engine)
    assert links[str(bare)] == ("bare", first) and second in {d for _, d in links.values()}
    [meta] = fetch(
        engine,
        "SELECT metadata FROM mailglass_events WHERE type = 'reconciled' AND delivery_id = :d",
        d=first,
    )
    assert meta.metadata["reconciled_provider_event_id"] is None
