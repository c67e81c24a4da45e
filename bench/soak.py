"""Soak: mixed text, audio and clicks at a fixed rate below capacity, through the broker, to one worker of each
kind, for minutes; throughput, end-to-end latency, dead letters, losses and each worker's memory over time.

Set-up: the embedded broker on a free port; four real workers (``streamsense run --processors text`` / ``asr`` /
``recs`` / ``monitor``), one process each with its own app id, one torch thread each
(``STREAMSENSE_TORCH_THREADS=1``), recs without the content tower (``STREAMSENSE_RECS_CONTENT=0``, as
bench/recs.py), state files in a temporary directory; a catalog of ``--items`` items on ``items`` first.

Load (all rates are flags; the defaults are well below what this 2-core machine sustains: text ~60/s, speech
~1 real-time stream with tiny.en, clicks thousands/s):
- text: held-out tweets as ``text.in`` events at ``--text-rate``/s (paced, each stamped when sent);
- audio: ``--audio-streams`` live sources, each looping the flite clips of bench/asr_streaming.py (3 sentences
  joined by silence, so each sentence should end as one final) at real-time pace in ``--chunk-ms`` PCM16 chunks,
  every clip a stream of its own (fresh stream id, last chunk eos), ``--audio-gap-s`` between clips;
- recs: Zipf clicks (bench/recs.py's generator) at ``--click-rate``/s and a ``recs.requests`` every
  ``1 / --request-rate`` s.
Traffic starts with the warm-up (``--warmup-s``), whose events count towards losses but not latency; the
measured window is ``--minutes`` long; then ``--drain-s`` at most for the last outputs.

Measured (one consumer thread stamps every output when it arrives; latency = that minus the send time):
- text: ``text.in`` → ``text.enriched``, matched by id;
- asr: the chunk holding an utterance's last sample → the final covering it (bench/asr_streaming.py's matching);
  utterances without a final are reported;
- recs: ``recs.requests`` → ``recs.responses`` (per event click absorption is not observable): clicks absorbed
  from the worker's ``streamsense_events_consumed_total`` (/metrics), clicks applied from the model version the
  last response carries;
- dead letters on ``deadletter`` by processor with the first reason; lost = sent − (outputs + dead letters)
  for text and requests after the drain; ``drift.events`` of the monitor (reported only);
- each worker's RSS (VmRSS of the process and its children) at the start of the window (after the warm-up), the
  middle and the end; growth over +10% fails. With it, the recs model's state sizes (its ``/recs/stats``:
  users, seen pairs, co-occurrence entries, dedupe ids), so growth that learned state explains is visible.

Progress lines every ``--progress-s``; the last line is a one-line summary. Exit status 1 when anything was
lost, RSS grew over 10% or a worker died.

    .venv/bin/python bench/soak.py [--minutes 10] [--text-rate 10] [--click-rate 200] [--audio-streams 1]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.asr_streaming import SAMPLE_RATE, Arrivals, Clip, covering, cpu_seconds, make_clips, percentile
from bench.machine import cpu_model
from bench.recs import catalog, consumed_clicks, zipf_clicks
from models.tweets import split_tweets
from streams.contracts import topics
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.records import OutRecord
from streams.contracts.schemas import encode, now_ms, text_in_event
from streams.contracts.settings import Settings
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import ensure_topics, make_producer, read_topic, send_all
from streams.runtime.launcher import WorkerProcess

KINDS = ("text", "asr", "recs", "monitor")
RSS_LIMIT = 1.10
OUTPUT_TOPICS = [topics.TEXT_ENRICHED, topics.ASR_TRANSCRIPTS, topics.RECS_RESPONSES, topics.DEADLETTER,
                 topics.DRIFT_EVENTS]


@dataclass
class AudioStream:
    sid: str
    clip: Clip
    sent: list[float] = field(default_factory=list)  # send time of each chunk
    done: bool = False  # its eos chunk was sent


@dataclass
class Ledger:
    """What was sent (id → send time) and what came back (id → arrival time), shared by the threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    text_sent: dict[str, float] = field(default_factory=dict)
    text_got: dict[str, float] = field(default_factory=dict)
    req_sent: dict[str, float] = field(default_factory=dict)
    req_got: dict[str, tuple[float, dict]] = field(default_factory=dict)
    clicks_sent: int = 0
    audio: list[AudioStream] = field(default_factory=list)
    transcripts: Arrivals = field(default_factory=Arrivals)
    dead: dict[str, dict] = field(default_factory=dict)  # dead letter id → event
    drift: dict[str, dict] = field(default_factory=dict)
    send_errors: list[str] = field(default_factory=list)


