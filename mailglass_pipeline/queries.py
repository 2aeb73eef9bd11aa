"""A tiny registry of named SQL statements kept in ``mailglass_pipeline/sql/*.sql``.

SQL reads best as SQL: one file per feature, one commented block per statement,
each opened by a line ``-- name: <name>``. The comment lines after it say what
the statement is for; they stay in the text (PostgreSQL ignores them, and a
``pg_stat_statements`` reader sees them). Loaded once per file.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def load(filename: str) -> dict[str, str]:
    """``{name: sql}`` of the blocks in ``sql/<filename>`` (the text before the first name is its header)."""
    text = resources.files("mailglass_pipeline").joinpath(f"sql/{filename}").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    blocks = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    if len(blocks) != len(parts[1::2]):
        raise ValueError(f"sql/{filename}: a statement name is used twice")
    return blocks
