"""Helpers for end-to-end tests: real worker processes, a real producer, bounded reads of output topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.settings import Settings
from streams.runtime.embedded import free_port
from streams.runtime.kafka_io import make_producer, read_topic, send_all

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`streamsense run` in a child process, its output in a log file the test can show on failure."""

    def __init__(self, bootstrap: str, log_dir: Path, *, processors: str = "text", app_id: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id or f"test-{uuid.uuid4().hex[:8]}"
        self.processors = processors
        self.log_path = log_dir / f"{self.app_id}-{uuid.uuid4().hex[:4]}.log"
        self.env = {**os.environ, "STREAMSENSE_APP_ID": self.app_id, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        cmd = [sys.executable, "-m", "streams.cli", "run", "--processors", self.processors,
               "--bootstrap", self.bootstrap, "--web-port", str(free_port()), "--log-level", "info"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not in worker log after {timeout_s} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            tail = self.log()[-3000:]
            raise AssertionError(f"worker did not stop within {timeout_s} s on SIGTERM:\n{tail}") from None


def produce(bootstrap: str, records: Iterable[OutRecord]) -> int:
    producer = make_producer(Settings(bootstrap=bootstrap), bootstrap)
    try:
        return send_all(producer, records)
    finally:
        producer.close()


def text_records(texts: Iterable[str], prefix: str) -> list[OutRecord]:
    events = [text_in_event(t, event_id=f"{prefix}-{i:04d}", source="test") for i, t in enumerate(texts)]
    return [OutRecord(topics.TEXT_IN, e["id"].encode(), encode(e)) for e in events]


def collect(bootstrap: str, topic: str | list[str], want: int, *, match: str, timeout_s: float = 120.0,
            worker: WorkerProcess | None = None) -> list[dict]:
    """Read events whose `id` (or dead letter preview) contains `match` until `want` distinct ids arrived."""
    seen: dict[str, dict] = {}
    died = (lambda: worker.proc is not None and worker.proc.poll() is not None) if worker else None
    for rec in read_topic(Settings(bootstrap=bootstrap), bootstrap, topic, timeout_s=timeout_s,
                          stop=lambda _r: len(seen) >= want, abort=died):
        event = json.loads(rec.value or b"{}")
        key = event.get("id", "")
        if match in key or match in event.get("value_preview", ""):
            event["_topic"], event["_partition"], event["_offset"] = rec.topic, rec.partition, rec.offset
            seen[key] = event
    assert len(seen) >= want, (
        f"only {len(seen)}/{want} events matching {match!r} on {topic}"
        + (f"; worker log:\n{worker.log()[-3000:]}" if worker else "")
    )
    return list(seen.values())
