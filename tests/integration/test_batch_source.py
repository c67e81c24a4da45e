"""The batch path's delivery contract through the broker, in process: offsets are committed only after their
batch's outputs are acknowledged, a failed delivery commits nothing past it, and a new member of the group
resumes exactly after the commits. (The recs worker runs on this path in test_recs_pipeline.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.settings import Settings
from streams.contracts.topics import TopicSpec
from streams.runtime.batch_source import BatchSource
from streams.runtime.delivery import DeliveryFailed
from streams.runtime.kafka_io import ensure_topics
from streams.runtime.recovery import inherited_offsets, kafka_committed_offsets
from streams.runtime.runner import ProcessorRunner
from tests.integration.harness import produce

pytestmark = pytest.mark.integration

N = 300


class Echo:
    """Each input out again (to a topic the fake sender keeps)."""

    name = "echo"
    batch_size, batch_ms, read_ahead = 40, 20, 1

    def __init__(self, topic: str) -> None:
        self.source_topics = (topic,)

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        return [OutRecord("echo.out", r.key, r.value, source=r) for r in records]


class Sender:
    """``send`` for the runner: acknowledges at once, or after ``fail_after`` outputs fails as a broker
    that went away does (a transient error: the runner must fail-stop)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[OutRecord] = []
        self.fail_after = fail_after

    async def __call__(self, out: OutRecord) -> Any:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            ack.set_exception(ConnectionError("broker went away"))
        else:
            self.sent.append(out)
            ack.set_result(None)
        return ack


def run_source(broker: str, app_id: str, topic: str, sender: Sender, until: Any, timeout_s: float = 60,
               start_at: dict[tuple[str, int], int] | None = None) -> list[str]:
    """Run a BatchSource over ``topic`` until ``until()`` or a fail-stop; returns what the runtime reported."""
    events: list[str] = []

    async def main() -> None:
        def fatal(exc: DeliveryFailed) -> None:
            events.append(f"fail-stop: {exc}")
            raise RuntimeError("fail-stop")  # stands in for the process exit: nothing later is delivered

        runner = ProcessorRunner(Echo(topic), sender, max_message_bytes=1_000_000, on_fatal=fatal,  # type: ignore[arg-type]
                                 on_broken=lambda: events.append("broken"))
        settings = Settings(bootstrap=broker, app_id=app_id)
        source = BatchSource(runner, settings, broker, commit_interval_s=0.2,
                             on_fatal=lambda: events.append("source failed"), start_at=start_at)
        task = asyncio.create_task(source.run())
        deadline = time.monotonic() + timeout_s
        while not until() and "broken" not in events and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await source.stop()
        await task

    asyncio.run(main())
    return events


def committed(broker: str, group: str, topic: str) -> int:
    return sum(kafka_committed_offsets(Settings(bootstrap=broker), broker, [topic], group).values())


