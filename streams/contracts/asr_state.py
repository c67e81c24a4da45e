"""The data of an ``asr.state`` checkpoint: one open stream, in a compact binary layout.

The runtime's state record (streams/contracts/state.py) wraps it with the stream's key and input offsets.
Layout: 4-byte big-endian header length, JSON header, zlib(PCM16 of the tail, then each pending chunk).
PCM16 halves float32 and is what producers send anyway (scaled by 32768 like models/audio.py decodes it, so
PCM16 audio comes back bit-exact); the tail is bounded by the max segment length.

Version 2 adds the VAD's state (``vad``: its counters, and its model state as float32 arrays, written in the
header as base64) and ``base_s``; with them a restored stream continues exactly. Version 1 (no VAD state) is
still read: the stream's tail is then re-read by a fresh VAD.

Optional in version 2 (absent: none): ``context``, the stream's last final (its text, the stream time its
segment ended, and its audio as one more blob after the pending chunks), which the next segment is decoded
after (models/asr_engine.py). A reader that does not know it ignores it and decodes that segment alone.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.contracts.state import StateError

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class StreamCheckpoint:
    """Everything needed to continue a stream exactly where the last delivered batch left it."""

    stream_id: str
    next_seq: int | None
    next_index: int  # segment counter: transcript ids are f"{stream_id}:{index}"
    tail_start_s: float  # stream time of tail[0]
    tail: np.ndarray  # float32 16 kHz: the audio the VAD still holds (an open segment, padding)
    pending: dict[int, tuple[np.ndarray, bool]] = field(default_factory=dict)  # out-of-order chunks
    eos_seq: int | None = None
    ended: bool = False
    last_seen_ms: int = 0
    word_timestamps: bool | None = None  # a stream's own choice (chunk header); None: the processor default
    base_s: float | None = None  # stream time of the VAD's own time 0; None: version 1 (use tail_start_s)
    vad: dict[str, Any] | None = None  # the VAD's state (models/speech_segmenter.py); None: re-read the tail
    context_text: str = ""  # the last final's text ("": no context)
    context_end_s: float = 0.0  # stream time its segment ended
    context_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # that segment's audio


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()


def _to_json(value: Any) -> Any:
    """Arrays become {"f32": base64 of float32}: exact, and 4/3 bytes per byte instead of ~20 per float."""
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"f32": base64.b64encode(np.ascontiguousarray(value, "<f4").tobytes()).decode()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"f32"}:
            return np.frombuffer(base64.b64decode(value["f32"]), "<f4").astype(np.float32)
        return {k: _from_json(v) for k, v in value.items()}
    return value


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
        "base_s": cp.base_s,
        "vad": _to_json(cp.vad),
        "context": {"text": cp.context_text, "end_s": cp.context_end_s, "samples": cp.context_audio.size}
        if cp.context_text else None,
        "lengths": lengths,
        "pending": [[seq, eos] for seq, (_s, eos) in sorted(cp.pending.items())],
    }
    return json.dumps(header, separators=(",", ":")).encode()


def encode_checkpoint(cp: StreamCheckpoint) -> bytes:
    blobs = [_pcm16(cp.tail)] + [_pcm16(s) for _, (s, _e) in sorted(cp.pending.items())]
    if cp.context_text:
        blobs.append(_pcm16(cp.context_audio))
    head = _header(cp)
    return struct.pack(">I", len(head)) + head + zlib.compress(b"".join(blobs), 6)


def _zlib_bound(n: int) -> int:
    """zlib's compressBound(): the most ``zlib.compress`` can return for n bytes (incompressible input)."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def checkpoint_size_bound(cp: StreamCheckpoint) -> int:
    """An upper bound of ``len(encode_checkpoint(cp))`` without compressing anything: audio may be noise,
    which zlib cannot shrink, so the guard must not count on compression."""
    samples = cp.tail.size + sum(s.size for s, _e in cp.pending.values()) + cp.context_audio.size
    return 4 + len(_header(cp)) + _zlib_bound(2 * samples)


def decode_checkpoint(raw: bytes) -> StreamCheckpoint:
    try:
        (n,) = struct.unpack(">I", raw[:4])
        header = json.loads(raw[4 : 4 + n])
        pcm = np.frombuffer(zlib.decompress(raw[4 + n :]), "<i2").astype(np.float32) / 32768.0
        vad = _from_json(header.get("vad"))
    except (struct.error, ValueError, zlib.error, TypeError, RecursionError) as exc:
        raise StateError(f"unreadable asr state: {exc}") from exc
    if header.get("v") not in READABLE_VERSIONS:
        raise StateError(f"asr state version {header.get('v')!r}, this build reads {READABLE_VERSIONS}")
    pieces, pos = [], 0
    for length in header["lengths"]:
        pieces.append(pcm[pos : pos + length].copy())
        pos += length
    pending = {int(seq): (pieces[i + 1], bool(eos)) for i, (seq, eos) in enumerate(header["pending"])}
    context = header.get("context") or {"text": "", "end_s": 0.0, "samples": 0}
    return StreamCheckpoint(
        stream_id=header["stream_id"], next_seq=header["next_seq"], next_index=header["next_index"],
        tail_start_s=header["tail_start_s"], tail=pieces[0], pending=pending, eos_seq=header["eos_seq"],
        ended=header["ended"], last_seen_ms=header.get("last_seen_ms", 0),
        word_timestamps=header.get("word_timestamps"), base_s=header.get("base_s"), vad=vad,
        context_text=context["text"], context_end_s=context["end_s"],
        context_audio=pcm[pos : pos + context["samples"]].copy(),
    )
