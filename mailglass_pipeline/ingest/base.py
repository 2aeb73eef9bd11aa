"""What every provider module shares: settings, headers, the normalized event, small parsers.

Each provider module turns ``(body, headers)`` into a :class:`ParsedWebhook`
in two steps, always in this order: *verify* (signature, auth, timestamp
tolerance) and only then *normalize* (JSON into :class:`NormalizedEvent`).
Nothing here touches the database, so verification and normalization are
pure functions that tests can run against the published samples and vectors
with a pinned clock.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mailglass_pipeline.ingest.errors import IngestConfigurationError, WebhookPayloadError, WebhookSignatureError
from mailglass_pipeline.settings import (
    INGEST_MAX_BODY_BYTES,
    MAILGUN_SIGNING_KEY,
    POSTMARK_WEBHOOK_AUTH,
    RESEND_WEBHOOK_SECRET,
    SENDGRID_VERIFICATION_KEY,
    SES_TOPIC_ARNS,
    SNS_CERT_DIR,
)

#: Providers whose webhooks can be ingested.
PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")

#: A signed timestamp further than this from our clock (either way) is refused.
DEFAULT_TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class IngestSettings:
    """Secrets and limits. :meth:`from_env` reads the documented variables; tests build one directly."""

    postmark_auth: str | None = None
    sendgrid_verification_key: str | None = None
    mailgun_signing_key: str | None = None
    resend_webhook_secret: str | None = None
    sns_cert_dir: str | None = None
    #: SNS topics whose SES messages are accepted; None: none configured (SES refused as misconfigured).
    ses_topic_arns: tuple[str, ...] | None = None
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    max_body_bytes: int = INGEST_MAX_BODY_BYTES.default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestSettings:
        return cls(
            postmark_auth=POSTMARK_WEBHOOK_AUTH.read(environ),
            sendgrid_verification_key=SENDGRID_VERIFICATION_KEY.read(environ),
            mailgun_signing_key=MAILGUN_SIGNING_KEY.read(environ),
            resend_webhook_secret=RESEND_WEBHOOK_SECRET.read(environ),
            sns_cert_dir=SNS_CERT_DIR.read(environ),
            ses_topic_arns=split_list(SES_TOPIC_ARNS.read(environ)),
            max_body_bytes=INGEST_MAX_BODY_BYTES.read(environ),
        )


def split_list(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A comma-separated string (or a list) as a tuple of non-empty items; None when empty."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    cleaned = tuple(item.strip() for item in items if item.strip())
    return cleaned or None


def require_secret(value: str | None, env_name: str, provider: str) -> str:
    """The configured secret, or a configuration error naming the variable to set."""
    if not value:
        raise IngestConfigurationError(
            f"{env_name} is not set: cannot verify {provider} webhooks (use --no-verify only to replay "
            "captures that were verified when received)"
        )
    return value


class Headers(Mapping[str, str]):
    """HTTP headers with case-insensitive names (the last value of a repeated name wins)."""

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = {}
        for name, value in (headers or {}).items():
            self._items[str(name).strip().lower()] = str(value).strip()

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def first(self, *names: str) -> str | None:
        """The value of the first of ``names`` present and non-empty."""
        for name in names:
            value = self._items.get(name.lower())
            if value:
                return value
        return None


@dataclass(frozen=True)
class NormalizedEvent:
    """One provider event in the event taxonomy, ready to become a ledger row."""

    type: str
    occurred_at: datetime
    provider_event_id: str
    provider_message_id: str | None
    payload: Mapping[str, Any]
    provider_event: str | None = None
    reject_reason: str | None = None
    recipient: str | None = None
    extra_metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Ledger idempotency key; ``"<provider>:<provider_event_id>"`` unless the provider needs more.
    idempotency_key: str | None = None
    #: Key of the provider event this came from when one request carries several (a SendGrid batch):
    #: the key of its ``mailglass_webhook_events`` row. None: the whole request is one provider event.
    source_key: str | None = None


def normalized_event(
    occurred_at: datetime | None, received_at: datetime, extra_metadata: Mapping[str, Any], **fields: Any
) -> NormalizedEvent:
    """A :class:`NormalizedEvent` at the provider's ``occurred_at``; without one (absent or unusable),
    at ``received_at`` and marked ``occurred_at_estimated`` in its metadata (every provider's rule)."""
    extra = {**extra_metadata, "occurred_at_estimated": True} if occurred_at is None else dict(extra_metadata)
    return NormalizedEvent(occurred_at=occurred_at or received_at, extra_metadata=extra, **fields)


@dataclass(frozen=True)
class ReplayToken:
    """A single-use token (Mailgun's ``signature.token``) to be recorded in the ingest transaction."""

    provider: str
    token: str
    body_sha256: str


@dataclass(frozen=True)
class MalformedElement:
    """An element of an authentic batch that is not an event we can read (``42``, no ``event``...).

    Kept, not refused: its raw record is stored with status ``failed`` and the
    answer counts it as ``malformed`` (the rest of the batch is stored as usual).
    """

    index: int
    reason: str
    payload: Any
    #: The provider's kind of event when it is a string (``event_type_raw``), else None.
    kind: str | None = None


@dataclass(frozen=True)
class ParsedWebhook:
    """The verified, normalized content of one webhook request."""

    provider: str
    events: list[NormalizedEvent]
    verified: bool
    replay_token: ReplayToken | None = None
    #: Extra fields for the caller (e.g. SNS ``subscribe_url``), copied into the result.
    notice: Mapping[str, Any] = field(default_factory=dict)
    #: The request body as received (kept in ``mailglass_webhook_events``).
    body: bytes = b""
    #: Elements of the batch that are not events (kept as raw records, counted as ``malformed``).
    malformed: tuple[MalformedElement, ...] = ()


def check_size(body: bytes, settings: IngestSettings) -> None:
    if len(body) > settings.max_body_bytes:
        raise WebhookPayloadError(f"body is {len(body)} bytes, over the {settings.max_body_bytes}-byte limit")


#: JSON nesting deeper than this is refused (no provider nests more than a dozen levels).
MAX_JSON_DEPTH = 64
#: Integer literals longer than this are refused (the longest real ids have about 20 digits).
MAX_INTEGER_DIGITS = 256


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INTEGER_DIGITS:
        raise WebhookPayloadError(f"an integer of {len(text)} digits, over the {MAX_INTEGER_DIGITS}-digit limit")
    return int(text)


def json_depth_exceeds(value: Any) -> bool:
    """Whether ``value`` nests containers deeper than :data:`MAX_JSON_DEPTH` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def load_json(body: bytes, what: str = "body") -> Any:
    """Parse JSON exactly and within bounds; anything unfit is a :class:`WebhookPayloadError`.

    Integers stay integers (Postmark's bounce ids exceed 2**53) but may not
    exceed :data:`MAX_INTEGER_DIGITS`; nesting may not exceed
    :data:`MAX_JSON_DEPTH`. ``NaN``/``Infinity`` literals are accepted here
    (a provider may send them) and made storable at storage time.
    """
    try:
        text = body.decode("utf-8-sig") if isinstance(body, bytes) else body
        value = json.loads(text, parse_int=_bounded_int)
    except UnicodeDecodeError as exc:
        raise WebhookPayloadError(f"{what} is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise WebhookPayloadError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise WebhookPayloadError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except WebhookPayloadError as exc:
        raise WebhookPayloadError(f"{what}: {exc}") from None
    except ValueError as exc:  # e.g. an integer over the interpreter's digit limit
        raise WebhookPayloadError(f"{what} is not usable JSON: {exc}") from None
    if isinstance(value, (dict, list)) and json_depth_exceeds(value):
        raise WebhookPayloadError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def expect_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookPayloadError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def text_or_none(value: Any) -> str | None:
    """A non-empty string form of a scalar id, else None."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    text = str(value).strip()
    return text or None


def parse_time(value: Any, what: str) -> datetime | None:
    """ISO 8601 or Unix seconds into an aware UTC datetime; None when absent; bad values are payload errors."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("boolean")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                return None  # NaN/Infinity: no time at all; the event is kept with an estimated time
            return datetime.fromtimestamp(float(value), tz=UTC)
        text = str(value).strip()
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:  # providers send UTC; a naive time is read as UTC
            parsed = parsed.replace(tzinfo=UTC)
        # Inside the try: an offset can push a time at the edge of the calendar out of range.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise WebhookPayloadError(f"{what} is not a timestamp: {value!r:.80} ({exc})") from None


def event_time(value: Any) -> datetime | None:
    """An event's own time (not a signed one): :func:`parse_time`, but None for a value it cannot read.

    A provider's event time is data, not proof: an unreadable one ("yesterday",
    ``true``, ``1e20``) must not cost the event, let alone its batch (the
    provider would retry the same bytes until it gives up). Like NaN, it leaves
    the event at its received time, marked ``occurred_at_estimated``
    (:func:`normalized_event`); the payload keeps the value as sent.
    """
    try:
        return parse_time(value, "event time")
    except WebhookPayloadError:
        return None


def now_utc(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def check_tolerance(signed: str | int | float | None, now: datetime, settings: IngestSettings, what: str) -> None:
    """Refuse a signed time missing, unreadable or further than the tolerance from ``now``."""
    if signed is None or signed == "":
        raise WebhookSignatureError(f"{what} is missing")
    try:
        moment = parse_time(signed, what)
    except WebhookPayloadError:
        raise WebhookSignatureError(f"{what} is not a timestamp: {signed!r}") from None
    assert moment is not None
    skew = abs((now - moment).total_seconds())
    if skew > settings.tolerance_seconds:
        raise WebhookSignatureError(
            f"{what} {moment.isoformat()} is {int(skew)} s from now, "
            f"outside the {settings.tolerance_seconds} s tolerance"
        )


def stable_id(*parts: Any) -> str:
    """A deterministic id for providers without one: SHA-256 over canonical JSON of ``parts``."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    # surrogatepass: a lone surrogate (JSON "\ud800") must not make the id fail; valid text encodes the same.
    return "sha256-" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
