"""Server-side bulk loaders: every data set is one or a few ``INSERT ... SELECT generate_series``.

Loading from Python row by row would make setup dominate the run (a million
reconciled orphans plus their ``reconciled`` events must load in well under a
minute). Ids and keys are derived from md5 of a label, so two loads with the
same arguments produce identical rows.

Shapes:

* **matchable orphans** (throughput, memory, Dagster): per tenant, ``n``
  deliveries with a message id each and one orphan per delivery carrying
  ``{"provider", "provider_message_id", "provider_event_id"}`` in its
  metadata, inserted 10 minutes ago or earlier (past the 60 s grace, inside
  the 7-day window). Providers rotate through the five supported ones.
* **reconciled history**: orphans spread over the 7-day window *and* their
  ``reconciled`` events (``idempotency_key = 'reconciled:' || orphan id``,
  metadata ``reconciled_from_event_id``), in one statement, so the queue
  trigger adds and removes their queue rows as it does in production.
* **due tenants**: a few pending orphans for each of thousands of tenants.

Everything goes through the ledger's own triggers: the work queue is filled by
``mailglass_track_orphans``, never written here.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

PROVIDERS = ("postmark", "sendgrid", "mailgun", "ses", "resend")
ORPHAN_TYPES = ("delivered", "opened", "clicked", "bounced")
_PROVIDER_ARRAY = "ARRAY[" + ", ".join(f"'{p}'" for p in PROVIDERS) + "]"
_TYPE_ARRAY = "ARRAY[" + ", ".join(f"'{t}'" for t in ORPHAN_TYPES) + "]"

_DELIVERIES = sa.text(
    f"""
    INSERT INTO mailglass_deliveries
        (id, tenant_id, mailable, stream, recipient, recipient_domain, provider, provider_message_id,
         last_event_type, last_event_at, dispatched_at, status, inserted_at, updated_at)
    SELECT md5('d:' || :label || ':' || t.tenant || ':' || g)::uuid, t.tenant, 'Mailer.welcome', 'transactional',
           'user' || g || '@' || t.tenant || '.example', t.tenant || '.example',
           ({_PROVIDER_ARRAY})[1 + g % 5], :label || '-' || t.tenant || '-' || g,
           'dispatched', now() - interval '2 hours', now() - interval '2 hours', 'sent',
           now() - interval '2 hours', now() - interval '2 hours'
      FROM unnest(CAST(:tenants AS text[])) AS t(tenant), generate_series(1, CAST(:n AS integer)) AS g
    """
)

_ORPHANS = sa.text(
    f"""
    INSERT INTO mailglass_events
        (id, tenant_id, type, occurred_at, idempotency_key, metadata, needs_reconciliation, inserted_at)
    SELECT md5('o:' || :label || ':' || t.tenant || ':' || g)::uuid, t.tenant, ({_TYPE_ARRAY})[1 + g % 4], x.at,
           'bench:o:' || :label || ':' || t.tenant || ':' || g,
           jsonb_build_object('provider', ({_PROVIDER_ARRAY})[1 + g % 5],
                              'provider_message_id', :label || '-' || t.tenant || '-' || g,
                              'provider_event_id', 'evt-' || :label || '-' || t.tenant || '-' || g),
           true, x.at
      FROM unnest(CAST(:tenants AS text[])) AS t(tenant), generate_series(1, CAST(:n AS integer)) AS g,
           LATERAL (SELECT now() - make_interval(secs => CAST(:newest_age_s AS integer))
                           - g * interval '10 milliseconds' AS at) AS x
    """
)

#: 7 days minus an hour of margin, so history never ages out during a run.
_HISTORY_SPAN_S = 7 * 24 * 3600 - 3600

_HISTORY = sa.text(
    f"""
    WITH h AS (
        SELECT g, md5('h:' || :tenant || ':' || g)::uuid AS orphan_id,
               now() - interval '10 minutes' - make_interval(secs => (g % 1000003) * CAST(:spacing_s AS float8)) AS at
          FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g
    )
    INSERT INTO mailglass_events
        (id, tenant_id, delivery_id, type, occurred_at, idempotency_key, metadata, needs_reconciliation, inserted_at)
    SELECT orphan_id, :tenant, NULL, ({_TYPE_ARRAY})[1 + g % 4], at, 'bench:h:' || :tenant || ':' || g,
           jsonb_build_object('provider', ({_PROVIDER_ARRAY})[1 + g % 5],
                              'provider_message_id', 'hist-' || :tenant || '-' || g,
                              'provider_event_id', 'evt-hist-' || :tenant || '-' || g),
           true, at
      FROM h
    UNION ALL
    SELECT md5('r:' || :tenant || ':' || g)::uuid, :tenant, md5('hd:' || :tenant || ':' || g)::uuid, 'reconciled',
           at + interval '1 minute', 'reconciled:' || orphan_id,
           jsonb_build_object('reconciled_from_event_id', orphan_id::text,
                              'reconciled_provider', ({_PROVIDER_ARRAY})[1 + g % 5],
                              'reconciled_provider_event_id', 'evt-hist-' || :tenant || '-' || g,
                              'reconciled_event_type', ({_TYPE_ARRAY})[1 + g % 4]),
           false, at + interval '1 minute'
      FROM h
    """
)


def load_matchable(conn: Connection, tenants: list[str], per_tenant: int, label: str, newest_age_s: int = 600) -> None:
    """``per_tenant`` deliveries and one matching orphan each, for every tenant in ``tenants``."""
    params = {"tenants": tenants, "n": per_tenant, "label": label}
    conn.execute(_DELIVERIES, params)
    conn.execute(_ORPHANS, {**params, "newest_age_s": newest_age_s})


def load_orphans_only(
    conn: Connection, tenants: list[str], per_tenant: int, label: str, newest_age_s: int = 600
) -> None:
    """Pending orphans with no delivery (the schedule's tick only looks at the queue)."""
    conn.execute(_ORPHANS, {"tenants": tenants, "n": per_tenant, "label": label, "newest_age_s": newest_age_s})


def load_history(engine: Engine, tenant: str, first: int, last: int, chunk: int = 250_000) -> None:
    """Reconciled orphans ``first..last`` (inclusive) of ``tenant`` plus their reconciled events.

    Spread evenly over the 7-day window (by position in a 1M range), older than
    the pending orphans the benchmark adds later. Chunked so each statement's
    transition table stays moderate.
    """
    spacing = _HISTORY_SPAN_S / 1_000_003
    for start in range(first, last + 1, chunk):
        stop = min(start + chunk - 1, last)
        with engine.begin() as conn:
            conn.execute(_HISTORY, {"tenant": tenant, "first": start, "last": stop, "spacing_s": spacing})


def vacuum_analyze(engine: Engine, *tables: str) -> None:
    """VACUUM ANALYZE (outside a transaction): the steady state autovacuum keeps in production."""
    targets = ", ".join(tables) if tables else ""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text(f"VACUUM ANALYZE {targets}"))


def analyze(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))
