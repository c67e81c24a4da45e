"""Bringing a checkpointed processor back to where its group's committed offsets say it is.

On start, before the worker joins its group: read the state topic up to a marker written just now (never end
offsets: the embedded broker reports them wrongly), restore the latest checkpoints, then replay the
processor's ``replay_topics`` from the offsets those checkpoints include up to the group's committed offsets.
Faust then continues from the committed offsets, so every input is in the state exactly once (replays are
idempotent in the processors: click ids are deduplicated, catalog rows upserted).

A recovery that cannot learn the committed offsets fails loudly (`RecoveryError`): resuming without the replay
would silently skip every input between the checkpoint and the last commit. No committed offsets at all (a new
group) is not an error: the group then starts at the beginning, and there is nothing to replay.

`recover` is Kafka-free (its readers are parameters) so it is unit-tested with lists; `kafka_*` below are the
real readers, all on kafka-python.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set

from processors.base import Checkpointed
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.settings import Settings
from streams.contracts.state import TP, Checkpoint, marker_key
from streams.runtime.state_store import StateStore

Progress = Callable[[str], None]


class RecoveryError(RuntimeError):
    """The state could not be brought up to the committed offsets; the worker must not start."""


def replay_start(checkpoints: Sequence[Checkpoint], topics: Iterable[str]) -> dict[TP, int]:
    """Last offset included per partition of ``topics``: the smallest any checkpoint claims (a partition no
    checkpoint mentions is absent: it is replayed from the beginning)."""
    wanted = set(topics)
    start: dict[TP, int] = {}
    for cp in checkpoints:
        for tp, offset in cp.offsets.items():
            if tp[0] in wanted:
                start[tp] = min(offset, start.get(tp, offset))
    return start


def checkpoints_of(checkpoints: Sequence[Checkpoint], partitions: Set[TP]) -> list[Checkpoint]:
    """The checkpoints whose input offsets name one of ``partitions`` (partitioned state: one each)."""
    return [cp for cp in checkpoints if partitions & cp.offsets.keys()]


def recover(
    processor: Checkpointed,
    checkpoints: Sequence[Checkpoint],
    committed: Callable[[], Mapping[TP, int]],
    read_range: Callable[[Mapping[TP, int], Mapping[TP, int]], Iterator[list[RawRecord]]],
    progress: Progress,
) -> int:
    """Restore ``checkpoints`` into ``processor`` and replay up to the committed offsets; returns the number of
    records replayed. ``read_range(after, until)`` yields batches of records with after[tp] < offset < until[tp]
    (after[tp] absent: from the beginning)."""
    processor.restore(checkpoints)
    if not processor.replay_topics:
        return 0
    try:
        until = {tp: o for tp, o in committed().items() if tp[0] in processor.replay_topics}
    except Exception as exc:
        raise RecoveryError(f"cannot read the group's committed offsets ({type(exc).__name__}: {exc}); refusing "
                            "to start, since resuming without the replay would skip every input between the "
                            "checkpoint and the last commit") from exc
    after = replay_start(checkpoints, processor.replay_topics)
    todo = {tp: end for tp, end in until.items() if end - 1 > after.get(tp, -1)}
    if not todo:
        return 0
    started, n = time.perf_counter(), 0
    for batch in read_range({tp: after[tp] for tp in todo if tp in after}, todo):
        processor.replay(batch)
        n += len(batch)
    name = getattr(processor, "name", "processor")
    progress(f"{name}: replayed {n} records of {', '.join(processor.replay_topics)} up to the committed offsets "
             f"in {time.perf_counter() - started:.1f} s")
    return n


# --- the Kafka side -----------------------------------------------------------------------------------------

def kafka_state_records(settings: Settings, bootstrap: str, topic: str,
                        timeout_s: float = 60.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` up to a marker written just now (single-partition state topics)."""
    from streams.runtime.kafka_io import make_producer, read_topic, send_all

    key, token = marker_key(settings.app_id), uuid.uuid4().hex.encode()
    producer = make_producer(settings, bootstrap)
    try:
        send_all(producer, [OutRecord(topic, key, token)])
    finally:
        producer.close()
    seen: list[tuple[bytes | None, bytes | None]] = []
    found = False

    def stop(record: RawRecord) -> bool:
        nonlocal found
        found = record.key == key and record.value == token
        return found

    for record in read_topic(settings, bootstrap, topic, timeout_s=timeout_s, stop=stop):
        seen.append((record.key, record.value))
    if not found:
        raise RecoveryError(f"did not read back the {topic} marker within {timeout_s:g} s")
    return seen