def test_offsets_follow_delivery_and_a_new_member_resumes_after_them(broker: str) -> None:
    topic, app = f"batch.{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    ensure_topics(Settings(bootstrap=broker), broker, [TopicSpec(topic, "batch path test", partitions=3)])
    produce(broker, [OutRecord(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(N)])

    first = Sender()
    assert run_source(broker, app, topic, first, until=lambda: len(first.sent) >= N) == []
    assert sorted(o.value for o in first.sent) == sorted(f"v{i}".encode() for i in range(N))
    assert committed(broker, f"{app}.echo", topic) == N  # the clean stop committed every delivered batch

    produce(broker, [OutRecord(topic, f"k{i}".encode(), f"w{i}".encode()) for i in range(50)])
    second = Sender()
    run_source(broker, app, topic, second, until=lambda: len(second.sent) >= 50)
    assert sorted(o.value for o in second.sent) == sorted(f"w{i}".encode() for i in range(50))  # nothing again


def test_a_failed_delivery_commits_nothing_past_what_was_delivered(broker: str) -> None:
    topic, app = f"batch.{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    ensure_topics(Settings(bootstrap=broker), broker, [TopicSpec(topic, "batch path test", partitions=1)])
    produce(broker, [OutRecord(topic, b"k", f"v{i}".encode()) for i in range(N)])

    failing = Sender(fail_after=100)
    events = run_source(broker, app, topic, failing, until=lambda: False, timeout_s=60)
    assert any(e.startswith("fail-stop") for e in events), events
    assert committed(broker, f"{app}.echo", topic) <= 100  # one partition: offsets = records delivered

    again = Sender()  # the restarted worker: everything not committed comes again, nothing is lost
    run_source(broker, app, topic, again, until=lambda: len(again.sent) >= N - 100)
    delivered = {o.value for o in failing.sent} | {o.value for o in again.sent}
    assert delivered == {f"v{i}".encode() for i in range(N)}


def test_moving_onto_the_batch_path_continues_where_the_previous_group_stopped(broker: str) -> None:
    """The upgrade from a Faust agent (group: the app id) to the batch path (group ``<app>.echo``): the new
    group has no commits, so it starts at the old group's, not at the beginning of the topic; once it has
    committed, its own offsets win."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topic, app = f"batch.{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    settings = Settings(bootstrap=broker)
    ensure_topics(settings, broker, [TopicSpec(topic, "batch path test", partitions=2)])
    produce(broker, [OutRecord(topic, b"k", f"v{i}".encode(), partition=i % 2) for i in range(N)])
    old = KafkaConsumer(bootstrap_servers=broker, group_id=app, enable_auto_commit=False)
    try:  # what the Faust agent had committed before the upgrade
        old.commit({TopicPartition(topic, 0): OffsetAndMetadata(100, "", -1),
                    TopicPartition(topic, 1): OffsetAndMetadata(120, "", -1)})
    finally:
        old.close()
    start = inherited_offsets(settings, broker, [topic], f"{app}.echo", app)
    assert start == {(topic, 0): 100, (topic, 1): 120}

    moved = Sender()
    run_source(broker, app, topic, moved, until=lambda: len(moved.sent) >= 80, start_at=start)
    time.sleep(1.0)  # anything read past the start would arrive now
    want = {f"v{i}".encode() for i in range(N) if i // 2 >= (100 if i % 2 == 0 else 120)}
    assert sorted(o.value for o in moved.sent) == sorted(want)
    assert inherited_offsets(settings, broker, [topic], f"{app}.echo", app) == {}  # its own commits now

    again = Sender()
    run_source(broker, app, topic, again, until=lambda: False, timeout_s=8, start_at={(topic, 0): 0, (topic, 1): 0})
    assert again.sent == []  # committed partitions ignore start_at


@pytest.mark.parametrize("latency_critical", [True, False])
def test_fetches_wait_briefly_while_records_flow_and_long_again_once_idle(broker: str, latency_critical: bool) -> None:
    topic = f"batch.{uuid.uuid4().hex[:6]}"
    ensure_topics(Settings(bootstrap=broker), broker, [TopicSpec(topic, "batch path test", partitions=1)])
    produce(broker, [OutRecord(topic, f"k{i}".encode(), f"v{i}".encode()) for i in range(N)])
    seen: dict[str, int] = {}

    async def main() -> None:
        sender = Sender()
        echo = Echo(topic)
        echo.latency_critical = latency_critical  # type: ignore[attr-defined]
        runner = ProcessorRunner(echo, sender, max_message_bytes=1_000_000)  # type: ignore[arg-type]
        settings = Settings(bootstrap=broker, app_id=f"b-{uuid.uuid4().hex[:6]}")
        source = BatchSource(runner, settings, broker, commit_interval_s=0.2)
        task = asyncio.create_task(source.run())

        def wait_ms() -> int:  # what the next fetch request asks the broker for (aiokafka's fetcher)
            return source.consumer._fetcher._fetch_max_wait_ms  # type: ignore[union-attr]

        deadline = time.monotonic() + 60
        while len(sender.sent) < N and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        seen["busy"] = wait_ms()
        deadline = time.monotonic() + 30  # IDLE_POLLS empty polls of up to Echo.batch_ms (20 ms) each
        while wait_ms() != settings.fetch_max_wait_ms and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen["idle"] = wait_ms()
        await source.stop()
        await task

    asyncio.run(main())
    assert seen == ({"busy": 10, "idle": 100} if latency_critical else {"busy": 100, "idle": 100})
