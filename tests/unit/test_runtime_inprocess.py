"""The runtime core through the in-process harness (streams/runtime/testing.py): ordering, read-ahead, fail-stop,
ticks, checkpoints after the outputs they account for, and the hot-swap seam — no broker, no subprocess."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref

import pytest

from models.text_types import Entity, Sentiment
from monitoring import metrics
from processors.base import ContractError, capabilities, validate
from processors.text import TextEnrichmentProcessor
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.state import Checkpoint, decode_state_record
from streams.runtime.heap import freeze_loaded
from streams.runtime.testing import InProcessWorker, TestingSink, restart


def rec(offset: int, value: bytes = b"x", partition: int = 0, topic: str = "in") -> RawRecord:
    return RawRecord(topic, partition, offset, b"k", value)


class Echo:
    """Echoes each record; counts its work, optionally slowly, and keeps a running total as its state."""

    name, source_topics, batch_size, batch_ms = "echo", ("in",), 10, 0
    state_topic, state_store, replay_topics = "echo.state", "topic", ("in",)
    tick_s = 1.0

    def __init__(self, read_ahead: int = 0, delay_s: float = 0.0) -> None:
        self.read_ahead = read_ahead
        self.delay_s = delay_s
        self.total = 0
        self.offsets: dict[tuple[str, int], int] = {}
        self.ticks = 0
        self.dirty = False

    def process(self, records):
        time.sleep(self.delay_s)
        self.replay(records)
        return [OutRecord("out", r.key, r.value, source=r) for r in records]

    def tick(self, now_ms):
        self.ticks += 1
        return [OutRecord("out", b"tick", str(self.ticks).encode())]

    def checkpoints(self, now_ms):
        if not self.dirty:
            return []
        self.dirty = False
        return [Checkpoint("echo", str(self.total).encode(), dict(self.offsets))]

    def restore(self, checkpoints):
        for cp in checkpoints:
            self.total, self.offsets = int(cp.data), dict(cp.offsets)

    def replay(self, records):
        for r in records:
            self.total += 1
            self.offsets[(r.topic, r.partition)] = r.offset
        self.dirty = True


def test_outputs_and_acks_follow_input_order_with_read_ahead() -> None:
    worker = InProcessWorker(Echo(read_ahead=2, delay_s=0.01))
    out = worker.run(*[[rec(i * 3 + j, f"v{i * 3 + j}".encode()) for j in range(3)] for i in range(4)])
    assert [o.value for o in out if o.topic == "out"] == [f"v{i}".encode() for i in range(12)]
    assert worker.acked == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_a_checkpoint_is_delivered_after_the_outputs_it_accounts_for_and_records_their_offsets() -> None:
    worker = InProcessWorker(Echo())
    out = worker.run([rec(0), rec(1)], [rec(2)])
    assert [o.topic for o in out] == ["out", "out", "echo.state", "out", "echo.state"]
    last = decode_state_record(out[-1].value)
    assert last.data == b"3" and last.offsets == {("in", 0): 2}


def test_transient_failure_fail_stops_and_nothing_after_it_is_delivered_or_acked() -> None:
    class KafkaTimeoutError(Exception):
        pass

    failing = {"on": False}
    sink = TestingSink(lambda r: KafkaTimeoutError("broker gone") if failing["on"] and r.value == b"b" else None)
    worker = InProcessWorker(Echo(read_ahead=2), sink=sink)
    worker.run([rec(0, b"a")])
    failing["on"] = True
    worker.run([rec(1, b"b")], [rec(2, b"c")])
    assert worker.stopped is not None and "KafkaTimeoutError: broker gone" in str(worker.stopped)
    assert worker.broken and worker.acked == [[0]]
    assert b"c" not in [r.value for r in sink.records]  # the batch after the failure was never delivered


def test_a_processor_bug_dead_letters_its_batch_and_the_stream_goes_on() -> None:
    class Buggy(Echo):
        def process(self, records):
            if any(r.value == b"boom" for r in records):
                raise ZeroDivisionError("oops")
            return super().process(records)

    worker = InProcessWorker(Buggy())
    out = worker.run([rec(0, b"boom")], [rec(1, b"fine")])
    assert [o.topic for o in out if o.topic != "echo.state"] == [topics.DEADLETTER, "out"]
    assert "processor crashed: ZeroDivisionError: oops" in json.loads(out[0].value)["reason"]
    assert worker.acked == [[0], [1]]


def test_ticks_run_on_the_model_thread_in_order_with_batches() -> None:
    worker = InProcessWorker(Echo())
    out = worker.run([rec(0, b"a")]) + worker.tick() + worker.run([rec(1, b"b")])
    assert [o.value for o in out if o.topic == "out"] == [b"a", b"1", b"b"]


def test_restart_restores_the_checkpoint_and_replays_up_to_the_committed_offsets() -> None:
    worker = InProcessWorker(Echo())
    inputs = [rec(i) for i in range(6)]
    worker.run(inputs[:2])  # checkpoint at offset 1; then 4 more inputs are processed and committed, no checkpoint
    again = Echo()
    n = restart(again, worker.state(), worker.store, inputs=inputs, committed={("in", 0): 6})
    assert n == 4 and again.total == 6 and again.offsets == {("in", 0): 5}


class KeywordEnricher:
    def __init__(self, version: str = "kw@1") -> None:
        self.models = {"sentiment": version, "ner": "kw@1"}
        self.model_thread: set[str] = set()

    def enrich(self, texts):
        self.model_thread.add(threading.current_thread().name)
        return [(Sentiment("positive", 0.9), [Entity("Paris", "LOC", 0, 5, 1.0)] if "Paris" in t else [])
                for t in texts]

    def replace(self, kind, model):
        self.models = {**self.models, kind: model}


def text_rec(i: int) -> RawRecord:
    return RawRecord("text.in", 0, i, b"k", encode(text_in_event(f"Paris {i}", event_id=f"t{i}", source="t")))


def test_hot_swap_happens_between_batches_and_the_next_output_names_the_new_version() -> None:
    loads: list[tuple[str, str]] = []

    def load_sentiment(version: str) -> str:
        loads.append((threading.current_thread().name, version))
        if version == "broken":
            raise FileNotFoundError("no such model: broken")
        return f"sentiment-minilm-head@{version}"

    processor = TextEnrichmentProcessor(KeywordEnricher(), loaders={"sentiment": load_sentiment})
    worker = InProcessWorker(processor)
    before = worker.run([text_rec(0)])
    assert worker.swap("sentiment", "v2") == "sentiment-minilm-head@v2"
    after = worker.run([text_rec(1)])
    assert json.loads(before[0].value)["models"]["sentiment"] == "kw@1"
    assert json.loads(after[0].value)["models"]["sentiment"] == "sentiment-minilm-head@v2"
    info = metrics.exposition().decode()
    assert 'streamsense_model_info{model="sentiment",processor="text",version="sentiment-minilm-head@v2"} 1.0' in info
    assert 'model="sentiment",processor="text",version="kw@1"' not in info  # the replaced one is gone
    assert loads[0][0].startswith("text-model")  # loaded on the processor's model thread, not the event loop
    with pytest.raises(FileNotFoundError):
        worker.swap("sentiment", "broken")
    assert json.loads(worker.run([text_rec(2)])[0].value)["models"]["sentiment"] == "sentiment-minilm-head@v2"
    with pytest.raises(KeyError, match="text cannot load 'ner'"):
        worker.swap("ner", "x")


def test_a_swapped_out_model_is_freed_although_the_worker_froze_it() -> None:
    """The worker freezes its loaded models (heap.py); the model a swap drops must not stay behind as frozen
    cyclic garbage, or every retrained model swapped in would leak the one before it."""

    class CyclicModel:
        def __init__(self, version: str) -> None:
            self.version, self.me = version, self

    class ServingEnricher(KeywordEnricher):
        def replace(self, kind: str, model: CyclicModel) -> None:
            self.serving = model
            super().replace(kind, model.version)

    enricher = ServingEnricher()
    enricher.replace("sentiment", CyclicModel("v1"))
    gone = weakref.ref(enricher.serving)
    processor = TextEnrichmentProcessor(enricher, loaders={"sentiment": CyclicModel})
    worker = InProcessWorker(processor)
    try:
        freeze_loaded()
        worker.swap("sentiment", "v2")
        assert gone() is None
    finally:
        gc.unfreeze()


def test_capabilities_are_declared_and_checked() -> None:
    assert capabilities(Echo()) == ["tick", "checkpoint"]
    assert "hot-swap" in capabilities(TextEnrichmentProcessor(KeywordEnricher()))

    class Typo(Echo):
        checkpoint_topic = "echo.state"  # the old name, singular: silently ignored before

    with pytest.raises(ContractError, match="checkpoint_topic"):
        validate(Typo())

    class HalfCheckpointed:
        name, source_topics, batch_size, batch_ms, read_ahead = "half", ("in",), 1, 0, 0
        state_topic = "half.state"

        def process(self, records):
            return []

    with pytest.raises(ContractError, match=r"part of the 'checkpoint' capability .* lacks state_store"):
        validate(HalfCheckpointed())

    class BadStore(Echo):
        state_store = "s3"

    with pytest.raises(ContractError, match="state_store must be one of"):
        InProcessWorker(BadStore())

    class NotAProcessor:
        name = "nope"

    with pytest.raises(ContractError, match="missing source_topics, batch_size, batch_ms, read_ahead, process"):
        validate(NotAProcessor())

    class SplitAndWhole(Echo):
        whole_partition_topics = ("in",)

        def release_partitions(self, partitions):
            pass

    with pytest.raises(ContractError, match="both partitioned state and whole_partition_topics"):
        validate(SplitAndWhole())

    class Unsaved:
        name, source_topics, batch_size, batch_ms, read_ahead = "unsaved", ("in",), 1, 0, 0

        def process(self, records):
            return []

        def release_partitions(self, partitions):
            pass

    with pytest.raises(ContractError, match=r"partitioned state.* not checkpointed"):
        validate(Unsaved())
