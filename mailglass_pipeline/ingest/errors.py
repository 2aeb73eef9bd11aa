"""Errors the webhook ingest raises on purpose.

A webhook receiver needs to tell three failures apart, because each wants a
different HTTP answer: a request we must not trust (401: signature, auth,
stale timestamp, replayed token), a request we cannot read (400: malformed
JSON, wrong shape, oversize body) and our own misconfiguration (500: a
missing secret, so the provider retries once it is fixed). Every one of them
is raised before anything is written.
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
