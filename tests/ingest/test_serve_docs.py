"""The curl examples of docs/ingest.md, run as written against a real ``mailglass serve``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from mailglass_pipeline.ingest import IngestSettings
from tests.factories import count_events
from tests.processes import run_receiver, secrets_env

REPO = Path(__file__).resolve().parents[2]
DEFAULT = "127.0.0.1:8025"


def curl_blocks(path: Path) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [block for block in blocks if block.lstrip().startswith("curl")]


def test_docs_curl_examples_run(database_url: str, engine: Engine, settings: IngestSettings, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    blocks = curl_blocks(REPO / "docs" / "ingest.md")
    assert len(blocks) == 2, "docs/ingest.md: the examples this test runs moved"
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # A fresh clone of this commit: the files the examples name must be in the repository, as written.
    work = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True, timeout=120)
    with run_receiver(database_url, secrets_env(settings), tmp_path, "--workers", "1") as receiver:
        env = {**os.environ, **secrets_env(settings)}
        outputs = []
        for block in blocks:
            script = block.replace(DEFAULT, f"127.0.0.1:{receiver.port}")
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
            outputs.append(done.stdout)
    assert '"status": "ok"' in outputs[0] and '"events": 1' in outputs[0]
    assert 'provider="postmark",status="200"} 1.0' in outputs[0]
    assert outputs[1].split() == ["401", "400"]
    assert count_events(engine, "acme") == 1
