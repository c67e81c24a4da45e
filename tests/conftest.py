"""Shared fixtures. The embedded broker is started once per test session, on a free port, only when an
integration test asks for it; unit tests never touch Kafka."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from models import model_store
from streams.contracts.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Models loaded in the test process honour STREAMSENSE_MODEL_DIR as a `streamsense` process does: via Settings.
model_store.configure(Settings.from_env().model_dir)


@contextmanager
def embedded_broker(directory: Path, partitions: int = Settings.partitions) -> Iterator[str]:
    """A Tansu broker on a free port with every topic created (data topics with ``partitions``); yields its
    bootstrap address."""
    from streams.runtime.embedded import EmbeddedBroker
    from streams.runtime.kafka_io import ensure_topics

    with EmbeddedBroker(log_path=directory / "tansu.log", tansu_bin=Settings.from_env().tansu_bin) as embedded:
        ensure_topics(Settings(bootstrap=embedded.bootstrap, partitions=partitions), embedded.bootstrap)
        yield embedded.bootstrap


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_broker(Path(tmp_path_factory.mktemp("broker"))) as bootstrap:
        yield bootstrap


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[str]:
    """A broker of the test's own, for tests whose new consumer groups must not read other tests' history
    (a new group starts at the beginning of its topics)."""
    with embedded_broker(tmp_path) as bootstrap:
        yield bootstrap
