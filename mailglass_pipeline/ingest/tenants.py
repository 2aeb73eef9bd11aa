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
time, size or inode changes (one ``stat`` per request; for 2 s after a
change its content is compared too, since a second edit within the same
timestamp tick can leave all three alike). So a rotation is in force for
every worker from its next request on. A file that fails to parse is
refused at start-up; a bad edit or a removed file while running is logged
(``keeping the previous webhook secrets``) and the last good version stays
in force, so a typo cannot open or close every tenant at once.

**The same last good version in every worker.** ``mailglass serve`` runs
several processes; each keeping its *own* last good version would let a
retired secret pass in one worker and the new one fail in another. So the
workers share it: each version a worker loads is copied (atomically) into a
directory they all see, and a worker that finds the file missing or broken
puts that copy in force. A worker restarted while the file is broken starts
from the copy too. The metric ``mailglass_webhook_secrets_fallback`` is 1 in
each worker running on the last good version, 0 when the file is in force.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mailglass_pipeline.ingest.base import PROVIDERS, IngestSettings, split_list
from mailglass_pipeline.ingest.errors import IngestConfigurationError, InvalidTenantIdError
from mailglass_pipeline.settings import SERVE_STATE_DIR, WEBHOOK_SECRETS

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


#: The shared last good copy's file name, in the directory ``mailglass serve`` gives its workers.
SHARED_COPY = "webhook-secrets.last-good.toml"
#: A file modified less than this long ago may change again within the same timestamp tick, so
#: its unchanged (mtime, size, inode) proves nothing: its content is compared too (git's "racy" rule).
RACY_NS = 2_000_000_000

#: Called with True when a worker falls back to the last good version, False when the file is in force.
_fallback_listeners: list[Callable[[bool], None]] = []


def watch_fallback(listener: Callable[[bool], None]) -> None:
    """Have ``listener`` told whenever a worker's secrets fall back or recover (the receiver's metric)."""
    _fallback_listeners.append(listener)


Signature = tuple[int, int, int] | None


class SecretsFile:
    """The per-tenant secrets file, re-read when it changes, its last good version shared (see the module doc).

    ``shared_dir``: a directory every worker of one ``mailglass serve`` sees;
    each version a worker loads is copied there, and a worker that finds the
    file missing or broken takes that copy, so all workers answer alike.
    """

    def __init__(self, path: str | os.PathLike[str], *, shared_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.shared = Path(shared_dir) / SHARED_COPY if shared_dir else None
        self._lock = threading.Lock()
        self._seen: Signature | str = "never"
        self._read: str | None = None
        self._shared_seen: Signature = None
        self._secrets: TenantSecrets = {}
        #: True while the file is missing or broken and the last good version is in force.
        self.fallback = False
        problem = self._refresh(_signature(self.path), racy=False, starting=True)
        if problem is not None:
            raise IngestConfigurationError(f"{WEBHOOK_SECRETS.env}: cannot load {self.path}: {problem}")

    def current(self) -> TenantSecrets:
        """The secrets in force: one ``stat`` per call, more only when something may have changed."""
        signature = _signature(self.path)
        racy = signature is not None and abs(time.time_ns() - signature[0]) < RACY_NS
        shared_moved = self.fallback and self.shared is not None and _signature(self.shared) != self._shared_seen
        if signature != self._seen or racy or shared_moved:
            with self._lock:
                self._refresh(signature, racy=racy)
        return self._secrets

    def _refresh(self, signature: Signature, *, racy: bool, starting: bool = False) -> str | None:
        """Load the file if it changed, else fall back; the problem when starting without any version."""
        changed = signature != self._seen or (racy and _text_or_none(self.path) != self._read)
        if not changed:
            if self.fallback:  # still broken: another worker may have shared a newer good version
                self._take_shared()
            return None
        self._seen, self._read = signature, None
        try:
            if signature is None:
                raise OSError("no such file (removed?)")
            self._read = text = self.path.read_text(encoding="utf-8")
            secrets = parse_secrets(text, str(self.path))
        except (OSError, UnicodeDecodeError, IngestConfigurationError) as exc:
            shared = self._take_shared()
            if starting and not shared:
                return str(exc)  # nothing good to keep: refuse to start
            log.error(
                "keeping the previous webhook secrets (the last good version, %s): cannot reload %s: %s",
                "shared by every worker" if shared else "this process's own",
                self.path,
                exc,
            )
            self._set_fallback(True)
            return None
        self._secrets = secrets
        self._share(text)
        log.info("webhook secrets loaded from %s (%d tenants)", self.path, len(secrets))
        self._set_fallback(False)
        return None

    def _share(self, text: str) -> None:
        if self.shared is None:
            return
        try:  # whole or not at all: written aside, then renamed over the previous copy
            aside = self.shared.with_name(f"{SHARED_COPY}.{os.getpid()}.tmp")
            aside.write_text(text, encoding="utf-8")
            os.replace(aside, self.shared)
            self._shared_seen = _signature(self.shared)
        except OSError as exc:
            log.warning("cannot share the webhook secrets with the other workers (%s): %s", self.shared, exc)

    def _take_shared(self) -> bool:
        """Put the shared last good copy in force (every worker takes the same one); False when there is none."""
        if self.shared is None:
            return False
        self._shared_seen = _signature(self.shared)
        try:
            self._secrets = parse_secrets(self.shared.read_text(encoding="utf-8"), str(self.shared))
        except (OSError, UnicodeDecodeError, IngestConfigurationError):
            return False
        return True

    def _set_fallback(self, value: bool) -> None:
        self.fallback = value
        for listener in _fallback_listeners:
            listener(value)


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _signature(path: Path) -> Signature:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class TenantSettings:
    """Resolves the :class:`IngestSettings` that verify one tenant's webhooks of one provider."""

    def __init__(self, base: IngestSettings, secrets: SecretsFile | None = None) -> None:
        self.base = base
        self.secrets = secrets

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TenantSettings:
        path = WEBHOOK_SECRETS.read(environ)
        shared = SERVE_STATE_DIR.read(environ)
        return cls(IngestSettings.from_env(environ), SecretsFile(path, shared_dir=shared) if path else None)

    def for_tenant(self, tenant_id: str, provider: str) -> IngestSettings:
        if self.secrets is None:
            return self.base
        entry = self.secrets.current().get(tenant_id, {}).get(provider)
        if entry is None:
            return self.base
        return dataclasses.replace(self.base, **entry)
