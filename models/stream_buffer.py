"""Per-stream chunk ordering for streaming ASR: release chunks in seq order exactly once, report holes.

Why apart from the VAD: ordering is about transport (redelivery, reordering, lost chunks), segmentation about
audio; models/speech_segmenter.py chains the two (and re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
