"""Errors the webhook ingest raises on purpose.

A webhook receiver needs to tell these failures apart, because each wants a
different HTTP answer (:func:`http_answer`, the one mapping): a request we must
not trust (401: signature, auth, stale timestamp, replayed token, unexpected SNS
topic), a request we cannot read (400: malformed JSON, another provider's shape,
oversize body, unfit tenant id), a key already stored for another tenant (409),
our own misconfiguration (503 with Retry-After: a missing secret, so the provider
retries once it is fixed), an unavailable database and a delivery row another
transaction keeps locked past the receiver's wait (503 with Retry-After). Every
one of them is raised before anything is written, or rolls its transaction back.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from mailglass_pipeline.errors import ConfigurationError, DatabaseUnavailableError, MailglassError

log = logging.getLogger(__name__)

#: Seconds a provider is asked to wait before retrying after a 503.
RETRY_AFTER = "30"


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


class DeliveryLockedError(IngestError):
    """A row the store must lock (a delivery) stayed locked by another transaction past the wait.

    An application's long transaction holding its delivery row, say. Nothing
    is written; the request is answered 503 with ``Retry-After`` so that the
    provider sends it again (a transient state, never a refusal).
    """


class InvalidTenantIdError(IngestError, ValueError):
    """A tenant id unfit to store: empty, control characters, surrounding whitespace, over 255 characters."""


def http_answer(provider: str, outcome: dict[str, Any] | BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON payload, extra headers) answering an ingest's ``outcome``: its result, or what it raised.

    Outside input never gets a 500: only a bug does, logged with its trace.
    """
    if not isinstance(outcome, BaseException):
        return 200, outcome, {}
    if isinstance(outcome, WebhookSignatureError):
        extra = {"www-authenticate": 'Basic realm="mailglass"'} if provider == "postmark" else {}
        return 401, {"error": str(outcome)}, extra
    if isinstance(outcome, WebhookPayloadError | InvalidTenantIdError):
        return 400, {"error": str(outcome)}, {}
    if isinstance(outcome, TenantConflictError):
        return 409, {"error": str(outcome)}, {}
    if isinstance(outcome, DeliveryLockedError):  # transient: the provider's retry stores it
        log.warning("%s; answered 503", outcome)
        return 503, {"error": f"{outcome}; retry later"}, {"retry-after": RETRY_AFTER}
    # Any ConfigurationError (a bad MAILGLASS_* value included): fixed by the operator, then retried.
    if isinstance(outcome, ConfigurationError):
        log.error("receiver misconfigured for %s: %s", provider, outcome)
        return 503, {"error": f"receiver misconfigured: {outcome}"}, {"retry-after": RETRY_AFTER}
    if isinstance(outcome, DatabaseUnavailableError | sa.exc.SQLAlchemyError):
        log.error("ingest could not store a %s webhook: %s", provider, str(outcome).splitlines()[0][:300])
        return 503, {"error": "database unavailable; nothing stored"}, {"retry-after": RETRY_AFTER}
    log.error("ingest failed on a %s webhook", provider, exc_info=outcome)
    return 500, {"error": "internal error; nothing stored"}, {}
