"""Streaming ASR through the broker: how many concurrent real-time streams one worker sustains, at what latency
and word error rate, against offline ``whisper.transcribe()`` of the whole file in the same process.

Method:
- Clips: flite (voice ``rms``, 16 kHz) speaks ~10 varied sentences once; each clip is 3 of them joined by
  0.8 s of silence (0.3 s lead-in and tail), 10-20 s long. The clip's reference text and each utterance's
  audio interval are known from how it was built.
- Offline baseline (first, alone on the CPU): ``whisper.transcribe(model, audio, temperature=0,
  condition_on_previous_text=False, fp16=False)`` of each whole clip with the same converted model the
  worker loads (``models.whisper_loader.load_whisper``) and the worker's torch thread count (1); its WER
  against the reference and its real-time factor (wall seconds / audio seconds).
- Streaming: the embedded broker on a free port and one real ``streamsense run --processors asr`` worker
  (fresh app id), warmed with one short clip. For K in a ladder, K streams (clips cycled, starts staggered
  by a fraction of a second) are fed concurrently by one producer thread each, at real-time pace in
  ``--chunk-ms`` PCM16 chunks, the last one flagged eos. A consumer thread reads ``asr.transcripts`` and
  stamps when each final arrives.
- Latency of an utterance: arrival of the final that covers it (its [start, end] overlaps the utterance's
  interval and reaches its end, within 0.3 s) minus the moment the chunk holding the utterance's last sample
  was sent. It includes the VAD's pause detection (a segment closes only after 0.5 s of silence, i.e. one
  more chunk), micro-batching, decoding and delivery.
- Sustained at K: every utterance got its final, p95 latency <= ``--latency-bound`` and the whole phase
  drained (last final) within the longest stream's duration + ``--slack``. The ladder stops after the first
  K that is not sustained.
- Streaming WER per K: all finals of a stream concatenated in segment order, errors summed over the K
  streams / reference words; the offline WER is weighted over the very same clips, so the delta compares
  like with like. Throughput: K x audio seconds / drain seconds (x real time); cost: the worker process's
  CPU seconds (from /proc) per audio second.

- Backends: ``--backends torch,ct2`` runs the ladder once per ASR backend (``STREAMSENSE_ASR_BACKEND``), each
  in a fresh worker on the same broker, one after the other, against the same offline baseline; ``--threads``
  sets the worker's ``STREAMSENSE_TORCH_THREADS`` (torch's threads, and CTranslate2's intra-op threads).

The last line prints the streaming/offline WER delta and the largest real-time K (per backend, the last one
named first: with ``--backends torch,ct2`` the line compares ct2 against torch).

    .venv/bin/python bench/asr_streaming.py [--model tiny.en] [--ks 1,2,4,6,8] [--chunk-ms 500] [--clips 8]
        [--backends torch,ct2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model
from models.wer import edit_distance, normalize
from streams.contracts import topics
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.records import OutRecord
from streams.contracts.settings import Settings
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import ensure_topics, make_producer, read_topic, send_all
from tests.integration.harness import WorkerProcess

SAMPLE_RATE = 16000
GAP_S = 0.8
EDGE_S = 0.3
COVER_TOLERANCE_S = 0.3

SENTENCES = [
    "Please send the quarterly report to the finance team in London by Friday.",
    "The weather in the mountains changed quickly, so we turned back before noon.",
    "Our new train schedule starts next Monday and the first departure is at six.",
    "She bought fresh bread, two apples and a bottle of milk at the corner shop.",
    "The engineers replaced the broken pump and the water came back this morning.",
    "Remember to lock the back door and switch off the lights when you leave.",
    "The museum will open a new exhibition about ancient ships in the spring.",
    "My brother plays the piano every evening after he finishes his homework.",
    "The doctor said the results look good and the next visit is in March.",
    "We watched the sun go down over the lake while the children played football.",
]
SENTENCES_PER_CLIP = 3


@dataclass
class Clip:
    name: str
    pcm: bytes  # PCM16 mono 16 kHz
    text: str
    utterances: list[tuple[float, float]]  # audio intervals (s) of each sentence

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE

    def audio(self) -> np.ndarray:
        return np.frombuffer(self.pcm, "<i2").astype(np.float32) / 32768.0


@dataclass
class Arrivals:
    """Everything the consumer thread saw on asr.transcripts: id → (first arrival time, event)."""

    events: dict[str, tuple[float, dict]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_stream(self, sid: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [v for v in self.events.values() if v[1].get("stream_id") == sid]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def flite_sentences(sentences: list[str], work: Path) -> list[bytes]:
    out = []
    for i, text in enumerate(sentences):
        path = work / f"sentence-{i:02d}.wav"
        subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True, timeout=60)
        with wave.open(str(path)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                raise RuntimeError(f"flite wrote {w.getframerate()} Hz x{w.getnchannels()}; expected 16 kHz mono")
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)  # trim flite's own lead-in/tail silence, so
        out.append(pcm[loud[0] : loud[-1] + 1].tobytes() if loud.size else pcm.tobytes())  # spans end at speech
    return out


def make_clips(n: int, work: Path) -> list[Clip]:
    speech = flite_sentences(SENTENCES, work)
    clips = []
    for j in range(n):
        picks = [(j * SENTENCES_PER_CLIP + m) % len(SENTENCES) for m in range(SENTENCES_PER_CLIP)]
        pcm, spans, pos = bytearray(b"\0\0" * int(EDGE_S * SAMPLE_RATE)), [], EDGE_S
        for m, idx in enumerate(picks):
            spans.append((pos, pos + len(speech[idx]) / 2 / SAMPLE_RATE))
            pcm += speech[idx]
            pos = spans[-1][1]
            silence = GAP_S if m < len(picks) - 1 else EDGE_S
            pcm += b"\0\0" * int(silence * SAMPLE_RATE)
            pos += int(silence * SAMPLE_RATE) / SAMPLE_RATE
        clips.append(Clip(f"clip{j}", bytes(pcm), " ".join(SENTENCES[i] for i in picks), spans))
    return clips


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    ref = normalize(reference)
    return edit_distance(ref, normalize(hypothesis)), len(ref)


# --- offline baseline ------------------------------------------------------------------------------------------

def run_offline(model_spec: str, clips: list[Clip]) -> dict[str, dict]:
    import torch
    import whisper

    from models.whisper_loader import load_whisper

    torch.set_num_threads(1)  # the worker's engine runs with one torch thread (models.asr_engine.load_engine)
    model = load_whisper(model_spec, progress=False)
    whisper.transcribe(model, clips[0].audio()[: SAMPLE_RATE * 2], temperature=0, fp16=False)  # warm-up
    out = {}
    for clip in clips:
        t0 = time.perf_counter()
        result = whisper.transcribe(model, clip.audio(), temperature=0,
                                    condition_on_previous_text=False, fp16=False)
        wall = time.perf_counter() - t0
        errors, words = word_errors(clip.text, str(result["text"]))
        out[clip.name] = {"errors": errors, "words": words, "wall": wall, "rtf": wall / clip.duration,
                          "text": str(result["text"]).strip()}
    return out


# --- streaming ---------------------------------------------------------------------------------------------------

def consume(settings: Settings, bootstrap: str, arrivals: Arrivals, stop: threading.Event) -> None:
    for rec in read_topic(settings, bootstrap, topics.ASR_TRANSCRIPTS, timeout_s=None, abort=stop.is_set):
        now = time.time()
        try:
            event = json.loads(rec.value or b"{}")
        except ValueError:
            continue
        with arrivals.lock:
            arrivals.events.setdefault(str(event.get("id")), (now, event))


def feed(producer, sid: str, clip: Clip, chunk_ms: int, start_at: float, sent: list[float],
         errors: list[str]) -> None:
    """One live source: chunk i goes out at start_at + i * chunk (the clock a microphone would keep)."""
    step = SAMPLE_RATE * chunk_ms // 1000 * 2
    pieces = [clip.pcm[i : i + step] for i in range(0, len(clip.pcm), step)]
    try:
        for i, piece in enumerate(pieces):
            delay = start_at + i * chunk_ms / 1000 - time.time()
            if delay > 0:
                time.sleep(delay)
            headers = list(chunk_headers(sid, i, SAMPLE_RATE, 1, eos=i == len(pieces) - 1))
            sent.append(time.time())
            producer.send(topics.AUDIO_CHUNKS, key=sid.encode(), value=piece, headers=headers)
    except Exception as exc:  # reported with the phase; a dead feeder must not hang it
        errors.append(f"{sid}: {exc!r}")


def covering(finals: list[tuple[float, dict]], span: tuple[float, float]) -> tuple[float, dict] | None:
    """The earliest-arriving final that overlaps the utterance and reaches its end; else the last overlapping."""
    lo, hi = span
    overlapping = [f for f in finals if f[1]["start"] < hi and f[1]["end"] > lo]
    reaching = [f for f in overlapping if f[1]["end"] >= hi - COVER_TOLERANCE_S]
    if reaching:
        return min(reaching, key=lambda f: f[0])
    return max(overlapping, key=lambda f: f[0]) if overlapping else None


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_phase(k: int, clips: list[Clip], producer, arrivals: Arrivals, worker: WorkerProcess, chunk_ms: int,
              slack_s: float, latency_bound_s: float, run_id: str) -> dict:
    streams = [(f"bench-{run_id}-k{k}-s{i}", clips[i % len(clips)]) for i in range(k)]
    chunk_s = chunk_ms / 1000
    sent: dict[str, list[float]] = {sid: [] for sid, _ in streams}
    errors: list[str] = []
    cpu0 = cpu_seconds(worker.proc.pid) if worker.proc else float("nan")
    t0 = time.time() + 0.5
    offsets = [(i * 0.37) % 1.0 for i in range(k)]  # live calls do not start in lockstep
    threads = [threading.Thread(target=feed, args=(producer, sid, clip, chunk_ms, t0 + off, sent[sid], errors),
                                daemon=True) for (sid, clip), off in zip(streams, offsets, strict=True)]
    for t in threads:
        t.start()
    longest = max(off + clip.duration for (_s, clip), off in zip(streams, offsets, strict=True))
    deadline = t0 + longest + max(60.0, 4 * slack_s)
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.time()))
    producer.flush(timeout=30)

    def lat_for(sid: str, clip: Clip) -> list[tuple[float, dict] | None]:
        finals = [f for f in arrivals.for_stream(sid) if f[1].get("final") and not f[1].get("error")]
        return [covering(finals, span) for span in clip.utterances]

    while time.time() < deadline:  # bounded: every utterance covered, or give up at the deadline
        if all(all(c is not None for c in lat_for(sid, clip)) for sid, clip in streams):
            break
        time.sleep(0.1)
    time.sleep(1.0)  # stragglers: a split utterance's other half, a final with no utterance of its own
    cpu1 = cpu_seconds(worker.proc.pid) if worker.proc else float("nan")

    latencies: list[float] = []
    timed: list[tuple[float, str, str]] = []  # (latency, stream, the final's text): --verbose names the slowest
    missing = gaps = errs = words = 0
    last_arrival = t0
    texts = {}
    for sid, clip in streams:
        step_s = chunk_s
        for span, cover in zip(clip.utterances, lat_for(sid, clip), strict=True):
            last_chunk = min(len(sent[sid]) - 1, max(0, math.ceil(span[1] / step_s) - 1))
            if cover is None or last_chunk < 0:
                missing += 1
                continue
            latencies.append(cover[0] - sent[sid][last_chunk])
            timed.append((latencies[-1], sid, str(cover[1].get("text", ""))))
        events = arrivals.for_stream(sid)
        gaps += sum(1 for _t, e in events if e.get("error"))
        finals = sorted((e for _t, e in events if e.get("final") and not e.get("error")),
                        key=lambda e: e.get("segment_index", 0))
        if events:
            last_arrival = max(last_arrival, max(t for t, _e in events))
        texts[sid] = " ".join(e["text"] for e in finals)
        e, w = word_errors(clip.text, texts[sid])
        errs, words = errs + e, words + w
    audio_s = sum(clip.duration for _s, clip in streams)
    drain = last_arrival - t0
    p95 = percentile(latencies, 95)
    send_lag = max((max(s[i] - (t0 + off + i * chunk_s) for i in range(len(s))) for s, off in
                    zip(sent.values(), offsets, strict=True) if s), default=0.0)
    sustained = (missing == 0 and not errors and gaps == 0 and p95 <= latency_bound_s
                 and drain <= longest + slack_s)
    return {
        "k": k, "utterances": len(latencies) + missing, "missing": missing, "gaps": gaps, "send_errors": errors,
        "p50": percentile(latencies, 50), "p95": p95, "max": max(latencies, default=float("nan")),
        "wer": errs / max(1, words), "errors": errs, "words": words, "audio_s": audio_s, "drain_s": drain,
        "longest_s": longest, "x_realtime": audio_s / drain if drain > 0 else float("nan"),
        "cpu_per_audio_s": (cpu1 - cpu0) / audio_s, "send_lag_s": send_lag, "sustained": sustained,
        "clips": [clip.name for _s, clip in streams], "texts": texts, "slowest": sorted(timed)[-3:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--ks", default="1,2,4,6,8", help="ladder of concurrent stream counts")
    ap.add_argument("--chunk-ms", type=int, default=500)
    ap.add_argument("--clips", type=int, default=8, help="distinct clips (3 sentences each), cycled over streams")
    ap.add_argument("--latency-bound", type=float, default=3.0, help="p95 latency (s) a sustained K must meet")
    ap.add_argument("--slack", type=float, default=3.0, help="drain allowance (s) past the longest stream")
    ap.add_argument("--verbose", action="store_true", help="print every stream's transcript")
    ap.add_argument("--backends", default="torch", help="ASR backends to ladder, in order (torch, ct2)")
    ap.add_argument("--threads", type=int, default=0, help="the worker's STREAMSENSE_TORCH_THREADS (0: default)")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"torch", "ct2"}:
        ap.error("--backends takes torch and/or ct2")
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if not ks or min(ks) < 1 or args.clips < 1 or args.chunk_ms <= 0:
        ap.error("--ks needs positive integers; --clips and --chunk-ms must be positive")
    if shutil.which("flite") is None:
        print("flite is not installed (apt-get install flite)", file=sys.stderr)
        return 2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; model {args.model}; chunks {args.chunk_ms} ms",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="streamsense-asr-bench-"))
    clips = make_clips(args.clips, work)
    durations = [c.duration for c in clips]
    print(f"clips: {len(clips)} flite clips of {SENTENCES_PER_CLIP} sentences, "
          f"{min(durations):.1f}-{max(durations):.1f} s", flush=True)

    print("offline baseline: whisper.transcribe() of each whole clip, 1 torch thread...", flush=True)
    offline = run_offline(args.model, clips)
    off_err = sum(o["errors"] for o in offline.values())
    off_words = sum(o["words"] for o in offline.values())
    off_rtf = sum(o["wall"] for o in offline.values()) / sum(durations)
    print(f"offline baseline: WER {off_err / off_words:.3f} ({off_err}/{off_words} words), "
          f"RTF {off_rtf:.3f} (wall s per audio s)", flush=True)

    run_id = uuid.uuid4().hex[:6]
    ladders: dict[str, list[dict]] = {}
    stop = threading.Event()
    code = 0
    with EmbeddedBroker(tansu_bin=Settings.from_env().tansu_bin) as broker:
        settings = Settings(bootstrap=broker.bootstrap)
        ensure_topics(settings, broker.bootstrap)
        arrivals = Arrivals()
        consumer = threading.Thread(target=consume, args=(settings, broker.bootstrap, arrivals, stop), daemon=True)
        consumer.start()
        producer = make_producer(settings, broker.bootstrap, linger_ms=0)
        try:
            for backend in backends:
                env = {"STREAMSENSE_ASR_MODEL": args.model, "STREAMSENSE_ASR_BACKEND": backend}
                if args.threads:
                    env["STREAMSENSE_TORCH_THREADS"] = str(args.threads)
                ladders[backend], worker_code = run_ladder(backend, ks, clips, offline, producer, arrivals, broker,
                                                           work, f"{run_id}{backend}", env, args)
                code = code or worker_code
        finally:
            producer.close(timeout=10)
            stop.set()
            consumer.join(timeout=15)
    if all(r["sustained"] for rs in ladders.values() for r in rs) and code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"worker log and clips kept in {work}", flush=True)

    summaries = {b: summary(rs) for b, rs in ladders.items()}
    if any(v is None for v in summaries.values()) or not summaries:
        print("ratio: no streaming phase ran")
        return 1
    last = backends[-1]
    line = f"ratio: {last}: {summaries[last]}"
    if len(backends) > 1:
        line += "; " + "; ".join(f"{b}: {summaries[b]}" for b in backends[:-1])
        largest = {b: max([r["k"] for r in ladders[b] if r["sustained"]], default=0) for b in backends}
        first = backends[0]
        line += f"; largest real-time K {last}/{first} = {largest[last]}/{largest[first]}"
    print(line)
    return 0


def summary(results: list[dict]) -> str | None:
    """The verdict for one ladder: WER at the largest sustained K (else the last K run) and that K."""
    ok = [r for r in results if r["sustained"]]
    best = max(ok, key=lambda r: r["k"]) if ok else (results[-1] if results else None)
    if best is None:
        return None
    label = f"K={best['k']}" + ("" if ok else ", none sustained")
    return (f"streaming WER {best['wer']:.3f} vs offline WER {best['offline_wer']:.3f} "
            f"(delta {best['wer'] - best['offline_wer']:+.3f}, at {label}); largest real-time K = "
            f"{best['k'] if ok else 0}")


def run_ladder(backend: str, ks: list[int], clips: list[Clip], offline: dict[str, dict], producer,
               arrivals: Arrivals, broker: EmbeddedBroker, work: Path, run_id: str, env: dict[str, str],
               args: argparse.Namespace) -> tuple[list[dict], int]:
    """One fresh worker with ``env``, warmed, then the K ladder until the first K not sustained."""
    results: list[dict] = []
    worker = WorkerProcess(broker.bootstrap, work, processors="asr", app_id=f"bench-asr-{run_id}", env=env)
    try:
        print(f"streaming ({backend}): starting the asr worker...", flush=True)
        worker.start().wait_ready(timeout_s=240)
        warm_sid = f"warm-{run_id}"
        first = clips[0]
        end = int((first.utterances[0][1] + GAP_S) * SAMPLE_RATE) * 2
        warm = first.pcm[:end]
        send_all(producer, [OutRecord(topics.AUDIO_CHUNKS, warm_sid.encode(), warm,
                                      headers=chunk_headers(warm_sid, 0, SAMPLE_RATE, 1, eos=True))])
        deadline = time.time() + 180
        while not arrivals.for_stream(warm_sid) and time.time() < deadline:
            time.sleep(0.2)
        if not arrivals.for_stream(warm_sid):
            raise RuntimeError(f"no warm-up transcript within 180 s; worker log:\n{worker.log()[-3000:]}")
        for k in ks:
            print(f"{backend} K={k}: {k} stream(s) at real-time pace...", flush=True)
            r = run_phase(k, clips, producer, arrivals, worker, args.chunk_ms, args.slack, args.latency_bound,
                          run_id)
            results.append(r)
            off_e = sum(offline[c]["errors"] for c in r["clips"])
            off_w = sum(offline[c]["words"] for c in r["clips"])
            r["offline_wer"] = off_e / max(1, off_w)
            print(f"{backend} K={k}: {'sustained' if r['sustained'] else 'NOT sustained'}; latency p50 "
                  f"{r['p50']:.2f} s, p95 {r['p95']:.2f} s, max {r['max']:.2f} s over {r['utterances']} utterances "
                  f"({r['missing']} without a final, {r['gaps']} gap events); drain {r['drain_s']:.1f} s for "
                  f"{r['longest_s']:.1f} s of stream ({r['x_realtime']:.2f}x real time in all); worker "
                  f"CPU {r['cpu_per_audio_s']:.3f} s per audio s; send lag max {r['send_lag_s'] * 1000:.0f} ms; "
                  f"WER {r['wer']:.3f} vs offline {r['offline_wer']:.3f} on the same clips", flush=True)
            for e in r["send_errors"]:
                print(f"  send error: {e}", flush=True)
            if args.verbose:
                for sid, text in r["texts"].items():
                    print(f"  {sid}: {text}", flush=True)
                for latency, sid, text in r["slowest"]:
                    print(f"  slowest: {latency:.2f} s {sid}: {text}", flush=True)
            if not r["sustained"]:
                break
    finally:
        try:
            code = worker.stop()
        except AssertionError as exc:  # did not stop on SIGTERM: the harness killed it
            print(f"worker: {exc}", flush=True)
            code = -9
        if code != 0:
            print(f"worker exited with {code}; log tail:\n{worker.log()[-2000:]}", flush=True)
    return results, code


if __name__ == "__main__":
    sys.exit(main())
