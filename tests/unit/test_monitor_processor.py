"""processors/monitor.py through the runtime core (InProcessWorker): signals from each topic, drift events,
stats, dead letters, and a restart that neither forgets nor re-raises an episode."""

from __future__ import annotations

import json

import numpy as np

from monitoring import metrics
from monitoring.drift_monitor import DriftConfig
from processors.monitor import MonitorProcessor
from streams.contracts import topics
from streams.contracts.records import RawRecord
from streams.contracts.schemas import encode, parse_drift_event
from streams.contracts.state import marker_key
from streams.runtime.testing import InProcessWorker, restart

LABELS = ["positive", "neutral", "negative"]
MODELS = {"sentiment": "sentiment-minilm-head@v1", "ner": "spacy:en_core_web_sm@3.8"}


def enriched(i: int, label: str, score: float = 0.8) -> bytes:
    text = f"Shares of Acme rose {i % 10} points"  # same length throughout: only the label mix changes
    return encode({"id": f"t{i}", "ts": 1_000 + i, "schema": "text.enriched/1", "text": text, "source": "test",
                   "sentiment": {"label": label, "score": score},
                   "entities": [{"text": "Acme", "label": "ORG", "start": 10, "end": 14}],
                   "models": MODELS, "latency_ms": 5})


def records(labels, start: int = 0, partition: int = 0) -> list[RawRecord]:
    return [RawRecord(topics.TEXT_ENRICHED, partition, start + i, f"t{start + i}".encode(),
                      enriched(start + i, lab), 1_000 + start + i) for i, lab in enumerate(labels)]


def batches(recs: list[RawRecord], size: int = 200) -> list[list[RawRecord]]:
    return [recs[i : i + size] for i in range(0, len(recs), size)]


def monitor(**kw) -> MonitorProcessor:
    return MonitorProcessor(DriftConfig(reference_events=300), stats_s=0.0, checkpoint_s=0.0, **kw)


def drift_events(outputs) -> list[dict]:
    return [parse_drift_event(o.value) for o in outputs if o.topic == topics.DRIFT_EVENTS]


def test_a_sentiment_mix_switch_raises_drift_once_and_nothing_before() -> None:
    rng = np.random.default_rng(1)
    worker = InProcessWorker(monitor())
    before = worker.run(*batches(records(rng.choice(LABELS, 3000, p=[0.35, 0.3, 0.35]))))
    assert drift_events(before) == []
    after = worker.run(*batches(records(rng.choice(LABELS, 1500, p=[0.1, 0.2, 0.7]), start=3000)))
    events = drift_events(after)
    label = [e for e in events if e["signal"] == "label"]
    assert [e["level"] for e in label][-1] == "drift", events
    drift = label[-1]
    assert drift["model"] == "sentiment" and drift["model_version"] == MODELS["sentiment"]
    assert drift["id"] == f"sentiment@{MODELS['sentiment']}:label:1:drift"
    assert drift["reference"]["events"] == 300 and drift["value"] >= drift["threshold"]
    assert 3000 - 300 < drift["events_since_reference"] < 3000 - 300 + 300  # within 300 events of the switch
    assert {e["signal"] for e in events} <= {"label", "confidence"}  # text length, entities: unchanged

    stats = [json.loads(o.value) for o in worker.tick() if o.topic == topics.DRIFT_STATS]
    by_signal = {(s["model"], s["signal"]): s for s in stats}
    assert by_signal[("sentiment", "label")]["level"] == "drift" and by_signal[("sentiment", "label")]["score"] >= 1
    assert by_signal[("ner", "entity_type")]["level"] == "none"
    assert by_signal[("sentiment", "label")]["window"]["js"] > 0.1
    assert metrics.DRIFT_LEVEL.labels("sentiment", "label")._value.get() == 2


