"""Per-stream logic for streaming ASR: order chunks, find speech, cut segments worth transcribing.

Why here and not in the processor: it is pure state over (seq, samples, eos), so it is tested with
synthetic tones in milliseconds and the Kafka agent around it stays a thin adapter.

Pipeline per stream: :class:`StreamBuffer` (dedupe + bounded reorder + gap detection)
-> :class:`EnergyVAD` (frame RMS vs an adaptive noise floor, hangover, max length) -> :class:`Segment`.

>>> import numpy as np
>>> seg = StreamSegmenter("mic-1", VADConfig(pad_s=0.0))
>>> burst = np.concatenate([np.zeros(8000), 0.3 * np.sin(np.arange(16000) / 3), np.zeros(16000)])
>>> [(s.start_s, s.end_s) for s in seg.push(0, burst.astype(np.float32), eos=True)]
[(0.5, 1.5)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

SAMPLE_RATE = 16000


class Segment(NamedTuple):
    """Speech to transcribe; times are seconds from the stream's first sample (gaps count as zero length)."""

    start_s: float
    end_s: float
    samples: np.ndarray


@dataclass(frozen=True)
class StreamGap:
    """Chunks ``first_seq..last_seq`` never arrived within the reorder window; audio after it is spliced."""

    stream_id: str
    first_seq: int
    last_seq: int
    at_s: float

    def __str__(self) -> str:
        return (
            f"stream {self.stream_id}: chunks {self.first_seq}..{self.last_seq} missing at {self.at_s:.2f} s"
        )


# (seq, samples, eos) for a chunk, or (first_seq, last_seq) for a hole given up on.
Released = tuple[int, np.ndarray, bool] | tuple[int, int]


@dataclass
class StreamBuffer:
    """Release chunks in seq order exactly once.

    A chunk may arrive up to ``window`` chunks late; once a newer seq is more than ``window`` past the
    first missing one, the hole is declared a gap and the stream continues (a stalled stream would
    otherwise pin memory and never produce output).  Redelivered or too-late seqs are dropped and counted.
    """

    window: int = 8
    next_seq: int | None = 0  # None: start at the first seq seen
    pending: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)
    duplicates: int = 0
    eos_seq: int | None = None

    def push(self, seq: int, samples: np.ndarray, eos: bool = False) -> list[Released]:
        """Released ``(seq, samples, eos)`` in order, interleaved with ``(first, last)`` gap markers."""
        if self.next_seq is None:
            self.next_seq = seq
        if seq < self.next_seq or seq in self.pending or (self.eos_seq is not None and seq > self.eos_seq):
            self.duplicates += 1
            return []
        self.pending[seq] = (samples, eos)
        if eos:
            self.eos_seq = seq
        out: list = []
        while self.pending:
            if self.next_seq in self.pending:
                s, e = self.pending.pop(self.next_seq)
                out.append((self.next_seq, s, e))
                self.next_seq += 1
            elif max(self.pending) - self.next_seq > self.window:
                out.append(self._skip_gap())
            else:
                break
        return out

    def give_up_hole(self) -> list[Released]:
        """Give up on the first hole now and release the chunks contiguous after it (nothing if none pending).

        Why: a caller whose buffered out-of-order audio grew too large (the ASR processor's checkpoint size
        bound) prefers a reported gap to waiting out the window with unbounded state."""
        out: list = []
        if not self.pending:
            return out
        if self.next_seq not in self.pending:
            out.append(self._skip_gap())
        while self.next_seq in self.pending:
            s, e = self.pending.pop(self.next_seq)
            out.append((self.next_seq, s, e))
            self.next_seq += 1
        return out

    @property
    def pending_samples(self) -> int:
        """Samples held for chunks waiting on a missing seq."""
        return sum(s.size for s, _e in self.pending.values())

    def flush(self) -> list[Released]:
        """Give up on every hole (idle timeout or shutdown) and release whatever is buffered."""
        out: list = []
        while self.pending:
            if self.next_seq not in self.pending:
                out.append(self._skip_gap())
            s, e = self.pending.pop(self.next_seq)
            out.append((self.next_seq, s, e))
            self.next_seq += 1
        return out

    def _skip_gap(self) -> tuple[int, int]:
        first, nxt = self.next_seq, min(self.pending)
        self.next_seq = nxt
        return (first, nxt - 1)


@dataclass(frozen=True)
class VADConfig:
    """Defaults suit 16 kHz speech: 20 ms frames, 0.5 s pause ends a segment, 30 s = whisper's window."""

    frame_s: float = 0.02
    threshold_db: float = 10.0  # speech = this far above the noise floor
    min_energy_db: float = -55.0  # never speech below this (digital silence, hiss)
    floor_init_cap_db: float = -40.0  # first frame seeds the floor, but never above this
    floor_rise_db_per_s: float = 6.0  # floor creeps up in non-speech (noise got louder) ...
    floor_rise_speech_db_per_s: float = 3.0  # ... and slower during speech, so long talk is not eaten
    hangover_s: float = 0.5  # silence this long ends a segment
    min_speech_s: float = 0.1  # shorter blips (clicks) are dropped
    max_segment_s: float = 30.0
    pad_s: float = 0.1  # context kept around speech; whisper does better with a little silence


