"""Dead letters: what a processor emits instead of crashing or dropping an input it cannot process.

A dead letter carries the original bytes (base64, so any payload survives JSON), where the input came
from (topic/partition/offset — enough to find it again or replay it), which processor gave up and why.
Its id is derived from topic/partition/offset, so a replay after a crash writes the same dead letter again
rather than a new one: consumers of `deadletter` dedupe on `id` like every other topic.

A dead letter must itself be deliverable, or the input it stands for would stall its partition forever:
base64 makes it ~1.33x its input, so an input near the broker's message limit would give a dead letter over
it. Every dead letter therefore fits ``max_bytes``: when the original does not, it keeps a prefix, and always
carries the original's size and sha256, so the input can still be identified and fetched from its source.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord, record_size
from streams.contracts.schemas import decode_json_object, encode, now_ms, schema_id

PREVIEW_CHARS = 200
MAX_REASON_CHARS = 2000
MAX_KEY_BYTES = 1024  # a longer original key is kept in source.key_b64 (when it fits), not as the Kafka key
# Kafka's producer default (max.request.size); the broker's message.max.bytes default is 1,048,588.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576


def dead_letter_id(record: RawRecord) -> str:
    if record.offset < 0:  # an output that could not be delivered: it has no offset of its own
        digest = hashlib.sha256(record.value or b"").hexdigest()[:16]
        return f"{record.topic}:undelivered:{digest}"
    return f"{record.topic}:{record.partition}:{record.offset}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dead_letter_event(record: RawRecord, *, processor: str, reason: str, error: str) -> dict[str, Any]:
    value = record.value or b""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"... [{len(reason) - MAX_REASON_CHARS} more characters]"
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
            "key_b64": None if record.key is None else _b64(record.key),
            "headers": [[k, _b64(v or b"")] for k, v in record.headers],
        },
        "value_bytes": len(value),
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "truncated": False,
        "value_b64": _b64(value),
        "value_preview": value[:PREVIEW_CHARS].decode("utf-8", errors="replace"),
    }


def _dead_letter_record(event: dict[str, Any], key: bytes | None, source: RawRecord | None) -> OutRecord:
    if key is None or len(key) > MAX_KEY_BYTES:
        key = event["id"].encode()
    return OutRecord(
        topic=topics.DEADLETTER,
        key=key,
        value=encode(event),
        headers=(("processor", event["processor"].encode()), ("error", event["error"].encode())),
        source=source,
    )


def fit(event: dict[str, Any], key: bytes | None, max_bytes: int, source: RawRecord | None = None) -> OutRecord:
    """The dead letter for ``event``, shrunk until it fits ``max_bytes``: first the original value is cut to a
    prefix, then the original headers and key are dropped (size and sha256 of the value always stay)."""
    out = _dead_letter_record(event, key, source)
    if record_size(out) <= max_bytes:
        return out
    original = base64.b64decode(event["value_b64"])
    reason = event["reason"]
    event = {**event, "value_b64": "", "truncated": True,
             "value_preview": original[:PREVIEW_CHARS].decode("utf-8", errors="replace")}
    dropped: list[str] = []

    def noted(kept: int) -> dict[str, Any]:
        note = (f" [dead letter truncated to fit the {max_bytes}-byte message limit: kept the first {kept} of "
                f"{len(original)} bytes of the original value"
                + (f"; dropped source {' and '.join(dropped)}" if dropped else "")
                + "; value_sha256 identifies the original]")
        return {**event, "reason": reason + note}

    def room() -> int:  # bytes of the original that still fit (base64: 4 characters per 3 bytes)
        overhead = record_size(_dead_letter_record(noted(len(original)), key, source))
        return (max_bytes - overhead) // 4 * 3

    for drop in ("headers", "key_b64"):
        if room() > 0:
            break
        event["source"] = {**event["source"], drop: None}
        dropped.append(drop)
    kept = original[: max(0, room())]
    event = {**noted(len(kept)), "value_b64": _b64(kept)}
    out = _dead_letter_record(event, key, source)
    if record_size(out) > max_bytes:  # only a limit far below any real broker's gets here
        raise ValueError(f"a dead letter cannot fit in {max_bytes} bytes (it needs {record_size(out)})")
    return out


def dead_letter(
    record: RawRecord,
    *,
    processor: str,
    reason: str,
    error: str = "SchemaError",
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> OutRecord:
    event = dead_letter_event(record, processor=processor, reason=reason, error=error)
    return fit(event, record.key, max_bytes, source=record)


def refit(out: OutRecord, max_bytes: int) -> OutRecord:
    """A dead letter built for a larger limit, shrunk to ``max_bytes`` (the runtime's configured limit)."""
    return fit(decode_json_object(out.value), out.key, max_bytes, source=out.source)


def original_bytes(dead_letter_value: bytes) -> bytes:
    """Recover the original message bytes from a dead letter (for replay tools and tests); a truncated dead
    letter gives its prefix only (``truncated`` is true, ``value_bytes`` and ``value_sha256`` describe the whole)."""
    return base64.b64decode(decode_json_object(dead_letter_value)["value_b64"])
