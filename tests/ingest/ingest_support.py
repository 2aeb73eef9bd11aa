"""Helpers of the ingest tests: the providers' published samples, and the one-statement store of one webhook."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest.base import ParsedWebhook
from mailglass_pipeline.ingest.grouped import store_grouped
from mailglass_pipeline.ingest.samples import SampleKeys

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


def signed_sendgrid(keys: SampleKeys, body: bytes) -> dict[str, str]:
    """The headers of a SendGrid request carrying ``body``, signed now with the test key."""
    assert keys.sendgrid_private_key is not None
    timestamp = str(int(time.time()))
    signature = keys.sendgrid_private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }
