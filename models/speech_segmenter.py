"""Per-stream logic for streaming ASR: order chunks, find speech, cut segments worth transcribing.

Why here and not in the processor: it is pure state over (seq, samples, eos), so it is tested with
synthetic audio in milliseconds and the Kafka agent around it stays a thin adapter.

Pipeline per stream: :class:`StreamBuffer` (dedupe + bounded reorder + gap detection) -> :class:`SpeechDetector`
(a per-frame speech score, then one segmentation state machine) -> :class:`Segment`.

Two scorers feed the same state machine (``VADConfig.vad``):

- ``"silero"`` (default): Silero VAD's speech probability per 32 ms window (models/silero_vad.py). It finds
  quiet speech an energy threshold cannot (speech at -30..-40 dBFS over a -45 dB noise floor), and rejects
  steady noise at any level.
- ``"energy"``: frame RMS vs an adaptive noise floor (1 above it by ``threshold_db``, else 0). No model; kept as
  a fallback (no onnxruntime needed) and because its exact, tone-driven boundaries make the buffering, gap and
  padding rules testable in milliseconds. :meth:`VADConfig.energy` is its tuning before Silero arrived.

The state machine, per frame: closed, a frame scoring >= ``onset`` opens a segment; open, frames >= ``offset``
are speech (hysteresis: a dip inside a word does not count as a pause). ``hangover_s`` of non-speech closes the
segment, except that a segment holding less than ``short_segment_s`` of speech (frames scored as speech, not
its pauses) waits up to ``merge_gap_s`` for more speech to join it. Segments spanning less than
``min_speech_s`` are dropped (clicks, breaths). At ``max_segment_s`` the segment is cut at its least speech-like
frame in its second half (a pause if there is one, so a word is not split), or hard where there is none.
``pad_s`` of the real neighbouring audio is kept on both sides, never overlapping the previous segment.

Why merge: tiny.en reads a word better the more speech it hears around it (whole-file ``whisper.transcribe``
sees 30 s), and misreads lone fragments ("so um", "the problem is"). On bench/speech_quality.py (5 clips per
condition, Silero, WER streaming vs whole file 0.037 clean / 0.088 quiet 20 dB SNR / 0.154 spontaneous), closing
every segment after 0.5 s of silence scored 0.080 / 0.159 / 0.229; waiting up to 2 s for more speech while a
segment holds under 3 s of speech 0.080 / 0.137 / 0.234, under 4 s 0.043 / 0.137 / 0.149 (the default), under
3.5 s 0.075 / 0.137 / 0.154; measuring the segment's span instead of its speech, under 5 s 0.043 / 0.126 /
0.154, under 8 s 0.037 / 0.121 / 0.191 (fewer cuts, more latency).
The price is latency for short utterances: a lone "yes" is final 2 s after it ends instead of 0.5 s (partials,
``STREAMSENSE_ASR_PARTIAL_INTERVAL_MS``, preview longer ones).

Checkpoints: :meth:`SpeechDetector.snapshot` returns the detector's whole state (scorer state included: the
Silero LSTM state is 320 floats) with the audio it still holds; :meth:`SpeechDetector.restore` continues from it
exactly, so a stream handed over mid-utterance is cut as if it had never stopped.

>>> import numpy as np
>>> seg = StreamSegmenter("mic-1", VADConfig.energy(pad_s=0.0))
>>> burst = np.concatenate([np.zeros(8000), 0.3 * np.sin(np.arange(16000) / 3), np.zeros(16000)])
>>> [(s.start_s, s.end_s) for s in seg.push(0, burst.astype(np.float32), eos=True)]
[(0.5, 1.5)]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

import numpy as np

from models.stream_buffer import Released, StreamBuffer, StreamGap

__all__ = ["SAMPLE_RATE", "VAD_KINDS", "EnergyVAD", "Released", "Segment", "SpeechDetector", "StreamBuffer",
           "StreamGap", "StreamSegmenter", "VADConfig"]

SAMPLE_RATE = 16000
VAD_KINDS = ("silero", "energy")


class Segment(NamedTuple):
    """Speech to transcribe; times are seconds from the stream's first sample (gaps count as zero length).

    ``speech_s``: how much of it the VAD scored as speech (padding and pauses excluded)."""

    start_s: float
    end_s: float
    samples: np.ndarray
    speech_s: float = 0.0


@dataclass(frozen=True)
class VADConfig:
    """Segmentation rules (see the module doc); defaults chosen on bench/speech_quality.py's test audio."""

    vad: str = "silero"  # "silero" or "energy" (see the module doc)
    onset: float = 0.5  # a frame at least this speech-like opens a segment
    offset: float = 0.35  # inside a segment, frames at least this speech-like still count as speech
    hangover_s: float = 0.5  # this much non-speech closes a segment ...
    short_segment_s: float = 4.0  # ... that holds at least this much speech; one with less waits ...
    merge_gap_s: float = 2.0  # ... this long for more speech to join it
    min_speech_s: float = 0.25  # segments spanning less speech are dropped (clicks, breaths)
    max_segment_s: float = 30.0  # whisper's window; cut at the segment's least speech-like frame
    pad_s: float = 0.3  # real audio kept on each side; whisper does better with a little context
    # energy scorer only
    frame_s: float = 0.02
    threshold_db: float = 10.0  # speech = this far above the noise floor
    min_energy_db: float = -55.0  # never speech below this (digital silence, hiss)
    floor_init_cap_db: float = -40.0  # first frame seeds the floor, but never above this
    floor_rise_db_per_s: float = 6.0  # floor creeps up in non-speech (noise got louder) ...
    floor_rise_speech_db_per_s: float = 3.0  # ... and slower during speech, so long talk is not eaten

    def __post_init__(self) -> None:
        if self.vad not in VAD_KINDS:
            raise ValueError(f"vad={self.vad!r}; expected one of {', '.join(VAD_KINDS)}")
        if not 0.0 <= self.offset <= self.onset <= 1.0:
            raise ValueError(f"need 0 <= offset ({self.offset}) <= onset ({self.onset}) <= 1")
        if self.max_segment_s <= 0 or min(self.hangover_s, self.merge_gap_s, self.pad_s, self.min_speech_s) < 0:
            raise ValueError("durations must be >= 0 and max_segment_s > 0")

    @classmethod
    def energy(cls, **overrides: Any) -> VADConfig:
        """The energy VAD as tuned before Silero: 0.1 s padding and minimum speech, no merging of short speech."""
        base = cls(vad="energy", onset=0.5, offset=0.5, short_segment_s=0.0, merge_gap_s=0.5, min_speech_s=0.1,
                   pad_s=0.1)
        return replace(base, **overrides)

    @classmethod
    def for_kind(cls, vad: str, **overrides: Any) -> VADConfig:
        """The defaults of a VAD kind: what ``STREAMSENSE_ASR_VAD`` selects (energy: :meth:`energy`)."""
        return cls.energy(**overrides) if vad == "energy" else cls(vad=vad, **overrides)

    @property
    def frame_samples(self) -> int:
        if self.vad == "silero":
            from models.silero_vad import WINDOW

            return WINDOW
        return max(1, round(self.frame_s * SAMPLE_RATE))

    def retained_s(self) -> float:
        """The most audio a detector holds, so the most a checkpoint carries: an open segment of
        ``max_segment_s``, its leading padding and a frame not yet scored (plus one frame of slack)."""
        return self.max_segment_s + self.pad_s + 2 * self.frame_samples / SAMPLE_RATE


