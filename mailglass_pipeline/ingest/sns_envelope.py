"""The SNS envelope of an SES webhook, read at the cost of its size before its signature is checked.

SNS signs fields *inside* the JSON envelope, so some of the body must be read
before the signature can be checked. A general JSON parse costs far more
than the bytes for some shapes (half a megabyte of tiny arrays: hundreds of
milliseconds), and a forged body must cost no more than its authentication
(decision D25). An envelope is a flat object of about a dozen strings, so it
is scanned at its top level only, each string by the standard library's C
scanner, and any other nested value refuses it at once. The SES message
inside is parsed only once the envelope is authentic (:mod:`.ses`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mailglass_pipeline.ingest.errors import WebhookPayloadError, WebhookSignatureError

#: SNS messages are at most 256 KiB (AWS: Amazon SNS quotas). The envelope carries the message as a JSON
#: string (its quotes escaped) and about 2 KiB of fields: twice the message and 16 KiB bound it.
MAX_BODY_BYTES = 2 * 256 * 1024 + 16 * 1024
#: An envelope has about a dozen fields; more is not SNS.
MAX_ENVELOPE_FIELDS = 32
#: The one field that may hold an object (``MessageAttributes``: at most 10 attributes), in characters.
MAX_NESTED_FIELD_CHARS = 16 * 1024
_SPACE = re.compile(r"[ \t\n\r]*")
_LITERAL = re.compile(r"-?\d{1,32}(?:\.\d{1,32})?(?:[eE][-+]?\d{1,4})?|true|false|null")
_DECODER = json.JSONDecoder()
NOT_ENVELOPE = "body is not an SNS envelope, so it carries no signature to verify"


def load_envelope(body: bytes) -> dict[str, Any]:
    """The envelope's fields; 401 for a body that is no flat object, 400 for one that is not JSON."""
    try:
        text = body.decode("utf-8-sig")
        return _scan_envelope(text)
    except UnicodeDecodeError as exc:
        raise WebhookPayloadError(f"SNS message is not UTF-8: {exc.reason}") from None
    except (ValueError, RecursionError):  # json.JSONDecodeError included
        raise WebhookPayloadError("SNS message is not valid JSON") from None


def _scan_envelope(text: str) -> dict[str, Any]:
    pos = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("{", pos):
        raise WebhookSignatureError(NOT_ENVELOPE)
    document: dict[str, Any] = {}
    pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    closed = text.startswith("}", pos)
    while not closed:
        if len(document) >= MAX_ENVELOPE_FIELDS or not text.startswith('"', pos):
            raise WebhookSignatureError(f"{NOT_ENVELOPE} (not a flat object of at most {MAX_ENVELOPE_FIELDS} fields)")
        key, pos = json.decoder.scanstring(text, pos + 1)
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if not text.startswith(":", pos):
            raise ValueError("':' expected")
        pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        literal = _LITERAL.match(text, pos)
        if text.startswith('"', pos):
            value, pos = json.decoder.scanstring(text, pos + 1)
        elif literal:
            value, pos = json.loads(literal.group()), literal.end()
        elif key == "MessageAttributes":
            value, end = _DECODER.raw_decode(text[pos : pos + MAX_NESTED_FIELD_CHARS])
            pos += end
        else:
            raise WebhookSignatureError(f"{NOT_ENVELOPE} (field {key[:40]!r} is not a string)")
        document[key] = value
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if text.startswith(",", pos):
            pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        elif text.startswith("}", pos):
            closed = True
        else:
            raise ValueError("',' or '}' expected")
    if text[pos + 1 :].strip(" \t\n\r"):
        raise ValueError("data after the envelope")
    return document
