"""Broker faults a worker must ride out without a person: a broker that is not up yet when the worker starts."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from streams.contracts import topics
from streams.contracts.settings import Settings
from streams.runtime.embedded import EmbeddedBroker, free_port
from tests.integration.harness import WorkerProcess, collect, produce, text_records

pytestmark = pytest.mark.integration


def test_a_worker_started_before_its_broker_waits_with_backoff_then_works(tmp_path: Path) -> None:
    """The worker finds no broker, says so and retries (STREAMSENSE_BROKER_WAIT_S, backoff); the broker comes
    up 6 s later on that address; the worker joins, creates its topics and enriches what is sent."""
    bootstrap = f"127.0.0.1:{free_port()}"
    worker = WorkerProcess(bootstrap, tmp_path, env={"STREAMSENSE_BROKER_WAIT_S": "120"}).start()
    try:
        worker.wait_for_log(f"no Kafka broker answers at {bootstrap} yet (attempt 1)", timeout_s=60)
        time.sleep(6)
        host, _, port = bootstrap.rpartition(":")
        with EmbeddedBroker(int(port), host, log_path=tmp_path / "tansu.log",
                            tansu_bin=Settings.from_env().tansu_bin):
            worker.wait_ready(timeout_s=180)
            assert f"broker at {bootstrap} answers" in worker.log()
            prefix = f"late-{uuid.uuid4().hex[:6]}"
            produce(bootstrap, text_records([f"Text {i}: Alice met Bob in Paris" for i in range(20)], prefix))
            out = collect(bootstrap, topics.TEXT_ENRICHED, 20, match=prefix, worker=worker, timeout_s=120)
            assert {e["id"] for e in out} == {f"{prefix}-{i:04d}" for i in range(20)}
            assert worker.stop() == 0
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()
