"""Split a WAV file into ``audio.chunks`` records (raw PCM16 + headers), as a live source would send them.

Why PCM16 chunks and not WAV slices: it is what microphones and telephony gateways emit, and every chunk
then carries its format in headers only (stream_id, seq, sample_rate, channels, encoding, eos).
"""

from __future__ import annotations

import time
import wave
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from streams.contracts import topics
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.records import OutRecord


def pcm16_chunks(pcm: bytes, sample_rate: int, channels: int, stream_id: str, chunk_ms: int = 500,
                 first_seq: int = 0) -> list[OutRecord]:
    """Cut interleaved PCM16 into chunks of ``chunk_ms`` (the last one shorter, flagged eos)."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    frame = 2 * channels
    step = max(1, sample_rate * chunk_ms // 1000) * frame
    pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)] or [b""]
    last = len(pieces) - 1
    return [
        OutRecord(topics.AUDIO_CHUNKS, stream_id.encode(), piece,
                  headers=chunk_headers(stream_id, first_seq + i, sample_rate, channels, eos=i == last))
        for i, piece in enumerate(pieces)
    ]


def wav_chunks(path: str | Path, stream_id: str, chunk_ms: int = 500) -> list[OutRecord]:
    """A PCM16 WAV file as chunk records; other sample widths are refused with a clear message."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit WAV; only 16-bit PCM is supported here")
        rate, channels, pcm = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
    return pcm16_chunks(pcm, rate, channels, stream_id, chunk_ms)


def paced(records: Iterable[OutRecord], chunk_ms: int, sleep: Callable[[float], None] = time.sleep
          ) -> Iterator[OutRecord]:
    """Yield records no faster than real time (``--realtime``), to watch latency as a live source would."""
    start = time.monotonic()
    for i, record in enumerate(records):
        due = start + i * chunk_ms / 1000
        delay = due - time.monotonic()
        if delay > 0:
            sleep(delay)
        yield record
