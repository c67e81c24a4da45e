"""Helpers for end-to-end tests: real worker processes (streams/runtime/launcher.py), a real producer, bounded
reads of output topics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.settings import Settings
from streams.contracts.state import MARKER_PREFIX, decode_state_record
from streams.runtime.kafka_io import make_producer, read_topic, send_all
from streams.runtime.launcher import REPO, WorkerProcess

__all__ = ["REPO", "WorkerProcess", "checkpoint_key", "collect", "produce", "restarted", "text_records",
           "wait_json"]


def checkpoint_key(record: RawRecord) -> str:
    """The checkpoint key (e.g. the stream id) of a state-topic record; "" for markers and tombstones. The
    record's Kafka key is <app id>/<checkpoint key> (streams/contracts/state.py)."""
    if not record.value or (record.key or b"").startswith(MARKER_PREFIX):
        return ""
    return decode_state_record(record.value).key


def produce(bootstrap: str, records: Iterable[OutRecord]) -> int:
    producer = make_producer(Settings(bootstrap=bootstrap), bootstrap)
    try:
        return send_all(producer, records)
    finally:
        producer.close()


def restarted(worker: WorkerProcess) -> WorkerProcess:
    """A fresh, unstarted process of the same app id (so the same consumer group and state), processors,
    settings and log directory, as a supervisor restarts a crashed worker; it gets a new web port (the dead
    one's may still be closing) and a new log file (the dead one's log stays for the failure message)."""
    return WorkerProcess(worker.bootstrap, worker.log_path.parent, processors=worker.processors,
                         app_id=worker.app_id, env=worker.env, args=worker.args, relay=worker.relay)


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


def wait_json(url: str, ready: Callable[[Any], Any], timeout_s: float = 60.0) -> Any:
    deadline, body = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read())
            if ready(body):
                return body
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout_s} s; last: {str(body)[:2000]}")
