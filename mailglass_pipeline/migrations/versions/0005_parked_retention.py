"""Parked queue rows in age order, for the orphan listing and the parked-row retention.

Revision ID: 0005_parked_retention
Revises: 0003_due_orphans
Create Date: 2026-12-03

Rows parked in ``mailglass_reconciliation_queue`` (``stale``: past max age;
``malformed``: no provider or message id) are removed after
``MAILGLASS_PARKED_RETENTION_DAYS`` (``orphans.prune_parked``), and
``mailglass orphans --state stale|malformed`` lists them oldest first across
tenants. The parked index of 0001 leads with ``tenant_id``, so both would read
every parked row of every tenant; this one reads them per reason in age order
and stops at the batch or the limit. Queue only: the ledger is untouched.
"""

from __future__ import annotations

from alembic import op

revision = "0005_parked_retention"
down_revision = "0003_due_orphans"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS mailglass_reconciliation_queue_parked_age_index"
        " ON mailglass_reconciliation_queue (parked_reason, orphan_inserted_at) WHERE parked_at IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS mailglass_reconciliation_queue_parked_age_index")
