"""streams/runtime/recovery.py and the state store with lists, no broker: restore, then replay exactly the
inputs between the checkpoints and the group's committed offsets, or refuse to start."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import torch

from models.recs import OnlineRecommender, RecsConfig
from processors.base import validate
from processors.recs import RecsProcessor
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.state import TP, Checkpoint, decode_state_record, marker_key
from streams.runtime.recovery import RecoveryError, recover, replay_start
from streams.runtime.state_store import StateStore
from streams.runtime.testing import InProcessWorker, restart

torch.set_num_threads(1)


def small_model() -> OnlineRecommender:  # as in test_recs_processor.py
    return OnlineRecommender(RecsConfig(dim=8, use_content=False, replay_size=2000, recent_size=200,
                                        n_shared_negatives=32))


class Offsets:
    def __init__(self) -> None:
        self.next: dict[TP, int] = {}

    def rec(self, topic: str, value: dict, partition: int = 0) -> RawRecord:
        off = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = off + 1
        return RawRecord(topic, partition, off, None, json.dumps(value).encode())


def click(o: Offsets, eid: str, user: str, item: str, partition: int = 0) -> RawRecord:
    return o.rec(topics.CLICKS, {"id": eid, "user_id": user, "item_id": item, "event": "click", "ts": 1},
                 partition=partition)


class RecordingRecs(RecsProcessor):
    """The real recs processor, remembering what the runtime replayed into it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.replayed: list[RawRecord] = []

    def replay(self, records: Sequence[RawRecord]) -> None:
        self.replayed.extend(records)
        super().replay(records)


class Recorder:
    """A checkpointed processor that remembers what it was restored from and what it replayed."""

    name = "fake"
    source_topics = ("a", "b", "requests")
    batch_size, batch_ms, read_ahead = 100, 0, 0
    state_topic = "fake.state"
    state_store = "topic"

    def __init__(self, replay_topics: tuple[str, ...] = ("a", "b")) -> None:
        self.replay_topics = replay_topics
        self.restored: list[Checkpoint] | None = None
        self.replayed: list[RawRecord] = []
        self.batches = 0

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        return []

    def checkpoints(self, now_ms: int) -> list[Checkpoint]:
        return []

    def restore(self, checkpoints: Sequence[Checkpoint]) -> None:
        self.restored = list(checkpoints)

    def replay(self, records: Sequence[RawRecord]) -> None:
        self.batches += 1
        self.replayed.extend(records)


def inputs(per_partition: int = 10) -> list[RawRecord]:
    tps = [("a", 0), ("a", 1), ("b", 0), ("requests", 0)]
    return [RawRecord(t, p, o, None, f"{t}{p}:{o}".encode()) for o in range(per_partition) for t, p in tps]


class Reader:
    """A ``read_range`` over a list that records what it was asked for."""

    def __init__(self, records: Sequence[RawRecord], batch: int = 3) -> None:
        self.records = records
        self.batch = batch
        self.calls: list[tuple[dict[TP, int], dict[TP, int]]] = []

    def __call__(self, after: Mapping[TP, int], until: Mapping[TP, int]) -> Iterator[list[RawRecord]]:
        self.calls.append((dict(after), dict(until)))
        todo = [r for r in self.records if (r.topic, r.partition) in until
                and after.get((r.topic, r.partition), -1) < r.offset < until[(r.topic, r.partition)]]
        for k in range(0, len(todo), self.batch):
            yield todo[k : k + self.batch]


def never_called(*_args: object) -> Iterator[list[RawRecord]]:
    raise AssertionError("must not be called")


def offsets_of(records: Sequence[RawRecord]) -> dict[TP, list[int]]:
    out: dict[TP, list[int]] = {}
    for r in records:
        out.setdefault((r.topic, r.partition), []).append(r.offset)
    return out


# --- (1) the recovery hole -------------------------------------------------------------------------------

