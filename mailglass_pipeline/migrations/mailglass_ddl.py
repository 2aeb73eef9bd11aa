"""Mailglass's own schema at its version 7, as its migrator leaves it: the objects this project may create.

Written from a reading of ``Mailglass.Migrations.Postgres`` (V01 ... V07); the translation choices
are in ``docs/mailglass.md``. Ecto's types: ``:utc_datetime_usec`` is ``timestamp`` (without time
zone, holding UTC), ``:map`` is ``jsonb``, ``:string`` is ``varchar(255)``, ``:binary`` is ``bytea``;
a ``:uuid`` primary key has no database default (Ecto generates ids) and ``timestamps()`` have
none either (Ecto sends them).

Nothing here is run against a database Mailglass manages (one carrying its version stamp): there
every Mailglass object belongs to Mailglass's migrator. It is used for an empty database and for a
database an earlier release of this project created, to add what Mailglass would have added, under
Mailglass's names, so that a Mailglass app pointed at it finds its schema and its migrator has
nothing to redo.
"""

from __future__ import annotations

#: The version Mailglass records as ``COMMENT ON TABLE mailglass_events IS '<n>'``.
MAILGLASS_VERSION = 7
MAILGLASS_TABLES = (
    "mailglass_deliveries",
    "mailglass_events",
    "mailglass_suppressions",
    "mailglass_webhook_events",
    "mailglass_outbound_payloads",
)

# Table bodies in Mailglass's column order (columns added by later versions come last, as there).
_DELIVERIES = """
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    mailable text NOT NULL,
    stream text NOT NULL,
    recipient text NOT NULL,
    recipient_domain text NOT NULL,
    provider text,
    provider_message_id text,
    last_event_type text NOT NULL,
    last_event_at timestamp NOT NULL,
    terminal boolean NOT NULL DEFAULT false,
    dispatched_at timestamp,
    delivered_at timestamp,
    bounced_at timestamp,
    complained_at timestamp,
    suppressed_at timestamp,
    metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    lock_version integer NOT NULL DEFAULT 1,
    inserted_at timestamp NOT NULL,
    updated_at timestamp NOT NULL,
    adapter_ref text,
    idempotency_key text,
    status varchar(255) NOT NULL DEFAULT 'queued',
    last_error jsonb,
    CONSTRAINT mailglass_deliveries_pkey PRIMARY KEY (id)
"""

_EVENTS = """
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    delivery_id uuid,
    type text NOT NULL,
    occurred_at timestamp NOT NULL,
    idempotency_key text,
    reject_reason text,
    normalized_payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    trace_id text,
    needs_reconciliation boolean NOT NULL DEFAULT false,
    inserted_at timestamp NOT NULL DEFAULT now(),
    CONSTRAINT mailglass_events_pkey PRIMARY KEY (id)
"""

_SUPPRESSIONS = """
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    address {citext} NOT NULL,
    scope text NOT NULL,
    stream text,
    reason text NOT NULL,
    source text NOT NULL,
    expires_at timestamp,
    metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    inserted_at timestamp NOT NULL DEFAULT now(),
    CONSTRAINT mailglass_suppressions_pkey PRIMARY KEY (id),
    CONSTRAINT mailglass_suppressions_stream_scope_check CHECK (
        (scope = 'address_stream' AND stream IS NOT NULL) OR (scope IN ('address', 'domain') AND stream IS NULL)),
    CONSTRAINT mailglass_suppressions_complaint_permanent_check CHECK (reason != 'complaint' OR expires_at IS NULL)
"""

_WEBHOOK_EVENTS = """
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    provider text NOT NULL,
    provider_event_id text NOT NULL,
    event_type_raw text NOT NULL,
    event_type_normalized text,
    status text NOT NULL,
    raw_payload jsonb NOT NULL,
    received_at timestamp NOT NULL,
    processed_at timestamp,
    inserted_at timestamp NOT NULL,
    updated_at timestamp NOT NULL,
    CONSTRAINT mailglass_webhook_events_pkey PRIMARY KEY (id)
"""

_LIFECYCLE_STATES = (
    "recoverable",
    "dispatching",
    "scrubbed",
    "expired",
    "terminal",
    "discarded",
    "abandoned",
    "uncertain",
    "legacy",
)
_REASON_CLASSES = (
    "dispatch_claimed",
    "accepted",
    "retention_expired",
    "provider_client_rejected",
    "pre_dispatch_failure",
    "payload_missing",
    "payload_corrupt",
    "payload_unsupported_version",
    "payload_expired",
    "payload_scrubbed",
    "job_discarded",
    "job_abandoned",
    "provider_acceptance_unknown",
    "legacy_queued",
)
_TERMINAL_REASONS = (
    "provider_client_rejected",
    "pre_dispatch_failure",
    "payload_missing",
    "payload_corrupt",
    "payload_unsupported_version",
    "payload_expired",
    "payload_scrubbed",
)


