"""The retraining loop through a broker: `streamsense run --processors text,monitor,retrainer`.

Tweets (the model's own domain) stream without a retrain; then movie reviews (another domain, where the
tweet model is often wrong) raise drift, labels arrive on `feedback`, the policy files a request, the
retrainer trains and gates a challenger, `model.updates` announces it, and the text worker swaps it in.
Accuracy on later reviews (from `text.enriched`, against held-back labels) must rise. Then a poisoned
feedback batch is rejected by the gate, and an operator's bad promotion, made mid-stream, is rolled back by
the live-accuracy watch — with every input id enriched exactly once and each partition switching versions
at one point. Each test runs its own broker and model directory (the registry must not leak into others).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from models.model_store import HEAD_MODEL, NER_MODEL, model_dir, retrain_cache_dir
from models.movie_reviews import load_movie_reviews
from models.tweets import load_tweets
from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode
from streams.contracts.settings import Settings
from streams.runtime.embedded import free_port
from streams.runtime.kafka_io import read_topic
from tests.integration.browser import console_errors, run_page
from tests.integration.harness import REPO, WorkerProcess, collect, produce, text_records, wait_json

pytestmark = pytest.mark.integration

FLIP = {"positive": "negative", "negative": "positive", "neutral": "neutral"}


def feedback_records(items: list[tuple[str, str, str]], *, with_text: bool, flip: bool = False) -> list[OutRecord]:
    out = []
    for event_id, text, label in items:
        event = {"id": event_id, "ts": int(time.time() * 1000), "label": FLIP[label] if flip else label,
                 "source": "test"}
        if with_text:
            event["text"] = text
        out.append(OutRecord(topics.FEEDBACK, event_id.encode(), encode(event)))
    return out


def reviews(prefix: str, rows: list[tuple[str, str]]) -> tuple[list[OutRecord], list[tuple[str, str, str]]]:
    records = text_records([t for t, _ in rows], prefix=prefix)
    return records, [(r.key.decode(), t, label) for r, (t, label) in zip(records, rows, strict=True)]


def wait_for(bootstrap: str, topic: str, match: callable, what: str, worker: WorkerProcess,
             timeout_s: float = 240.0) -> dict:
    found: list[dict] = []

    def stop(r) -> bool:
        event = json.loads(r.value)
        if match(event):
            found.append(event)
        return bool(found)

    for _ in read_topic(Settings(bootstrap=bootstrap), bootstrap, topic, timeout_s=timeout_s, stop=stop,
                        abort=lambda: worker.proc is not None and worker.proc.poll() is not None):
        pass
    assert found, f"no {what} on {topic} within {timeout_s} s; worker log:\n{worker.log()[-4000:]}"
    return found[0]


def enriched_of(bootstrap: str, prefix: str, n: int, worker: WorkerProcess) -> list[dict]:
    return collect(bootstrap, topics.TEXT_ENRICHED, n, match=prefix, worker=worker, timeout_s=180)


def accuracy(events: list[dict], truth: dict[str, str]) -> float:
    return sum(e["sentiment"]["label"] == truth[e["id"]] for e in events) / len(events)


def streamsense(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_dashboard(bootstrap: str, tmp_path: Path) -> None:
    """The loop's timeline on `streamsense dashboard`, in headless Chromium."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "dashboard", "--bootstrap", bootstrap,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/"
    try:
        wanted = {"armed", "promoted", "rejected", "rolled_back", "announced promote", "announced rollback"}
        wait_json(f"{url}api/state", lambda s: wanted <= {e["what"] for e in s["retraining"]})
        dom, console = run_page(url)
        assert console_errors(console) == [], console
        table = dom[dom.index('id="retraining"'):]
        assert all(f">{what}<" in table for what in wanted), table[:3000]
        assert "recent 0." in table  # the gate's champion → challenger numbers
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_drift_labels_retrain_promote_swap_then_reject_poison_and_roll_back_a_bad_promotion(
        own_broker: str, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for built in (HEAD_MODEL, NER_MODEL):
        (models / built).symlink_to(model_dir() / built)
    retrain_cache_dir().mkdir(parents=True, exist_ok=True)  # shared: keyed by the encoder's weights
    (models / retrain_cache_dir().name).symlink_to(retrain_cache_dir())
    env = {"STREAMSENSE_MODEL_DIR": str(models), "STREAMSENSE_DRIFT_REFERENCE_EVENTS": "200",
           "STREAMSENSE_RETRAIN_MIN_LABELS": "300", "STREAMSENSE_RETRAIN_MAX_LABELS": "300",
           "STREAMSENSE_RETRAIN_COOLDOWN_S": "3600", "STREAMSENSE_ROLLBACK_MIN_LABELS": "60",
           "STREAMSENSE_MONITOR_CHECKPOINT_S": "1"}
    cli_env = {**os.environ, **env, "KAFKA_BOOTSTRAP": own_broker}
    rows = load_movie_reviews()
    truth = {}
    worker = WorkerProcess(own_broker, tmp_path, processors="text,monitor,retrainer", env=env).start()
    try:
        worker.wait_ready(timeout_s=240)
        texts, _ = load_tweets()
        tweets = random.Random(0).sample(list(texts), 400)
        produce(own_broker, text_records(tweets, prefix="tweet"))
        enriched_of(own_broker, "tweet-", len(tweets), worker)

        # 1) the shift: 500 reviews; the monitor raises drift; 400 of them get labels (half carry the text)
        shift_records, shift = reviews("shift", rows[:500])
        truth |= {i: label for i, _, label in shift}
        produce(own_broker, shift_records)
        before = enriched_of(own_broker, "shift-", len(shift), worker)
        wait_for(own_broker, topics.DRIFT_EVENTS, lambda e: e["model"] == "sentiment" and e["level"] == "drift",
                 "sentiment drift", worker)
        requested = list(read_topic(Settings(bootstrap=own_broker), own_broker, topics.RETRAIN_REQUESTS, timeout_s=3,
                                    idle_timeout_s=2))
        assert requested == [], "a retrain was requested before enough labels arrived"
        produce(own_broker, feedback_records(shift[:200], with_text=True)
                + feedback_records(shift[200:400], with_text=False))
        promoted = wait_for(own_broker, topics.MODEL_UPDATES, lambda e: e["action"] == "promote", "promotion",
                            worker)
        assert promoted["previous_version"] and promoted["metrics"]["challenger"]["recent_accuracy"] > (
            promoted["metrics"]["champion"]["recent_accuracy"])

        # 2) the worker swapped: later reviews are served by the new version, and better
        after_records, after = reviews("after", rows[500:900])
        truth |= {i: label for i, _, label in after}
        deadline = time.monotonic() + 60
        while f'version="sentiment-minilm-head@{promoted["version"]}"' not in worker.metrics_text():
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.5)
        produce(own_broker, after_records)
        served = enriched_of(own_broker, "after-", len(after), worker)
        assert {e["models"]["sentiment"] for e in served} == {f"sentiment-minilm-head@{promoted['version']}"}
        gain = accuracy(served, truth) - accuracy(before, truth)
        assert gain >= 0.15, (accuracy(before, truth), accuracy(served, truth))

        # the new version's outputs get their labels too: its live accuracy is the bar for the next promotion
        produce(own_broker, feedback_records(after, with_text=False))

        # 3) a poisoned batch (positive and negative swapped, from a labeling tool: with text): rejected
        _, poison = reviews("poison", rows[900:1200])
        produce(own_broker, feedback_records(poison, with_text=True, flip=True))
        time.sleep(3)  # the labels are consumed before the request (different topics: no order between them)
        streamsense(cli_env, "retrain", "sentiment")
        rejected = wait_for(own_broker, topics.RETRAIN_DECISIONS, lambda e: e["decision"] == "rejected",
                            "rejection", worker)
        assert "original" in rejected["detail"], rejected

        # 4) an operator promotes the poisoned version mid-stream; labels show it is worse; it is rolled back
        stream_records, stream = reviews("live", rows[1200:1500])
        truth |= {i: label for i, _, label in stream}
        produce(own_broker, stream_records[:100])
        streamsense(cli_env, "models", "promote", "sentiment", rejected["version"])
        produce(own_broker, stream_records[100:])
        live = enriched_of(own_broker, "live-", len(stream), worker)
        produce(own_broker, feedback_records(stream, with_text=False))
        rollback = wait_for(own_broker, topics.MODEL_UPDATES, lambda e: e["action"] == "rollback", "rollback",
                            worker)
        assert (rollback["version"], rollback["previous_version"]) == (promoted["version"], rejected["version"])
        assert json.loads(streamsense(cli_env, "models", "show", "sentiment"))["version"] == promoted["version"]
        check_dashboard(own_broker, tmp_path)
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]

    # exactly once by id, and on each partition one switch from the old version to the new (no flapping)
    everything = [json.loads(r.value) for r in read_topic(Settings(bootstrap=own_broker), own_broker,
                                                          topics.TEXT_ENRICHED, timeout_s=60, idle_timeout_s=3)]
    ids = [e["id"] for e in everything]
    assert len(ids) == len(set(ids)) == len(tweets) + len(shift) + len(after) + len(stream)
    by_partition: dict[int, list[str]] = defaultdict(list)
    for e in live:
        by_partition[e["_partition"]].append(e["models"]["sentiment"])
    for versions in by_partition.values():
        switches = sum(a != b for a, b in pairwise(versions))
        assert switches <= 1, versions
    assert {v for vs in by_partition.values() for v in vs} == {f"sentiment-minilm-head@{v}" for v in (
        promoted["version"], rejected["version"])}
