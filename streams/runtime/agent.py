"""The one Faust adapter every processor uses: micro-batch the source topic, run the processor's
`process(records)` in a worker thread, deliver its outputs, and only then let Faust ack (and later
commit) the batch's offsets.

Why a thread: Faust heartbeats run on the event loop; a model call that held the loop longer than the
session timeout would get the worker kicked out of its group. torch and spaCy release the GIL.

Why fail-stop on transient delivery errors: Faust acks a batch's events even when the loop body raises, so a
lost output could otherwise be committed over. Exiting the process instead leaves the offsets uncommitted;
the restarted worker (or another group member) reprocesses the batch: at-least-once, never lost. A record that
can never be delivered (too large, invalid) becomes a dead letter instead: a restart could not fix it, and
fail-stop would only loop on it (streams/runtime/delivery.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NoReturn, Protocol

import faust

from monitoring import metrics
from streams.contracts import topics
from streams.contracts.deadletter import DEFAULT_MAX_MESSAGE_BYTES, dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.runtime.delivery import Delivery, DeliveryFailed

log = logging.getLogger(__name__)

EXIT_DELIVERY_FAILED = 75  # EX_TEMPFAIL: restart me


class BatchProcessor(Protocol):
    name: str
    source_topics: tuple[str, ...]
    batch_size: int
    batch_ms: int

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]: ...


def raw_record(message: Any) -> RawRecord:
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        headers=tuple((k, v) for k, v in (message.headers or [])),
    )


def process_or_dead_letter(processor: BatchProcessor, records: list[RawRecord]) -> list[OutRecord]:
    """A bug inside a processor must not lose the batch: each input becomes a dead letter instead."""
    try:
        return processor.process(records)
    except Exception as exc:
        log.exception("processor %s failed on a batch of %d; dead-lettering it", processor.name, len(records))
        reason = f"processor crashed: {type(exc).__name__}: {exc}"
        return [dead_letter(r, processor=processor.name, reason=reason, error="ProcessorError") for r in records]


class OrderedPipeline:
    """Runs work on the model thread while the agent reads the next batch; delivers and acks in order.

    Faust's ``take_events`` stops buffering while the loop body runs, so reading (Faust's per-message
    bookkeeping, ~80 us a message here) and the model's work added up. With ``noack_take`` the agent hands a
    batch to the model thread and goes back to reading; each batch's outputs are delivered only after the
    previous batch's (ticks included, so a state checkpoint never overtakes the outputs it accounts for), and its
    events are acked only after that: at-least-once as before. ``depth`` bounds the batches submitted but not yet
    delivered; 0 makes ``submit`` wait for delivery, i.e. plain read-process-deliver (Faust reads nothing meanwhile).
    """

    def __init__(self, pool: ThreadPoolExecutor, deliver: Callable[[list[OutRecord]], Awaitable[list[OutRecord]]],
                 depth: int = 0) -> None:
        self._pool = pool
        self._deliver = deliver
        self._wait = depth == 0
        self._slots = asyncio.Semaphore(max(depth, 1))
        self._last: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def submit(
        self,
        work: Callable[[], list[OutRecord]],
        after_delivery: Callable[[list[OutRecord], float, float], Awaitable[None]],
    ) -> None:
        """Queue ``work`` (never raises) on the model thread; returns once it is queued (depth 0: delivered)."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self._pool, _timed, work)
        task = asyncio.ensure_future(self._finish(done, self._last, after_delivery))
        self._last = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._wait:
            await asyncio.shield(task)  # a cancelled agent must not cancel a batch that is mid-delivery

    async def _finish(
        self,
        done: asyncio.Future[tuple[list[OutRecord], float]],
        previous: asyncio.Future[None] | None,
        after_delivery: Callable[[list[OutRecord], float, float], Awaitable[None]],
    ) -> None:
        try:
            outputs, process_s = await done
            if previous is not None:
                await previous
            delivering = time.perf_counter()
            delivered = await self._deliver(outputs)  # dead letters may stand in for undeliverable outputs
            await after_delivery(delivered, process_s, time.perf_counter() - delivering)
        except asyncio.CancelledError:  # the worker is stopping: whatever was not acked is read again
            raise
        except Exception:  # a broken chain would stop every later ack: the worker would stall silently
            log.critical("delivery pipeline failed; exiting so the unacked batches are reprocessed", exc_info=True)
            os._exit(EXIT_DELIVERY_FAILED)
        finally:
            self._slots.release()