def _values(items: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in items)


_OUTBOUND_PAYLOADS = f"""
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    delivery_id uuid NOT NULL,
    envelope_version integer NOT NULL,
    envelope_digest text NOT NULL,
    envelope jsonb,
    scrubbed_at timestamp,
    expires_at timestamp,
    inserted_at timestamp NOT NULL,
    updated_at timestamp NOT NULL,
    lifecycle_state text NOT NULL DEFAULT 'recoverable',
    reason_class text,
    claimed_at timestamp,
    CONSTRAINT mailglass_outbound_payloads_pkey PRIMARY KEY (id),
    CONSTRAINT mailglass_outbound_payloads_delivery_id_fkey FOREIGN KEY (delivery_id)
        REFERENCES {{schema}}.mailglass_deliveries (id) ON DELETE CASCADE,
    CONSTRAINT mailglass_outbound_payloads_lifecycle_state_check
        CHECK (lifecycle_state IN ({_values(_LIFECYCLE_STATES)})),
    CONSTRAINT mailglass_outbound_payloads_reason_class_check CHECK (
        (lifecycle_state = 'recoverable' AND reason_class IS NULL) OR
        (lifecycle_state = 'dispatching' AND reason_class = 'dispatch_claimed') OR
        (lifecycle_state = 'scrubbed' AND reason_class = 'accepted') OR
        (lifecycle_state = 'terminal' AND reason_class IN ({_values(_TERMINAL_REASONS)})) OR
        (lifecycle_state = 'discarded' AND reason_class = 'job_discarded') OR
        (lifecycle_state = 'abandoned' AND reason_class = 'job_abandoned') OR
        (lifecycle_state = 'uncertain' AND reason_class = 'provider_acceptance_unknown') OR
        (lifecycle_state = 'legacy' AND reason_class = 'legacy_queued') OR
        (lifecycle_state = 'expired' AND reason_class IN ({_values(_REASON_CLASSES)}))),
    CONSTRAINT mailglass_outbound_payloads_claim_check
        CHECK ((lifecycle_state = 'dispatching') = (claimed_at IS NOT NULL)),
    CONSTRAINT mailglass_outbound_payloads_content_check CHECK (
        (lifecycle_state IN ('recoverable', 'dispatching', 'terminal', 'discarded', 'abandoned', 'uncertain')
            AND envelope IS NOT NULL) OR
        (lifecycle_state IN ('scrubbed', 'expired') AND envelope IS NULL) OR
        lifecycle_state = 'legacy')
"""

#: table -> body, in creation order (the payloads' foreign key needs deliveries first).
TABLE_BODIES = {
    "mailglass_deliveries": _DELIVERIES,
    "mailglass_events": _EVENTS,
    "mailglass_suppressions": _SUPPRESSIONS,
    "mailglass_webhook_events": _WEBHOOK_EVENTS,
    "mailglass_outbound_payloads": _OUTBOUND_PAYLOADS,
}

