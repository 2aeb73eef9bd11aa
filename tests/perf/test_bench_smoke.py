"""Smoke test of the benchmark command: quick mode runs end to end and prints every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

EXPECTED_LINES = (
    "throughput: linked orphans/s",
    "history: one sweep",
    "memory: ",
    "tick: tenants_with_due_orphans",
    "dagster: ",
    "targets:",
    "postgresql: PostgreSQL",
    "plot: ",
)


@pytest.mark.slow
def test_quick_benchmark_prints_figures_and_writes_the_plot(admin_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # The benchmark's Dagster figure uses an ephemeral instance, never whatever Dagster home this process has.
    env.pop("DAGSTER_HOME", None)
    env.pop("MAILGLASS_DAGSTER_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep", "--quick", "--database-url", admin_url, "--output-dir", tmp_path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for expected in EXPECTED_LINES:
        assert expected in done.stdout, f"missing {expected!r} in:\n{done.stdout}"
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"throughput", "history", "memory", "tick", "dagster", "targets"} <= results.keys()
    png = tmp_path / "sweep_vs_history.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prefix = results["machine"]["scratch_prefix"]
    assert not [name for name in _databases(admin_url) if name.startswith(prefix)], "scratch databases left behind"


def _databases(admin_url: str) -> list[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()
