"""The data of an ``asr.state`` checkpoint: one open stream, in a compact binary layout.

The runtime's state record (streams/contracts/state.py) wraps it with the stream's key and input offsets.
Layout: 4-byte big-endian header length, JSON header, zlib(PCM16 of the tail, then each pending chunk).
PCM16 halves float32 and is what producers send anyway; the tail is bounded by the max segment length.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.contracts.state import StateError

STATE_VERSION = 1


@dataclass
class StreamCheckpoint:
    """Everything needed to continue a stream exactly where the last delivered batch left it."""

    stream_id: str
    next_seq: int | None
    next_index: int  # segment counter: transcript ids are f"{stream_id}:{index}"
    tail_start_s: float  # stream time of tail[0]
    tail: np.ndarray  # float32 16 kHz: audio since the last final segment's end
    pending: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)  # out-of-order chunks
    eos_seq: int | None = None
    ended: bool = False
    last_seen_ms: int = 0
    word_timestamps: bool | None = None  # a stream's own choice (chunk header); None: the processor default


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def _header(cp: StreamCheckpoint) -> bytes:
    lengths = [cp.tail.size] + [s.size for _, (s, _e) in sorted(cp.pending.items())]
    header: dict[str, Any] = {
        "v": STATE_VERSION,
        "stream_id": cp.stream_id,
        "next_seq": cp.next_seq,
        "next_index": cp.next_index,
        "tail_start_s": cp.tail_start_s,
        "eos_seq": cp.eos_seq,
        "ended": cp.ended,
        "last_seen_ms": cp.last_seen_ms,
        "word_timestamps": cp.word_timestamps,
        "lengths": lengths,
        "pending": [[seq, eos] for seq, (_s, eos) in sorted(cp.pending.items())],
    }
    return json.dumps(header, separators=(",", ":")).encode()


def encode_checkpoint(cp: StreamCheckpoint) -> bytes:
    blobs = [_pcm16(cp.tail)] + [_pcm16(s) for _, (s, _e) in sorted(cp.pending.items())]
    head = _header(cp)
    return struct.pack(">I", len(head)) + head + zlib.compress(b"".join(blobs), 6)


def _zlib_bound(n: int) -> int:
    """zlib's compressBound(): the most ``zlib.compress`` can return for n bytes (incompressible input)."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def checkpoint_size_bound(cp: StreamCheckpoint) -> int:
    """An upper bound of ``len(encode_checkpoint(cp))`` without compressing anything: audio may be noise,
    which zlib cannot shrink, so the guard must not count on compression."""
    samples = cp.tail.size + sum(s.size for s, _e in cp.pending.values())
    return 4 + len(_header(cp)) + _zlib_bound(2 * samples)


def decode_checkpoint(raw: bytes) -> StreamCheckpoint:
    try:
        (n,) = struct.unpack(">I", raw[:4])
        header = json.loads(raw[4 : 4 + n])
        pcm = np.frombuffer(zlib.decompress(raw[4 + n :]), "<i2").astype(np.float32) / 32768.0
    except (struct.error, ValueError, zlib.error) as exc:
        raise StateError(f"unreadable asr state: {exc}") from exc
    if header.get("v") != STATE_VERSION:
        raise StateError(f"asr state version {header.get('v')!r}, this build reads {STATE_VERSION}")
    pieces, pos = [], 0
    for length in header["lengths"]:
        pieces.append(pcm[pos : pos + length].copy())
        pos += length
    pending = {int(seq): (pieces[i + 1], bool(eos)) for i, (seq, eos) in enumerate(header["pending"])}
    return StreamCheckpoint(
        stream_id=header["stream_id"], next_seq=header["next_seq"], next_index=header["next_index"],
        tail_start_s=header["tail_start_s"], tail=pieces[0], pending=pending, eos_seq=header["eos_seq"],
        ended=header["ended"], last_seen_ms=header.get("last_seen_ms", 0),
        word_timestamps=header.get("word_timestamps"),
    )
