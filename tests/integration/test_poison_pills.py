"""Poison pills through the broker: a message whose dead letter (or output) would exceed the message limit
must become a bounded dead letter, the worker must keep running, and the good message behind it must come out.

One worker hosts text, asr and recs (each processor has its own agent, one group): the reproduction of the
900 KB text from the bug report, then the same shape for an oversized audio chunk and a recs request."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from streams.audio_producer import chunk_headers
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.settings import Settings
from streams.runtime.kafka_io import read_topic
from tests.integration.harness import WorkerProcess, checkpoint_key, collect, produce, text_records

pytestmark = pytest.mark.integration

LIMIT = 1_048_576


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = Path(tmp_path_factory.mktemp("poison"))
    w = WorkerProcess(broker, tmp, processors="text,asr,recs",
                      env={"STREAMSENSE_STATE_DIR": str(tmp / "state"), "STREAMSENSE_RECS_CONTENT": "0"}).start()
    w.wait_ready(timeout_s=180)
    yield w
    assert w.stop() == 0, w.log()[-3000:]


def dead_letter_for(broker: str, worker: WorkerProcess, key: bytes, timeout_s: float = 90) -> tuple[RawRecord, dict]:
    for record in read_topic(Settings(bootstrap=broker), broker, topics.DEADLETTER, timeout_s=timeout_s,
                             stop=lambda r: r.key == key, abort=lambda: worker.proc.poll() is not None):
        if record.key == key:
            return record, json.loads(record.value)
    raise AssertionError(f"no dead letter for {key!r}; worker log:\n{worker.log()[-3000:]}")


def assert_bounded_dead_letter(record: RawRecord, letter: dict, original: bytes, topic: str) -> None:
    assert len(record.value) + len(record.key or b"") < LIMIT
    assert letter["truncated"] is True and letter["value_bytes"] == len(original)
    assert letter["value_sha256"] == hashlib.sha256(original).hexdigest()
    assert letter["source"]["topic"] == topic and letter["source"]["offset"] >= 0
    assert "truncated to fit the 1048576-byte message limit" in letter["reason"]


def assert_alive(worker: WorkerProcess) -> None:
    time.sleep(1.0)  # a fail-stop exits right after the failed delivery
    assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}:\n{worker.log()[-3000:]}"


def test_a_900_kb_text_is_dead_lettered_and_the_good_text_behind_it_is_enriched(broker, worker):
    tag = uuid.uuid4().hex[:6]
    big = json.dumps({"id": f"big-{tag}", "text": "a" * 900_000, "source": "ceo"}).encode()
    produce(broker, [OutRecord(topics.TEXT_IN, f"big-{tag}".encode(), big),
                     *text_records(["I love Paris"], f"good-{tag}")])
    [enriched] = collect(broker, topics.TEXT_ENRICHED, 1, match=f"good-{tag}", worker=worker)
    assert enriched["text"] == "I love Paris" and enriched["sentiment"]["label"] == "positive"
    record, letter = dead_letter_for(broker, worker, f"big-{tag}".encode())
    assert_bounded_dead_letter(record, letter, big, topics.TEXT_IN)
    assert "over the limit of 5000" in letter["reason"] and letter["processor"] == "text"
    assert_alive(worker)


def test_an_oversized_audio_chunk_is_dead_lettered_and_the_next_chunk_is_processed(broker, worker):
    tag = uuid.uuid4().hex[:6]
    big_sid, good_sid = f"big-{tag}", f"good-{tag}"
    big = np.zeros(450_000, "<i2").tobytes()  # 900 KB of PCM16: 56 s at 8 kHz, over the 30 s chunk limit
    tone = (np.sin(np.arange(8000) / 5) * 8000).astype("<i2").tobytes()
    produce(broker, [
        OutRecord(topics.AUDIO_CHUNKS, big_sid.encode(), big, chunk_headers(big_sid, 0, 8000, 1)),
        OutRecord(topics.AUDIO_CHUNKS, good_sid.encode(), tone, chunk_headers(good_sid, 0, 16000, 1, eos=True)),
    ])
    record, letter = dead_letter_for(broker, worker, big_sid.encode())
    assert_bounded_dead_letter(record, letter, big, topics.AUDIO_CHUNKS)
    assert letter["processor"] == "asr" and "30" in letter["reason"]
    # the good chunk was processed: its stream's state was checkpointed (ended by its eos)
    states = [r for r in read_topic(Settings(bootstrap=broker), broker, topics.ASR_STATE, timeout_s=60,
                                    stop=lambda r: checkpoint_key(r) == good_sid) if checkpoint_key(r) == good_sid]
    assert states, worker.log()[-3000:]
    assert_alive(worker)


def test_a_recs_request_with_absurd_k_and_a_huge_body_is_dead_lettered_and_the_next_is_answered(broker, worker):
    tag = uuid.uuid4().hex[:6]
    big = json.dumps({"id": f"big-{tag}", "user_id": "u1", "k": 10**12, "pad": "x" * 900_000}).encode()
    good = json.dumps({"id": f"good-{tag}", "user_id": "u1", "k": 5}).encode()
    produce(broker, [OutRecord(topics.RECS_REQUESTS, f"big-{tag}".encode(), big),
                     OutRecord(topics.RECS_REQUESTS, f"good-{tag}".encode(), good)])
    [response] = collect(broker, topics.RECS_RESPONSES, 1, match=f"good-{tag}", worker=worker)
    assert response["user_id"] == "u1" and len(response["items"]) <= 5
    record, letter = dead_letter_for(broker, worker, f"big-{tag}".encode())
    assert_bounded_dead_letter(record, letter, big, topics.RECS_REQUESTS)
    assert "field 'k' must be an integer in 1..1000" in letter["reason"]
    assert_alive(worker)
