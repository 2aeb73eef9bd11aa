"""Ids of the rows the product writes into Mailglass's tables: UUIDv7, as Mailglass's own (its decision D-28).

Time-ordered (48 bits of Unix milliseconds first), so a reader ordering the ledger by id finds the
product's rows where their time puts them, not at random places as UUIDv4 would (decision D27). The
SQL side is migration 0006's ``mailglass_reconciliation_uuidv7()``.
"""

from __future__ import annotations

import uuid

from uuid6 import uuid7


def new_id() -> uuid.UUID:
    """A fresh UUIDv7 (monotonic within the process), as a plain :class:`uuid.UUID`."""
    return uuid.UUID(int=uuid7().int)
