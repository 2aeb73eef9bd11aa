"""Errors the webhook ingest raises on purpose.

A webhook receiver needs to tell these failures apart, because each wants a
different HTTP answer: a request we must not trust (401: signature, auth,
stale timestamp, replayed token, unexpected SNS topic), a request we cannot
read (400: malformed JSON, another provider's shape, oversize body, unfit
tenant id), a key already stored for another tenant (409) and our own
misconfiguration (503 with Retry-After from ``mailglass serve``: a missing
secret, so the provider retries once it is fixed). Every one of them is
raised before anything is written, or rolls its transaction back.
"""

from __future__ import annotations

from mailglass_pipeline.errors import ConfigurationError, MailglassError


class IngestError(MailglassError):
    """Base class of every error the ingest raises deliberately."""


class WebhookSignatureError(IngestError):
    """The webhook is not authentic: missing/wrong signature or auth, stale timestamp, replayed token."""


class WebhookPayloadError(IngestError):
    """The body cannot be parsed: not JSON, not the provider's shape, or larger than the limit."""


class IngestConfigurationError(IngestError, ConfigurationError):
    """A secret or setting the ingest needs is missing or invalid (the operator's problem, not the sender's)."""


class TenantConflictError(IngestError):
    """An event's key is already stored under another tenant: refused (HTTP 409), never a "duplicate".

    A second tenant must not be able to claim (or shadow) another tenant's
    event by replaying its request to its own URL; nothing is written.
    """


class InvalidTenantIdError(IngestError, ValueError):
    """A tenant id unfit to store: empty, control characters, surrounding whitespace, over 255 characters."""