class _Scorer(Protocol):
    frame: int

    def score(self, frames: np.ndarray) -> np.ndarray: ...

    def score_tail(self, tail: np.ndarray) -> float: ...

    def state(self) -> dict[str, Any]: ...


class _EnergyScorer:
    """1.0 for a frame ``threshold_db`` above the adaptive noise floor, else 0.0."""

    def __init__(self, cfg: VADConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.frame = cfg.frame_samples
        self.floor: float | None = state["floor"] if state else None

    def score(self, frames: np.ndarray) -> np.ndarray:
        dbs = 10.0 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-10)
        out = np.zeros(len(dbs), np.float32)
        for i, db in enumerate(dbs.tolist()):
            speech = self._is_speech(db)
            self._update_floor(db, speech)
            out[i] = speech
        return out

    def score_tail(self, tail: np.ndarray) -> float:
        return float(self._is_speech(float(10.0 * np.log10(np.mean(np.square(tail, dtype=np.float64)) + 1e-10))))

    def state(self) -> dict[str, Any]:
        return {"floor": self.floor}

    def _is_speech(self, db: float) -> bool:
        floor = self.floor if self.floor is not None else min(db, self.cfg.floor_init_cap_db)
        return db >= self.cfg.min_energy_db and db >= floor + self.cfg.threshold_db

    def _update_floor(self, db: float, speech: bool) -> None:
        if self.floor is None:
            self.floor = min(db, self.cfg.floor_init_cap_db)
        elif db < self.floor:
            self.floor = db
        else:
            rate = self.cfg.floor_rise_speech_db_per_s if speech else self.cfg.floor_rise_db_per_s
            self.floor = min(db, self.floor + rate * self.frame / SAMPLE_RATE)