class EnergyVAD:
    """Frame-energy VAD with an adaptive noise floor; cuts at pauses and at ``max_segment_s``.

    Feed audio in any chunk sizes; boundaries are exact to one frame regardless of chunking.
    """

    def __init__(self, config: VADConfig | None = None, sample_rate: int = SAMPLE_RATE) -> None:
        self.cfg = config or VADConfig()
        self.sr = sample_rate
        self.flen = max(1, round(self.cfg.frame_s * sample_rate))
        self._audio = np.zeros(0, np.float32)
        self._audio_start = 0  # absolute sample index of _audio[0]
        self._pos = 0  # absolute sample index of the next unclassified frame
        self._floor: float | None = None
        self._seg_start: int | None = None  # absolute start frame sample of the open segment
        self._last_speech_end = 0
        self._prev_end = 0  # end of the last emitted segment; padding never overlaps it
        fs = self.flen / sample_rate
        self._hang = max(1, round(self.cfg.hangover_s / fs))
        self._silence = 0

    def frame_db(self, frame: np.ndarray) -> float:
        return float(10.0 * np.log10(np.mean(np.square(frame, dtype=np.float64)) + 1e-10))

    def push(self, samples: np.ndarray) -> list[Segment]:
        self._audio = np.concatenate([self._audio, np.asarray(samples, np.float32)])
        out: list[Segment] = []
        end = self._audio_start + len(self._audio)
        while self._pos + self.flen <= end:
            i = self._pos - self._audio_start
            seg = self._step(self._audio[i : i + self.flen])
            if seg is not None:
                out.append(seg)
        self._trim()
        return out

    def flush(self) -> list[Segment]:
        """End of stream (or a gap): close the open segment; a trailing partial frame counts as audio."""
        end = self._audio_start + len(self._audio)
        out: list[Segment] = []
        if self._pos < end:
            tail = self._audio[self._pos - self._audio_start :]
            if self._is_speech(self.frame_db(tail)) and self._seg_start is not None:
                self._last_speech_end = end
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
        return Segment(a / self.sr, b / self.sr, samples)

    @property
    def noise_floor_db(self) -> float | None:
        return self._floor

    @property
    def position_s(self) -> float:
        """Stream time classified so far."""
        return self._pos / self.sr

    def _is_speech(self, db: float) -> bool:
        floor = self._floor if self._floor is not None else min(db, self.cfg.floor_init_cap_db)
        return db >= self.cfg.min_energy_db and db >= floor + self.cfg.threshold_db

    def _step(self, frame: np.ndarray) -> Segment | None:
        db = self.frame_db(frame)
        speech = self._is_speech(db)
        self._update_floor(db, speech)
        start, self._pos = self._pos, self._pos + self.flen
        if self._seg_start is None:
            if speech:
                self._seg_start, self._last_speech_end, self._silence = start, self._pos, 0
            return None
        if speech:
            self._last_speech_end, self._silence = self._pos, 0
        else:
            self._silence += 1
            if self._silence >= self._hang:
                return self._close(self._last_speech_end)
        if self._pos - self._seg_start >= self.cfg.max_segment_s * self.sr:
            # Forced cut mid-speech: no padding past the cut, the next segment starts right here.
            seg = self._close(self._pos, pad_end=False)
            if speech:
                self._seg_start, self._last_speech_end = self._pos, self._pos
            return seg
        return None

    def _update_floor(self, db: float, speech: bool) -> None:
        if self._floor is None:
            self._floor = min(db, self.cfg.floor_init_cap_db)
        elif db < self._floor:
            self._floor = db
        else:
            rate = self.cfg.floor_rise_speech_db_per_s if speech else self.cfg.floor_rise_db_per_s
            self._floor = min(db, self._floor + rate * self.flen / self.sr)

    def _close(self, end: int, pad_end: bool = True) -> Segment | None:
        start, self._seg_start, self._silence = self._seg_start, None, 0
        assert start is not None
        if end - start < self.cfg.min_speech_s * self.sr:
            return None
        pad = round(self.cfg.pad_s * self.sr)
        a = max(start - pad, self._prev_end, self._audio_start)
        b = min(end + pad, self._audio_start + len(self._audio)) if pad_end else end
        self._prev_end = b
        samples = self._audio[a - self._audio_start : b - self._audio_start].copy()
        return Segment(a / self.sr, b / self.sr, samples)

    def _trim(self) -> None:
        """Drop audio no future segment can need, so memory stays bounded by one segment."""
        pad = round(self.cfg.pad_s * self.sr)
        keep = self._seg_start - pad if self._seg_start is not None else self._pos - pad
        keep = max(self._audio_start, min(keep, self._pos))
        if keep > self._audio_start:
            self._audio = self._audio[keep - self._audio_start :]
            self._audio_start = keep


class StreamSegmenter:
    """One audio stream: ordered chunks in, speech segments and gap reports out."""

    def __init__(self, stream_id: str, config: VADConfig | None = None, window: int = 8) -> None:
        self.stream_id = stream_id
        self.buffer = StreamBuffer(window=window)
        self.vad = EnergyVAD(config)
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
