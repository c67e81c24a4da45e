"""Partitioned state follows its partitions across rebalances (the `PartitionedState` capability).

Why on assignment and not only at start: when a second worker joins a group, or one dies, Kafka moves
partitions between the survivors. The new owner must continue each moved stream from its state, and the old
owner must forget it, or both would act on it (an idle flush in the old owner repeats a final segment).

The sequence, per rebalance (Faust's eager protocol: revoke everything, then assign):

1. ``revoked``: ticks pause and everything submitted is delivered. Faust has already waited for every
   consumed event to be acked and flushed the producer, so the state topic now holds the latest checkpoint of
   every stream this worker touched, before any new owner reads it.
2. ``assigned``: partitions held before but not now are released (``release_partitions``); partitions newly
   held are restored (``restore(runner, partitions)``, into the runner's processor from its state store:
   read the state topic up to a marker, keep the checkpoints whose offsets name those partitions, replay
   like a start-up). Both run on the model thread in order with the batches, then ticks resume. A restore
   that fails raises: Faust crashes the worker rather than process partitions whose state it does not have.

The worker's first assignment is a rebalance like any other, so a partitioned processor is restored here, not
before the worker joins its group. Transport-neutral: the worker wires Faust's rebalance signals and the Kafka
reader (recovery.py) to it; tests drive it with lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Set

from processors.base import Checkpointed, PartitionedState
from streams.contracts.state import TP
from streams.runtime.runner import ProcessorRunner

Restore = Callable[[ProcessorRunner, frozenset[TP]], int]


class Handover:
    def __init__(self, runners: Iterable[ProcessorRunner], restore: Restore) -> None:
        self.runners = [r for r in runners if isinstance(r.processor, PartitionedState)]
        self.restore = restore
        self.held: set[TP] = set()

    async def revoked(self) -> None:
        for runner in self.runners:
            runner.ticks_paused = True
            await runner.pipeline.drain()

    async def assigned(self, assigned: Set[TP]) -> None:
        revoked, new = self.held - set(assigned), set(assigned) - self.held
        for runner in self.runners:
            processor = runner.processor
            assert isinstance(processor, PartitionedState) and isinstance(processor, Checkpointed)
            gone, mine = _of(processor.source_topics, revoked), _of(processor.source_topics, new)
            if gone:
                await runner.call(lambda p=processor, g=gone: p.release_partitions(g))
            if mine:
                await runner.call(lambda r=runner, m=mine: self.restore(r, m))
            runner.ticks_paused = False
        self.held = set(assigned)


def _of(source_topics: Sequence[str], partitions: Iterable[TP]) -> frozenset[TP]:
    return frozenset(tp for tp in partitions if tp[0] in source_topics)
