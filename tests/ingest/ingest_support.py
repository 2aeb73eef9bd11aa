"""Shared helpers of the ingest tests (fixture files, signed requests, row counts)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mailglass_pipeline import deliveries
from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.base import ParsedWebhook
from mailglass_pipeline.ingest.grouped import store_grouped
from mailglass_pipeline.ingest.samples import SampleKeys, generate_keys

#: Provider samples and signature vectors as the providers publish them (SOURCES.md says where from).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "providers"

#: Fixture folder -> ingest provider name.
FOLDERS = {
    "postmark": "postmark",
    "sendgrid": "sendgrid",
    "mailgun": "mailgun",
    "amazon_ses": "ses",
    "resend": "resend",
}


def sources_files() -> list[str]:
    """Every file named in a table row of SOURCES.md (``folder/name``)."""
    text = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `([a-z_]+/[^`]+)` \|", text, flags=re.MULTILINE)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def count_events(engine: Engine, tenant_id: str | None = None) -> int:
    sql = "SELECT count(*) FROM mailglass_events"
    params: dict[str, Any] = {}
    if tenant_id is not None:
        sql += " WHERE tenant_id = :t"
        params["t"] = tenant_id
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def events(engine: Engine, tenant_id: str) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT * FROM mailglass_events WHERE tenant_id = :t ORDER BY inserted_at, id"),
                {"t": tenant_id},
            )
        )


def delivery(engine: Engine, delivery_id: Any) -> sa.Row[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM mailglass_deliveries WHERE id = :id"), {"id": delivery_id}).one()


# -- fixtures: test modules import the *_fixture functions (a second conftest.py would shadow the root one) --


@pytest.fixture(scope="session", name="signing")
def signing_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleKeys, IngestSettings]:
    """Keys that sign requests and the settings that verify them (SNS certificate in a temp dir)."""
    return generate_keys(tmp_path_factory.mktemp("sns-certs"))


@pytest.fixture(scope="session", name="keys")
def keys_fixture(signing: tuple[SampleKeys, IngestSettings]) -> SampleKeys:
    return signing[0]


@pytest.fixture(scope="session", name="settings")
def settings_fixture(signing: tuple[SampleKeys, IngestSettings]) -> IngestSettings:
    return signing[1]


def make_delivery(engine: Engine, tenant_id: str, provider: str, message_id: str) -> Any:
    """A delivery as the sending application commits it (dispatched an hour ago)."""
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with engine.begin() as conn:
        return deliveries.create(
            conn,
            tenant_id=tenant_id,
            provider=provider,
            provider_message_id=message_id,
            last_event_at=an_hour_ago,
            dispatched_at=an_hour_ago,
        )


def store_one(engine: Engine, parsed: ParsedWebhook, tenant_id: str) -> dict[str, Any] | None:
    """The one-statement store of a lone one-event webhook (a group of one): its counts, or None if not stored."""
    (counts,) = store_grouped(engine, [(parsed, tenant_id)])
    return counts
