"""The ingest's store statements stay cheap to send: one statement each, short enough for the driver's cache."""

from __future__ import annotations

import importlib

import pytest

from mailglass_pipeline.db import DRIVER_CACHED_QUERY_BYTES, compact
from mailglass_pipeline.ingest.core import store_statement
from mailglass_pipeline.ingest.grouped import group_statement


def test_store_statement_fits_the_driver_query_cache() -> None:
    # Longer, psycopg would convert its placeholders again on every webhook (about 250 us of CPU).
    # The transaction's statement leaves Mailgun's token to its own claim; the one-statement store claims it.
    for driver_text, claims_token in ((store_statement(), False), (group_statement(), True)):
        assert "%(rows)s" in driver_text and "%(webhooks)s" in driver_text
        assert ("INSERT INTO mailglass_webhook_tokens" in driver_text) is claims_token
        assert len(driver_text.encode("utf-8")) <= DRIVER_CACHED_QUERY_BYTES
    # The limit is psycopg's own; a psycopg release that changes it should be noticed here.
    queries = importlib.import_module("psycopg._queries")
    assert getattr(queries, "MAX_CACHED_STATEMENT_LENGTH", DRIVER_CACHED_QUERY_BYTES) == DRIVER_CACHED_QUERY_BYTES


def test_compact_refuses_comments() -> None:
    assert compact("SELECT  1\n  FROM t") == "SELECT 1 FROM t"
    # Spaces around commas and parentheses go, except inside literals.
    assert compact("SELECT f( a , 'x, ( y' ) , 'it''s ( z'") == "SELECT f(a,'x, ( y'),'it''s ( z'"
    with pytest.raises(ValueError):
        compact("SELECT 1 -- a comment\nFROM t")
