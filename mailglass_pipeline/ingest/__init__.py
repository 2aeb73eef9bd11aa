"""Webhook ingest: provider webhooks into ledger events, linked or born as proper orphans.

``ingest(provider, body, headers, tenant_id=...)`` verifies the request
(signature, Basic auth or SNS certificate, timestamp tolerance), normalizes
it into the event taxonomy and appends the events in one
transaction. See :mod:`mailglass_pipeline.ingest.core` for the storage rules
and each provider module for its signature scheme and id rules;
``mailglass serve`` (:mod:`.serve`, :mod:`.server`) receives them over HTTP.
No Dagster here: the core must run without it.
"""

from __future__ import annotations

from mailglass_pipeline.ingest.base import PROVIDERS, IngestSettings, NormalizedEvent, ParsedWebhook
from mailglass_pipeline.ingest.core import ingest, parse_webhook
from mailglass_pipeline.ingest.errors import (
    IngestConfigurationError,
    IngestError,
    InvalidTenantIdError,
    TenantConflictError,
    WebhookPayloadError,
    WebhookSignatureError,
)

__all__ = [
    "PROVIDERS",
    "IngestConfigurationError",
    "IngestError",
    "IngestSettings",
    "InvalidTenantIdError",
    "NormalizedEvent",
    "ParsedWebhook",
    "TenantConflictError",
    "WebhookPayloadError",
    "WebhookSignatureError",
    "ingest",
    "parse_webhook",
]
