"""The retrainer through the runtime core in-process: drift + labels → request → challenger → gate → registry →
model.updates; joins, dead letters, rollbacks and restarts. Real model, real registry, small reference sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.model_store import HEAD_MODEL, model_dir
from models.movie_reviews import load_movie_reviews
from models.registry import Registry
from models.retraining import SentimentRetraining
from monitoring.retrain_policy import PolicyConfig, RetrainPolicy
from monitoring.rollback_watch import RollbackWatch
from processors.retrainer import RetrainerProcessor
from streams.contracts import topics
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import encode, parse_model_update
from streams.runtime.testing import InProcessWorker, restart


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture(scope="module")
def reviews() -> list[tuple[str, str]]:
    return load_movie_reviews()[:400]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of the replay/holdout embeddings for the module's registries (keyed by the encoder)."""
    return tmp_path_factory.mktemp("retrain-cache")


def retrainer(tmp_path: Path, clock: Clock, min_labels: int = 120, cache: Path | None = None) -> RetrainerProcessor:
    # a small replay set forgets more of the tweets: a wide tolerance (the gate itself: test_sentiment_retrain)
    retraining = SentimentRetraining(Registry(tmp_path / "registry"), margin=0.02, tolerance=0.2,
                                     default_model=lambda: model_dir() / HEAD_MODEL, progress=lambda _m: None,
                                     cache_dir=cache, replay_size=200, original_holdout_size=200)
    policy = RetrainPolicy({"sentiment": PolicyConfig(min_labels=min_labels, cooldown_s=0, schedule_s=0)})
    return RetrainerProcessor(retraining, policy, RollbackWatch(min_labels=30, threshold=0.1), join_s=60,
                              checkpoint_s=0, clock=clock)


class Offsets:
    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def record(self, topic: str, key: str, event: dict) -> RawRecord:
        offset = self.next.get(topic, 0)
        self.next[topic] = offset + 1
        return RawRecord(topic, 0, offset, key.encode(), encode(event), timestamp_ms=event.get("ts"))


def enriched(i: str, text: str, label: str, version: str) -> dict:
    return {"id": i, "ts": 1, "schema": "text.enriched/1", "text": text, "source": "api",
            "sentiment": {"label": label, "score": 0.9},
            "entities": [], "models": {"sentiment": f"sentiment-minilm-head@{version}", "ner": "x@1"},
            "latency_ms": 1}


def feedback(i: str, label: str, text: str | None = None, ts: int = 1_800_000_000_000) -> dict:
    event = {"id": i, "ts": ts, "label": label, "source": "test"}
    return {**event, "text": text} if text is not None else event


def drift_event() -> dict:
    return {"id": "sentiment@v:label:1:drift", "ts": 1, "model": "sentiment", "model_version": "m@v",
            "signal": "label", "detector": "cusum", "level": "drift", "statistic": "s", "value": 1.0,
            "threshold": 1.0, "reference": {"events": 100}, "window": {"events": 80}}


def values(outputs: list[OutRecord], topic: str) -> list[dict]:
    return [json.loads(o.value) for o in outputs if o.topic == topic]


def test_drift_then_labels_retrain_promote_and_a_bad_promotion_rolls_back(tmp_path: Path, reviews,
                                                                          embeddings: Path) -> None:
    clock, log = Clock(), Offsets()
    processor = retrainer(tmp_path, clock, cache=embeddings)
    worker = InProcessWorker(processor, clock=clock)
    champion = processor.retraining.champion().version
    out = worker.run([log.record(topics.DRIFT_EVENTS, "sentiment", drift_event())])
    assert [d["decision"] for d in values(out, topics.RETRAIN_DECISIONS)] == ["armed"]
    labeled = [log.record(topics.FEEDBACK, f"r{k}", feedback(f"r{k}", label, text))
               for k, (text, label) in enumerate(reviews[:200])]
    out = worker.run(labeled)
    clock.ms += 1000
    [request] = values(worker.tick(), topics.RETRAIN_REQUESTS)
    assert request["reason"] == "drift" and request["drift_event_id"] == drift_event()["id"]

    out = worker.run([log.record(topics.RETRAIN_REQUESTS, "sentiment", request)])
    [decision] = values(out, topics.RETRAIN_DECISIONS)
    assert decision["decision"] == "promoted", decision["detail"]
    [update] = values(out, topics.MODEL_UPDATES)
    parse_model_update(update)
    assert update["action"] == "promote" and update["previous_version"] == champion
    registry = processor.retraining.registry
    assert registry.alias("sentiment", "champion") == update["version"]
    assert registry.verify("sentiment", update["version"]).meta["sha256"] == update["sha256"]
    new = update["version"]

    # the request again (a restart before its offset was committed): same outcome, no second challenger
    again = worker.run([log.record(topics.RETRAIN_REQUESTS, "sentiment", request)])
    assert [u["id"] for u in values(again, topics.MODEL_UPDATES)] == [update["id"]]
    assert len(registry.versions("sentiment")) == 2

    # the new version serves well (labels agree with its outputs), then an operator promotes a bad one
    worker.run([log.record(topics.MODEL_UPDATES, "sentiment", update)])
    good = [(f"g{k}", text, label) for k, (text, label) in enumerate(reviews[200:260])]
    worker.run([log.record(topics.TEXT_ENRICHED, i, enriched(i, t, lab, new)) for i, t, lab in good])
    out = worker.run([log.record(topics.FEEDBACK, i, feedback(i, lab)) for i, _, lab in good])
    assert values(out, topics.RETRAIN_DECISIONS)[-1]["decision"] == "confirmed"
    bad = dict(update, version=champion, previous_version=new, id="manual")  # pretend: the old one is "bad"
    registry.promote("sentiment", champion, reason="operator")
    worker.run([log.record(topics.MODEL_UPDATES, "sentiment", bad)])
    wrong = {"positive": "negative", "negative": "positive", "neutral": "positive"}
    served = [(f"b{k}", text, label) for k, (text, label) in enumerate(reviews[260:300])]
    worker.run([log.record(topics.TEXT_ENRICHED, i, enriched(i, t, wrong[lab], champion)) for i, t, lab in served])
    out = worker.run([log.record(topics.FEEDBACK, i, feedback(i, lab)) for i, _, lab in served])
    assert [d["decision"] for d in values(out, topics.RETRAIN_DECISIONS)] == ["rolled_back"]
    [rollback] = values(out, topics.MODEL_UPDATES)
    assert (rollback["action"], rollback["version"], rollback["previous_version"]) == ("rollback", new, champion)
    assert registry.alias("sentiment", "champion") == new

    # state survives a restart: labels, policy and watch come back from the checkpoint
    copy = retrainer(tmp_path, clock, cache=embeddings)
    restart(copy, worker.state(), worker.store)
    assert list(copy.labels) == list(processor.labels)
    assert copy.watch.state() == processor.watch.state() and copy.policy.state() == processor.policy.state()


