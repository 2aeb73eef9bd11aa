"""Decision D12 (docs/decisions.md): the domain core imports and runs without Dagster."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "mailglass_pipeline",
    "mailglass_pipeline.db",
    "mailglass_pipeline.schema",
    "mailglass_pipeline.ledger",
    "mailglass_pipeline.projector",
    "mailglass_pipeline.deliveries",
    "mailglass_pipeline.reconciler",
    "mailglass_pipeline.reconcile",
    "mailglass_pipeline.drain",
    "mailglass_pipeline.queries",
    "mailglass_pipeline.ingest",
]


def test_core_modules_load_no_dagster() -> None:
    # A fresh interpreter: this test process has Dagster loaded already.
    probe = "; ".join(
        [
            *(f"import {name}" for name in CORE_MODULES),
            "import sys",
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"the core pulled in Dagster modules: {out[:300]}"
