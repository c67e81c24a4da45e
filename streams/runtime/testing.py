"""Run a processor through the real runtime core in-process: lists in, delivered records out, no broker.

In the spirit of Bytewax's TestingSource/TestingSink and Faust's test_context: the same `ProcessorRunner`
the Faust agent feeds (ordering, read-ahead, delivery waves, dead-letter stand-ins, checkpoints through the
state store, ticks, model swaps, rebalances) with a sink that records what a broker would have acknowledged, so tests of
those rules take milliseconds. Fail-stop does not exit the test process: it is recorded (`stopped`) and
nothing after it is delivered or acked, as in a worker that exited. The end-to-end tests through the broker
stay the proof that the Faust side does the same.

>>> from streams.contracts.records import OutRecord, RawRecord
>>> class Upper:
...     name, source_topics, batch_size, batch_ms, read_ahead = "upper", ("in",), 10, 0, 0
...     def process(self, records):
...         return [OutRecord("out", r.key, r.value.upper(), source=r) for r in records]
>>> worker = InProcessWorker(Upper())
>>> [o.value for o in worker.run([RawRecord("in", 0, 0, b"k", b"hello")])]
[b'HELLO']
>>> worker.acked
[[0]]
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from processors.base import Checkpointed, Processor, validate
from streams.contracts.deadletter import DEFAULT_MAX_MESSAGE_BYTES
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.state import TP
from streams.runtime.delivery import DeliveryFailed
from streams.runtime.handover import Handover
from streams.runtime.recovery import checkpoints_of, recover
from streams.runtime.runner import ProcessorRunner
from streams.runtime.state_store import StateStore


class FailStopped(RuntimeError):
    """Where a worker would have exited (75) so its unacked batches are reprocessed."""


class TestingSink:
    """Acknowledges every record, except those ``refuse(record)`` answers with an exception (a broker error):
    raised by the send itself with ``at_send`` (as a client's size check does), else by the acknowledgement."""

    __test__ = False  # not a pytest class

    def __init__(self, refuse: Callable[[OutRecord], BaseException | None] | None = None,
                 at_send: bool = False) -> None:
        self.refuse = refuse or (lambda record: None)
        self.at_send = at_send
        self.records: list[OutRecord] = []

    async def send(self, record: OutRecord) -> Any:
        future = asyncio.get_running_loop().create_future()
        error = self.refuse(record)
        if error is not None and self.at_send:
            raise error
        if error is not None:
            future.set_exception(error)
        else:
            self.records.append(record)
            future.set_result(len(self.records))
        return future

    def on(self, topic: str) -> list[OutRecord]:
        return [r for r in self.records if r.topic == topic]


class InProcessWorker:
    __test__ = False

    def __init__(self, processor: Processor, *, sink: TestingSink | None = None, app_id: str = "test",
                 state_dir: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 clock: Callable[[], int] | None = None) -> None:
        validate(processor)  # before the state store is built from what the processor declares
        self.processor = processor
        self.sink = sink or TestingSink()
        self.acked: list[list[int]] = []  # offsets of each acked batch, in ack order
        self.stopped: DeliveryFailed | None = None
        self.broken = False
        store = None
        if isinstance(processor, Checkpointed):
            store = StateStore(topic=processor.state_topic, kind=processor.state_store, processor=processor.name,
                               app_id=app_id, state_dir=state_dir or tempfile.mkdtemp(prefix="streamsense-state-"))
        self.store = store
        self.loop = asyncio.new_event_loop()
        extra = {} if clock is None else {"clock": clock}
        self.runner = ProcessorRunner(processor, self.sink.send, max_message_bytes=max_message_bytes, state=store,
                                      on_fatal=self._fail_stop, on_broken=self._broken, **extra)
        self._state_topic: list[tuple[bytes | None, bytes | None]] = []
        self.handover = Handover([self.runner], self._restore_partitions)

    def _fail_stop(self, exc: DeliveryFailed) -> NoReturn:
        self.stopped = exc
        raise FailStopped(str(exc))

    def _broken(self) -> None:
        self.broken = True

    def _until_delivered(self, start: Callable[[], Any]) -> tuple[Any, list[OutRecord]]:
        """Run ``start()`` on the worker's loop until everything it submitted is delivered; returns its result
        and the records delivered meanwhile."""
        before = len(self.sink.records)

        async def go() -> Any:
            result = await start()
            await self.runner.pipeline.drain()
            return result

        result = self.loop.run_until_complete(go())
        return result, self.sink.records[before:]

    def run(self, *batches: Sequence[RawRecord]) -> list[OutRecord]:
        """Submit each batch as the agent would (read-ahead included); returns what was delivered."""

        async def submit_all() -> None:
            for batch in batches:
                offsets = [r.offset for r in batch]

                async def ack(offsets: list[int] = offsets) -> None:
                    self.acked.append(offsets)

                await self.runner.submit(list(batch), ack)

        return self._until_delivered(submit_all)[1]

    def tick(self) -> list[OutRecord]:
        return self._until_delivered(self.runner.tick)[1]

    def swap(self, model: str, version: str) -> str:
        return self._until_delivered(lambda: self.runner.swap(model, version))[0]

    def rebalance(self, assigned: Iterable[TP], state: Iterable[tuple[bytes | None, bytes | None]] = ()
                  ) -> list[OutRecord]:
        """A rebalance as the worker runs it (handover.py): revoke, then assign ``assigned``; newly assigned
        partitions are restored from ``state``, what the state topic holds now. Returns what was delivered."""
        self._state_topic = list(state)
        return self._until_delivered(lambda: self._rebalance(set(assigned)))[1]

    async def _rebalance(self, assigned: set[TP]) -> None:
        await self.handover.revoked()
        await self.handover.assigned(assigned)

    def _restore_partitions(self, runner: ProcessorRunner, partitions: frozenset[TP]) -> int:
        assert runner.state is not None and isinstance(runner.processor, Checkpointed)
        checkpoints = checkpoints_of(runner.state.load(self._state_topic), partitions)
        return recover(runner.processor, checkpoints, dict, lambda after, until: iter(()), lambda _m: None)

    def state(self) -> list[tuple[bytes | None, bytes | None]]:
        """What the state topic would hold: (key, value) of every state record delivered so far."""
        topic = getattr(self.processor, "state_topic", None)
        return [(r.key, r.value) for r in self.sink.records if r.topic == topic]


Offsets = Mapping[TP, int]


def restart(processor: Checkpointed, state: Iterable[tuple[bytes | None, bytes | None]], store: StateStore,
            inputs: Sequence[RawRecord] = (), committed: Offsets | Callable[[], Offsets] | None = None,
            progress: Callable[[str], None] = lambda _m: None) -> int:
    """The start-up recovery of `recovery.recover` against lists: restore ``processor`` from ``state`` and replay
    the ``inputs`` between its checkpoints and ``committed``; returns the number of records replayed."""

    def read_range(after: Mapping[TP, int], until: Mapping[TP, int]) -> Iterator[list[RawRecord]]:
        yield [r for r in inputs if (r.topic, r.partition) in until
               and after.get((r.topic, r.partition), -1) < r.offset < until[(r.topic, r.partition)]]

    lookup = committed if callable(committed) else (lambda: committed or {})
    return recover(processor, store.load(state), lookup, read_range, progress)
