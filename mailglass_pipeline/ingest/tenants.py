"""Tenants at the door: which ids are fit to store, and which secrets verify each tenant.

**Tenant ids.** The id comes from the request URL, so it is checked before
anything else: it must be a non-empty string of at most 255 characters,
without control characters (NUL, CR, LF, TAB... anything in Unicode category
``Cc``), without invisible or bidirectional control characters (``Cf``:
U+200B, U+202E...; line separators, private-use and unassigned code points),
in Unicode NFC form, and without surrounding whitespace. Otherwise ``"acme"``
and ``"acme "`` (or ``"acme\u200b"``, or an NFD ``"café"``) would become two
tenants that look like one, and a NUL would fail in the database.

**Per-tenant secrets.** ``MAILGLASS_WEBHOOK_SECRETS`` names a TOML file::

    [tenants."acme".postmark]
    postmark_webhook_auth = "acme-hooks:correct horse"

    [tenants."acme".ses]
    ses_topic_arns = ["arn:aws:sns:eu-west-1:111122223333:acme-ses"]

A tenant with a table for a provider is verified with that table *only*
(the global ``MAILGLASS_*`` variables are not a fallback for it), so a
tenant's own secret cannot be bypassed with the shared one. Tenants without
a table use the globals. ``ses_topic_arns`` is a list or a comma-separated
string; the SNS certificate directory stays global (the certificates are
AWS's, not the tenant's).

**Changes need no restart.** The file is re-read when its modification
time, size or inode changes (one ``stat`` per request). A file that fails
to parse is refused at start-up; a bad edit while running is logged and the
last good version stays in force, so a typo cannot open or close every
tenant at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailglass_pipeline.ingest.base import PROVIDERS, IngestSettings, split_list
from mailglass_pipeline.ingest.errors import IngestConfigurationError, InvalidTenantIdError
from mailglass_pipeline.settings import WEBHOOK_SECRETS, read

log = logging.getLogger(__name__)

MAX_TENANT_ID_LENGTH = 255
#: Format characters (zero-width spaces and joiners, bidirectional overrides and isolates, the BOM),
#: line and paragraph separators, private-use and unassigned code points: invisible, or not yet text.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp", "Co", "Cn", "Cs"})

#: Provider -> {TOML key: IngestSettings field}.
SECRET_KEYS: dict[str, dict[str, str]] = {
    "postmark": {"postmark_webhook_auth": "postmark_auth"},
    "sendgrid": {"sendgrid_verification_key": "sendgrid_verification_key"},
    "mailgun": {"mailgun_signing_key": "mailgun_signing_key"},
    "resend": {"resend_webhook_secret": "resend_webhook_secret"},
    "ses": {"ses_topic_arns": "ses_topic_arns"},
}
assert set(SECRET_KEYS) == set(PROVIDERS)


def tenant_id_problem(tenant_id: object) -> str | None:
    """Why ``tenant_id`` is unfit, or None when it is fine."""
    if not isinstance(tenant_id, str) or not tenant_id:
        return "tenant id must be a non-empty string"
    if len(tenant_id) > MAX_TENANT_ID_LENGTH:
        return f"tenant id is {len(tenant_id)} characters, over {MAX_TENANT_ID_LENGTH}"
    if tenant_id != tenant_id.strip():
        return "tenant id has surrounding whitespace"
    if any(unicodedata.category(char) == "Cc" for char in tenant_id):
        return "tenant id contains a control character"
    unseen = next((char for char in tenant_id if unicodedata.category(char) in INVISIBLE_CATEGORIES), None)
    if unseen is not None:
        return f"tenant id contains an invisible or bidirectional control character (U+{ord(unseen):04X})"
    if not unicodedata.is_normalized("NFC", tenant_id):
        return "tenant id is not in Unicode NFC form (send the composed form of each character)"
    return None


def check_tenant_id(tenant_id: object) -> str:
    problem = tenant_id_problem(tenant_id)
    if problem:
        raise InvalidTenantIdError(f"{problem}: {tenant_id!r:.80}")
    assert isinstance(tenant_id, str)
    return tenant_id


TenantSecrets = dict[str, dict[str, dict[str, Any]]]


def parse_secrets(text: str, source: str) -> TenantSecrets:
    """``{tenant: {provider: {settings field: value}}}`` from the TOML text; strict about names."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IngestConfigurationError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(document) - {"tenants"}
    if unknown:
        raise IngestConfigurationError(f"{source}: unknown top-level keys {sorted(unknown)}; expected [tenants.*]")
    tenants = document.get("tenants", {})
    if not isinstance(tenants, dict):
        raise IngestConfigurationError(f"{source}: 'tenants' must be a table")
    result: TenantSecrets = {}
    for tenant_id, providers in tenants.items():
        problem = tenant_id_problem(tenant_id)
        if problem:
            raise IngestConfigurationError(f"{source}: {problem}: {tenant_id!r}")
        if not isinstance(providers, dict):
            raise IngestConfigurationError(f"{source}: tenants.{tenant_id!r} must be a table of providers")
        for provider, entry in providers.items():
            if provider not in SECRET_KEYS or not isinstance(entry, dict):
                raise IngestConfigurationError(
                    f"{source}: tenants.{tenant_id!r}.{provider} is not a provider table ({', '.join(PROVIDERS)})"
                )
            allowed = SECRET_KEYS[provider]
            extra = set(entry) - set(allowed)
            if extra:
                raise IngestConfigurationError(
                    f"{source}: tenants.{tenant_id!r}.{provider} has unknown keys {sorted(extra)}; "
                    f"expected {sorted(allowed)}"
                )
            fields: dict[str, Any] = {}
            for key, field_name in allowed.items():
                value = entry.get(key)
                if field_name == "ses_topic_arns":
                    fields[field_name] = split_list(value) if isinstance(value, (str, list)) else None
                else:
                    fields[field_name] = value if isinstance(value, str) and value else None
            result.setdefault(tenant_id, {})[provider] = fields
    return result


class SecretsFile:
    """The per-tenant secrets file, re-read when it changes (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._secrets: TenantSecrets = {}
        self._load(strict=True)

    def _stat(self) -> tuple[int, int, int]:
        info = self.path.stat()
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _load(self, *, strict: bool) -> None:
        try:
            signature = self._stat()
            secrets = parse_secrets(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, IngestConfigurationError) as exc:
            if strict:
                raise IngestConfigurationError(f"{WEBHOOK_SECRETS.env}: cannot load {self.path}: {exc}") from None
            log.error("keeping the previous webhook secrets: cannot reload %s: %s", self.path, exc)
            return
        self._signature, self._secrets = signature, secrets
        log.info("webhook secrets loaded from %s (%d tenants)", self.path, len(secrets))

    def current(self) -> TenantSecrets:
        try:
            changed = self._stat() != self._signature
        except OSError:
            changed = True
        if changed:
            with self._lock:
                self._load(strict=False)
        return self._secrets


class TenantSettings:
    """Resolves the :class:`IngestSettings` that verify one tenant's webhooks of one provider."""

    def __init__(self, base: IngestSettings, secrets: SecretsFile | None = None) -> None:
        self.base = base
        self.secrets = secrets

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TenantSettings:
        path = read(WEBHOOK_SECRETS, environ)
        return cls(IngestSettings.from_env(environ), SecretsFile(path) if path else None)

    def for_tenant(self, tenant_id: str, provider: str) -> IngestSettings:
        if self.secrets is None:
            return self.base
        entry = self.secrets.current().get(tenant_id, {}).get(provider)
        if entry is None:
            return self.base
        return dataclasses.replace(self.base, **entry)
