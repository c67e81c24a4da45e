"""Streaming ASR quality per speech condition: the VAD + engine as processors/asr.py runs them, next to
whole-file ``whisper.transcribe()`` of the same audio, on bench/speech_testset.py's clips.

Method, per clip: its PCM16 is cut into 500 ms chunks and fed one chunk per ``AsrProcessor.process()`` call
(bench/asr_wer_offline.py's ``stream_clip``, as a live source arrives), three times: as the worker runs by
default (Silero VAD, segments decoded in the context of the stream's previous final), the same with every
segment decoded alone (context off: what context buys), and with the energy VAD as tuned before Silero
(``VADConfig.energy()`` and the engine's gates of that time, :data:`LEGACY_ENGINE`, no context): the before.
The baseline is bench/asr_streaming.py's ``run_offline``: stock ``whisper.transcribe`` of the whole clip
(temperature 0, no conditioning on previous text), same tiny.en weights, one torch thread. Hypotheses and
references go through one normalizer (whisper's English one, then fillers dropped: whisper does not write
"um", "uh"), then models/wer.py's edit distance.

Reported per condition: WER streaming (default) / segments alone / before (energy VAD) / whole file; on
noise-only and silence-only clips the words each produced (all invented). Also the VAD's cost (Silero alone
and the whole detector, ms of one core per audio second, fed 500 ms at a time) and the CPU model.

    .venv/bin/python bench/speech_quality.py [--per-condition 5] [--verbose] [--calibrate]

``measure()`` returns the same figures as a dict (bench/quality.py collects it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.asr_streaming import Clip, run_offline
from bench.asr_wer_offline import stream_clip
from bench.machine import cpu_model
from bench.speech_testset import CONDITIONS, FILLERS, TestClip, build
from models.asr_engine import EngineConfig, SpeechEngine, load_engine
from models.speech_segmenter import SAMPLE_RATE, SpeechDetector, VADConfig
from models.wer import edit_distance, normalize
from processors.asr import AsrProcessor

CHUNK_MS = 500
MAX_SEGMENT_S = 15.0  # the worker's default (STREAMSENSE_ASR_MAX_SEGMENT_S)
CONTEXT_S = 10.0  # the worker's default (STREAMSENSE_ASR_CONTEXT_S); the "alone" column runs without
SPEECHLESS = ("noise_only", "silence_only")
# The engine's gates before the short-segment guard: the "before" column runs with them.
LEGACY_ENGINE = EngineConfig(no_speech_threshold=0.6, logprob_threshold=-1.0, no_speech_hard=0.8, min_rms_db=-50.0,
                             compression_ratio_threshold=float("inf"))
TARGET_DELTA = 0.03  # quiet/spontaneous: streaming WER at most this above whole-file





_normalizer: Callable[[str], str] | None = None


def words(text: str) -> list[str]:
    """The one normalizer for references and both hypotheses: whisper's English normalizer (numbers, spelling,
    contractions; drops "um", "uh", "hmm"), the remaining fillers dropped, then models/wer.py's tokens."""
    global _normalizer
    if _normalizer is None:
        from whisper.normalizers import EnglishTextNormalizer

        _normalizer = EnglishTextNormalizer()
    return [w for w in normalize(_normalizer(text)) if w not in FILLERS]


def errors(reference: str, hypothesis: str) -> tuple[int, int, int]:
    """(word errors, reference words, hypothesis words)."""
    ref, hyp = words(reference), words(hypothesis)
    return edit_distance(ref, hyp), len(ref), len(hyp)


def as_bench_clip(clip: TestClip) -> Clip:
    return Clip(clip.name, clip.pcm16(), clip.text, [])


def stream_texts(engine: SpeechEngine, clips: list[TestClip], vad: VADConfig,
                 context_s: float) -> dict[str, tuple[str, list[dict]]]:
    """Each clip through a fresh processor (no state shared between clips), 500 ms chunks, one per batch."""
    out = {}
    for clip in clips:
        asr = AsrProcessor(engine, vad=vad, context_s=context_s)
        out[clip.name] = stream_clip(asr, f"q-{clip.name}", as_bench_clip(clip), CHUNK_MS, 1)
    return out


