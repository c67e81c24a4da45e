"""The demo's monitoring and retraining part: tweets (the sentiment model's own domain), then movie reviews (another
domain, where it is often wrong); the monitor raises drift, labels for some reviews arrive on ``feedback``, the
retrainer trains and gates a challenger, promotes it, and the worker swaps it in — later reviews are served by
the new version, and better."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.settings import Settings
from streams.runtime.kafka_io import read_topic, send_all

TWEETS, REVIEWS, LABELS, LATER = 300, 300, 200, 150
# the demo worker's settings for this part: a short reference, a retrain after LABELS labels
ENV = {"STREAMSENSE_DRIFT_REFERENCE_EVENTS": "100", "STREAMSENSE_RETRAIN_MIN_LABELS": str(LABELS),
       "STREAMSENSE_RETRAIN_COOLDOWN_S": "3600", "STREAMSENSE_DRIFT_STATS_S": "1"}


@dataclass
class RetrainTour:
    drift: dict[str, Any]
    update: dict[str, Any]
    accuracy_before: float  # the champion on the reviews
    accuracy_after: float  # the promoted version on later reviews
    served_by_new: int
    seconds: float  # from the labels being sent to the promotion's announcement


def events_until(settings: Settings, bootstrap: str, topic: str, done: Callable[[list[dict]], bool],
                 timeout_s: float) -> list[dict]:
    """JSON events of ``topic`` from its beginning until ``done(events so far)``; raises on timeout."""
    seen: list[dict] = []
    for _ in read_topic(settings, bootstrap, topic, timeout_s=timeout_s,
                          stop=lambda r: seen.append(json.loads(r.value or b"{}")) or done(seen)):
        pass
    if not done(seen):
        raise TimeoutError(f"waited {timeout_s:.0f} s on {topic}")
    return seen


def run_retrain_tour(settings: Settings, bootstrap: str, producer: Any, run_id: str,
                     say: Callable[[str], None]) -> RetrainTour:
    from models.movie_reviews import load_movie_reviews
    from models.tweets import load_tweets

    def texts(rows: list[str], part: str) -> list[OutRecord]:
        events = [text_in_event(t, event_id=f"{part}-{run_id}-{i:04d}", source="demo") for i, t in enumerate(rows)]
        return [OutRecord(topics.TEXT_IN, e["id"].encode(), encode(e)) for e in events]

    def enriched(part: str, n: int) -> dict[str, dict]:
        mine = lambda e: e.get("id", "").startswith(f"{part}-{run_id}")  # noqa: E731
        got = events_until(settings, bootstrap, topics.TEXT_ENRICHED, lambda s: sum(map(mine, s)) >= n, 120)
        return {e["id"]: e for e in got if mine(e)}

    reviews = load_movie_reviews()[: REVIEWS + LATER]
    truth = {f"review-{run_id}-{i:04d}": label for i, (_, label) in enumerate(reviews[:REVIEWS])}
    truth |= {f"later-{run_id}-{i:04d}": label for i, (_, label) in enumerate(reviews[REVIEWS:])}
    send_all(producer, texts(random.Random(0).sample(list(load_tweets()[0]), TWEETS), "tweet"))
    enriched("tweet", TWEETS)
    say(f"monitor: {TWEETS} tweets enriched (the sentiment model's own domain): its reference")
    switched = int(time.time() * 1000)
    send_all(producer, texts([t for t, _ in reviews[:REVIEWS]], "review"))
    before = enriched("review", REVIEWS)
    drift = events_until(settings, bootstrap, topics.DRIFT_EVENTS, lambda s: any(
        e.get("model") == "sentiment" and e.get("level") == "drift" and e.get("ts", 0) >= switched for e in s), 60)[-1]
    say(f"monitor: {REVIEWS} movie reviews later, drift on sentiment/{drift['signal']} "
        f"({drift['statistic']} {drift['value']:.1f} > {drift['threshold']:.1f})")
    labeled_at = time.time()
    send_all(producer, [OutRecord(topics.FEEDBACK, i.encode(), encode({"id": i, "label": label, "source": "demo"}))
                        for i, label in list(truth.items())[:LABELS]])
    say(f"retrainer: {LABELS} labels for those reviews sent to {topics.FEEDBACK}")
    update = events_until(settings, bootstrap, topics.MODEL_UPDATES,
                          lambda s: any(e.get("action") == "promote" for e in s), 120)[-1]
    version = f"@{update['version']}"
    send_all(producer, texts([t for t, _ in reviews[REVIEWS:]], "later"))
    later = enriched("later", LATER)
    new = {i: e for i, e in later.items() if e["models"]["sentiment"].endswith(version)}
    return RetrainTour(drift, update, accuracy(before, truth), accuracy(new or later, truth), len(new),
                       update["ts"] / 1000 - labeled_at)


def accuracy(events: dict[str, dict], truth: dict[str, str]) -> float:
    return sum(e["sentiment"]["label"] == truth[i] for i, e in events.items()) / max(len(events), 1)


def print_retrain_tour(tour: RetrainTour) -> None:
    champion, challenger = tour.update["metrics"]["champion"], tour.update["metrics"]["challenger"]
    print(f"retraining: drift on sentiment/{tour.drift['signal']} → {LABELS} labels → challenger "
          f"{tour.update['version']} promoted (gate: recent accuracy {champion.get('recent_accuracy', 0):.2f} → "
          f"{challenger.get('recent_accuracy', 0):.2f}, tweets {champion.get('original_accuracy', 0):.2f} → "
          f"{challenger.get('original_accuracy', 0):.2f})")
    print(f"  promoted {tour.seconds:.1f} s after the labels were sent; the worker swapped without a restart: "
          f"{tour.served_by_new}/{LATER} later reviews served by {tour.update['version']}")
    print(f"  accuracy on movie reviews: {tour.accuracy_before:.2f} (the tweet model) → {tour.accuracy_after:.2f} "
          "(retrained)\n")
