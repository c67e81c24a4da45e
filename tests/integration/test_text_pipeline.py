"""text.in → worker → text.enriched / deadletter, through the embedded broker with real clients."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import pytest

from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import validate_text_enriched
from streams.contracts.settings import Settings
from streams.runtime.kafka_io import read_topic
from tests.integration.harness import WorkerProcess, collect, produce, text_records

pytestmark = pytest.mark.integration

TEXTS = [
    "I love this phone, the camera is wonderful!",
    "This is the worst service I have ever had, terrible and rude.",
    "Barack Obama visited Microsoft headquarters in Seattle on Monday.",
    "The train to London leaves at nine.",
]


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory):
    w = WorkerProcess(broker, Path(tmp_path_factory.mktemp("worker"))).start()
    yield w
    assert w.stop() == 0, w.log()[-3000:]


def test_text_events_are_enriched_end_to_end(broker: str, worker: WorkerProcess) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    produce(broker, text_records(TEXTS * 5, prefix))
    out = {e["id"]: e for e in collect(broker, topics.TEXT_ENRICHED, 20, match=prefix, worker=worker)}
    assert len(out) == 20
    for event in out.values():
        validate_text_enriched(event)
        assert event["source"] == "test" and event["latency_ms"] >= 0
        assert set(event["models"]) == {"sentiment", "ner"}
    assert out[f"{prefix}-0000"]["sentiment"]["label"] == "positive"
    assert out[f"{prefix}-0001"]["sentiment"]["label"] == "negative"
    ents = {(e["text"], e["label"]) for e in out[f"{prefix}-0002"]["entities"]}
    assert {("Barack Obama", "PER"), ("Seattle", "LOC")} <= ents, ents
    assert ("London", "LOC") in {(e["text"], e["label"]) for e in out[f"{prefix}-0003"]["entities"]}


def test_inputs_sharing_a_key_come_out_in_input_order(broker: str, worker: WorkerProcess) -> None:
    prefix = f"order-{uuid.uuid4().hex[:6]}"
    records = text_records([f"message number {i} about Berlin" for i in range(40)], prefix)
    # one key for all: they share a partition, so outputs must come back in exactly this order
    same_key = [OutRecord(r.topic, prefix.encode(), r.value) for r in records]
    produce(broker, same_key)
    out = collect(broker, topics.TEXT_ENRICHED, 40, match=prefix, worker=worker)
    assert len({e["_partition"] for e in out}) == 1  # all on the input's partition, though keyed by id
    assert [e["id"] for e in sorted(out, key=lambda e: e["_offset"])] == [f"{prefix}-{i:04d}" for i in range(40)]


BAD_INPUTS = {
    "malformed-json": (b'{"id": "%s", "text": "unterminated', "malformed JSON"),
    "wrong-type": (b'{"id": "%s", "text": ["a"], "source": "t"}', "field 'text' must be a string, got array"),
    "missing-field": (b'{"id": "%s", "source": "t"}', "missing required field 'text'"),
    "empty-text": (b'{"id": "%s", "text": "", "source": "t"}', "field 'text' is empty"),
    "too-long": (b'{"id": "%s", "text": "' + b"a" * 6000 + b'", "source": "t"}', "over the limit of 5000"),
    "bad-utf8": (b'{"id": "%s", "text": "caf\xe9 \xff", "source": "t"}', "not valid UTF-8"),
    "empty-value": (b"", "empty message"),
}


def test_each_kind_of_bad_input_is_dead_lettered_and_the_worker_keeps_going(broker: str, worker: WorkerProcess):
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    bad = []
    for kind, (template, _reason) in BAD_INPUTS.items():
        value = template.replace(b"%s", f"{prefix}-{kind}".encode()) if b"%s" in template else template
        bad.append(OutRecord(topics.TEXT_IN, f"{prefix}-{kind}".encode(), value))
    good = text_records(["Still working after the bad ones, great!"], prefix)
    produce(broker, bad + good)

    # dead letters are matched by key (carried over from the input), the good one by id
    deadline = time.monotonic() + 120
    dead: dict[str, dict] = {}
    for rec in read_topic(Settings(bootstrap=broker), broker, topics.DEADLETTER, timeout_s=120,
                          stop=lambda _r: len(dead) >= len(BAD_INPUTS) or time.monotonic() > deadline):
        key = (rec.key or b"").decode()
        if key.startswith(prefix):
            dead[key.removeprefix(f"{prefix}-")] = json.loads(rec.value)
    assert set(dead) == set(BAD_INPUTS), f"dead-lettered: {sorted(dead)}; worker log:\n{worker.log()[-2000:]}"
    sent = {(r.key or b"").decode().removeprefix(f"{prefix}-"): r.value for r in bad}
    for kind, (_template, reason) in BAD_INPUTS.items():
        letter = dead[kind]
        assert reason in letter["reason"], (kind, letter["reason"])
        assert letter["processor"] == "text" and letter["source"]["topic"] == topics.TEXT_IN
        assert letter["source"]["offset"] >= 0 and letter["source"]["partition"] >= 0
        assert base64.b64decode(letter["value_b64"]) == sent[kind]
    [ok] = collect(broker, topics.TEXT_ENRICHED, 1, match=prefix, worker=worker)
    assert ok["sentiment"]["label"] == "positive"



def swapped_copy(tmp: Path, version: str) -> Path:
    """The built default sentiment model under another version name (weights linked, not copied)."""
    from models.model_store import model_dir
    from models.sentiment_training import HEAD_MODEL

    src, dst = model_dir() / HEAD_MODEL, tmp / f"sentiment-{version}"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f)
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "streamsense_version": version}))
    return dst


def test_ready_health_and_a_hot_swap_through_the_worker_web_server(broker: str, worker: WorkerProcess,
                                                                   tmp_path: Path) -> None:
    ready = worker.wait_ready()
    assert ready["ready"] and any(p.startswith("text.in[") for p in ready["partitions"])
    assert worker.get("/health") == (200, {"status": "ok", "app": worker.app_id, "stalled_s": {}})
    prefix = f"swap-{uuid.uuid4().hex[:6]}"
    produce(broker, text_records(["I love this, wonderful!"], f"{prefix}-a"))
    [before] = collect(broker, topics.TEXT_ENRICHED, 1, match=f"{prefix}-a", worker=worker)

    status, body = worker.post(f"/models/text/sentiment?version={swapped_copy(tmp_path, 'v-swapped')}")
    assert status == 200 and body["serving"] == "sentiment-minilm-head@v-swapped", body
    produce(broker, text_records(["I love this, wonderful!"], f"{prefix}-b"))
    [after] = collect(broker, topics.TEXT_ENRICHED, 1, match=f"{prefix}-b", worker=worker)
    assert before["models"]["sentiment"] != after["models"]["sentiment"] == "sentiment-minilm-head@v-swapped"
    assert after["sentiment"]["label"] == before["sentiment"]["label"] == "positive"

    status, body = worker.post("/models/text/sentiment?version=/no/such/model")
    assert status == 422 and body["error"], body  # the serving model stays: see the next batch
    assert worker.post("/models/recs/model?version=x")[0] == 409  # recs does not run here