class _SileroScorer:
    """Silero's speech probability per 512-sample window, the LSTM state carried along."""

    def __init__(self, cfg: VADConfig, state: dict[str, Any] | None = None) -> None:
        from models.silero_vad import WINDOW, SileroVAD

        self.model = SileroVAD.from_state(state) if state else SileroVAD()
        self.frame = WINDOW

    def score(self, frames: np.ndarray) -> np.ndarray:
        return self.model.probabilities(frames)

    def score_tail(self, tail: np.ndarray) -> float:
        return float(self.model.probabilities(np.pad(tail, (0, self.frame - tail.size)))[0])

    def state(self) -> dict[str, Any]:
        return dict(self.model.state())


def _scorer(cfg: VADConfig, state: dict[str, Any] | None = None) -> _Scorer:
    return _SileroScorer(cfg, state) if cfg.vad == "silero" else _EnergyScorer(cfg, state)


# Detector fields a snapshot carries (absolute sample indices from the detector's first sample, frame counts).
_FIELDS = ("audio_start", "pos", "seg_start", "last_speech_end", "prev_end", "silence", "speech", "min_p",
           "min_at", "speech_after_min")


class SpeechDetector:
    """Speech segments from audio fed in any chunk sizes; boundaries are exact to one frame regardless of
    chunking (the scorers give the same score per frame however frames are grouped)."""

    def __init__(self, config: VADConfig | None = None, sample_rate: int = SAMPLE_RATE,
                 scorer_state: dict[str, Any] | None = None) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the VAD runs at {SAMPLE_RATE} Hz, not {sample_rate}")
        self.cfg = config or VADConfig()
        self.sr = sample_rate
        self.scorer = _scorer(self.cfg, scorer_state)
        self.flen = self.scorer.frame
        self._audio = np.zeros(0, np.float32)
        self._audio_start = 0  # absolute sample index of _audio[0]
        self._pos = 0  # absolute sample index of the next unscored frame
        self._seg_start: int | None = None  # first sample of the open segment's speech
        self._last_speech_end = 0
        self._prev_end = 0  # end of the last emitted segment; padding never overlaps it
        self._silence = 0  # non-speech frames since the open segment's last speech
        self._speech = 0  # speech samples in the open segment
        self._min_p: float | None = None  # least speech-like frame of the open segment's second half ...
        self._min_at = 0  # ... where it starts ...
        self._speech_after_min = 0  # ... and the speech samples from it on (they go to the next segment on a cut)
        self._hang = self._frames(self.cfg.hangover_s)
        self._short_hang = max(self._hang, self._frames(self.cfg.merge_gap_s))

    def _frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.sr / self.flen))

    # --- feeding -----------------------------------------------------------------------------------------

    def push(self, samples: np.ndarray) -> list[Segment]:
        self._audio = np.concatenate([self._audio, np.asarray(samples, np.float32)])
        n = (self._audio_start + len(self._audio) - self._pos) // self.flen
        out: list[Segment] = []
        if n > 0:
            i = self._pos - self._audio_start
            probs = self.scorer.score(self._audio[i : i + n * self.flen].reshape(n, self.flen))
            for p in probs.tolist():
                seg = self._step(p, self.flen)
                if seg is not None:
                    out.append(seg)
        self._trim()
        return out

    def flush(self) -> list[Segment]:
        """End of stream (or a gap, an idle timeout): close the open segment; a trailing partial frame is
        scored too."""
        end = self._audio_start + len(self._audio)
        out: list[Segment] = []
        if self._pos < end:
            p = self.scorer.score_tail(self._audio[self._pos - self._audio_start :])
            if self._seg_start is not None and p >= self.cfg.offset:
                self._last_speech_end, self._speech = end, self._speech + end - self._pos
            self._pos = end
        if self._seg_start is not None:
            seg = self._close(self._last_speech_end)
            if seg is not None:
                out.append(seg)
        self._silence = 0
        self._trim()
        return out

    def open_segment(self) -> Segment | None:
        """The segment in progress, left open: padded like a closed one, up to the last speech frame heard so
        far (+ padding); None outside speech.

        Why: a partial hypothesis transcribes speech before the pause that will close it."""
        if self._seg_start is None:
            return None
        pad = round(self.cfg.pad_s * self.sr)
        a = max(self._seg_start - pad, self._prev_end, self._audio_start)
        b = min(self._last_speech_end + pad, self._pos)
        samples = self._audio[a - self._audio_start : b - self._audio_start].copy()
        return Segment(a / self.sr, b / self.sr, samples, self._speech / self.sr)

    @property
    def position_s(self) -> float:
        """Stream time scored so far."""
        return self._pos / self.sr

    @property
    def noise_floor_db(self) -> float | None:
        """The energy scorer's noise floor (None for Silero)."""
        return getattr(self.scorer, "floor", None)

    # --- checkpoints -------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[str, Any], np.ndarray]:
        """The whole state (JSON scalars, and float32 arrays under ``scorer``) and the audio still held, whose
        first sample is ``state["audio_start"]``."""
        state: dict[str, Any] = {"vad": self.cfg.vad, "scorer": self.scorer.state()}
        state.update({k: getattr(self, f"_{k}") for k in _FIELDS})
        return state, self._audio.copy()

    @classmethod
    def restore(cls, config: VADConfig, state: dict[str, Any], audio: np.ndarray) -> SpeechDetector:
        """Continue exactly where :meth:`snapshot` was taken; ValueError if it was taken with another scorer."""
        if state.get("vad") != config.vad:
            raise ValueError(f"a {state.get('vad')!r} VAD state cannot continue as {config.vad!r}")
        det = cls(config, scorer_state=state["scorer"])
        for k in _FIELDS:
            setattr(det, f"_{k}", state[k])
        det._audio = np.asarray(audio, np.float32).copy()
        return det

    # --- the state machine -------------------------------------------------------------------------------

    def _step(self, p: float, n: int) -> Segment | None:
        start, self._pos = self._pos, self._pos + n
        if self._seg_start is None:
            if p >= self.cfg.onset:
                self._seg_start, self._last_speech_end, self._silence, self._speech = start, self._pos, 0, n
                self._min_p = None
            return None
        speech = p >= self.cfg.offset
        if speech:
            self._last_speech_end, self._silence, self._speech = self._pos, 0, self._speech + n
        else:
            self._silence += 1
            short = self._speech < self.cfg.short_segment_s * self.sr
            if self._silence >= (self._short_hang if short else self._hang):
                return self._close(self._last_speech_end)
        max_len = round(self.cfg.max_segment_s * self.sr)
        if 2 * (start - self._seg_start) >= max_len:  # second half: remember where a cut would hurt least
            if self._min_p is None or p <= self._min_p:
                self._min_p, self._min_at, self._speech_after_min = p, start, 0
            if speech:
                self._speech_after_min += n
        if self._pos - self._seg_start >= max_len:
            return self._cut(speech)
        return None

    def _cut(self, speech: bool) -> Segment:
        """Segment at its maximum length: end it at its least speech-like frame if that is a pause, else right
        here; the next segment starts at the cut (no padding across it)."""
        start = self._seg_start
        assert start is not None
        at_pause = self._min_p is not None and self._min_p < self.cfg.offset
        cut = self._min_at if at_pause else self._pos
        after = self._speech_after_min if at_pause else 0
        seg = self._emit(start, cut, self._speech - after, pad_end=False)
        self._min_p = None
        if (at_pause and self._last_speech_end > cut) or (not at_pause and speech):
            self._seg_start, self._speech = cut, after
            if not at_pause:
                self._last_speech_end = cut
        else:
            self._seg_start, self._speech, self._silence = None, 0, 0
        return seg

    def _close(self, end: int) -> Segment | None:
        start, speech = self._seg_start, self._speech
        self._seg_start, self._silence, self._speech, self._min_p = None, 0, 0, None
        assert start is not None
        if end - start < self.cfg.min_speech_s * self.sr:
            return None
        return self._emit(start, end, speech)

    def _emit(self, start: int, end: int, speech: int, pad_end: bool = True) -> Segment:
        pad = round(self.cfg.pad_s * self.sr)
        a = max(start - pad, self._prev_end, self._audio_start)
        b = min(end + pad, self._audio_start + len(self._audio)) if pad_end else end
        self._prev_end = b
        samples = self._audio[a - self._audio_start : b - self._audio_start].copy()
        return Segment(a / self.sr, b / self.sr, samples, speech / self.sr)

    def _trim(self) -> None:
        """Drop audio no future segment can need, so memory stays bounded by one segment."""
        pad = round(self.cfg.pad_s * self.sr)
        keep = self._seg_start - pad if self._seg_start is not None else self._pos - pad
        keep = max(self._audio_start, min(keep, self._pos))
        if keep > self._audio_start:
            self._audio = self._audio[keep - self._audio_start :]
            self._audio_start = keep


