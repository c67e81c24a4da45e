"""Delivering a batch's outputs: every output reaches the broker, or becomes a dead letter that does, or the
worker stops before the batch's offsets are committed.

Two kinds of failure need opposite answers:

* **transient** (broker unreachable, timeouts after the client's retries, leadership moving): the same record
  will go through later, so the worker fail-stops (``on_fatal``) without acking the batch; the restarted
  worker reprocesses it — at-least-once, nothing lost;
* **permanent** for one record (over the message limit, rejected as invalid or corrupt): retrying can never
  succeed, so fail-stop would turn one record into a crash loop that stalls its partition (a poison pill). That
  record is replaced by a dead letter of the input it answers (``OutRecord.source``) and the batch completes.

Oversized records are caught before they are sent (``record_size`` against ``max_message_bytes``, the
producer's max.request.size and the broker's message.max.bytes), and a broker that refuses one anyway (its
limit is lower than ours) is handled by the permanent-error path. Transport-neutral: the caller passes
``send(record)`` returning an awaitable of the broker's acknowledgement, so this is unit-tested without Kafka.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, NoReturn

from streams.contracts import topics
from streams.contracts.deadletter import dead_letter, refit
from streams.contracts.records import OutRecord, RawRecord, record_size

log = logging.getLogger(__name__)

# Kafka error classes (by name, so aiokafka's and kafka-python's both match) that one record's retry can never
# fix. Anything else — timeouts, unreachable brokers, authorization, unknown errors — is treated as transient.
PERMANENT_ERRORS = frozenset({
    "MessageSizeTooLargeError",
    "RecordTooLargeError",
    "RecordListTooLargeError",
    "InvalidRecordError",
    "CorruptRecordException",
    "CorruptRecordError",
    "InvalidTimestampError",
    "UnsupportedForMessageFormatError",
})

Send = Callable[[OutRecord], Awaitable[Awaitable[Any]]]
Refused = tuple[OutRecord, BaseException]


class DeliveryFailed(RuntimeError):
    """A transient failure: the batch must not be acked (the runtime exits so it is reprocessed)."""


def is_permanent(exc: BaseException) -> bool:
    return any(cls.__name__ in PERMANENT_ERRORS for cls in type(exc).__mro__)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Delivery:
    """Delivers outputs in two waves: the batch's outputs, then its state checkpoints (``checkpoint_topics``),
    so a checkpoint never overtakes outputs it accounts for. Returns what was delivered, replacements included."""

    def __init__(
        self,
        send: Send,
        *,
        processor: str,
        max_message_bytes: int,
        checkpoint_topics: Collection[str] = (),
        on_fatal: Callable[[DeliveryFailed], NoReturn] | None = None,
    ) -> None:
        self._send = send
        self.processor = processor
        self.max_message_bytes = max_message_bytes
        self.checkpoint_topics = frozenset(checkpoint_topics)
        self._on_fatal = on_fatal

    async def deliver(self, outputs: Sequence[OutRecord]) -> list[OutRecord]:
        try:
            fitted = [self._fit(o) for o in outputs]
            first = await self._deliver_wave([o for o in fitted if o.topic not in self.checkpoint_topics])
            return first + await self._deliver_wave([o for o in fitted if o.topic in self.checkpoint_topics])
        except DeliveryFailed as exc:
            if self._on_fatal is None:
                raise
            self._on_fatal(exc)

    def _fit(self, out: OutRecord) -> OutRecord:
        size = record_size(out)
        if size <= self.max_message_bytes:
            return out
        if out.topic == topics.DEADLETTER:
            return refit(out, self.max_message_bytes)
        return self.replacement(out, f"{size} bytes, over the {self.max_message_bytes}-byte message limit "
                                     "(STREAMSENSE_MAX_MESSAGE_BYTES)", "RecordTooLarge")

    def replacement(self, out: OutRecord, why: str, error: str) -> OutRecord:
        """The dead letter standing in for ``out``: of its input when it has one, else of the output itself
        (a periodic tick's output answers no input; its intended topic is kept as the source topic)."""
        reason = f"output to {out.topic!r} could not be delivered: {why}"
        log.error("%s: %s", self.processor, reason)
        record = out.source or RawRecord(out.topic, -1 if out.partition is None else out.partition, -1,
                                         out.key, out.value, None, out.headers)
        return dead_letter(record, processor=self.processor, reason=reason, error=error,
                           max_bytes=self.max_message_bytes)

    async def _deliver_wave(self, outputs: list[OutRecord]) -> list[OutRecord]:
        delivered, refused = await self._send_all(outputs)
        for stand_in in (self._stand_in, self._bare):  # a dead letter per refused record; if refused, a bare one
            if not refused:
                break
            ok, refused = await self._send_all([stand_in(o, e) for o, e in refused])
            delivered += ok
        if refused:
            raise DeliveryFailed(f"{len(refused)} dead letter(s) refused too, last: {describe(refused[-1][1])}")
        return delivered

    def _stand_in(self, out: OutRecord, exc: BaseException) -> OutRecord:
        if out.topic == topics.DEADLETTER:  # the broker's limit is below ours: keep no original bytes
            return self._bare(out, exc)
        return self.replacement(out, describe(exc), type(exc).__name__)

    def _bare(self, out: OutRecord, exc: BaseException) -> OutRecord:
        """A dead letter that keeps no original bytes, key or headers: only where the input was and why."""
        source = out.source or RawRecord(out.topic, -1, -1, None, out.value)
        value = source.value or b""
        reason = (f"output to {out.topic!r} refused by the broker ({describe(exc)}); its dead letter keeps no "
                  f"original bytes (original value: {len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()})")
        log.error("%s: %s", self.processor, reason)
        bare = RawRecord(source.topic, source.partition, source.offset, None, b"", source.timestamp_ms)
        return dead_letter(bare, processor=self.processor, reason=reason, error=type(exc).__name__,
                           max_bytes=self.max_message_bytes)

    async def _send_all(self, outputs: list[OutRecord]) -> tuple[list[OutRecord], list[Refused]]:
        """Send everything, then wait for every acknowledgement; split into delivered and permanently refused.
        A transient failure raises DeliveryFailed."""
        sent: list[tuple[OutRecord, Awaitable[Any]]] = []
        refused: list[Refused] = []
        for out in outputs:
            try:
                sent.append((out, await self._send(out)))
            except Exception as exc:  # classified right below
                self._classify(out, exc, refused)
        results = await asyncio.gather(*(ack for _, ack in sent), return_exceptions=True)
        delivered = []
        for (out, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                self._classify(out, result, refused)
            else:
                delivered.append(out)
        return delivered, refused

    def _classify(self, out: OutRecord, exc: BaseException, refused: list[Refused]) -> None:
        if isinstance(exc, asyncio.CancelledError):
            raise exc
        if not is_permanent(exc):
            raise DeliveryFailed(f"could not deliver to {out.topic!r}: {describe(exc)}") from exc
        refused.append((out, exc))