def recs_stats(port: int) -> dict:
    """The recs model's state sizes (its /recs/stats view), to tell memory that state explains from a leak."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/recs/stats", timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return {}


def rss_kb(pid: int) -> int:
    """VmRSS of a process and its descendants (kB); 0 when it is gone."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def collect(settings: Settings, bootstrap: str, led: Ledger, prefix: str, stop: threading.Event) -> None:
    """One consumer for every output topic: stamp arrivals (first one per id)."""
    for rec in read_topic(settings, bootstrap, OUTPUT_TOPICS, timeout_s=None, abort=stop.is_set):
        now = time.time()
        try:
            event = json.loads(rec.value or b"{}")
        except ValueError:
            continue
        eid = str(event.get("id"))
        with led.lock:
            if rec.topic == topics.TEXT_ENRICHED:
                if eid.startswith(prefix):  # the asr worker's finals also reach text.enriched
                    led.text_got.setdefault(eid, now)
            elif rec.topic == topics.RECS_RESPONSES:
                led.req_got.setdefault(eid, (now, event))
            elif rec.topic == topics.DEADLETTER:
                led.dead.setdefault(eid, event)
            elif rec.topic == topics.DRIFT_EVENTS:
                led.drift.setdefault(eid, event)
        if rec.topic == topics.ASR_TRANSCRIPTS:
            with led.transcripts.lock:
                led.transcripts.events.setdefault(eid, (now, event))


def on_error(led: Ledger, what: str):
    def record(exc: BaseException) -> None:
        with led.lock:
            led.send_errors.append(f"{what}: {exc!r}")
    return record


def pace(rate: float, t0: float, end: float, stop: threading.Event):
    """Yield i at t0 + i / rate until `end` (or stop)."""
    for i in itertools.count():
        at = t0 + i / rate
        if at >= end or stop.wait(max(0.0, at - time.time())):
            return
        yield i


def feed_text(producer, led: Ledger, texts: list[str], prefix: str, rate: float, t0: float, end: float,
              stop: threading.Event) -> None:
    for i in pace(rate, t0, end, stop):
        event = text_in_event(texts[i % len(texts)], event_id=f"{prefix}{i:07d}", source="soak")
        with led.lock:
            led.text_sent[event["id"]] = time.time()
        producer.send(topics.TEXT_IN, key=event["id"].encode(), value=encode(event)).add_errback(
            on_error(led, event["id"]))


def feed_recs(producer, led: Ledger, run_id: str, click_rate: float, request_rate: float, users: int, items: int,
              t0: float, end: float, stop: threading.Event) -> None:
    """Clicks in 0.1 s ticks (as many as the rate owes), a request every 1 / request_rate s."""
    rng = np.random.default_rng(7)
    next_req, n_req = t0, 0
    for tick in pace(10.0, t0, end, stop):
        now = time.time()
        owed = int((now - t0) * click_rate) - led.clicks_sent
        if owed > 0:
            stamp = now_ms()  # the generator's ts is a counter; the monitor's hit window wants wall-clock ms
            for c in zipf_clicks(owed, users, items, seed=tick, prefix=f"c{run_id}-{tick}"):
                c["ts"] = stamp
                producer.send(topics.CLICKS, key=c["user_id"].encode(), value=json.dumps(c).encode()).add_errback(
                    on_error(led, c["id"]))
            with led.lock:
                led.clicks_sent += owed
        while request_rate > 0 and next_req <= now:
            rid = f"r{run_id}-{n_req:06d}"
            req = {"id": rid, "user_id": f"u{int(rng.zipf(1.3)) % users}", "k": 10}
            with led.lock:
                led.req_sent[rid] = time.time()
            producer.send(topics.RECS_REQUESTS, key=rid.encode(), value=json.dumps(req).encode()).add_errback(
                on_error(led, rid))
            n_req += 1
            next_req += 1 / request_rate