def test_labels_without_text_join_their_enriched_event_or_become_dead_letters(tmp_path: Path) -> None:
    clock, log = Clock(), Offsets()
    processor = retrainer(tmp_path, clock)
    worker = InProcessWorker(processor, clock=clock)
    worker.run([log.record(topics.FEEDBACK, "a", feedback("a", "positive")),
                log.record(topics.FEEDBACK, "b", feedback("b", "negative")),
                log.record(topics.FEEDBACK, "bad", {"id": "bad", "label": "great", "source": "x"})])
    out = worker.run([log.record(topics.TEXT_ENRICHED, "a", enriched("a", "what a film", "positive", "v1"))])
    assert [t for _, t, *_ in processor.labels] == ["what a film"] and not values(out, topics.DEADLETTER)
    clock.ms += 61_000
    dead = values(worker.tick(), topics.DEADLETTER)
    assert len(dead) == 1 and "no text for feedback id 'b'" in dead[0]["reason"]
    assert any("label" in d["reason"] for d in values(worker.sink.records, topics.DEADLETTER))


def test_two_labels_waiting_for_one_id_both_survive_a_restart_and_both_join(tmp_path: Path) -> None:
    """At-least-once feedback and two annotators both label the same event: each label is an example (a second
    one used to replace the first, which then vanished: neither a label nor a dead letter)."""
    clock, log = Clock(), Offsets()
    processor = retrainer(tmp_path, clock)
    worker = InProcessWorker(processor, clock=clock)
    worker.run([log.record(topics.FEEDBACK, "a", feedback("a", "positive")),
                log.record(topics.FEEDBACK, "a", feedback("a", "negative", ts=clock.ms + 30_000))])
    worker.tick()
    copy = retrainer(tmp_path, clock)
    restart(copy, worker.state(), worker.store)
    assert [p.label for p in copy.pending["a"]] == ["positive", "negative"]
    clock.ms += 61_000  # the first label's join window is over, the second's is not
    [dead] = values(InProcessWorker(copy, clock=clock).tick(), topics.DEADLETTER)
    assert "no text for feedback id 'a'" in dead["reason"] and dead["source"]["offset"] == 0
    out = InProcessWorker(copy, clock=clock).run(
        [log.record(topics.TEXT_ENRICHED, "a", enriched("a", "what a film", "positive", "v1"))])
    assert [(t, label) for _, t, label, _ in copy.labels] == [("what a film", "negative")] and not copy.pending
    assert not values(out, topics.DEADLETTER)


def test_requests_for_models_without_a_retrainer_are_skipped_with_the_reason(tmp_path: Path) -> None:
    clock, log = Clock(), Offsets()
    worker = InProcessWorker(retrainer(tmp_path, clock), clock=clock)
    request = {"id": "r1", "ts": 1, "model": "recs", "reason": "manual", "requested_by": "test"}
    [decision] = values(worker.run([log.record(topics.RETRAIN_REQUESTS, "recs", request)]), topics.RETRAIN_DECISIONS)
    assert decision["decision"] == "skipped" and "online" in decision["detail"]


def test_a_retrain_that_breaks_is_a_failed_decision_not_a_crash_or_a_dead_batch(tmp_path: Path) -> None:
    clock, log = Clock(), Offsets()
    retraining = SentimentRetraining(Registry(tmp_path / "registry"), margin=0.02, tolerance=0.05,
                                     default_model=lambda: tmp_path / "no-such-model", progress=lambda _m: None)
    worker = InProcessWorker(RetrainerProcessor(retraining, RetrainPolicy({}), RollbackWatch(), clock=clock),
                             clock=clock)
    request = {"id": "r1", "ts": 1, "model": "sentiment", "reason": "manual", "requested_by": "test"}
    out = worker.run([log.record(topics.FEEDBACK, "a", feedback("a", "positive", "fine film")),
                      log.record(topics.RETRAIN_REQUESTS, "sentiment", request)])
    [decision] = values(out, topics.RETRAIN_DECISIONS)
    assert (decision["decision"], decision["reason"]) == ("failed", "error") and "no-such-model" in decision["detail"]
    assert values(out, topics.DEADLETTER) == []
