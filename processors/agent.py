"""The one Faust adapter every processor uses: micro-batch the source topic, run the processor's
`process(records)` in a worker thread, deliver its outputs, and only then let Faust ack (and later
commit) the batch's offsets.

Why a thread: Faust heartbeats run on the event loop; a model call that held the loop longer than the
session timeout would get the worker kicked out of its group. torch and spaCy release the GIL.

Why fail-stop on delivery errors: Faust acks a batch's events even when the loop body raises, so a lost
output could otherwise be committed over. Exiting the process instead leaves the offsets uncommitted;
the restarted worker (or another group member) reprocesses the batch: at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import faust

from monitoring import metrics
from streams import topics
from streams.deadletter import dead_letter
from streams.records import OutRecord, RawRecord

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


def attach(
    app: faust.App,
    processor: BatchProcessor,
    partition_counts: dict[str, int],
    executor: ThreadPoolExecutor | None = None,
) -> Any:
    """Register `processor` as a Faust agent on `app`; returns the agent.

    `partition_counts` (topic → partitions) maps an output pinned to its input's partition number onto
    the output topic, which may have fewer partitions on a real cluster."""
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

    checkpoint_topics = set(getattr(processor, "checkpoint_topics", ()))

    async def send_all(outputs: list[OutRecord]) -> None:
        pending = [
            await sink(o.topic).send(
                key=o.key,
                value=o.value,
                headers=list(o.headers) or None,
                partition=None if o.partition is None else o.partition % partition_counts[o.topic],
            )
            for o in outputs
        ]
        await asyncio.gather(*pending)

    async def deliver(outputs: list[OutRecord]) -> None:
        """Fail-stop: return only once every output is acknowledged, else exit before anything is acked."""
        try:
            # A processor's state checkpoints go out only once its other outputs are confirmed: a checkpoint
            # that got ahead of lost outputs would make the replay skip the inputs that produced them.
            await send_all([o for o in outputs if o.topic not in checkpoint_topics])
            await send_all([o for o in outputs if o.topic in checkpoint_topics])
        except Exception:
            log.critical("could not deliver outputs of %s; exiting without committing so the batch is "
                         "reprocessed after restart", processor.name, exc_info=True)
            os._exit(EXIT_DELIVERY_FAILED)

    @app.agent(source, name=f"streamsense.{processor.name}", concurrency=1)
    async def run(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(processor.batch_size, within=processor.batch_ms / 1000):
            records = [raw_record(e.message) for e in events]
            started = time.perf_counter()
            outputs = await loop.run_in_executor(pool, process_or_dead_letter, processor, records)
            processed = time.perf_counter()
            await deliver(outputs)
            record_metrics(processor.name, records, outputs, processed - started, time.perf_counter() - processed)

    tick = getattr(processor, "tick", None)
    if tick is not None:
        @app.timer(getattr(processor, "tick_s", 1.0), name=f"streamsense.{processor.name}.tick")
        async def ticker() -> None:
            """Periodic work (e.g. idle-timeout flushes), on the same one-thread pool so never concurrent
            with process(); its outputs are delivered like a batch's, fail-stop included."""
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(pool, tick, int(time.time() * 1000))
            except Exception:
                log.exception("tick of %s failed", processor.name)
                return
            await deliver(outputs)
            record_outputs(processor.name, outputs)

    return run


def record_metrics(
    name: str, records: list[RawRecord], outputs: list[OutRecord], process_s: float, deliver_s: float
) -> None:
    metrics.BATCH_SIZE.labels(name).observe(len(records))
    metrics.BATCH_SECONDS.labels(name).observe(process_s)
    metrics.DELIVERY_SECONDS.labels(name).observe(deliver_s)
    for r in records:
        metrics.CONSUMED.labels(name, r.topic).inc()
    record_outputs(name, outputs)


def record_outputs(name: str, outputs: list[OutRecord]) -> None:
    for o in outputs:
        metrics.PRODUCED.labels(name, o.topic).inc()
        if o.topic == topics.DEADLETTER:
            metrics.DEAD_LETTERS.labels(name, dict(o.headers).get("error", b"unknown").decode()).inc()