class EnergyVAD(SpeechDetector):
    """A :class:`SpeechDetector` on the energy scorer whatever ``config.vad`` says.

    Default: :meth:`VADConfig.energy`, the energy VAD as it was before Silero."""

    def __init__(self, config: VADConfig | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(replace(config, vad="energy") if config else VADConfig.energy(), sample_rate)


class StreamSegmenter:
    """One audio stream: ordered chunks in, speech segments and gap reports out."""

    def __init__(self, stream_id: str, config: VADConfig | None = None, window: int = 8) -> None:
        self.stream_id = stream_id
        self.buffer = StreamBuffer(window=window)
        self.vad = SpeechDetector(config)
        self.ended = False

    def push(self, seq: int, samples: np.ndarray, eos: bool = False) -> list[Segment | StreamGap]:
        return self._feed(self.buffer.push(seq, samples, eos))

    def flush(self) -> list[Segment | StreamGap]:
        """Idle timeout / shutdown: give up on missing chunks and close any open segment."""
        out = self._feed(self.buffer.flush())
        if not self.ended:
            out.extend(self.vad.flush())
        return out

    def _feed(self, items: list) -> list[Segment | StreamGap]:
        out: list[Segment | StreamGap] = []
        for item in items:
            if len(item) == 2:
                # Do not let one segment span a splice: close it where the audio stops being contiguous.
                out.extend(self.vad.flush())
                out.append(StreamGap(self.stream_id, item[0], item[1], self.vad.position_s))
                continue
            _, samples, eos = item
            out.extend(self.vad.push(samples))
            if eos:
                out.extend(self.vad.flush())
                self.ended = True
        return out