def test_unreadable_committed_offsets_refuse_to_start() -> None:
    """The old recs restore caught any error of the committed-offsets lookup and replayed nothing, so the
    inputs between the last checkpoint and the last commit were silently never applied. Now it is fatal."""
    p = Recorder()
    cp = Checkpoint("k", b"state", {("a", 0): 3})

    def committed() -> dict[TP, int]:
        raise ConnectionError("broker unreachable")

    with pytest.raises(RecoveryError) as info:
        recover(p, [cp], committed, never_called, lambda _m: None)
    message = str(info.value)
    assert "committed offsets" in message and "ConnectionError: broker unreachable" in message
    assert "skip every input between the checkpoint and the last commit" in message
    assert isinstance(info.value.__cause__, ConnectionError)
    assert p.restored == [cp] and p.replayed == []


def test_recs_restart_refuses_when_committed_offsets_are_unknown(tmp_path: Path) -> None:
    o = Offsets()
    p = RecsProcessor(small_model(), app_id="app", checkpoint_events=5, checkpoint_s=3600)
    worker = InProcessWorker(p, app_id="app", state_dir=str(tmp_path))
    clicks = [click(o, f"e{k}", f"u{k % 2}", f"i{k}") for k in range(8)]
    worker.run(clicks[:5], clicks[5:])  # checkpoint after 5; 3 more processed (and committed)

    def committed() -> dict[TP, int]:
        raise ConnectionError("no coordinator")

    second = RecsProcessor(small_model(), app_id="app")
    with pytest.raises(RecoveryError, match="would skip every input"):
        restart(second, worker.state(), worker.store, inputs=clicks, committed=committed)
    assert second.model.n_applied == 5  # restored, but the worker must not start with it


# --- (2) what is replayed --------------------------------------------------------------------------------

def test_replays_exactly_the_inputs_between_checkpoint_and_commit_per_partition() -> None:
    p, read, said = Recorder(), Reader(inputs()), []
    checkpoints = [Checkpoint("k", b"", {("a", 0): 4, ("a", 1): 1})]  # ("b", 0): in no checkpoint
    committed = {("a", 0): 8, ("a", 1): 2, ("b", 0): 3, ("requests", 0): 9}  # a1: nothing after offset 1
    n = recover(p, checkpoints, lambda: committed, read, said.append)
    assert offsets_of(p.replayed) == {("a", 0): [5, 6, 7], ("b", 0): [0, 1, 2]}
    assert n == 6 and p.batches == 2
    assert read.calls == [({("a", 0): 4}, {("a", 0): 8, ("b", 0): 3})]  # requests is not a replay topic
    [line] = said
    assert "replayed 6 records of a, b up to the committed offsets" in line


def test_nothing_is_replayed_for_a_new_group_or_a_checkpoint_at_or_past_the_commit() -> None:
    checkpoints = [Checkpoint("k", b"", {("a", 0): 4, ("b", 0): 6})]
    for committed in ({}, {("a", 0): 5, ("b", 0): 3}):  # no group yet; everything committed is included
        p, said = Recorder(), []
        assert recover(p, checkpoints, lambda c=committed: c, never_called, said.append) == 0
        assert p.restored == checkpoints and p.replayed == [] and said == []


