"""Webhook ingest: single-use tokens of providers whose signature does not cover the body.

Revision ID: 0002_ingest
Revises: 0001_ledger
Create Date: 2026-11-28

Mailgun signs only ``timestamp + token``: without remembering tokens, a
captured signature block could be pasted onto any event within the 300 s
tolerance. ``mailglass_webhook_tokens`` remembers each token with the body's
SHA-256 and the tenant, so a replay with another body or for another tenant is
refused while the provider's own redelivery stays an idempotent duplicate.
It is a small mutable side table (the ledger stays append-only); rows older
than the tolerance window are useless and the ingest prunes them.
"""

from __future__ import annotations

from alembic import op

revision = "0002_ingest"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS mailglass_webhook_tokens (
            provider     text NOT NULL,
            token        text NOT NULL,
            tenant_id    text NOT NULL,
            body_sha256  text NOT NULL,
            seen_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (provider, token)
        );
        CREATE INDEX IF NOT EXISTS mailglass_webhook_tokens_seen_at_index
            ON mailglass_webhook_tokens (seen_at);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS mailglass_webhook_tokens")
