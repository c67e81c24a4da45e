"""The Faust adapter: feeds a `ProcessorRunner` micro-batches of its processor's source topics and lets Faust
ack (and later commit) a batch's offsets only once the runner has delivered its outputs.

Why fail-stop on transient delivery errors (runner.py, delivery.py): Faust acks a batch's events even when the
loop body raises, so a lost output could otherwise be committed over. Exiting the process instead leaves the
offsets uncommitted; the restarted worker (or another group member) reprocesses the batch: at-least-once,
never lost. A record that can never be delivered (too large, invalid) becomes a dead letter instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import faust

from streams.contracts.records import OutRecord, RawRecord
from streams.runtime.delivery import Send
from streams.runtime.runner import ProcessorRunner


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


def faust_sender(app: faust.App, partition_counts: Mapping[str, int]) -> Send:
    """``send(record)`` for `Delivery`: raw bytes to the record's topic. An output pinned to its input's
    partition number is mapped onto the output topic's count, which may be smaller on a real cluster."""
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

    return send


def attach(app: faust.App, runner: ProcessorRunner) -> Any:
    """Register the runner's processor as a Faust agent (and its periodic tick as a timer); returns the agent."""
    processor = runner.processor
    source = app.topic(
        *processor.source_topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(source, name=f"streamsense.{processor.name}", concurrency=1)
    async def run(stream: faust.StreamT) -> None:
        async for events in stream.noack_take(processor.batch_size, within=processor.batch_ms / 1000):

            async def ack(events: list[Any] = events) -> None:
                for event in events:
                    await stream.ack(event)

            await runner.submit([raw_record(e.message) for e in events], ack)

    attach_ticker(app, runner)
    return run


def attach_ticker(app: faust.App, runner: ProcessorRunner) -> None:
    """The runner's periodic tick as a Faust timer (whichever path feeds its batches)."""
    if runner.tick_s is not None:
        @app.timer(runner.tick_s, name=f"streamsense.{runner.processor.name}.tick")
        async def ticker() -> None:
            await runner.tick()
