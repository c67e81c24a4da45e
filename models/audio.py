"""Decode one audio chunk (as carried on ``audio.chunks``) into whisper's input: float32 mono 16 kHz.

Why typed errors: the ASR processor must tell a poison message (dead-letter it, with a reason a human
can act on) from a transient failure; every rejection here is a subclass of :class:`AudioError`.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import wave
from math import gcd

import numpy as np
from scipy.signal import resample_poly

TARGET_RATE = 16000
DEFAULT_MAX_SECONDS = 600.0
COMPRESSED = ("flac", "ogg", "mp3")
ENCODINGS = ("pcm16", "wav", *COMPRESSED)


class AudioError(ValueError):
    """Base of every reason a chunk cannot be decoded; the message is safe to put in a dead-letter record."""


class EmptyAudio(AudioError):
    """Zero bytes, or a container holding zero samples."""


class CorruptAudio(AudioError):
    """Bytes that do not parse as the declared encoding."""


class OddByteCount(CorruptAudio):
    """PCM16 payload that is not a whole number of frames (2 bytes x channels)."""


class FormatMismatch(AudioError):
    """The declared sample_rate/channels disagree with what the container header says."""


class UnsupportedEncoding(AudioError):
    """Unknown encoding, or a compressed one with no decoder (ffmpeg / PyAV) available."""


class AudioTooLong(AudioError):
    """Chunk longer than ``max_seconds``: refuse before allocating, so one bad message cannot OOM a worker."""


class InvalidParameters(AudioError):
    """Nonsensical sample_rate or channels in the message headers."""


def decode_chunk(
    data: bytes,
    *,
    encoding: str,
    sample_rate: int,
    channels: int,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Decode ``data`` to float32 mono at 16 kHz in [-1, 1].

    For "flac"/"ogg"/"mp3" the container's own rate/channel count win (they are authoritative there);
    the declared values are only sanity-checked for "pcm16" (where they are all we have) and "wav".
    """
    enc = encoding.lower()
    if enc not in ENCODINGS:
        raise UnsupportedEncoding(
            f"unsupported encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}"
        )
    if not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 384000:
        raise InvalidParameters(f"sample_rate {sample_rate!r} is outside 1000..384000 Hz")
    if not isinstance(channels, int) or not 1 <= channels <= 32:
        raise InvalidParameters(f"channels {channels!r} is outside 1..32")
    if len(data) == 0:
        raise EmptyAudio(f"empty {enc} chunk (0 bytes)")
    if enc == "pcm16":
        frames = _pcm16(data, sample_rate, channels, max_seconds)
        rate = sample_rate
    elif enc == "wav":
        frames, rate = _wav(data, sample_rate, channels, max_seconds)
    else:
        # Compressed decoders resample and downmix themselves (straight to the target rate).
        return _compressed(data, enc, max_seconds)
    return resample(to_mono(frames), rate)


def to_mono(frames: np.ndarray) -> np.ndarray:
    """Average channels (frames shaped (n, channels)); averaging keeps the result in [-1, 1]."""
    return frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]


def resample(x: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    """Polyphase FIR resampling (anti-aliased), exact for any integer rate pair."""
    if rate == target:
        return np.ascontiguousarray(x, dtype=np.float32)
    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def _check_length(n_frames: int, rate: int, max_seconds: float) -> None:
    if n_frames > max_seconds * rate:
        raise AudioTooLong(f"chunk is {n_frames / rate:.1f} s, over the {max_seconds:g} s limit")


def _pcm16(data: bytes, rate: int, channels: int, max_seconds: float) -> np.ndarray:
    frame = 2 * channels
    if len(data) % frame:
        raise OddByteCount(
            f"PCM16 chunk has {len(data)} bytes, not a multiple of {frame} (2 bytes x {channels} channel(s))"
        )
    _check_length(len(data) // frame, rate, max_seconds)
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0).reshape(-1, channels)


def _wav(data: bytes, rate: int, channels: int, max_seconds: float) -> tuple[np.ndarray, int]:
    try:
        with wave.open(io.BytesIO(data)) as w:
            h_rate, h_ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            if h_rate != rate or h_ch != channels:
                raise FormatMismatch(
                    f"WAV header says {h_rate} Hz x {h_ch} ch"
                    f" but the message declares {rate} Hz x {channels} ch"
                )
            _check_length(n, h_rate, max_seconds)
            raw = w.readframes(n)
    except (wave.Error, EOFError, struct.error) as exc:  # truncated headers raise struct.error
        msg = str(exc)
        if "unknown format" in msg:
            raise UnsupportedEncoding(f"WAV sample format not supported (PCM only): {msg}") from exc
        raise CorruptAudio(f"not a readable WAV file: {msg or type(exc).__name__}") from exc
    if n == 0 or not raw:
        raise EmptyAudio("WAV chunk holds no samples")
    if len(raw) < n * width * h_ch:
        raise CorruptAudio(f"WAV data truncated: header says {n} frames, got {len(raw) // (width * h_ch)}")
    return _pcm_to_float(raw, width).reshape(-1, h_ch), h_rate


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    if width == 1:  # WAV 8-bit is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    raise UnsupportedEncoding(f"WAV sample width {width} bytes not supported")


_FFMPEG_FORMATS = {"flac": "flac", "ogg": "ogg", "mp3": "mp3"}


def _compressed(data: bytes, enc: str, max_seconds: float) -> np.ndarray:
    if shutil.which("ffmpeg"):
        out = _ffmpeg(data, enc, max_seconds)
    else:
        try:
            import av  # noqa: F401  (PyAV bundles libav; a dependency of faster-whisper)
        except ImportError:
            raise UnsupportedEncoding(
                f"{enc} needs ffmpeg on PATH (apt-get install ffmpeg) or PyAV (pip install av); neither found"
            ) from None
        out = _pyav(data, enc, max_seconds)
    if out.size == 0:
        raise EmptyAudio(f"{enc} chunk decoded to zero samples")
    _check_length(out.size, TARGET_RATE, max_seconds)
    return out


def _ffmpeg(data: bytes, enc: str, max_seconds: float) -> np.ndarray:
    # -t caps the decode so a tiny "zip bomb" chunk cannot expand without bound.
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        _FFMPEG_FORMATS[enc],
        "-i",
        "pipe:0",
        "-t",
        f"{max_seconds + 1:g}",
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        str(TARGET_RATE),
        "pipe:1",
    ]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=60 + max_seconds / 10)
    except subprocess.TimeoutExpired as exc:
        raise CorruptAudio(f"ffmpeg timed out decoding {enc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise CorruptAudio(
            f"ffmpeg could not decode {enc}: {err[-1] if err else 'exit ' + str(proc.returncode)}"
        )
    return np.frombuffer(proc.stdout, "<f4").copy()


def _pyav(data: bytes, enc: str, max_seconds: float) -> np.ndarray:
    import av

    limit = int((max_seconds + 1) * TARGET_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), format=_FFMPEG_FORMATS[enc], mode="r") as container:
            if not container.streams.audio:
                raise CorruptAudio(f"{enc} container has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=TARGET_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    chunks.append(arr)
                    total += arr.size
                if total > limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise CorruptAudio(f"could not decode {enc}: {exc}") from exc
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
