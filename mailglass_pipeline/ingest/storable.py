"""Make provider data storable in PostgreSQL without dropping an event.

Providers relay text they do not control (MTA replies, user agents), and
some of it cannot be stored as is: PostgreSQL's ``text`` and ``jsonb`` refuse
the NUL character (U+0000), and ``jsonb`` has no ``NaN`` or ``Infinity``.
Refusing such a batch would lose every event in it, because the provider
retries the same bytes until it gives up. So, after the signature has been
checked on the exact bytes, and only for the values that need it:

- every U+0000 in a string (object keys included, and the text columns such
  as ids and the idempotency key) becomes U+FFFD (REPLACEMENT CHARACTER), and
  so does a lone UTF-16 surrogate (JSON ``"\ud800"`` without its pair: valid
  JSON, but not text PostgreSQL can hold);
- a float that is ``NaN``, ``Infinity`` or ``-Infinity`` (from the JSON
  literals, or a number too large for a double such as ``1e999``) becomes
  the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``;
- the event's metadata gets ``"payload_sanitized": true``.

- a key longer than :data:`MAX_KEY_BYTES` (an idempotency key, or the raw
  record's ``provider_event_id``; both sit in a b-tree index, which refuses
  entries over about 2.7 kB) becomes ``<provider>:sha256:<hex>`` of itself;
  the full id stays in the event's metadata. Clean events (nearly all) are
detected with one ``json.dumps`` per batch and pass untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from mailglass_pipeline.ingest.base import NormalizedEvent

NUL = "\x00"
#: Longer keys are stored as their SHA-256 (an index entry must stay well under PostgreSQL's limit).
MAX_KEY_BYTES = 512
REPLACEMENT = "\ufffd"
NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
#: A surrogate code point in a Python string is always a lone one (json.loads joins a valid pair).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: The same in json.dumps's ASCII output: a \uXXXX surrogate escape that is not half of a valid pair.
_LONE_ESCAPE = re.compile(r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}")


def bounded_key(key: str, provider: str) -> str:
    """``key``, or ``<provider>:sha256:<hex>`` of it when it is longer than :data:`MAX_KEY_BYTES`."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_KEY_BYTES:
        return key
    return f"{provider}:sha256:{hashlib.sha256(raw).hexdigest()}"


def needs_sanitizing(value: Any) -> bool:
    """Whether ``value`` holds a NUL character, a lone surrogate or a non-finite float anywhere."""
    try:
        text = json.dumps(value, allow_nan=False, default=str)
    except ValueError:
        return True
    # json.dumps writes NUL as the escape \u0000 (a real backslash-u0000 is written \\u0000,
    # which also matches: a harmless false positive costing one walk).
    return "\\u0000" in text or ("\\ud" in text and _LONE_ESCAPE.search(text) is not None)


def storable(value: Any) -> Any:
    """``value`` with the transformation of the module doc applied (a new structure)."""
    if isinstance(value, str):
        if NUL in value:
            value = value.replace(NUL, REPLACEMENT)
        return _SURROGATE.sub(REPLACEMENT, value) if _SURROGATE.search(value) else value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {storable(key) if isinstance(key, str) else key: storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(item) for item in value]
    return value


def _fields(event: NormalizedEvent) -> tuple[Any, ...]:
    return (
        event.payload,
        event.extra_metadata,
        event.provider_event_id,
        event.provider_message_id,
        event.provider_event,
        event.recipient,
        event.idempotency_key,
        event.reject_reason,
        event.source_key,
    )


def storable_events(events: Sequence[NormalizedEvent]) -> list[NormalizedEvent]:
    """``events`` with unstorable values transformed; the same objects when all are clean."""
    if not needs_sanitizing([_fields(event) for event in events]):
        return list(events)
    return [_storable_event(event) if needs_sanitizing(_fields(event)) else event for event in events]


def _storable_event(event: NormalizedEvent) -> NormalizedEvent:
    extra = storable(dict(event.extra_metadata))
    extra["payload_sanitized"] = True
    return dataclasses.replace(
        event,
        payload=storable(dict(event.payload)),
        extra_metadata=extra,
        provider_event_id=storable(event.provider_event_id),
        provider_message_id=storable(event.provider_message_id),
        provider_event=storable(event.provider_event),
        recipient=storable(event.recipient),
        idempotency_key=storable(event.idempotency_key),
        reject_reason=storable(event.reject_reason),
        source_key=storable(event.source_key),
    )
