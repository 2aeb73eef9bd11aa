"""Operator surprises, through the real `mailglass` command: the live demo race, the embedded-server notice."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from mailglass_pipeline.reconciliation.sweep import sweep
from mailglass_pipeline.settings import SweepConfig
from tests.factories import fetch
from tests.processes import MAILGLASS, mailglass


def test_demo_late_commits_deliveries_after_their_orphans(engine: Engine, database_url: str) -> None:
    proc = mailglass("demo", "--late", "--late-waves", "1,2", env={"MAILGLASS_DATABASE_URL": database_url})
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert made["orphans"] == 18 and made["late_deliveries"] == [9, 9]
    assert "deliveries follow in 2 wave(s)" in proc.stderr
    # Every late orphan's delivery committed after it (so a sweep before the waves could not link them)...
    [(later,)] = fetch(
        engine,
        """SELECT bool_and(d.inserted_at > e.inserted_at) FROM mailglass_events e
             JOIN mailglass_deliveries d ON d.provider_message_id = e.metadata ->> 'provider_message_id'
            WHERE e.needs_reconciliation AND d.provider_message_id LIKE '%-late-%'""",
    )
    assert later is True
    # ... and is now linkable: the next sweep past grace links them all.
    result = sweep(engine, None, SweepConfig(grace_seconds=0))
    assert result.linked == 18 and result.lag_seconds is not None


@pytest.mark.process
def test_a_command_that_starts_the_embedded_server_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAILGLASS_DATABASE_URL"}
    env["MAILGLASS_HOME"] = str(tmp_path / "home")
    try:
        first = subprocess.run([MAILGLASS, "migrate"], env=env, capture_output=True, text=True, timeout=180)
        assert first.returncode == 0, first.stderr
        assert "started the embedded PostgreSQL" in first.stderr and "mailglass stop" in first.stderr
        again = subprocess.run([MAILGLASS, "reconcile"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "started the embedded" not in again.stderr  # already running: no notice
    finally:
        subprocess.run([MAILGLASS, "stop"], env=env, capture_output=True, timeout=60)
