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
                       ("recs", "mean_score"), ("recs", "served_popularity")}


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


def response(i: int, user: str, items: list[str], ts: int) -> RawRecord:
    value = encode({"id": f"r{i}", "ts": ts, "schema": "recs.responses/1", "user_id": user, "model": "mf@1",
                    "items": [{"item_id": it, "score": 0.5} for it in items]})
    return RawRecord(topics.RECS_RESPONSES, 0, i, f"r{i}".encode(), value, ts)


def click(i: int, user: str, item: str, ts: int) -> RawRecord:
    value = encode({"id": f"c{i}", "user_id": user, "item_id": item, "event": "click", "ts": ts})
    return RawRecord(topics.CLICKS, 0, i, user.encode(), value, ts)


def test_served_lists_become_hits_when_clicked_in_the_window_and_misses_after_it() -> None:
    worker = InProcessWorker(MonitorProcessor(DriftConfig(reference_events=50), stats_s=0.0, hit_window_s=10.0))
    served = [response(i, f"u{i}", ["a", "b"], ts=1_000 * i) for i in range(40)]
    clicks = [click(i, f"u{i}", "b", ts=1_000 * i + 500) for i in range(0, 40, 2)]  # every second user
    late = [click(100 + i, f"u{i}", "a", ts=1_000 * i + 20_000) for i in range(1, 40, 2)]  # after the window
    out = worker.run(sorted(served + clicks + late, key=lambda r: r.timestamp_ms))
    assert [o for o in out if o.topic == topics.DEADLETTER] == []
    hits = worker.processor.monitor.signals
    key = next(k for k in hits if k.signal == "hit")
    assert (key.model, key.version) == ("recs", "mf@1")
    assert {k.signal for k in hits} == {"top_score", "mean_score", "hit", "served_popularity"}
    worker.tick()
    rate = metrics.RECS_HIT_RATE.labels("mf@1")._value.get()
    assert 0.45 <= rate <= 0.55, rate  # 20 hits, ~20 misses decided so far
    bad = worker.run([click(999, "u1", "", ts=1)])
    assert json.loads(bad[0].value)["error"] == "BadInput"


def test_the_hit_tracker_decides_each_list_once_and_survives_a_checkpoint() -> None:
    from monitoring.hit_rate import HitTracker

    t = HitTracker(window_ms=100, max_pending=3)
    t.served("u", ["x"], ts=0, model="m")
    assert t.clicked("u", "x", ts=50) == [("m", "hit", 0)]
    assert t.clicked("u", "x", ts=60) == []  # already decided
    for i in range(4):
        t.served("v", ["y"], ts=10 + i, model="m")
    assert t.dropped == 1  # the undecided oldest one beyond max_pending
    again = HitTracker.from_state(json.loads(json.dumps(t.state())), max_pending=3)
    assert again.expire(now_ts=1_000) == t.expire(now_ts=1_000) == [("m", "miss", 11), ("m", "miss", 12),
                                                                    ("m", "miss", 13)]


def test_lists_collapsing_onto_the_popular_head_drift_served_popularity() -> None:
    rng = np.random.default_rng(8)
    worker = InProcessWorker(MonitorProcessor(DriftConfig(reference_events=100), stats_s=0.0))
    weights = 1 / np.arange(1, 501) ** 1.1
    items = [f"i{k}" for k in range(500)]
    clicks = [click(i, f"u{i}", str(rng.choice(items, p=weights / weights.sum())), ts=i) for i in range(5000)]
    worker.run(*batches(clicks, 1000))
    varied = [response(i, "x", list(rng.choice(items, 10, replace=False)), ts=5000 + i) for i in range(600)]
    head = [response(600 + i, "x", items[:10], ts=5600 + i) for i in range(200)]
    assert drift_events(worker.run(*batches(varied))) == []
    events = drift_events(worker.run(*batches(head, 50)))
    assert [e["level"] for e in events if e["signal"] == "served_popularity"][-1] == "drift", events