def _timed(work: Callable[[], list[OutRecord]]) -> tuple[list[OutRecord], float]:
    started = time.perf_counter()
    return work(), time.perf_counter() - started


def attach(
    app: faust.App,
    processor: BatchProcessor,
    partition_counts: dict[str, int],
    executor: ThreadPoolExecutor | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Any:
    """Register `processor` as a Faust agent on `app`; returns the agent.

    `partition_counts` (topic → partitions) maps an output pinned to its input's partition number onto
    the output topic, which may have fewer partitions on a real cluster. Outputs over `max_message_bytes`, or
    that the broker refuses for good, become dead letters (streams/runtime/delivery.py)."""
    pool = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{processor.name}-model")
    source = app.topic(
        *processor.source_topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    sinks: dict[str, faust.TopicT] = {}

    def sink(name: str) -> faust.TopicT:
        if name not in sinks:
            sinks[name] = app.topic(name, key_type=bytes, value_type=bytes,
                                    key_serializer="raw", value_serializer="raw")
        return sinks[name]

    async def send(o: OutRecord) -> Awaitable[Any]:
        partition = None if o.partition is None else o.partition % partition_counts[o.topic]
        return await sink(o.topic).send(key=o.key, value=o.value, headers=list(o.headers) or None,
                                        partition=partition)

    def fail_stop(exc: DeliveryFailed) -> NoReturn:
        log.critical("could not deliver outputs of %s (%s); exiting without committing so the batch is "
                     "reprocessed after restart", processor.name, exc, exc_info=exc)
        os._exit(EXIT_DELIVERY_FAILED)

    delivery = Delivery(send, processor=processor.name, max_message_bytes=max_message_bytes,
                        checkpoint_topics=getattr(processor, "checkpoint_topics", ()), on_fatal=fail_stop)

    # How many batches may be in flight while Faust reads on. Overlapping reading with the model helps recs (a
    # light one-thread model: ~15% more clicks/s) but cost text (a two-thread model that wants both cores) ~10%
    # on 2 cores, so the default is 0: read, process, deliver, then read again.
    pipeline = OrderedPipeline(pool, delivery.deliver, depth=getattr(processor, "pipeline_depth", 0))

    @app.agent(source, name=f"streamsense.{processor.name}", concurrency=1)
    async def run(stream: faust.StreamT) -> None:
        async for events in stream.noack_take(processor.batch_size, within=processor.batch_ms / 1000):
            records = [raw_record(e.message) for e in events]

            async def acknowledge(outputs: list[OutRecord], process_s: float, deliver_s: float,
                                  events: Sequence[Any] = events, records: list[RawRecord] = records) -> None:
                for event in events:
                    await stream.ack(event)
                record_metrics(processor.name, records, outputs, process_s, deliver_s)

            await pipeline.submit(partial(process_or_dead_letter, processor, records), acknowledge)

    tick = getattr(processor, "tick", None)
    if tick is not None:
        @app.timer(getattr(processor, "tick_s", 1.0), name=f"streamsense.{processor.name}.tick")
        async def ticker() -> None:
            """Periodic work (e.g. idle-timeout flushes), on the same one-thread pool so never concurrent
            with process(); delivered in order with the batches, fail-stop included."""

            def work() -> list[OutRecord]:
                try:
                    return tick(int(time.time() * 1000))
                except Exception:
                    log.exception("tick of %s failed", processor.name)
                    return []

            async def count(outputs: list[OutRecord], process_s: float, deliver_s: float) -> None:
                record_outputs(processor.name, outputs)

            await pipeline.submit(work, count)

    return run


def record_metrics(
    name: str, records: list[RawRecord], outputs: list[OutRecord], process_s: float, deliver_s: float
) -> None:
    metrics.BATCH_SIZE.labels(name).observe(len(records))
    metrics.BATCH_SECONDS.labels(name).observe(process_s)
    metrics.DELIVERY_SECONDS.labels(name).observe(deliver_s)
    for topic, n in Counter(r.topic for r in records).items():
        metrics.CONSUMED.labels(name, topic).inc(n)
    record_outputs(name, outputs)


def record_outputs(name: str, outputs: list[OutRecord]) -> None:
    for topic, n in Counter(o.topic for o in outputs).items():
        metrics.PRODUCED.labels(name, topic).inc(n)
    for o in outputs:
        if o.topic == topics.DEADLETTER:
            metrics.DEAD_LETTERS.labels(name, dict(o.headers).get("error", b"unknown").decode()).inc()
