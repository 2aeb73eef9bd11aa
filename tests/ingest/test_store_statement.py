"""The receiver's store statements: one statement each, sent as PostgreSQL reads them, whatever their length."""

from __future__ import annotations

import sqlalchemy as sa

from mailglass_pipeline.db import RawStatement
from mailglass_pipeline.ingest.core import _STORE
from mailglass_pipeline.ingest.grouped import _STORE_GROUP
from mailglass_pipeline.queries import statement


def test_store_statements_are_sent_whole_with_native_placeholders() -> None:
    # psycopg's raw cursor sends $n placeholders untouched: no parse of the query per execution, so
    # the statements keep their comments and layout (psycopg caches its own conversion only under 4 kB).
    # The transaction's statement leaves Mailgun's token to its own claim; the one-statement store claims it.
    for raw, name, claims_token in ((_STORE, "store_webhook", False), (_STORE_GROUP, "store_webhooks_grouped", True)):
        assert raw == RawStatement.of(statement(name))
        assert {"rows", "webhooks", "webhooks_received_at"} <= set(raw.names)
        assert len(raw.names) == len(set(raw.names))
        for position, name_ in enumerate(raw.names, start=1):
            assert f"${position}" in raw.text, name_
        assert ":rows" not in raw.text and "%(" not in raw.text
        assert ("INSERT INTO mailglass_webhook_tokens" in raw.text) is claims_token
        # The projection is not a part of it: the caller runs statement project after it (projector.py).
        assert raw.text.startswith("-- ") and "UPDATE mailglass_deliveries" not in raw.text
    assert len(_STORE_GROUP.text.encode("utf-8")) > 4096  # no byte-length limit to stay under any more


def test_raw_statement_numbers_each_name_once_in_order() -> None:
    raw = RawStatement.of(sa.text("SELECT :a, CAST(:b AS int), :a, '50%' -- a comment\n"))
    assert raw.text == "SELECT $1, CAST($2 AS int), $1, '50%' -- a comment\n"
    assert raw.names == ("a", "b")
    assert raw.values({"b": 2, "a": 1, "unused": 3}) == (1, 2)