def test_recs_replay_applies_the_clicks_after_the_checkpoint_up_to_the_commit(tmp_path: Path) -> None:
    """The real processor, store and runtime core: 2 click partitions and the catalog, checkpointed at
    different points per partition; the restart applies what each partition committed after them."""
    o = Offsets()
    p = RecsProcessor(small_model(), app_id="app", checkpoint_events=14, checkpoint_s=3600)
    worker = InProcessWorker(p, app_id="app", state_dir=str(tmp_path))
    items = [o.rec(topics.ITEMS, {"item_id": f"i{k}", "title": f"t{k}"}) for k in range(6)]
    clicks = [click(o, f"e{k}", f"u{k % 4}", f"i{k % 6}", partition=k % 2) for k in range(40)]  # 20 each
    more_items = [o.rec(topics.ITEMS, {"item_id": f"j{k}", "title": f"new {k}"}) for k in range(3)]
    [state] = worker.run(items + clicks[:14])  # 6 items + 14 clicks
    cp = decode_state_record(state.value)
    assert cp.offsets == {(topics.ITEMS, 0): 5, (topics.CLICKS, 0): 6, (topics.CLICKS, 1): 6}
    assert worker.run(clicks[14:24] + more_items) == []  # 10 clicks + 3 items since: not due
    assert p.model.n_applied == 24 and p.model.n_items == 9
    # committed: everything processed on partition 0 and the catalog; partition 1 only up to offset 9
    committed = {(topics.CLICKS, 0): 12, (topics.CLICKS, 1): 10, (topics.ITEMS, 0): 9}

    second = RecordingRecs(small_model(), app_id="app")
    n = restart(second, worker.state(), worker.store, inputs=items + clicks + more_items, committed=committed)
    assert offsets_of(second.replayed) == {(topics.CLICKS, 0): [*range(7, 12)], (topics.CLICKS, 1): [7, 8, 9],
                                    (topics.ITEMS, 0): [6, 7, 8]}
    assert n == 11
    assert second.model.n_applied == 14 + 5 + 3 and second.model.n_items == 9
    assert second.offsets == {(topics.ITEMS, 0): 8, (topics.CLICKS, 0): 11, (topics.CLICKS, 1): 9}

    fresh = RecordingRecs(small_model(), app_id="app")  # a new group: restored, nothing replayed
    assert restart(fresh, worker.state(), worker.store, inputs=items + clicks + more_items, committed={}) == 0
    assert fresh.model.n_applied == 14 and fresh.offsets == cp.offsets and fresh.replayed == []


# --- (3) where the replay starts -------------------------------------------------------------------------

def test_replay_start_is_the_smallest_offset_any_checkpoint_claims() -> None:
    checkpoints = [
        Checkpoint("s1", b"", {("a", 0): 10, ("a", 1): 3, ("other", 0): 1}),
        Checkpoint("s2", b"", {("a", 0): 4, ("b", 0): 7}),
        Checkpoint("s3", b"", {("a", 1): 9}),
    ]
    assert replay_start(checkpoints, ("a", "b")) == {("a", 0): 4, ("a", 1): 3, ("b", 0): 7}
    assert replay_start(checkpoints, ("b",)) == {("b", 0): 7}
    assert replay_start([], ("a",)) == {}
    assert replay_start([Checkpoint("s", b"", {("a", 0): 0})], ("a",)) == {("a", 0): 0}  # offset 0 is included


def test_several_checkpoints_replay_from_the_oldest() -> None:
    p, read = Recorder(), Reader(inputs())
    checkpoints = [Checkpoint("s1", b"", {("a", 0): 6}), Checkpoint("s2", b"", {("a", 0): 2})]
    assert recover(p, checkpoints, lambda: {("a", 0): 9}, read, lambda _m: None) == 6
    assert offsets_of(p.replayed) == {("a", 0): [3, 4, 5, 6, 7, 8]}


# --- (4) nothing to replay, nothing to ask ---------------------------------------------------------------

def test_no_replay_topics_never_asks_for_committed_offsets() -> None:
    p = Recorder(replay_topics=())
    validate(p)

    def committed() -> dict[TP, int]:
        raise AssertionError("the committed offsets must not be looked up")

    cp = Checkpoint("k", b"x", {("a", 0): 1})
    assert recover(p, [cp], committed, never_called, lambda _m: None) == 0
    assert p.restored == [cp] and p.replayed == []


# --- (5) the state store ---------------------------------------------------------------------------------

def file_store(tmp_path: Path, app_id: str = "app") -> StateStore:
    return StateStore(topic="fake.state", kind="file", processor="fake", app_id=app_id, state_dir=tmp_path)


def pairs(records: Sequence[OutRecord]) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for r in records]


