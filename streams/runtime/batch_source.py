"""The batch consumption path: aiokafka ``getmany`` straight into a `ProcessorRunner`, for high-rate topics.

Why: Faust spends ~80 µs of event-loop time on each message (an Event, sensors, the stream's buffers, one
ack per message), and that Python work competes for the GIL with the model thread: a recs worker absorbed
6.3–6.9k clicks/s while its processor alone takes 19.6k/s (README, Measured results). ``getmany`` hands over
a whole fetch as lists of messages; the runtime wraps them as records and submits batches as the agent does.

The contract is the Faust agent's (agent.py), so processors and their tests do not know which path feeds them:

* a batch's offsets are committed only after its outputs and checkpoints are on the broker (acks=all): the
  runner awaits ``ack`` after delivery, which marks the offsets; a commit of the marked offsets follows within
  ``commit_interval_s`` (Faust's ``broker_commit_interval`` is 1 s too), before partitions are given up in a
  rebalance, and at shutdown. A delivery failure fail-stops the process (runner.py) with nothing committed.
* its own consumer group, ``<app id>.<processor>`` (`batch_group_id`): Faust's group speaks Faust's assignor
  protocol, and every member of one group must share one. Recovery reads that group's committed offsets.
  A partition the group has never committed starts at ``start_at`` when given: the worker passes the Faust
  group's commits (recovery.inherited_offsets), so moving a processor onto this path continues where its
  agent stopped instead of at the beginning of the topic.
* for a processor marked ``latency_critical`` (text), while records keep coming (polls bring ``BUSY_RECORDS``
  or more), a fetch that finds nothing waits at most ``busy_fetch_max_wait_ms`` (10 ms) at the broker instead
  of ``fetch_max_wait_ms`` (100 ms); after ``IDLE_POLLS`` polls with fewer the long wait is back.
  Why: the embedded broker holds a waiting fetch for its whole wait even when records arrive meanwhile
  (README, the embedded broker's limits), and under a steady stream the consumer's next fetch usually finds
  its partitions just drained, so every record waited up to 100 ms there (2 text workers at 178 events/s: p99
  492 -> 196 ms in a paired run). A short wait at all times cost ~0.28 of a core when idle (a worker running
  text, recs, monitor and retrainer: its client and the broker together), and switching at any record cost
  the 10-minute soak (text at 10 events/s, polls of 0-1 records) ~15% of a core across its workers for no
  lower latency. Recs and the monitor, which batch for throughput, keep the long wait. Apache Kafka answers a
  waiting fetch as soon as data arrives, so there this changes nothing but a few more empty fetches after a
  busy spell.
* only for processors without per-partition state (`PartitionedState`, e.g. ASR streams): their hand-over on
  rebalance is Faust's (handover.py); the worker refuses the combination with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from streams.contracts.records import RawRecord
from streams.contracts.settings import Settings
from streams.contracts.state import TP
from streams.runtime.runner import ProcessorRunner, exit_for_restart

log = logging.getLogger(__name__)
BUSY_RECORDS = 2  # a poll that brings this many records or more counts as busy
IDLE_POLLS = 20  # polls (of up to batch_ms each) with fewer, after which a fetch waits fetch_max_wait_ms again


def batch_group_id(app_id: str, processor: str) -> str:
    """The consumer group of a processor fed by the batch path (see the module docstring)."""
    return f"{app_id}.{processor}"


def aiokafka_kwargs(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Client settings for aiokafka, security included (the same ones Faust and kafka-python get)."""
    sec = settings.security
    kwargs: dict[str, Any] = {"bootstrap_servers": bootstrap, "security_protocol": sec.protocol,
                              "ssl_context": sec.ssl_context()}
    if sec.protocol.startswith("SASL"):
        kwargs.update(sasl_mechanism=(sec.sasl_mechanism or "PLAIN").upper(), sasl_plain_username=sec.sasl_username,
                      sasl_plain_password=sec.sasl_password)
    return kwargs