def test_bad_events_are_dead_lettered_and_signal_less_ones_only_advance() -> None:
    worker = InProcessWorker(monitor())
    bad = [RawRecord(topics.TEXT_ENRICHED, 0, 0, b"k", b"{not json", 1),
           RawRecord(topics.TEXT_ENRICHED, 0, 1, b"k", encode({"id": "x", "text": "hi"}), 1),
           RawRecord(topics.RECS_RESPONSES, 0, 0, b"k",
                     encode({"id": "r", "model": "m", "items": [{"item_id": 1}]}), 1),
           RawRecord(topics.ASR_TRANSCRIPTS, 0, 0, b"s", encode({"id": "s:0", "final": False, "partial": True}), 1)]
    out = worker.run(bad)
    dead = [json.loads(o.value) for o in out if o.topic == topics.DEADLETTER]
    assert [(d["source"]["topic"], d["source"]["offset"]) for d in dead] == [
        (topics.TEXT_ENRICHED, 0), (topics.TEXT_ENRICHED, 1), (topics.RECS_RESPONSES, 0)]
    assert "malformed JSON" in dead[0]["reason"] and "score" in dead[2]["reason"]
    assert worker.processor.offsets[(topics.ASR_TRANSCRIPTS, 0)] == 0


def test_asr_and_recs_outputs_become_their_models_signals() -> None:
    worker = InProcessWorker(monitor())
    asr = encode({"id": "s:0", "final": True, "model": "openai-whisper:tiny.en", "start": 0.0, "end": 2.0,
                  "text": "hello there world", "avg_logprob": -0.3, "no_speech_prob": 0.01, "language": "en"})
    recs = encode({"id": "r1", "model": "online-mf@42", "items": [{"item_id": 1, "score": 0.9},
                                                                   {"item_id": 2, "score": 0.5}]})
    worker.run([RawRecord(topics.ASR_TRANSCRIPTS, 0, 0, b"s", asr, 1),
                RawRecord(topics.RECS_RESPONSES, 0, 0, b"r", recs, 1)])
    signals = {(k.model, k.signal) for k in worker.processor.monitor.signals}
    assert signals == {("asr", "segment_s"), ("asr", "words_per_s"), ("asr", "avg_logprob"),
                       ("asr", "no_speech_prob"), ("asr", "language"), ("recs", "top_score"),
                       ("recs", "mean_score")}


def test_a_restart_from_checkpoint_and_replay_neither_forgets_nor_reraises_an_episode() -> None:
    rng = np.random.default_rng(2)
    inputs = records(list(rng.choice(LABELS, 2000, p=[0.35, 0.3, 0.35]))
                     + list(rng.choice(LABELS, 1000, p=[0.1, 0.2, 0.7])), partition=0)
    first = InProcessWorker(monitor())
    out1 = first.run(*batches(inputs[:2600]))
    raised = [e["id"] for e in drift_events(out1)]
    assert any(i.endswith(":drift") for i in raised)

    # crash: the last checkpoint covers 2600 events, the group committed only 2400 of them
    again = monitor()
    store = InProcessWorker(again).store
    replayed = restart(again, [(marker_key("x"), b"t"), *first.state()], store, inputs=inputs,
                       committed={(topics.TEXT_ENRICHED, 0): 2400})
    assert replayed == 0  # the checkpoint already includes everything committed
    second = InProcessWorker(again)
    out2 = second.run(*batches(inputs[2400:]))  # the uncommitted tail is read again
    assert [e["id"] for e in drift_events(out2)] == []  # the open episode is remembered: nothing re-raised

    # a checkpoint older than the committed offsets: the gap is replayed, not skipped
    older = [(k, v) for k, v in first.state()][:3]
    third = monitor()
    n = restart(third, older, InProcessWorker(third).store, inputs=inputs,
                committed={(topics.TEXT_ENRICHED, 0): 2600})
    assert n > 0 and third.monitor.snapshot() == first.processor.monitor.snapshot()