def test_file_store_keeps_the_two_newest_files_per_key(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    written: list[OutRecord] = []
    for n in range(4):
        written += store.records([Checkpoint("k", f"state {n}".encode(), {("a", 0): n})])
        time.sleep(0.01)  # distinct mtimes even on file systems with coarse timestamps
    [other] = store.records([Checkpoint("other key", b"its state", {("a", 0): 0})])
    paths = [decode_state_record(r.value).path for r in written]
    assert all(Path(p or "").parent == tmp_path / "app" / "fake" for p in paths)
    kept = {str(p) for p in store.directory.glob("*.ckpt")}
    assert kept == {paths[2], paths[3], decode_state_record(other.value).path}
    [latest, its] = store.load(pairs([*written, other]))
    assert (latest.key, latest.data, dict(latest.offsets)) == ("k", b"state 3", {("a", 0): 3})
    assert (its.key, its.data) == ("other key", b"its state")
    # a crash before the last record was delivered: the topic still points at the previous file
    [previous] = store.load(pairs(written[:3]))
    assert previous.data == b"state 2"
    assert store.load(pairs(written[:2])) == []  # older files are gone


def test_topic_store_round_trips_inline(tmp_path: Path) -> None:
    store = StateStore(topic="fake.state", kind="topic", processor="fake", app_id="app", state_dir=tmp_path)
    cp = Checkpoint("stream-1", b"\x00audio", {("a", 1): 5}, {"model": "m@1"})
    [record] = store.records([cp])
    assert record.topic == "fake.state" and record.key == b"app/stream-1"
    assert store.load(pairs([record])) == [cp]
    assert not list(tmp_path.rglob("*.ckpt"))
    other = StateStore(topic="fake.state", kind="topic", processor="fake", app_id="other", state_dir=tmp_path)
    [theirs] = other.records([Checkpoint("stream-1", b"\x01other app", {("a", 1): 9})])
    assert theirs.key != record.key  # compaction keeps both apps' state for the same stream id
    assert store.load(pairs([record, theirs])) == [cp] and other.load(pairs([record, theirs]))[0].offsets == {
        ("a", 1): 9}


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_missing_or_corrupt_file_is_skipped_with_a_warning(tmp_path: Path, damage: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    store = file_store(tmp_path)
    records = store.records([Checkpoint("lost", b"lost state", {("a", 0): 3}),
                             Checkpoint("fine", b"fine state", {("a", 0): 1})])
    path = Path(decode_state_record(records[0].value).path or "")
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"lost statX")
    with caplog.at_level(logging.WARNING, logger="streams.runtime.state_store"):
        [kept] = store.load(pairs(records))
    assert kept.key == "fine" and kept.data == b"fine state"
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "'lost'" in text and str(path) in text and "replayed from the beginning" in text
    assert ("does not match the sha256 of its record" in text) == (damage == "corrupt")
    assert ("is unreadable" in text) == (damage == "deleted")


def test_an_unreadable_record_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = file_store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="streams.runtime.state_store"):
        assert store.load([(b"app/k", b"\x00\x00\x00\x05{nope")]) == []
    assert "unreadable state record" in caplog.text


def test_tombstone_deletes_a_keys_state_and_markers_are_skipped(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    first = pairs(store.records([Checkpoint("k", b"v1"), Checkpoint("j", b"j1")]))
    marker = (marker_key("app"), b"token")
    assert [cp.key for cp in store.load([*first, marker])] == ["k", "j"]
    assert [cp.key for cp in store.load([*first, (b"app/k", None), marker])] == ["j"]
    again = pairs(store.records([Checkpoint("k", b"v2")]))
    assert [(cp.key, cp.data) for cp in store.load([*first, (b"app/k", None), *again])] == [("k", b"v2"),
                                                                                              ("j", b"j1")]
    assert store.load([(None, b"keyless"), (b"app/k", None)]) == []


def test_a_lost_state_is_replayed_from_the_beginning(tmp_path: Path) -> None:
    """load skips a checkpoint whose file is gone, so recover replays its partitions from the start."""
    store = file_store(tmp_path)
    state = pairs(store.records([Checkpoint("k", b"state", {("a", 0): 6})]))
    for f in store.directory.glob("*.ckpt"):
        f.unlink()
    p, read = Recorder(), Reader(inputs())
    assert recover(p, store.load(state), lambda: {("a", 0): 4}, read, lambda _m: None) == 4
    assert p.restored == [] and offsets_of(p.replayed) == {("a", 0): [0, 1, 2, 3]}
    assert read.calls == [({}, {("a", 0): 4})]