def set_fetch_wait(consumer: AIOKafkaConsumer, wait_ms: int) -> None:
    """Change how long a started consumer's next fetches wait at the broker. aiokafka has no public setter: its
    fetcher reads ``_fetch_max_wait_ms`` into each request it builds (tested in test_batch_source.py, so an
    aiokafka that renames it is noticed); where it is missing the configured wait simply stays."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or not isinstance(getattr(fetcher, "_fetch_max_wait_ms", None), int):
        log.debug("aiokafka's fetcher has no _fetch_max_wait_ms: the fetch wait stays as configured")
        return
    fetcher._fetch_max_wait_ms = wait_ms


def raw_record(message: Any) -> RawRecord:
    return RawRecord(topic=message.topic, partition=message.partition, offset=message.offset, key=message.key,
                     value=message.value, timestamp_ms=message.timestamp,
                     headers=tuple(message.headers) if message.headers else ())


class BatchSource:
    """Feeds ``runner`` its processor's source topics in batches of up to ``batch_size`` records, waiting at
    most ``batch_ms`` for a batch to fill. ``on_assigned`` gets each assignment (readiness, /ready)."""

    def __init__(self, runner: ProcessorRunner, settings: Settings, bootstrap: str, *,
                 on_assigned: Callable[[set[TP]], None] = lambda _tps: None, commit_interval_s: float = 1.0,
                 on_fatal: Callable[[], Any] = exit_for_restart, start_at: Mapping[TP, int] | None = None) -> None:
        self.runner = runner
        processor = runner.processor
        self.topics = tuple(processor.source_topics)
        self.batch_size, self.batch_ms = processor.batch_size, processor.batch_ms
        self.group_id = batch_group_id(settings.app_id, processor.name)
        self.on_assigned, self.on_fatal = on_assigned, on_fatal
        self.commit_interval_s = commit_interval_s
        self.start_at = dict(start_at or {})
        self.settings, self.bootstrap = settings, bootstrap
        self.consumer: AIOKafkaConsumer | None = None  # made in run(): aiokafka binds to the running loop
        self._acked: dict[TopicPartition, int] = {}  # next offset to read, per partition, once delivered
        self._committed: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._quiet_polls = IDLE_POLLS
        self._paced = bool(getattr(processor, "latency_critical", False))

    def _new_consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        return AIOKafkaConsumer(
            **aiokafka_kwargs(settings, self.bootstrap), group_id=self.group_id,
            client_id=f"{settings.app_id}-{self.runner.processor.name}", enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=settings.session_timeout_s * 1000,
            heartbeat_interval_ms=1000, rebalance_timeout_ms=max(10, 2 * settings.session_timeout_s) * 1000,
            fetch_max_wait_ms=settings.fetch_max_wait_ms, max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=max(settings.max_message_bytes, 16 * 1024 * 1024),
        )

    async def run(self) -> None:
        """Consume until `stop`; commits what was delivered on the way out. An error it cannot ride out (a
        commit that fails is retried; aiokafka reconnects on its own) fail-stops the worker, as a failed
        delivery does, rather than leave it up and consuming nothing."""
        try:
            await self._consume()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.critical("%s: the batch consumer failed; exiting so that a restart resumes from the committed "
                         "offsets", self.runner.processor.name, exc_info=True)
            self.on_fatal()
        finally:
            self._done.set()

    async def _consume(self) -> None:
        self.consumer = consumer = self._new_consumer()
        consumer.subscribe(list(self.topics), listener=_Listener(self))
        await consumer.start()
        try:
            last_commit = time.monotonic()
            while not self._stopping.is_set():
                fetched = await consumer.getmany(timeout_ms=max(self.batch_ms, 1), max_records=self.batch_size)
                if self._paced:
                    self._pace_fetches(consumer, busy=sum(map(len, fetched.values())) >= BUSY_RECORDS)
                if fetched:
                    await self._submit(fetched)
                if time.monotonic() - last_commit >= self.commit_interval_s:
                    await self.commit()
                    last_commit = time.monotonic()
            await self.runner.pipeline.drain()
            await self.commit()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def _pace_fetches(self, consumer: AIOKafkaConsumer, *, busy: bool) -> None:
        """The short fetch wait while busy, the configured one once idle (see the module docstring)."""
        was_idle = self._quiet_polls >= IDLE_POLLS
        self._quiet_polls = 0 if busy else self._quiet_polls + 1
        idle = self._quiet_polls >= IDLE_POLLS
        if idle != was_idle:
            long_wait = self.settings.fetch_max_wait_ms
            set_fetch_wait(consumer, long_wait if idle else min(self.settings.busy_fetch_max_wait_ms, long_wait))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop reading, wait for the batches in flight to be delivered, commit them (bounded in time)."""
        self._stopping.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout_s)

    async def _submit(self, fetched: Mapping[TopicPartition, list[Any]]) -> None:
        records = [raw_record(m) for messages in fetched.values() for m in messages]
        ends = {tp: messages[-1].offset + 1 for tp, messages in fetched.items() if messages}

        async def ack() -> None:
            for tp, end in ends.items():
                if end > self._acked.get(tp, -1):
                    self._acked[tp] = end

        await self.runner.submit(records, ack)

    async def commit(self) -> None:
        """Commit the delivered offsets of the partitions this member holds (others moved on with a rebalance).
        A failure (broker away, group rebalancing) is logged and the same offsets go with the next commit: until
        then a crash would only reprocess them (at-least-once)."""
        if self.consumer is None:
            return
        held = self.consumer.assignment()
        due = {tp: end for tp, end in self._acked.items() if tp in held and self._committed.get(tp) != end}
        if not due:
            return
        try:
            await self.consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in due.items()})
        except KafkaError as exc:
            log.warning("%s: committing offsets failed (%s: %s); retrying with the next commit",
                        self.runner.processor.name, type(exc).__name__, exc)
            return
        self._committed.update(due)

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self.consumer
        for tp in sorted(assigned):
            at = self.start_at.get((tp.topic, tp.partition))
            if at is not None and consumer is not None and await consumer.committed(tp) is None:
                log.info("%s: %s[%d] has no commit in group %s; starting at %d (the previous group's commit)",
                         self.runner.processor.name, tp.topic, tp.partition, self.group_id, at)
                consumer.seek(tp, at)
        self.on_assigned({(tp.topic, tp.partition) for tp in assigned})

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        """Before giving partitions up: everything read from them delivered and committed, so the next owner
        starts exactly after it (at-least-once without a gap)."""
        await self.runner.pipeline.drain()
        await self.commit()
        for tp in revoked:
            self._acked.pop(tp, None)
            self._committed.pop(tp, None)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: BatchSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.source._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.source._assigned(assigned)
