"""Shared fixtures. The embedded broker is started once per test session, on a free port, only when an
integration test asks for it; unit tests never touch Kafka."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from streams.contracts.settings import Settings
    from streams.runtime.embedded import EmbeddedBroker
    from streams.runtime.kafka_io import ensure_topics

    log = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker(log_path=log) as embedded:
        ensure_topics(Settings(bootstrap=embedded.bootstrap), embedded.bootstrap)
        yield embedded.bootstrap