def vad_cost(clips: list[TestClip], config: VADConfig) -> dict[str, float]:
    """ms of CPU per audio second: Silero's model alone, and the whole detector (model + state machine)."""
    step = SAMPLE_RATE * CHUNK_MS // 1000
    audio_s = sum(c.duration for c in clips)
    det_cpu = model_cpu = 0.0
    for clip in clips:
        det = SpeechDetector(config)
        scorer = det.scorer
        inner = scorer.score
        spent = [0.0]

        def timed(frames: np.ndarray, inner=inner, spent=spent) -> np.ndarray:
            t = time.process_time()
            try:
                return inner(frames)
            finally:
                spent[0] += time.process_time() - t

        scorer.score = timed  # type: ignore[method-assign]
        t0 = time.process_time()
        for i in range(0, clip.audio.size, step):
            det.push(clip.audio[i : i + step])
        det.flush()
        det_cpu += time.process_time() - t0
        model_cpu += spent[0]
    return {"model_ms_per_audio_s": 1000 * model_cpu / audio_s, "detector_ms_per_audio_s": 1000 * det_cpu / audio_s}


def measure(progress: Callable[[str], Any] = print, per_condition: int = 5, model: str = "tiny.en",
            verbose: bool = False, backend: str = "torch") -> dict[str, Any]:
    """Figures per condition (see the module doc); ``targets_met`` says whether every target holds."""
    clips = build(per_condition)
    audio_s = sum(c.duration for c in clips)
    progress(f"speech quality: {len(clips)} clips, {audio_s:.0f} s of audio, {per_condition} per condition")
    t0 = time.perf_counter()
    offline = {name: r["text"] for name, r in run_offline(model, [as_bench_clip(c) for c in clips]).items()}
    progress(f"whole-file whisper.transcribe: {time.perf_counter() - t0:.0f} s")
    engine = load_engine(model, backend=backend)
    legacy = engine.with_config(replace(LEGACY_ENGINE, beam_size=engine.cfg.beam_size))
    runs: dict[str, dict[str, tuple[str, list[dict]]]] = {}
    silero = VADConfig(max_segment_s=MAX_SEGMENT_S)
    for label, eng, vad, context_s in (("silero", engine, silero, CONTEXT_S), ("alone", engine, silero, 0.0),
                                       ("energy", legacy, VADConfig.energy(max_segment_s=MAX_SEGMENT_S), 0.0)):
        t0 = time.perf_counter()
        runs[label] = stream_texts(eng, clips, vad, context_s)
        progress(f"streaming ({label}): {time.perf_counter() - t0:.0f} s")
    conditions: dict[str, dict[str, Any]] = {}
    for condition in CONDITIONS:
        mine = [c for c in clips if c.condition == condition]
        if not mine:
            continue
        row: dict[str, Any] = {"clips": len(mine), "audio_s": round(sum(c.duration for c in mine), 1)}
        for label, texts in (*((k, {n: t for n, (t, _f) in runs[k].items()}) for k in runs),
                             ("whole_file", offline)):
            errs = refs = hyps = 0
            for clip in mine:
                e, r, h = errors(clip.text, texts[clip.name])
                errs, refs, hyps = errs + e, refs + r, hyps + h
            row["words"] = refs
            if condition in SPEECHLESS:
                row[f"{label}_invented"] = hyps
            else:
                row[f"{label}_wer"] = round(errs / refs, 4)
        row["segments"] = sum(len(runs["silero"][c.name][1]) for c in mine)
        row["segments_energy"] = sum(len(runs["energy"][c.name][1]) for c in mine)
        conditions[condition] = row
        if verbose:
            for clip in mine:
                progress(f"  {clip.name}\n    ref: {' '.join(words(clip.text))}\n"
                         f"    off: {' '.join(words(offline[clip.name]))}")
                for label in ("silero", "energy"):
                    for e in runs[label][clip.name][1]:
                        progress(f"    {label[:3]} [{e['start']:6.2f}-{e['end']:6.2f}] nsp={e['no_speech_prob']} "
                                 f"lp={e['avg_logprob']}: {e['text']}")
    cost = vad_cost(clips, VADConfig(max_segment_s=MAX_SEGMENT_S))
    hard = [c for c in conditions if c.startswith(("quiet", "spontaneous"))]
    targets = {
        "quiet_and_spontaneous_within_delta": all(
            conditions[c]["silero_wer"] <= conditions[c]["whole_file_wer"] + TARGET_DELTA for c in hard),
        "no_invented_words": all(conditions[c]["silero_invented"] == 0 for c in SPEECHLESS if c in conditions),
        "clean_not_worse": "clean" not in conditions
        or conditions["clean"]["silero_wer"] <= conditions["clean"]["energy_wer"],
    }
    return {"model": model, "backend": backend, "cpu": cpu_model(), "chunk_ms": CHUNK_MS, "conditions": conditions,
            "vad_cost": cost, "targets": targets, "targets_met": all(targets.values())}


