"""Fixtures of the ingest tests: keys that sign requests and the settings that verify them."""

from __future__ import annotations

import pytest

from mailglass_pipeline.ingest import IngestSettings
from mailglass_pipeline.ingest.samples import SampleKeys, generate_keys


@pytest.fixture(scope="session")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleKeys, IngestSettings]:
    """Keys that sign requests and the settings that verify them (SNS certificate in a temp dir)."""
    return generate_keys(tmp_path_factory.mktemp("sns-certs"))


@pytest.fixture(scope="session")
def keys(signing: tuple[SampleKeys, IngestSettings]) -> SampleKeys:
    return signing[0]


@pytest.fixture(scope="session")
def settings(signing: tuple[SampleKeys, IngestSettings]) -> IngestSettings:
    return signing[1]
