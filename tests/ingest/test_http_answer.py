"""``ingest.errors.http_answer``: the one mapping from an ingest's outcome to the receiver's HTTP answer."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailglass_pipeline.errors import DatabaseUnavailableError
from mailglass_pipeline.ingest.errors import (
    IngestConfigurationError,
    InvalidTenantIdError,
    TenantConflictError,
    WebhookPayloadError,
    WebhookSignatureError,
    http_answer,
)


def test_a_result_is_a_200_with_the_result() -> None:
    assert http_answer("resend", {"events": 1}) == (200, {"events": 1}, {})


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (WebhookSignatureError("bad signature"), 401),
        (WebhookPayloadError("not JSON"), 400),
        (InvalidTenantIdError("tenant id is empty"), 400),
        (TenantConflictError("stored for another tenant"), 409),
    ],
)
def test_the_senders_problems_are_4xx_with_the_reason(error: Exception, status: int) -> None:
    answer, payload, extra = http_answer("resend", error)
    assert (answer, payload) == (status, {"error": str(error)})
    assert "retry-after" not in extra


def test_postmark_is_asked_for_basic_auth() -> None:
    assert http_answer("postmark", WebhookSignatureError("bad credentials"))[2] == {
        "www-authenticate": 'Basic realm="mailglass"'
    }
    assert http_answer("resend", WebhookSignatureError("bad signature"))[2] == {}


@pytest.mark.parametrize(
    "error",
    [
        IngestConfigurationError("MAILGLASS_RESEND_WEBHOOK_SECRET is not set"),
        DatabaseUnavailableError("database unavailable"),
        sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection")),
    ],
)
def test_our_side_is_a_503_the_provider_retries(error: Exception) -> None:
    status, payload, extra = http_answer("ses", error)
    assert status == 503 and extra == {"retry-after": "30"}
    assert "error" in payload


def test_only_a_bug_is_a_500() -> None:
    assert http_answer("ses", KeyError("oops"))[:2] == (500, {"error": "internal error; nothing stored"})
