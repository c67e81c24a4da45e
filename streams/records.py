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
