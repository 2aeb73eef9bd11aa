"""What a forged request may cost the receiver: refused from its headers where they suffice, answered slowly.

A client that posts forged bodies at full speed and waits for each answer
sends as many bodies as it gets answers. Verifying a forged megabyte costs a
few ms, but reading megabytes back to back still takes the cores signed
traffic needs (issue 25: four such clients cut signed throughput to 54-66%).
So (decision D32), per worker:

- **headers first**: where the provider's authentication is in the headers,
  what they already show is checked before a byte of the body is read:
  Postmark's Basic auth whole, SendGrid's and Resend's (Svix) signature
  headers present and their signed time within the tolerance. Mailgun and SES
  sign inside the body (their cost is bounded by decision D25);
- **a slow answer**: every 401 is sent ``delay`` seconds late (a sleeping
  coroutine: no thread, no CPU) and closes the connection, so a client waiting
  for its answer sends at most one body per ``delay``. At most ``slots``
  requests wait at once (they count as requests in progress); beyond, the 401
  goes out at once, as before.

Real providers never fail authentication; after a failed secret rotation
their requests are refused exactly as before, one second later, and their
retries are verified afresh (nothing is remembered about a sender), so the
first retry after the secrets are fixed is stored at normal speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime

from mailglass_pipeline.ingest import metrics, postmark, resend, sendgrid
from mailglass_pipeline.ingest.base import Headers, IngestSettings, check_tolerance
from mailglass_pipeline.ingest.errors import WebhookSignatureError


def header_refusal(provider: str, headers: Mapping[str, str], settings: IngestSettings, now: datetime) -> str | None:
    """Why the headers alone already refuse this request (a 401's message), or None: read the body.

    Only authentication failures are decided here, and only for a provider
    this tenant has configured; anything else (no secret: 503, a bad body) is
    left to the ordinary path and its answer.
    """
    found = Headers(headers)
    try:
        if provider == "postmark":
            if settings.postmark_auth:
                postmark.verify(found, settings)
        elif provider == "sendgrid" and settings.sendgrid_verification_key:
            signature, timestamp = found.first(sendgrid.SIGNATURE_HEADER), found.first(sendgrid.TIMESTAMP_HEADER)
            if not signature or not timestamp:
                return f"sendgrid webhook lacks {sendgrid.SIGNATURE_HEADER} or {sendgrid.TIMESTAMP_HEADER}"
            check_tolerance(timestamp, now, settings, f"sendgrid {sendgrid.TIMESTAMP_HEADER}")
        elif provider == "resend" and settings.resend_webhook_secret:
            msg_id, timestamp, signature = resend.headers_of(found)
            if not msg_id or not timestamp or not signature:
                return "resend webhook lacks svix-id, svix-timestamp or svix-signature"
            check_tolerance(timestamp, now, settings, "resend svix-timestamp")
    except WebhookSignatureError as refused:
        return str(refused)
    return None


class Tarpit:
    """Holds each authentication failure's answer ``delay`` seconds, at most ``slots`` at a time."""

    def __init__(self, delay: float, slots: int) -> None:
        self.delay = delay
        self.slots = slots
        self.held = 0

    async def hold(self) -> None:
        if self.delay <= 0:
            return
        if self.held >= self.slots:
            metrics.REFUSED.labels("auth_failure_undelayed").inc()
            return
        self.held += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.held -= 1
