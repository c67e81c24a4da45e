"""`streamsense demo` (what `make demo` runs): a broker, a worker, the bundled samples, a readable summary.

The worker runs as a child process exactly as `streamsense run` would, so the demo exercises the
production path: real topics, a real consumer group, real commits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

from streams import topics
from streams.embedded import EmbeddedBroker, free_port
from streams.kafka_io import ensure_topics, make_producer, read_topic, send_all
from streams.records import OutRecord
from streams.schemas import encode, text_in_event
from streams.settings import Settings

BAD_SAMPLES: tuple[tuple[str, bytes], ...] = (
    ("malformed JSON", b'{"id": "bad-json", "text": "unterminated'),
    ("text is a number", b'{"id": "bad-type", "text": 42, "source": "sample"}'),
    ("invalid UTF-8", b'{"id": "bad-utf8", "text": "caf\xe9", "source": "sample"}'),
)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def sample_texts() -> list[dict[str, str]]:
    path = resources.files("streams") / "samples" / "text_samples.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@contextmanager
def broker_for(settings: Settings) -> Iterator[str]:
    if settings.bootstrap:
        yield settings.bootstrap
        return
    with EmbeddedBroker() as broker:  # a free port: the demo never collides with a running broker
        say(f"embedded broker on {broker.bootstrap}")
        yield broker.bootstrap


READY_LINE = "worker ready:"


@contextmanager
def worker_process(
    bootstrap: str, processors: str, app_id: str, ready: threading.Event
) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "STREAMSENSE_APP_ID": app_id}
    cmd = [sys.executable, "-m", "streams.cli", "run", "--processors", processors,
           "--bootstrap", bootstrap, "--web-port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    stream = proc.stdout

    def relay() -> None:
        for line in stream:
            if READY_LINE in line:
                ready.set()
            if "[streamsense]" in line or "Error" in line or "Traceback" in line:
                print(f"  worker | {line.rstrip()}", flush=True)

    threading.Thread(target=relay, daemon=True).start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def demo_records(run_id: str) -> tuple[list[dict], list[OutRecord]]:
    """The samples as text.in events (timestamped now, so latency_ms is the pipeline's), plus bad messages."""
    good = [text_in_event(s["text"], event_id=f"demo-{run_id}-{i:02d}", source=s.get("source", "sample"))
            for i, s in enumerate(sample_texts())]
    records = [OutRecord(topics.TEXT_IN, e["id"].encode(), encode(e)) for e in good]
    for i, (_label, raw) in enumerate(BAD_SAMPLES):
        key = f"demo-{run_id}-bad-{i}"
        records.append(OutRecord(topics.TEXT_IN, key.encode(), raw.replace(b'"bad-', f'"{key}-'.encode())))
    return good, records


def run_demo(settings: Settings, *, timeout_s: float = 300.0) -> int:
    from models.sentiment_training import ensure_default_models

    ensure_default_models(progress=say)
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    with broker_for(settings) as bootstrap:
        settings = settings.with_overrides(bootstrap=bootstrap)
        ensure_topics(settings, bootstrap)
        ready = threading.Event()
        with worker_process(bootstrap, "text", f"streamsense-demo-{run_id}", ready) as worker:
            say("starting a worker: it loads the models, then joins its consumer group (~10-20 s)")
            if not ready.wait(timeout=max(5.0, timeout_s / 2)):
                say("the worker is not ready yet; producing anyway (outputs wait in Kafka)")
            good, records = demo_records(run_id)
            expected = len(records)
            producer = make_producer(settings, bootstrap)
            send_all(producer, records)
            producer.close()
            say(f"produced {len(good)} sample texts and {len(BAD_SAMPLES)} malformed messages to {topics.TEXT_IN}")
            enriched: dict[str, dict] = {}
            dead: list[dict] = []
            remaining = max(5.0, timeout_s - (time.monotonic() - started))
            for rec in read_topic(settings, bootstrap, [topics.TEXT_ENRICHED, topics.DEADLETTER], timeout_s=remaining,
                                  stop=lambda _r: len(enriched) + len(dead) >= expected,
                                  abort=lambda: worker.poll() is not None):
                event = json.loads(rec.value or b"{}")
                if rec.topic == topics.TEXT_ENRICHED and event.get("id", "").startswith(f"demo-{run_id}"):
                    enriched[event["id"]] = event
                elif rec.topic == topics.DEADLETTER and f"demo-{run_id}" in event.get("value_preview", ""):
                    dead.append(event)
    print_summary(good, enriched, dead)
    missing = expected - len(enriched) - len(dead)
    say(f"{len(enriched)} enriched, {len(dead)} dead letters, {missing} missing, "
        f"{time.monotonic() - started:.1f} s in all")
    return 0 if missing == 0 else 1


def print_summary(good: list[dict], enriched: dict[str, dict], dead: list[dict]) -> None:
    print()
    print(f"{'sentiment':<19} text  →  entities")
    print("-" * 100)
    for event in good:
        out = enriched.get(event["id"])
        if out is None:
            print(f"{'(missing)':<19} {event['text']}")
            continue
        s = out["sentiment"]
        ents = ", ".join(f"{e['text']}/{e['label']}" for e in out["entities"]) or "-"
        print(f"{s['label']:<9} {s['score']:.2f}     {out['text']}")
        print(f"{'':<19} → {ents}   ({out['latency_ms']} ms)")
    if enriched:
        models = next(iter(enriched.values()))["models"]
        print(f"\nmodels: {models}")
    print(f"\ndead letters ({len(dead)}):")
    for d in dead:
        print(f"  {d['source']['topic']}[{d['source']['partition']}]@{d['source']['offset']}: {d['reason']}")
    print()


def main() -> int:  # pragma: no cover - `python -m streams.demo`
    return run_demo(Settings.from_env())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
