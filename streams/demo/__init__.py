"""`streamsense demo` (what `make demo` runs): a broker, one worker with every processor, the bundled samples, a tour.

The worker runs as a child process exactly as `streamsense run` would, so the demo exercises the production
path: real topics, a real consumer group, real commits. In order:

1. text: sample texts and three malformed messages → enriched texts and dead letters;
2. speech (with Debian's ``flite`` on PATH): one spoken sentence as 500 ms chunks → final transcript → enriched;
3. recommendations (recs_tour.py): a MovieLens slice, one user's top 10, a few likes on a genre new to them,
   the top 10 again seconds later;
4. drift and retraining (retrain_tour.py): tweets, then movie reviews → a drift event → labels → a promoted
   challenger the worker swaps in → better accuracy on later reviews.

The drift dashboard runs beside it (its URL is printed); ``--keep`` leaves everything running afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from streams.audio_producer import wav_chunks
from streams.contracts import topics
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode, text_in_event
from streams.contracts.settings import Settings
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import ensure_topics, make_producer, read_topic, send_all
from streams.runtime.launcher import WorkerProcess

BAD_SAMPLES: tuple[tuple[str, bytes], ...] = (
    ("malformed JSON", b'{"id": "bad-json", "text": "unterminated'),
    ("text is a number", b'{"id": "bad-type", "text": 42, "source": "sample"}'),
    ("invalid UTF-8", b'{"id": "bad-utf8", "text": "caf\xe9", "source": "sample"}'),
)


SPOKEN = "Hello from Berlin, the weather in Paris is wonderful today."


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
    # A free port: the demo never collides with a running broker.
    with EmbeddedBroker(tansu_bin=settings.tansu_bin) as broker:
        say(f"embedded broker on {broker.bootstrap}")
        yield broker.bootstrap


def demo_records(run_id: str) -> tuple[list[dict], list[OutRecord]]:
    """The samples as text.in events (timestamped now, so latency_ms is the pipeline's), plus bad messages."""
    good = [text_in_event(s["text"], event_id=f"demo-{run_id}-{i:02d}", source=s.get("source", "sample"))
            for i, s in enumerate(sample_texts())]
    records = [OutRecord(topics.TEXT_IN, e["id"].encode(), encode(e)) for e in good]
    for i, (_label, raw) in enumerate(BAD_SAMPLES):
        key = f"demo-{run_id}-bad-{i}"
        records.append(OutRecord(topics.TEXT_IN, key.encode(), raw.replace(b'"bad-', f'"{key}-'.encode())))
    return good, records


@dataclass
class Speech:
    """The spoken clip's progress: done once its stream ended and every final came back enriched."""

    stream_id: str
    records: list[OutRecord]
    finals: dict[str, dict] = field(default_factory=dict)
    enriched: dict[str, dict] = field(default_factory=dict)
    expected: int | None = None  # finals the stream produced: its ended checkpoint's segment counter

    @property
    def done(self) -> bool:
        return self.expected is not None and len(self.finals) >= self.expected and len(self.enriched) >= self.expected

    def see(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == topics.ASR_STATE:
            from streams.contracts.asr_state import decode_checkpoint
            from streams.contracts.state import MARKER_PREFIX, StateError, decode_state_record

            if not value or (key or b"").startswith(MARKER_PREFIX):
                return
            try:
                record = decode_state_record(value)  # keyed <app id>/<stream id>: the header names the stream
                if record.key == self.stream_id and decode_checkpoint(record.data).ended:
                    self.expected = decode_checkpoint(record.data).next_index
            except StateError:
                return
            return
        event = json.loads(value or b"{}")
        if event.get("stream_id") != self.stream_id:
            return
        if topic == topics.ASR_TRANSCRIPTS and event.get("final"):
            self.finals[event["id"]] = event
        elif topic == topics.TEXT_ENRICHED:
            self.enriched[event["id"]] = event


def spoken_clip(run_id: str, workdir: Path) -> Speech | None:
    """The sentence as 500 ms chunks, or None (and why) when flite is missing or fails."""
    flite = shutil.which("flite")
    if flite is None:
        say("flite is not on PATH: skipping the speech part (apt-get install flite)")
        return None
    path = workdir / "spoken.wav"
    try:
        subprocess.run([flite, "-voice", "rms", "-t", SPOKEN, "-o", str(path)], check=True, capture_output=True,
                       timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"flite failed ({exc}): skipping the speech part")
        return None
    sid = f"speech-{run_id}"
    return Speech(sid, wav_chunks(path, sid, chunk_ms=500))


def demo_model_dir(workdir: Path) -> Path:
    """The demo's own model directory: the built models linked in, but a registry of its own, so the demo's
    promotion never becomes the champion a later `streamsense run` serves. The retrainer's embedding cache is
    shared (keyed by the encoder's weights), so only the first demo pays for it."""
    from models.model_store import model_dir, retrain_cache_dir

    real, mine = model_dir(), workdir / "models"
    mine.mkdir(parents=True, exist_ok=True)
    retrain_cache_dir().mkdir(parents=True, exist_ok=True)
    for entry in [*real.iterdir()] if real.is_dir() else []:
        if entry.name != "registry":
            (mine / entry.name).symlink_to(entry)
    return mine


def start_dashboard(bootstrap: str, worker: WorkerProcess, workdir: Path) -> tuple[subprocess.Popen, str]:
    from streams.runtime.embedded import free_port

    port = free_port()
    log = open(workdir / "dashboard.log", "wb")  # noqa: SIM115 (the process keeps it)
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "dashboard", "--bootstrap", bootstrap, "--port",
                             str(port), "--worker", f"http://127.0.0.1:{worker.web_port}"], stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/"


def run_demo(settings: Settings, *, timeout_s: float = 300.0, keep: bool = False) -> int:
    from models.sentiment_training import ensure_default_models
    from streams.demo.recs_tour import print_recs_tour, run_recs_tour
    from streams.demo.retrain_tour import ENV, print_retrain_tour, run_retrain_tour

    ensure_default_models(progress=say)
    run_id = uuid.uuid4().hex[:8]
    started = time.monotonic()
    recs = retrain = None
    with broker_for(settings) as bootstrap:
        settings = settings.with_overrides(bootstrap=bootstrap)
        ensure_topics(settings, bootstrap)
        workdir = Path(tempfile.mkdtemp(prefix="streamsense-demo-"))
        speech = spoken_clip(run_id, workdir)
        processors = ",".join(["text", *(["asr"] if speech else []), "recs", "monitor", "retrainer"])
        worker = WorkerProcess(bootstrap, workdir, processors=processors, app_id=f"streamsense-demo-{run_id}",
                               env={**ENV, "STREAMSENSE_MODEL_DIR": str(demo_model_dir(workdir))},
                               relay=lambda line: print(f"  worker | {line}", flush=True))
        say(f"starting a worker with {processors}: it loads the models, then joins its consumer group (~20-40 s)")
        worker.start()
        dashboard, url = start_dashboard(bootstrap, worker, workdir)
        say(f"the drift dashboard: {url} (the worker's metrics: http://127.0.0.1:{worker.web_port}/metrics)")
        producer = make_producer(settings, bootstrap)
        try:
            worker.wait_ready(timeout_s=max(5.0, timeout_s / 2))
            good, records = demo_records(run_id)
            expected = len(records)
            send_all(producer, records + (speech.records if speech else []))
            say(f"produced {len(good)} sample texts and {len(BAD_SAMPLES)} malformed messages to {topics.TEXT_IN}")
            if speech:
                say(f"produced a spoken clip as {len(speech.records)} chunks of 500 ms to {topics.AUDIO_CHUNKS}")
            enriched, dead = collect_text_and_speech(settings, bootstrap, worker, run_id, expected, speech,
                                                     max(5.0, timeout_s - (time.monotonic() - started)))
            print_summary(good, enriched, dead)
            if speech:
                print_speech(speech)
            recs = run_recs_tour(producer, worker, say)
            print_recs_tour(recs)
            retrain = run_retrain_tour(settings, bootstrap, producer, run_id, say)
            print_retrain_tour(retrain)
            if keep:
                say(f"--keep: everything keeps running (dashboard {url}, broker {bootstrap}); Ctrl-C stops it")
                wait_for_interrupt()
        finally:
            producer.close()
            worker.stop()
            dashboard.terminate()
            dashboard.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)
    speech_ok = speech is None or (speech.done and bool(speech.finals))
    missing = expected - len(enriched) - len(dead)
    say(f"{len(enriched)} enriched, {len(dead)} dead letters, {missing} missing, "
        f"{time.monotonic() - started:.1f} s in all")
    if speech:
        say(f"speech: {len(speech.finals)} final(s), {len(speech.enriched)} enriched, "
            + ("complete" if speech_ok else "INCOMPLETE"))
    recs_ok = recs is not None and recs.changed > 0
    say(f"recs: user {recs.user}'s top 10 changed {recs.seconds:.1f} s after {recs.likes} {recs.genre} likes: "
        f"{recs.changed} new items; {recs.genre} {recs.genre_before} -> {recs.genre_after}" if recs
        else "recs: INCOMPLETE")
    retrain_ok = retrain is not None and retrain.served_by_new > 0 and retrain.accuracy_after > retrain.accuracy_before
    say(f"retraining: drift, promotion of {retrain.update['version']}, accuracy on reviews "
        f"{retrain.accuracy_before:.2f} -> {retrain.accuracy_after:.2f}" if retrain else "retraining: INCOMPLETE")
    return 0 if missing == 0 and speech_ok and recs_ok and retrain_ok else 1


def wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")


def collect_text_and_speech(settings: Settings, bootstrap: str, worker: WorkerProcess, run_id: str, expected: int,
                            speech: Speech | None, timeout_s: float) -> tuple[dict[str, dict], list[dict]]:
    enriched: dict[str, dict] = {}
    dead: list[dict] = []
    watched = [topics.TEXT_ENRICHED, topics.DEADLETTER]
    if speech:
        watched += [topics.ASR_TRANSCRIPTS, topics.ASR_STATE]

    def finished(_r: object) -> bool:
        return len(enriched) + len(dead) >= expected and (speech is None or speech.done)

    for rec in read_topic(settings, bootstrap, watched, timeout_s=timeout_s, stop=finished,
                          abort=lambda: worker.proc is not None and worker.proc.poll() is not None):
        if speech:
            speech.see(rec.topic, rec.key, rec.value)
        if rec.topic == topics.ASR_STATE:
            continue
        event = json.loads(rec.value or b"{}")
        if rec.topic == topics.TEXT_ENRICHED and event.get("id", "").startswith(f"demo-{run_id}"):
            enriched[event["id"]] = event
        elif rec.topic == topics.DEADLETTER and f"demo-{run_id}" in event.get("value_preview", ""):
            dead.append(event)
    return enriched, dead


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


def print_speech(speech: Speech) -> None:
    print(f"speech ({speech.stream_id}, {len(speech.records)} chunks of 500 ms on {topics.AUDIO_CHUNKS}):")
    print(f"  spoken      {SPOKEN}")
    if not speech.finals:
        print("  (no final transcript)")
    for tid, final in sorted(speech.finals.items(), key=lambda kv: kv[1]["start"]):
        print(f"  final       [{final['start']:.2f}-{final['end']:.2f} s] {final['text']}   ({final['model']})")
        out = speech.enriched.get(tid)
        if out is None:
            print("  enriched    (missing)")
            continue
        s = out["sentiment"]
        ents = ", ".join(f"{e['text']}/{e['label']}" for e in out["entities"]) or "-"
        print(f"  enriched    {s['label']} {s['score']:.2f} → {ents}   (source {out['source']}, "
              f"{out['latency_ms']} ms)")
    print()


def main() -> int:  # pragma: no cover - `python -m streams.demo`
    return run_demo(Settings.from_env())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