def kafka_committed_offsets(settings: Settings, bootstrap: str, topics: Sequence[str], group_id: str
                            ) -> dict[TP, int]:
    """The group's committed offsets (next offset to read) for ``topics``; {} for a group that has none."""
    from kafka import TopicPartition

    from streams.runtime.kafka_io import admin_client, describe_topics

    counts = describe_topics(settings, bootstrap)
    wanted = [TopicPartition(t, p) for t in topics for p in range(counts.get(t, 0))]
    with admin_client(settings, bootstrap) as admin:
        got = admin.list_group_offsets({group_id: wanted}).get(group_id, {})
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in got.items()
            if tp.topic in topics and meta.offset is not None and meta.offset >= 0}


def inherited_offsets(settings: Settings, bootstrap: str, topics: Sequence[str], group_id: str,
                      previous_group: str) -> dict[TP, int]:
    """``previous_group``'s committed offsets on the partitions where ``group_id`` has none.

    Why: a processor moved from a Faust agent (group: the app id) to the batch path (its own group,
    batch_source.py) would otherwise start the new group at the beginning of its topics, applying every old
    click again and answering every old request again. Where the new group has committed, its own offsets win."""
    own = kafka_committed_offsets(settings, bootstrap, topics, group_id)
    before = kafka_committed_offsets(settings, bootstrap, topics, previous_group)
    return {tp: offset for tp, offset in before.items() if tp not in own}


def kafka_read_range(settings: Settings, bootstrap: str, timeout_s: float = 300.0
                     ) -> Callable[[Mapping[TP, int], Mapping[TP, int]], Iterator[list[RawRecord]]]:
    """A ``read_range`` for `recover`: stops on each partition's committed offset (a position the group has
    read, so it exists), never on an end offset."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.runtime.kafka_io import client_kwargs

    def read(after: Mapping[TP, int], until: Mapping[TP, int]) -> Iterator[list[RawRecord]]:
        todo = dict(until)
        consumer = KafkaConsumer(**client_kwargs(settings, bootstrap), group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", max_poll_records=2000)
        try:
            assigned = {TopicPartition(t, p): (t, p) for t, p in todo}
            consumer.assign(list(assigned))
            for ktp, tp in assigned.items():
                if tp in after:
                    consumer.seek(ktp, after[tp] + 1)
                else:
                    consumer.seek_to_beginning(ktp)
            deadline = time.monotonic() + timeout_s
            while todo:
                if time.monotonic() > deadline:
                    raise RecoveryError(f"replay did not reach the committed offsets of {sorted(todo)} "
                                        f"within {timeout_s:g} s")
                batch: list[RawRecord] = []
                for ktp, messages in consumer.poll(timeout_ms=500).items():
                    tp = assigned[ktp]
                    end = todo.get(tp)
                    for m in messages:
                        if end is None or m.offset >= end:
                            break
                        batch.append(RawRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp,
                                               tuple((k, v) for k, v in (m.headers or []))))
                        if m.offset >= end - 1:
                            todo.pop(tp, None)
                            consumer.pause(ktp)
                            break
                if batch:
                    yield batch
        finally:
            consumer.close()

    return read


def restore_from_kafka(processor: Checkpointed, store: StateStore, settings: Settings, bootstrap: str,
                       progress: Progress, partitions: Set[TP] | None = None, *, group_id: str | None = None,
                       inherited: Mapping[TP, int] | None = None) -> int:
    """The recovery of one checkpointed processor against a real cluster: at start (``partitions`` None: every
    checkpoint), or for the partitions a rebalance just assigned (handover.py: only checkpoints whose offsets
    name one of them, replayed only on them). ``inherited``: where the group has no commit, where its consumer
    will start instead (`inherited_offsets`), so the replay goes up to there."""
    checkpoints = store.load(kafka_state_records(settings, bootstrap, processor.state_topic))
    where = ""
    if partitions is not None:
        checkpoints = checkpoints_of(checkpoints, partitions)
        where = f" of {' '.join(f'{t}[{p}]' for t, p in sorted(partitions))}"
    keys = ", ".join(cp.key for cp in checkpoints[:5]) + (", ..." if len(checkpoints) > 5 else "")
    progress(f"{store.processor}: restored {len(checkpoints)} checkpoint(s){where} from {processor.state_topic}"
             + (f" ({keys})" if keys else ""))

    def committed() -> dict[TP, int]:
        offsets = kafka_committed_offsets(settings, bootstrap, processor.replay_topics, group_id or settings.app_id)
        offsets = {**{tp: o for tp, o in (inherited or {}).items() if tp[0] in processor.replay_topics}, **offsets}
        return offsets if partitions is None else {tp: o for tp, o in offsets.items() if tp in partitions}

    return recover(processor, checkpoints, committed, kafka_read_range(settings, bootstrap), progress)
