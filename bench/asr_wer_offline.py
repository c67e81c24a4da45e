"""Streaming-vs-offline WER without the broker: the bench's clips, chunked as the bench sends them, through
``AsrProcessor.process()`` in-process, next to ``whisper.transcribe()`` of each whole clip.

Why: bench/asr_streaming.py needs a broker, a worker and real-time pacing (minutes per run); the word losses
it measures come from the segmenter and the engine, which this harness exercises with the very same audio
and chunking in seconds, so changes to them can be iterated on quickly. The bench stays the final check.

    .venv/bin/python bench/asr_wer_offline.py [--clips 8] [--chunk-ms 500] [--per-batch 1] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.asr_streaming as bench
from bench.asr_streaming import SAMPLE_RATE, Clip, make_clips, word_errors
from models.wer import normalize
from processors.asr import AsrProcessor
from streams.contracts import topics
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.records import RawRecord
from streams.contracts.settings import Settings

# Sentences the bench never speaks: a check that a change helps speech in general, not the bench's 10.
HELDOUT = [
    "The library closes early on Sundays, so bring the books back on Saturday.",
    "He fixed the bicycle chain with a small tool he keeps in his backpack.",
    "Our team won the match after a long and difficult second half.",
    "The bakery on the corner sells warm rolls and sweet cakes every morning.",
    "Please call the hotel and ask whether they have a room for two nights.",
    "The river flooded the fields after three days of heavy rain.",
    "I will meet you at the station at half past seven tomorrow evening.",
    "The teacher asked the students to write a short story about their summer.",
    "Turn left at the traffic lights and the post office is on your right.",
    "The old castle on the hill attracts thousands of visitors every year.",
    "My sister works as a nurse at the hospital in the city centre.",
    "The cat slept on the windowsill while the rain fell outside.",
    "We need more paper for the printer before the meeting starts.",
    "The pilot announced that the flight would land twenty minutes early.",
    "Fresh vegetables from the garden taste much better than the ones from the store.",
    "The company plans to open three new offices in Asia next year.",
    "He forgot his umbrella at the restaurant and got wet on the way home.",
    "The children built a snowman in the park after school.",
    "Could you turn down the music, I am trying to read.",
    "The bridge will be closed for repairs until the end of the month.",
    "She plays tennis with her friends every Thursday afternoon.",
    "The new phone has a bigger screen and a much faster camera.",
    "Our neighbours are painting their house a bright shade of yellow.",
    "The farmer sold his apples and pears at the market on Saturday.",
    "The concert was cancelled because the singer had a sore throat.",
    "Remember to water the plants while we are away on holiday.",
    "The police found the stolen car behind an empty warehouse.",
    "I usually drink a cup of coffee before I start working.",
    "The students visited the science museum and saw a real rocket.",
    "The price of petrol went up again at the beginning of the week.",
    "A strong wind knocked down several trees along the main road.",
    "They moved to a small village near the coast last autumn.",
    "The shop assistant helped me find a warm coat for the winter.",
    "Our grandmother tells wonderful stories about her childhood.",
    "The meeting has been moved from Tuesday to Wednesday morning.",
    "Please remember to bring your passport and your boarding pass.",
    "The dog barked loudly when the postman came to the door.",
    "We planted tomatoes, beans and carrots in the garden this spring.",
    "The hospital opened a new wing for children last month.",
    "He runs five kilometres along the beach every morning before work.",
]


def stream_clip(asr: AsrProcessor, sid: str, clip: Clip, chunk_ms: int, per_batch: int) -> tuple[str, list[dict]]:
    """Feed one clip in ``chunk_ms`` PCM16 chunks, ``per_batch`` chunks per process() call (the worker's
    micro-batches at real-time pace hold about one chunk per stream)."""
    step = SAMPLE_RATE * chunk_ms // 1000 * 2
    pieces = [clip.pcm[i : i + step] for i in range(0, len(clip.pcm), step)]
    records = [RawRecord(topics.AUDIO_CHUNKS, 0, i, sid.encode(), p, 0,
                         tuple(chunk_headers(sid, i, SAMPLE_RATE, 1, eos=i == len(pieces) - 1)))
               for i, p in enumerate(pieces)]
    outs = []
    for i in range(0, len(records), per_batch):
        outs += asr.process(records[i : i + per_batch])
    finals = sorted((json.loads(o.value) for o in outs if o.topic == topics.ASR_TRANSCRIPTS),
                    key=lambda e: e.get("segment_index", 0))
    finals = [e for e in finals if e.get("final") and not e.get("error")]
    return " ".join(e["text"] for e in finals), finals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--chunk-ms", type=int, default=500)
    ap.add_argument("--per-batch", type=int, default=1)
    ap.add_argument("--max-segment-s", type=float, default=15.0, help="the worker's default")
    ap.add_argument("--beam-size", type=int, default=-1, help="decoder beams (1: greedy); default: the engine's")
    ap.add_argument("--offline-cache", default="", help="JSON file to keep offline results between runs")
    ap.add_argument("--set", choices=("bench", "heldout"), default="bench",
                    help="the bench's 10 sentences, or 40 others (3 per clip, as the bench builds them)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--backend", choices=("torch", "ct2"), default="torch", help="the engine's ASR backend")
    args = ap.parse_args()

    from models.asr_engine import EngineConfig, load_engine
    from models.speech_segmenter import VADConfig

    work = Path(tempfile.mkdtemp(prefix="asr-wer-"))
    if args.set == "heldout":
        bench.SENTENCES[:] = HELDOUT  # make_clips reads the module's list
    clips = make_clips(args.clips, work)
    engine = load_engine(args.model, backend=args.backend)
    cache = Path(args.offline_cache) if args.offline_cache else None
    cached: dict[str, dict[str, str]] = json.loads(cache.read_text()) if cache and cache.exists() else {}
    key = f"{args.model}/{args.set}/{args.clips}"
    if key not in cached:  # the bench's own baseline: a stock model, loaded apart from the engine's
        cached[key] = {name: r["text"] for name, r in bench.run_offline(args.model, clips).items()}
        if cache:
            cache.write_text(json.dumps(cached))
    offline = cached[key]
    if args.beam_size >= 0:
        engine = engine.with_config(EngineConfig(beam_size=args.beam_size))
    settings = Settings.from_env()  # the worker's knobs (word timings, partials) as the worker reads them
    asr = AsrProcessor(engine, vad=VADConfig(max_segment_s=args.max_segment_s),
                       word_timestamps=settings.asr_word_timestamps,
                       partial_interval_ms=settings.asr_partial_interval_ms)
    s_err = o_err = words = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for clip in clips:
        text, finals = stream_clip(asr, f"s-{clip.name}", clip, args.chunk_ms, args.per_batch)
        se, w = word_errors(clip.text, text)
        oe, _ = word_errors(clip.text, offline[clip.name])
        s_err, o_err, words = s_err + se, o_err + oe, words + w
        print(f"{clip.name}: streaming {se} errors, offline {oe} errors, {w} words; "
              f"{len(finals)} segment(s)", flush=True)
        if args.verbose or se > oe:
            print(f"  ref: {' '.join(normalize(clip.text))}")
            print(f"  off: {' '.join(normalize(offline[clip.name]))}")
            for e in finals:
                print(f"  seg [{e['start']:.2f}-{e['end']:.2f}] nsp={e['no_speech_prob']} "
                      f"lp={e['avg_logprob']}: {e['text']}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"streaming WER {s_err / words:.3f} vs offline {o_err / words:.3f} (delta {(s_err - o_err) / words:+.3f}); "
          f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU streaming (noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
