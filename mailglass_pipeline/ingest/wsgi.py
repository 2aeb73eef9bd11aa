"""A tiny WSGI receiver: ``POST <mount>/<provider>/<tenant_id>`` -> :func:`ingest`.

Superseded by ``mailglass serve`` (:mod:`.serve`), which a client stalling
mid-body cannot starve and which answers health and metrics; kept for
those who mount it in a server of their own.

Users mount ``make_app()`` in the server they already run (gunicorn,
uWSGI, ``wsgiref`` for a quick test). It does only what HTTP needs: route,
bound the body read, map the typed errors onto status codes providers
understand (401 not authentic, 400 unreadable, 413 too large, 500/503 our
side, so the provider retries later), and answer JSON. Secrets come from
the environment and ``MAILGLASS_WEBHOOK_SECRETS`` (per tenant).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from mailglass_pipeline.errors import DatabaseUnavailableError
from mailglass_pipeline.ingest.base import PROVIDERS, IngestSettings
from mailglass_pipeline.ingest.core import ingest
from mailglass_pipeline.ingest.errors import (
    IngestConfigurationError,
    InvalidTenantIdError,
    TenantConflictError,
    WebhookPayloadError,
    WebhookSignatureError,
)
from mailglass_pipeline.ingest.tenants import TenantSettings

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """HTTP headers from a WSGI environ, under their dashed names."""
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def make_app(*, database_url: str | None = None, settings: IngestSettings | None = None) -> WSGIApp:
    """The WSGI application; ``settings`` default to the environment at creation time."""
    tenants = TenantSettings(settings) if settings else TenantSettings.from_env()
    config = tenants.base

    def respond(start_response: StartResponse, status: int, payload: dict[str, Any], **extra: str) -> list[bytes]:
        body = json.dumps(payload, sort_keys=True).encode("utf-8")
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra.items()]
        start_response(f"{status} {REASONS[status]}", headers)
        return [body]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        parts = [p for p in environ.get("PATH_INFO", "").split("/") if p]
        if len(parts) != 2 or parts[0] not in PROVIDERS:
            return respond(start_response, 404, {"error": f"POST /<provider>/<tenant_id>; providers: {PROVIDERS}"})
        provider, tenant_id = parts
        if environ.get("REQUEST_METHOD") != "POST":
            return respond(start_response, 405, {"error": "POST only"}, Allow="POST")
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return respond(start_response, 411, {"error": "Content-Length required"})
        if length > config.max_body_bytes:
            return respond(start_response, 413, {"error": f"body over {config.max_body_bytes} bytes"})
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        try:
            result = ingest(
                provider,
                body,
                request_headers(environ),
                tenant_id=tenant_id,
                database_url=database_url,
                settings=tenants.for_tenant(tenant_id, provider),
            )
        except WebhookSignatureError as exc:
            extra = {"WWW-Authenticate": 'Basic realm="mailglass"'} if provider == "postmark" else {}
            return respond(start_response, 401, {"error": str(exc)}, **extra)
        except (WebhookPayloadError, InvalidTenantIdError) as exc:
            return respond(start_response, 400, {"error": str(exc)})
        except TenantConflictError as exc:
            return respond(start_response, 409, {"error": str(exc)})
        except IngestConfigurationError as exc:
            log.error("ingest misconfigured: %s", exc)
            return respond(start_response, 500, {"error": "receiver misconfigured"})
        except DatabaseUnavailableError as exc:
            log.error("ingest database unavailable: %s", exc)
            return respond(start_response, 503, {"error": "database unavailable"}, **{"Retry-After": "30"})
        return respond(start_response, 200, result)

    return app
