"""Helpers of the ingest tests: the providers' published samples, and the one-statement store of one webhook."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest.base import ParsedWebhook
from mailglass_pipeline.ingest.grouped import store_grouped

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


def store_one(engine: Engine, parsed: ParsedWebhook, tenant_id: str) -> dict[str, Any] | None:
    """The one-statement store of a lone one-event webhook (a group of one): its counts, or None if not stored."""
    (counts,) = store_grouped(engine, [(parsed, tenant_id)])
    return counts