def feed_audio(producer, led: Ledger, clips: list[Clip], source: str, chunk_ms: int, gap_s: float, t0: float,
               end: float, stop: threading.Event) -> None:
    """One live source: clip after clip, each its own stream, chunk i at stream start + i * chunk (real time)."""
    step = SAMPLE_RATE * chunk_ms // 1000 * 2
    start = t0
    for n in itertools.count():
        clip = clips[n % len(clips)]
        if start + clip.duration > end or stop.wait(max(0.0, start - time.time())):
            return
        stream = AudioStream(f"{source}-{n:04d}", clip)
        with led.lock:
            led.audio.append(stream)
        pieces = [clip.pcm[i : i + step] for i in range(0, len(clip.pcm), step)]
        for i, piece in enumerate(pieces):
            if stop.wait(max(0.0, start + i * chunk_ms / 1000 - time.time())):
                return
            headers = list(chunk_headers(stream.sid, i, SAMPLE_RATE, 1, eos=i == len(pieces) - 1))
            stream.sent.append(time.time())
            producer.send(topics.AUDIO_CHUNKS, key=stream.sid.encode(), value=piece, headers=headers).add_errback(
                on_error(led, f"{stream.sid}#{i}"))
        stream.done = True
        start = max(time.time(), start + clip.duration) + gap_s


def utterance_latencies(led: Ledger, chunk_ms: int, since: float) -> tuple[list[float], int, int]:
    """(latencies of the utterances of streams started at or after `since`, utterances, without a final) over
    the streams whose eos was sent; matching as bench/asr_streaming.py's run_phase."""
    lat: list[float] = []
    total = missing = 0
    with led.lock:
        streams = [s for s in led.audio if s.done]
    for s in streams:
        finals = [f for f in led.transcripts.for_stream(s.sid) if f[1].get("final") and not f[1].get("error")]
        for span in s.clip.utterances:
            total += 1
            cover = covering(finals, span)
            if cover is None:
                missing += 1
                continue
            last_chunk = min(len(s.sent) - 1, max(0, math.ceil(span[1] / (chunk_ms / 1000)) - 1))
            if s.sent[0] >= since:
                lat.append(cover[0] - s.sent[last_chunk])
    return lat, total, missing


def dead_keys(led: Ledger, topic: str) -> set[str]:
    """Original keys (= event ids for text.in and recs.requests) of the dead letters from `topic`."""
    with led.lock:
        events = list(led.dead.values())
    out = set()
    for e in events:
        src = e.get("source") or {}
        if src.get("topic") == topic and src.get("key_b64"):
            out.add(base64.b64decode(src["key_b64"]).decode("utf-8", "replace"))
    return out


def stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (f"p50 {percentile(values, 50):.2f} s, p95 {percentile(values, 95):.2f} s, "
            f"p99 {percentile(values, 99):.2f} s, max {max(values):.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="measured window (after the warm-up)")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="traffic before the window (not measured)")
    ap.add_argument("--drain-s", type=float, default=90.0, help="longest wait for the last outputs")
    ap.add_argument("--text-rate", type=float, default=10.0, help="text.in events/s")
    ap.add_argument("--click-rate", type=float, default=200.0, help="clicks/s")
    ap.add_argument("--request-rate", type=float, default=1.0, help="recs.requests/s")
    ap.add_argument("--audio-streams", type=int, default=1, help="concurrent real-time audio sources")
    ap.add_argument("--chunk-ms", type=int, default=500)
    ap.add_argument("--audio-gap-s", type=float, default=1.0, help="pause between two clips of one source")
    ap.add_argument("--clips", type=int, default=4, help="distinct flite clips (3 sentences each)")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=10_000, help="catalog size (clicks use these items)")
    ap.add_argument("--progress-s", type=float, default=30.0)
    ap.add_argument("--start-timeout-s", type=float, default=420.0, help="for all workers to be ready")
    args = ap.parse_args()
    if args.minutes <= 0 or args.text_rate <= 0 or args.click_rate <= 0 or args.request_rate < 0 \
            or args.audio_streams < 0 or args.chunk_ms <= 0 or args.warmup_s < 0 or args.clips < 1:
        ap.error("rates and --minutes must be positive; --audio-streams, --request-rate and --warmup-s >= 0")
    if args.audio_streams and shutil.which("flite") is None:
        print("flite is not installed (apt-get install flite)", file=sys.stderr)
        return 2

    def terminate(_sig, _frame):  # a SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    window_s = args.minutes * 60
    print(f"soak: {datetime.now().astimezone().isoformat(timespec='seconds')}; {cpu_model()}, {os.cpu_count()} "
          f"cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"soak: {args.minutes:g} min measured after {args.warmup_s:g} s warm-up; text {args.text_rate:g}/s, "
          f"{args.audio_streams} real-time audio source(s), clicks {args.click_rate:g}/s, "
          f"requests {args.request_rate:g}/s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="streamsense-soak-"))
    texts = split_tweets().test_texts
    clips = make_clips(args.clips, work) if args.audio_streams else []
    run_id = uuid.uuid4().hex[:6]
    prefix = f"soak-{run_id}-t"  # text ids; audio stream ids (whose finals also reach text.enriched) differ
    probe = f"r{run_id}-probe"  # the last request, sent after the drain: its response carries the applied clicks
    led = Ledger()
    stop = threading.Event()  # feeders and the collector
    workers: dict[str, WorkerProcess] = {}
    ok = True
    with EmbeddedBroker(tansu_bin=Settings.from_env().tansu_bin) as broker:
        settings = Settings(bootstrap=broker.bootstrap)
        ensure_topics(settings, broker.bootstrap)
        env = {"STREAMSENSE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "STREAMSENSE_STATE_DIR": str(work / "state"),
               "STREAMSENSE_RECS_CONTENT": "0"}
        collector = threading.Thread(target=collect, args=(settings, broker.bootstrap, led, prefix, stop), daemon=True)
        producer = make_producer(settings, broker.bootstrap, linger_ms=5)
        feeders: list[threading.Thread] = []
        try:
            kinds = [k for k in KINDS if k != "asr" or args.audio_streams]
            for kind in kinds:
                workers[kind] = WorkerProcess(broker.bootstrap, work, processors=kind, app_id=f"soak-{kind}-{run_id}",
                                              env=env).start()
            print(f"soak: starting workers ({', '.join(kinds)}) and sending a {args.items}-item catalog...",
                  flush=True)
            send_all(producer, [OutRecord(topics.ITEMS, r["item_id"].encode(), json.dumps(r).encode())
                                for r in catalog(args.items)], timeout_s=120)
            deadline = time.monotonic() + args.start_timeout_s
            for w in workers.values():
                w.wait_ready(timeout_s=max(1.0, deadline - time.monotonic()))
            print(f"soak: workers ready ({', '.join(f'{k} pid {w.proc.pid}' for k, w in workers.items())}); "
                  f"warm-up {args.warmup_s:g} s", flush=True)
            collector.start()

            t0 = time.time() + 0.5
            measure_start = t0 + args.warmup_s
            end = measure_start + window_s
            feeders.append(threading.Thread(target=feed_text, args=(producer, led, texts, prefix, args.text_rate,
                                                                    t0, end, stop), daemon=True))
            feeders.append(threading.Thread(target=feed_recs, args=(producer, led, run_id, args.click_rate,
                                                                    args.request_rate, args.users, args.items, t0,
                                                                    end, stop), daemon=True))
            feeders += [threading.Thread(target=feed_audio, args=(producer, led, clips, f"soak-{run_id}-a{k}",
                                                                  args.chunk_ms, args.audio_gap_s,
                                                                  t0 + 0.37 * k, end, stop), daemon=True)
                        for k in range(args.audio_streams)]
            for t in feeders:
                t.start()

            rss: dict[str, dict[str, int]] = {k: {} for k in workers}
            recs_state: dict[str, dict] = {}  # the recs model's state sizes at each RSS mark (/recs/stats)
            cpu0: dict[str, float] = {}
            marks = [("start", measure_start), ("middle", measure_start + window_s / 2), ("end", end)]
            next_progress = t0 + min(args.progress_s, max(5.0, (args.warmup_s + window_s) / 4))

            def progress(label: str) -> None:
                with led.lock:
                    ts, tg = len(led.text_sent), len(led.text_got)
                    rs, cs, dl = len(led.req_sent), led.clicks_sent, len(led.dead)
                    rg = len(led.req_got) - (probe in led.req_got)
                    streams = len(led.audio)
                with led.transcripts.lock:
                    finals = sum(1 for _t, e in led.transcripts.events.values() if e.get("final"))
                absorbed = consumed_clicks(workers["recs"].web_port)
                mem = ", ".join(f"{k} {rss_kb(w.proc.pid) / 1024:.0f}" for k, w in workers.items())
                print(f"[{label} {time.time() - measure_start:+6.0f} s] text {tg}/{ts}, asr {finals} finals of "
                      f"{streams} streams, clicks {absorbed or 0:.0f}/{cs}, requests {rg}/{rs}, dead letters {dl}; "
                      f"RSS MB {mem}", flush=True)

            while time.time() < end:  # the run: progress lines, RSS marks, live workers
                for kind, w in workers.items():
                    if w.proc.poll() is not None:
                        raise RuntimeError(f"{kind} worker exited with {w.proc.returncode}:\n{w.log()[-3000:]}")
                now = time.time()
                for name, at in marks:
                    if now >= at and name not in rss[next(iter(workers))] and name != "end":
                        for kind, w in workers.items():
                            rss[kind][name] = rss_kb(w.proc.pid)
                            if name == "start":
                                cpu0[kind] = cpu_seconds(w.proc.pid)
                        recs_state[name] = recs_stats(workers["recs"].web_port)
                if now >= next_progress:
                    progress("warm-up" if now < measure_start else "soak")
                    next_progress += args.progress_s
                time.sleep(min(0.5, max(0.01, end - time.time())))
            for t in feeders:
                t.join(timeout=max(5.0, args.chunk_ms / 1000 * 4))
            for kind, w in workers.items():
                rss[kind]["end"] = rss_kb(w.proc.pid)
            recs_state["end"] = recs_stats(workers["recs"].web_port)
            cpu1 = {k: cpu_seconds(w.proc.pid) for k, w in workers.items()}
            producer.flush(timeout=30)
            progress("sent")

            # drain: every text event and request answered or dead-lettered, every utterance covered, clicks read
            drain_end = time.time() + args.drain_s
            while time.time() < drain_end:
                with led.lock:
                    text_open = len(set(led.text_sent) - set(led.text_got))
                    req_open = len(set(led.req_sent) - set(led.req_got))
                    clicks_sent = led.clicks_sent
                text_open -= len(dead_keys(led, topics.TEXT_IN))
                req_open -= len(dead_keys(led, topics.RECS_REQUESTS))
                _lat, _n, asr_open = utterance_latencies(led, args.chunk_ms, measure_start)
                absorbed = consumed_clicks(workers["recs"].web_port) or 0
                if text_open <= 0 and req_open <= 0 and asr_open == 0 and absorbed >= clicks_sent:
                    break
                time.sleep(0.5)
            # the last applied-click count: one more request, answered after every click consumed so far
            send_all(producer, [OutRecord(topics.RECS_REQUESTS, probe.encode(),
                                          json.dumps({"id": probe, "user_id": "u0", "k": 1}).encode())])
            probe_end = time.time() + 30
            while probe not in led.req_got and time.time() < probe_end:
                time.sleep(0.2)
            drained_s = time.time() - end
            absorbed = consumed_clicks(workers["recs"].web_port) or 0
            progress("drained")
        except KeyboardInterrupt:
            print("soak: interrupted; stopping the workers and the broker", flush=True)
            return 130
        except Exception as exc:  # a worker died or never got ready, the broker failed: clean up, then say so
            print(f"soak: FAIL: {exc}", flush=True)
            print(f"soak: worker logs in {work}", flush=True)
            return 1
        finally:
            stop.set()
            for t in feeders:
                t.join(timeout=5)
            producer.close(timeout=10)
            if collector.is_alive():
                collector.join(timeout=15)
            for kind, w in workers.items():
                try:
                    code = w.stop(timeout_s=60)
                except AssertionError as exc:
                    print(f"soak: {kind} worker did not stop on SIGTERM (killed): {str(exc)[:300]}", flush=True)
                    code = -9
                if code not in (0, None):
                    ok = False
                    print(f"soak: {kind} worker exited with {code}; log {w.log_path}", flush=True)

    # --- report -------------------------------------------------------------------------------------------------
    with led.lock:
        text_sent, text_got = dict(led.text_sent), dict(led.text_got)
        req_sent, req_got = dict(led.req_sent), dict(led.req_got)
        clicks_sent, dead, drift = led.clicks_sent, list(led.dead.values()), list(led.drift.values())
        send_errors = list(led.send_errors)
    req_sent.pop(probe, None)
    req_got_probe = req_got.pop(probe, None)
    def in_window(sent: dict[str, float]) -> dict[str, float]:
        return {k: t for k, t in sent.items() if measure_start <= t < end}

    text_lat = [text_got[k] - t for k, t in in_window(text_sent).items() if k in text_got]
    req_lat = [req_got[k][0] - t for k, t in in_window(req_sent).items() if k in req_got]
    asr_lat, utterances, asr_missing = utterance_latencies(led, args.chunk_ms, measure_start)
    text_lost = len(set(text_sent) - set(text_got) - dead_keys(led, topics.TEXT_IN))
    req_lost = len(set(req_sent) - set(req_got) - dead_keys(led, topics.RECS_REQUESTS))
    applied = None
    if req_got_probe is not None:
        try:
            applied = int(str(req_got_probe[1].get("model", "")).rsplit("+", 1)[1])
        except (IndexError, ValueError):
            applied = None
    win_text = in_window(text_sent)
    win_req = in_window(req_sent)
    print(f"text: {len(text_sent)} sent ({len(win_text)} in the window), {len(text_got)} enriched; throughput "
          f"{sum(1 for k in win_text if k in text_got) / window_s:.2f}/s; latency {stats(text_lat)}; lost {text_lost}")
    print(f"asr: {len(led.audio)} streams, {utterances} utterances, {asr_missing} without a final; finals "
          f"{len(asr_lat) / window_s:.2f} utterances/s in the window; latency {stats(asr_lat)}")
    print(f"recs: {len(req_sent)} requests ({len(win_req)} in the window), {len(req_got)} answered, throughput "
          f"{sum(1 for k in win_req if k in req_got) / window_s:.2f}/s; latency {stats(req_lat)}; lost {req_lost}")
    print(f"clicks: {clicks_sent} sent ({args.click_rate:g}/s), {absorbed:.0f} consumed by the worker (/metrics), "
          f"{applied if applied is not None else 'unknown'} applied by the model (version of the last response)")
    by_proc: dict[str, list[dict]] = {}
    for d in dead:
        by_proc.setdefault(str(d.get("processor")), []).append(d)
    print(f"dead letters: {len(dead)}" + "".join(f"; {p} {len(ds)} (first: {str(ds[0].get('reason'))[:160]!r})"
                                                for p, ds in sorted(by_proc.items())))
    levels: dict[str, int] = {}
    for e in drift:
        levels[f"{e.get('model')}/{e.get('level')}"] = levels.get(f"{e.get('model')}/{e.get('level')}", 0) + 1
    print(f"drift.events: {len(drift)}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(levels.items()))})"
                                           if levels else ""))
    growth = {}
    for kind, r in rss.items():
        start = r.get("start") or 0
        peak = max(r.get("middle", 0), r.get("end", 0))
        growth[kind] = peak / start - 1 if start else float("nan")
        cpu = (cpu1[kind] - cpu0.get(kind, float("nan"))) / window_s
        print(f"rss {kind}: start {start / 1024:.0f} MB, middle {r.get('middle', 0) / 1024:.0f} MB, end "
              f"{r.get('end', 0) / 1024:.0f} MB, end/start {r.get('end', 0) / start if start else float('nan'):.3f}, "
              f"max growth {growth[kind]:+.1%} ({'PASS' if growth[kind] <= RSS_LIMIT - 1 else 'FAIL'}); "
              f"CPU {cpu:.0%} of a core")
    for key in ("users", "items", "seen_pairs", "covis_entries", "dedupe_ids", "dedupe_bytes"):
        print(f"recs state {key}: " + " -> ".join(f"{recs_state.get(m, {}).get(key, '?')}"
                                                  for m in ("start", "middle", "end")))
    for e in send_errors[:5]:
        print(f"send error: {e}")
    worst = max(growth.values(), default=float("nan"))
    rss_ok = all(g <= RSS_LIMIT - 1 for g in growth.values())
    lost = text_lost + req_lost
    ok = ok and rss_ok and lost == 0 and not send_errors
    print(f"drained in {drained_s:.1f} s; worker logs and clips in {work}" if not ok else
          f"drained in {drained_s:.1f} s")
    if ok:
        shutil.rmtree(work, ignore_errors=True)

    def p(values: list[float], q: float) -> str:
        return f"{percentile(values, q):.2f} s" if values else "n/a"

    print(f"soak: {args.minutes:.1f} min, text {sum(1 for k in win_text if k in text_got) / window_s:.1f}/s p99 "
          f"{p(text_lat, 99)}, asr p95 {p(asr_lat, 95)} ({asr_missing} of {utterances} utterances without a final), "
          f"recs req p99 {p(req_lat, 99)}, clicks {absorbed:.0f}/{clicks_sent} absorbed, dead letters {len(dead)}, "
          f"lost {lost}, drift events {len(drift)}, RSS growth max {worst:+.1%} ({'PASS' if rss_ok else 'FAIL'})"
          + ("" if ok else " -> FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