GATES = [(0.8, 0.6, -1.0), (0.6, 0.4, -0.5), (0.6, 0.4, -0.6), (0.6, 0.4, -0.7), (0.6, 0.45, -0.5),
         (0.6, 0.5, -0.7), (0.7, 0.5, -0.8), (0.6, 0.4, -1.0)]


def calibrate_gate(progress: Callable[[str], Any] = print, seeds: tuple[int, ...] = (123, 456),
                   model: str = "tiny.en", backend: str = "torch") -> dict[str, Any]:
    """How the engine's no-speech gate (hard, threshold, logprob) trades invented words on noise against lone
    short replies lost: segments from the default VAD, decoded once without the gate, each rule applied after.

    A reply counts as read right when every word of its text is in the reply; invented words are all the words
    of text on noise clips."""
    import tempfile

    from bench.speech_testset import calibration_clips

    engine = load_engine(model, backend=backend)
    ungated = engine.with_config(replace(engine.cfg, no_speech_hard=2.0, no_speech_threshold=2.0))
    step = SAMPLE_RATE * CHUNK_MS // 1000
    rows = []
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        clips = [c for seed in seeds for c in calibration_clips(seed, Path(tmp))]
    for clip in clips:
        det = SpeechDetector(VADConfig(max_segment_s=MAX_SEGMENT_S))
        segs = [s for i in range(0, clip.audio.size, step) for s in det.push(clip.audio[i : i + step])]
        segs += det.flush()
        for r in ungated.transcribe([s.samples for s in segs]) if segs else []:
            if r.text:
                hyp, ref = words(r.text), set(words(clip.text))
                rows.append((clip.condition, r.no_speech_prob, r.avg_logprob, len(hyp), all(w in ref for w in hyp)))
    replies = [r for r in rows if r[0] == "reply" and r[4]]
    noise = [r for r in rows if r[0] == "noise"]
    out = []
    for hard, threshold, logprob in GATES:
        def gated(r: tuple, hard: float = hard, threshold: float = threshold, logprob: float = logprob) -> bool:
            return r[1] > hard or (r[1] > threshold and r[2] < logprob)
        out.append({"gate": (hard, threshold, logprob), "invented_words": sum(r[3] for r in noise if not gated(r)),
                    "replies_lost": sum(gated(r) for r in replies)})
        progress(f"gate no_speech>{hard} or (no_speech>{threshold} and logprob<{logprob}): "
                 f"{out[-1]['invented_words']} invented words on {len(noise)} noise segments with text, "
                 f"{out[-1]['replies_lost']} of {len(replies)} correctly read replies lost")
    return {"replies": len(replies), "noise_segments": len(noise), "gates": out}


def table(result: dict[str, Any]) -> str:
    lines = [f"speech quality, {result['model']} ({result['backend']} backend), {result['chunk_ms']} ms chunks, "
             f"CPU {result['cpu']}",
             f"{'condition':14s} {'clips':>5s} {'words':>6s}  {'streaming':>9s} {'alone':>9s} {'before':>9s} "
             f"{'whole-file':>10s}"
             f"  {'segments (before)':>17s}"]
    for name, row in result["conditions"].items():
        kind = "invented" if name in SPEECHLESS else "wer"
        fmt = (lambda v: f"{v:9d}") if kind == "invented" else (lambda v: f"{v:9.3f}")
        lines.append(f"{name:14s} {row['clips']:5d} {row['words']:6d}  {fmt(row[f'silero_{kind}'])} "
                     f"{fmt(row[f'alone_{kind}'])} {fmt(row[f'energy_{kind}'])} {fmt(row[f'whole_file_{kind}']):>10s}  "
                     f"{row['segments']:8d} ({row['segments_energy']})")
    lines.append("(noise_only / silence_only: words produced, all invented; other rows: WER)")
    cost = result["vad_cost"]
    lines.append(f"VAD cost: Silero model {cost['model_ms_per_audio_s']:.2f} ms, whole detector "
                 f"{cost['detector_ms_per_audio_s']:.2f} ms of one core per audio second")
    lines.append("targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in result["targets"].items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--per-condition", type=int, default=5)
    ap.add_argument("--verbose", action="store_true", help="print every clip's reference and segments")
    ap.add_argument("--calibrate", action="store_true", help="measure the no-speech gate's trade-off instead")
    ap.add_argument("--backend", choices=("torch", "ct2"), default="torch", help="the engine's ASR backend")
    args = ap.parse_args()
    if args.calibrate:
        calibrate_gate(model=args.model, backend=args.backend)
        return 0
    result = measure(per_condition=args.per_condition, model=args.model, verbose=args.verbose,
                     backend=args.backend)
    print(table(result))
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
