"""Transport-neutral record types: what a processor receives and what it returns.

Processors are functions of a batch of `RawRecord` to a list of `OutRecord`; the Kafka/Faust side
converts to and from these. That seam keeps every processor testable without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed Kafka message, bytes untouched."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One message to produce. `partition`: None lets the key decide; a number pins the output to that
    partition (modulo the topic's count), which is how a processor keeps its inputs' partition order."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    partition: int | None = None
    # The input this output answers, if one does: an output that can never be delivered (over the message
    # limit, rejected by the broker) becomes a dead letter of this input, so nothing is dropped silently.
    source: RawRecord | None = field(default=None, compare=False, repr=False)


# Upper bound of a record's framing in a Kafka v2 record batch (batch header 61 + record overhead 21 + varints).
RECORD_OVERHEAD_BYTES = 128


def record_size(record: OutRecord) -> int:
    """An upper bound of the bytes the record takes in a produce request, as producers check it against
    max.request.size (aiokafka's estimate is smaller, so a record within this bound is never refused)."""
    headers = sum(len(k.encode()) + len(v or b"") + 10 for k, v in record.headers)
    return RECORD_OVERHEAD_BYTES + len(record.key or b"") + len(record.value) + headers
