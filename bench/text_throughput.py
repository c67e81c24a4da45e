"""Text enrichment throughput and latency through the broker, against the naive per-message baseline.

Both sides read the same held-out tweets from Kafka and write enriched events back to Kafka:
- streamsense: a `streamsense run --processors text` worker (Faust, micro-batches, lean model path);
- naive: the loop most tutorials show — a kafka-python consumer calling one Hugging Face
  `pipeline("text-classification")` and the NER model once per message, producing each result —
  on the very same sentiment weights (the worker's model object) and the same NER model
  (STREAMSENSE_NER_MODEL; a spaCy NER runs as the full `nlp(text)` pipeline, as tutorials do).

Phases: (1) backlog throughput: N events produced at once, time until the last output;
(2) latency at a steady rate (a fraction of the measured throughput): end-to-end per event, from the
event's `ts` to the moment the bench's consumer received its output. The last line prints the ratio.

    .venv/bin/python bench/text_throughput.py [--events 2000] [--baseline-events 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.ner import load_ner, normalize_entity_label
from models.sentiment import load_sentiment, normalize_labels
from models.tweets import split_tweets
from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode, now_ms, text_in_event
from streams.contracts.settings import Settings
from streams.contracts.topics import TopicSpec
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import client_kwargs, ensure_topics, make_producer, read_topic, send_all
from tests.integration.harness import WorkerProcess

BASELINE_IN = TopicSpec("bench.naive.in", "naive baseline input")
BASELINE_OUT = TopicSpec("bench.naive.out", "naive baseline output")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def records_for(texts: list[str], prefix: str, topic: str = topics.TEXT_IN) -> list[OutRecord]:
    events = [text_in_event(t, event_id=f"{prefix}-{i:05d}", source="bench") for i, t in enumerate(texts)]
    return [OutRecord(topic, e["id"].encode(), encode(e)) for e in events]


def wait_outputs(settings: Settings, bootstrap: str, topic: str, prefix: str, want: int,
                 timeout_s: float) -> dict[str, tuple[float, dict]]:
    """id → (receive time, event) for outputs whose id starts with prefix."""
    got: dict[str, tuple[float, dict]] = {}
    for rec in read_topic(settings, bootstrap, topic, timeout_s=timeout_s, stop=lambda _r: len(got) >= want):
        event = json.loads(rec.value)
        if event["id"].startswith(prefix):
            got.setdefault(event["id"], (time.time(), event))
    return got


def run_pipeline(settings: Settings, bootstrap: str, texts: list[str], rate_fraction: float, latency_s: float,
                 log_dir: Path) -> dict:
    worker = WorkerProcess(bootstrap, log_dir, app_id=f"bench-{uuid.uuid4().hex[:6]}").start()
    try:
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        send_all(make_producer(settings, bootstrap), records_for(texts[:64], warm))
        wait_outputs(settings, bootstrap, topics.TEXT_ENRICHED, warm, 64, timeout_s=180)  # models loaded, group joined

        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        records = records_for(texts, prefix)
        producer = make_producer(settings, bootstrap)
        t0 = time.time()
        send_all(producer, records)
        produced_s = time.time() - t0
        out = wait_outputs(settings, bootstrap, topics.TEXT_ENRICHED, prefix, len(texts), timeout_s=600)
        elapsed = max(t for t, _ in out.values()) - t0
        throughput = len(out) / elapsed

        rate = max(1.0, throughput * rate_fraction)
        paced = f"paced-{uuid.uuid4().hex[:6]}"
        n_paced = int(rate * latency_s)
        paced_texts = [texts[i % len(texts)] for i in range(n_paced)]

        def pace() -> None:
            start = time.time()
            for i, rec in enumerate(records_for(paced_texts, paced)):
                delay = start + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                event = json.loads(rec.value)
                event["ts"] = now_ms()
                producer.send(rec.topic, key=rec.key, value=encode(event))
            producer.flush()

        sender = threading.Thread(target=pace)
        sender.start()
        paced_out = wait_outputs(settings, bootstrap, topics.TEXT_ENRICHED, paced, n_paced, timeout_s=latency_s + 120)
        sender.join()
        producer.close()
        lat = [recv * 1000 - ev["ts"] + ev["latency_ms"] for recv, ev in paced_out.values()]
        # ts in the output is the enrichment time; input ts = ts - latency_ms; end to end = receive - input ts
        return {
            "events": len(out), "seconds": elapsed, "throughput": throughput, "produce_s": produced_s,
            "rate": rate, "paced_events": len(paced_out), "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "outputs": {k[len(prefix) + 1:]: ev for k, (_t, ev) in out.items()},
        }
    finally:
        worker.stop()


def run_naive(settings: Settings, bootstrap: str, texts: list[str]) -> dict:
    """The tutorial loop, verbatim in spirit: poll one message, run the models on it, produce, repeat."""
    from transformers import pipeline

    sentiment = load_sentiment("default")  # the worker's model: same weights, same int8 quantization
    classify = pipeline("text-classification", model=sentiment.runner, tokenizer=sentiment.tokenizer, device=-1)
    entities_of = naive_ner(settings.ner_model)

    prefix = f"naive-{uuid.uuid4().hex[:6]}"
    producer = make_producer(settings, bootstrap, linger_ms=0)
    send_all(producer, records_for(texts, prefix, BASELINE_IN.name))
    consumer = KafkaConsumer(BASELINE_IN.name, **client_kwargs(settings, bootstrap), group_id=prefix,
                             auto_offset_reset="earliest", enable_auto_commit=True, session_timeout_ms=6000,
                             heartbeat_interval_ms=1000)
    done: dict[str, dict] = {}
    latencies: list[float] = []
    t0 = time.time()
    deadline = t0 + 900
    while len(done) < len(texts) and time.time() < deadline:
        for msg in consumer:  # one message at a time
            event = json.loads(msg.value)
            pred = classify(event["text"])[0]
            ents = entities_of(event["text"])
            out = {"id": event["id"], "sentiment": normalize_labels({0: pred["label"]})[0], "entities": ents}
            producer.send(BASELINE_OUT.name, key=msg.key, value=encode(out))
            done[event["id"][len(prefix) + 1:]] = out
            latencies.append(time.time() * 1000 - event["ts"])
            if len(done) >= len(texts):
                break
    producer.flush()
    elapsed = time.time() - t0
    consumer.close()
    producer.close()
    return {"events": len(done), "seconds": elapsed, "throughput": len(done) / elapsed, "outputs": done}


def naive_ner(spec: str) -> Callable[[str], list[tuple[str, str]]]:
    """One text in, sorted (text, label) pairs out, the way a tutorial calls the configured NER model."""
    backend, _, target = spec.partition(":")
    if backend == "spacy":
        import spacy

        nlp = spacy.load(target)
        return lambda text: sorted((e.text, label) for e in nlp(text).ents
                                   if (label := normalize_entity_label(e.label_)))
    ner = load_ner(spec)
    return lambda text: sorted((e.text, e.label) for e in ner.predict([text])[0])


def agreement(pipeline_out: dict[str, dict], naive_out: dict[str, dict]) -> tuple[float, float, int]:
    common = sorted(set(pipeline_out) & set(naive_out))
    same_label = sum(pipeline_out[k]["sentiment"]["label"] == naive_out[k]["sentiment"] for k in common)
    same_ents = sum(
        sorted((e["text"], e["label"]) for e in pipeline_out[k]["entities"]) == naive_out[k]["entities"]
        for k in common
    )
    n = max(1, len(common))
    return same_label / n, same_ents / n, len(common)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--baseline-events", type=int, default=300)
    ap.add_argument("--rate-fraction", type=float, default=0.5, help="paced rate as a fraction of throughput")
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = split_tweets().test_texts[: args.events]
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamsense-bench-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(texts)} held-out tweets", flush=True)
    with EmbeddedBroker(tansu_bin=Settings.from_env().tansu_bin) as broker:
        settings = dataclasses.replace(Settings.from_env(), bootstrap=broker.bootstrap)
        ensure_topics(settings, broker.bootstrap)
        ensure_topics(settings, broker.bootstrap, [BASELINE_IN, BASELINE_OUT])
        print("streamsense pipeline: starting worker...", flush=True)
        fast = run_pipeline(settings, broker.bootstrap, texts, args.rate_fraction, args.latency_seconds, log_dir)
        print(f"streamsense pipeline: {fast['events']} events in {fast['seconds']:.2f} s = "
              f"{fast['throughput']:.1f} events/s; at {fast['rate']:.0f} events/s steady: "
              f"p50 {fast['p50_ms']:.0f} ms, p99 {fast['p99_ms']:.0f} ms end to end", flush=True)
        print(f"naive baseline: {args.baseline_events} events, one pipeline call per message...", flush=True)
        naive = run_naive(settings, broker.bootstrap, texts[: args.baseline_events])
        print(f"naive baseline: {naive['events']} events in {naive['seconds']:.2f} s = "
              f"{naive['throughput']:.1f} events/s", flush=True)
    same_label, same_ents, n = agreement(fast["outputs"], naive["outputs"])
    print(f"same predictions on {n} common events: sentiment label {same_label:.1%}, entity sets {same_ents:.1%}")
    print(f"ratio: streamsense {fast['throughput']:.1f} / naive {naive['throughput']:.1f} events/s = "
          f"{fast['throughput'] / naive['throughput']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
