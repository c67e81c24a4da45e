"""Dead letters: what a processor emits instead of crashing or dropping an input it cannot process.

A dead letter carries the original bytes (base64, so any payload survives JSON), where the input came
from (topic/partition/offset — enough to find it again or replay it), which processor gave up and why.
Its id is derived from topic/partition/offset, so a replay after a crash writes the same dead letter again
rather than a new one: consumers of `deadletter` dedupe on `id` like every other topic.
"""

from __future__ import annotations

import base64
from typing import Any

from streams import topics
from streams.records import OutRecord, RawRecord
from streams.schemas import decode_json_object, encode, now_ms, schema_id

PREVIEW_CHARS = 200


def dead_letter_id(record: RawRecord) -> str:
    return f"{record.topic}:{record.partition}:{record.offset}"


def dead_letter_event(record: RawRecord, *, processor: str, reason: str, error: str) -> dict[str, Any]:
    value = record.value or b""
    return {
        "id": dead_letter_id(record),
        "ts": now_ms(),
        "schema": schema_id(topics.DEADLETTER),
        "processor": processor,
        "error": error,
        "reason": reason,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp_ms,
            "key_b64": None if record.key is None else base64.b64encode(record.key).decode("ascii"),
            "headers": [[k, base64.b64encode(v or b"").decode("ascii")] for k, v in record.headers],
        },
        "value_b64": base64.b64encode(value).decode("ascii"),
        "value_preview": value[:PREVIEW_CHARS].decode("utf-8", errors="replace"),
    }


def dead_letter(record: RawRecord, *, processor: str, reason: str, error: str = "SchemaError") -> OutRecord:
    event = dead_letter_event(record, processor=processor, reason=reason, error=error)
    return OutRecord(
        topic=topics.DEADLETTER,
        key=record.key if record.key is not None else event["id"].encode(),
        value=encode(event),
        headers=(("processor", processor.encode()), ("error", error.encode())),
    )


def original_bytes(dead_letter_value: bytes) -> bytes:
    """Recover the original message bytes from a dead letter (for replay tools and tests)."""
    return base64.b64decode(decode_json_object(dead_letter_value)["value_b64"])