#: Mailglass's secondary indexes: name -> (table, "UNIQUE " or "", key and predicate).
INDEXES: dict[str, tuple[str, str, str]] = {
    "mailglass_deliveries_provider_msg_id_idx": (
        "mailglass_deliveries",
        "UNIQUE ",
        "(provider, provider_message_id) WHERE provider_message_id IS NOT NULL",
    ),
    "mailglass_deliveries_tenant_recent_idx": ("mailglass_deliveries", "", "(tenant_id, last_event_at DESC)"),
    "mailglass_deliveries_tenant_recipient_idx": ("mailglass_deliveries", "", "(tenant_id, recipient)"),
    "mailglass_deliveries_tenant_stream_terminal_idx": (
        "mailglass_deliveries",
        "",
        "(tenant_id, stream, terminal, last_event_at DESC)",
    ),
    "mailglass_deliveries_idempotency_key_unique_idx": (
        "mailglass_deliveries",
        "UNIQUE ",
        "(idempotency_key) WHERE idempotency_key IS NOT NULL",
    ),
    "mailglass_events_idempotency_key_idx": (
        "mailglass_events",
        "UNIQUE ",
        "(idempotency_key) WHERE idempotency_key IS NOT NULL",
    ),
    "mailglass_events_delivery_idx": (
        "mailglass_events",
        "",
        "(delivery_id, occurred_at) WHERE delivery_id IS NOT NULL",
    ),
    "mailglass_events_tenant_recent_idx": ("mailglass_events", "", "(tenant_id, inserted_at DESC)"),
    "mailglass_events_needs_reconcile_idx": (
        "mailglass_events",
        "",
        "(tenant_id, inserted_at) WHERE needs_reconciliation = true",
    ),
    "mailglass_events_deferred_window_idx": (
        "mailglass_events",
        "",
        "(tenant_id, delivery_id, occurred_at DESC) WHERE type = 'deferred' AND delivery_id IS NOT NULL",
    ),
    "mailglass_suppressions_tenant_address_scope_idx": (
        "mailglass_suppressions",
        "UNIQUE ",
        "(tenant_id, address, scope, COALESCE(stream, ''))",
    ),
    "mailglass_suppressions_tenant_address_idx": ("mailglass_suppressions", "", "(tenant_id, address)"),
    "mailglass_suppressions_expires_idx": ("mailglass_suppressions", "", "(expires_at) WHERE expires_at IS NOT NULL"),
    "mailglass_webhook_events_provider_event_id_idx": (
        "mailglass_webhook_events",
        "UNIQUE ",
        "(provider, provider_event_id)",
    ),
    "mailglass_webhook_events_tenant_status_idx": (
        "mailglass_webhook_events",
        "",
        "(tenant_id, status) WHERE status IN ('failed', 'dead')",
    ),
    "mailglass_outbound_payloads_delivery_id_idx": ("mailglass_outbound_payloads", "UNIQUE ", "(delivery_id)"),
    "mailglass_outbound_payloads_tenant_delivery_idx": ("mailglass_outbound_payloads", "", "(tenant_id, delivery_id)"),
    "mailglass_outbound_payloads_expires_at_idx": (
        "mailglass_outbound_payloads",
        "",
        "(expires_at) WHERE expires_at IS NOT NULL",
    ),
    "mailglass_outbound_payloads_state_expires_at_idx": (
        "mailglass_outbound_payloads",
        "",
        "(lifecycle_state, expires_at) WHERE expires_at IS NOT NULL",
    ),
}

#: Indexes an earlier release of this project created on Mailglass's tables, by the Mailglass index
#: each one duplicates (same table, same keys, same rows).
PROJECT_DUPLICATES = {
    "mailglass_deliveries_provider_message_id_index": "mailglass_deliveries_provider_msg_id_idx",
    "mailglass_deliveries_tenant_id_last_event_at_index": "mailglass_deliveries_tenant_recent_idx",
    "mailglass_deliveries_idempotency_key_index": "mailglass_deliveries_idempotency_key_unique_idx",
    "mailglass_events_idempotency_key_index": "mailglass_events_idempotency_key_idx",
    "mailglass_events_delivery_id_occurred_at_index": "mailglass_events_delivery_idx",
    "mailglass_events_needs_reconciliation_index": "mailglass_events_needs_reconcile_idx",
}

#: Mailglass's append-only guard, as its latest V01 defines it (schema-qualified, empty search_path).
RAISE_IMMUTABILITY = """
CREATE OR REPLACE FUNCTION {schema}.mailglass_raise_immutability()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
  RAISE SQLSTATE '45A01'
    USING MESSAGE = 'mailglass_events is append-only; UPDATE and DELETE are forbidden';
END;
$$
"""

IMMUTABLE_TRIGGER = """
CREATE TRIGGER mailglass_events_immutable_trigger
  BEFORE UPDATE OR DELETE ON {schema}.mailglass_events
  FOR EACH ROW EXECUTE FUNCTION {schema}.mailglass_raise_immutability()
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table: str, schema: str, citext: str) -> str:
    body = TABLE_BODIES[table].format(schema=quote_ident(schema), citext=citext)
    return f"CREATE TABLE IF NOT EXISTS {quote_ident(schema)}.{table} ({body})"


def create_index_sql(name: str, schema: str, *, concurrently: bool) -> str:
    table, unique, rest = INDEXES[name]
    how = "CONCURRENTLY " if concurrently else ""
    return f"CREATE {unique}INDEX {how}IF NOT EXISTS {name} ON {quote_ident(schema)}.{table} {rest}"


def stamp_sql(schema: str, version: int = MAILGLASS_VERSION) -> str:
    return f"COMMENT ON TABLE {quote_ident(schema)}.mailglass_events IS '{version}'"
