"""decode_chunk: exact PCM values, real resampling (no aliasing), and one typed error per failure mode."""

from __future__ import annotations

import io
import shutil
import sys
import wave

import numpy as np
import pytest

from models import audio
from models.audio import (
    AudioError,
    AudioTooLong,
    CorruptAudio,
    EmptyAudio,
    FormatMismatch,
    InvalidParameters,
    OddByteCount,
    UnsupportedEncoding,
    decode_chunk,
)


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pcm16(x: np.ndarray) -> bytes:
    """x: (n,) or (n, channels) float in [-1, 1]."""
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def wav_bytes(x: np.ndarray, rate: int, width: int = 2) -> bytes:
    frames = x if x.ndim == 2 else x[:, None]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        if width == 1:
            w.writeframes((frames * 127 + 128).astype(np.uint8).tobytes())
        elif width == 3:
            v = (frames * (2**23 - 1)).astype("<i4").reshape(-1)
            w.writeframes(np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes())
        else:
            w.writeframes(pcm16(frames))
    return buf.getvalue()


def peak_hz(x: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# ---------------------------------------------------------------- PCM16
def test_pcm16_mono_16k_is_exact() -> None:
    ints = np.array([0, 1, -1, 32767, -32768, 1000], dtype="<i2")
    out = decode_chunk(ints.tobytes(), encoding="pcm16", sample_rate=16000, channels=1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ints.astype(np.float32) / 32768.0)


def test_pcm16_stereo_is_averaged() -> None:
    left, right = np.full(100, 0.5), np.full(100, -0.25)
    out = decode_chunk(pcm16(np.stack([left, right], 1)), encoding="PCM16", sample_rate=16000, channels=2)
    assert out.shape == (100,)
    np.testing.assert_allclose(out, 0.125, atol=1e-4)


@pytest.mark.parametrize("n_bytes,channels", [(7, 1), (6, 2)])
def test_pcm16_partial_frame(n_bytes: int, channels: int) -> None:
    with pytest.raises(OddByteCount, match=f"{n_bytes} bytes"):
        decode_chunk(b"\0" * n_bytes, encoding="pcm16", sample_rate=16000, channels=channels)


@pytest.mark.parametrize("encoding", ["pcm16", "wav", "flac"])
def test_empty(encoding: str) -> None:
    with pytest.raises(EmptyAudio):
        decode_chunk(b"", encoding=encoding, sample_rate=16000, channels=1)


def test_wav_with_zero_frames_is_empty() -> None:
    with pytest.raises(EmptyAudio):
        decode_chunk(wav_bytes(np.zeros(0), 16000), encoding="wav", sample_rate=16000, channels=1)


# ---------------------------------------------------------------- resampling
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_keeps_pitch_and_duration(rate: int) -> None:
    out = decode_chunk(pcm16(tone(440, 1.0, rate)), encoding="pcm16", sample_rate=rate, channels=1)
    assert len(out) == 16000
    assert abs(peak_hz(out) - 440) <= 2
    assert abs(rms(out[1000:-1000]) - 0.5 / np.sqrt(2)) < 0.01


def test_resample_removes_content_above_nyquist() -> None:
    """A 10 kHz tone cannot exist at 16 kHz; naive decimation would alias it to 6 kHz at full level."""
    out = decode_chunk(pcm16(tone(10000, 1.0, 48000)), encoding="pcm16", sample_rate=48000, channels=1)
    assert rms(out[1000:-1000]) < 0.005


# ---------------------------------------------------------------- WAV
def test_wav_44k_stereo() -> None:
    x = np.stack([tone(1000, 0.5, 44100), tone(1000, 0.5, 44100)], 1)
    out = decode_chunk(wav_bytes(x, 44100), encoding="wav", sample_rate=44100, channels=2)
    assert len(out) == 8000 and abs(peak_hz(out) - 1000) <= 3


@pytest.mark.parametrize("width", [1, 3])
def test_wav_8_and_24_bit(width: int) -> None:
    x = tone(500, 0.25, 16000)
    out = decode_chunk(wav_bytes(x, 16000, width), encoding="wav", sample_rate=16000, channels=1)
    np.testing.assert_allclose(out, x, atol=2.0 / 2 ** (8 * width - 1) + 1e-6)


@pytest.mark.parametrize("rate,channels,what", [(48000, 1, "16000 Hz x 1 ch"), (16000, 2, "16000 Hz x 1 ch")])
def test_wav_header_mismatch(rate: int, channels: int, what: str) -> None:
    with pytest.raises(FormatMismatch, match=what):
        decode_chunk(
            wav_bytes(tone(100, 0.1, 16000), 16000), encoding="wav", sample_rate=rate, channels=channels
        )


@pytest.mark.parametrize(
    "data",
    [
        b"RIFF\x00\x00",
        b"not a wav file at all, just text",
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01",
    ],
)
def test_wav_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptAudio, match="WAV"):
        decode_chunk(data, encoding="wav", sample_rate=16000, channels=1)


def test_wav_truncated_data() -> None:
    good = wav_bytes(tone(100, 0.5, 16000), 16000)
    with pytest.raises(CorruptAudio, match="truncated"):
        decode_chunk(good[:-1001], encoding="wav", sample_rate=16000, channels=1)


# ---------------------------------------------------------------- limits and parameters
def test_too_long_rejected_before_decoding() -> None:
    two_s = pcm16(np.zeros(32000))
    assert len(decode_chunk(two_s, encoding="pcm16", sample_rate=16000, channels=1, max_seconds=2)) == 32000
    with pytest.raises(AudioTooLong, match=r"2\.0 s, over the 1\.5 s limit"):
        decode_chunk(two_s, encoding="pcm16", sample_rate=16000, channels=1, max_seconds=1.5)
    with pytest.raises(AudioTooLong):
        decode_chunk(
            wav_bytes(np.zeros(32000), 16000), encoding="wav", sample_rate=16000, channels=1, max_seconds=1
        )


@pytest.mark.parametrize("rate,channels", [(0, 1), (16000, 0), (10**7, 1), (16000.0, 1)])
def test_invalid_parameters(rate, channels) -> None:
    with pytest.raises(InvalidParameters):
        decode_chunk(b"\0\0", encoding="pcm16", sample_rate=rate, channels=channels)


def test_unknown_encoding() -> None:
    with pytest.raises(UnsupportedEncoding, match="'aac'"):
        decode_chunk(b"\0\0", encoding="aac", sample_rate=16000, channels=1)


def test_compressed_without_any_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(UnsupportedEncoding, match="ffmpeg"):
        decode_chunk(b"fLaC....", encoding="flac", sample_rate=16000, channels=1)


def test_every_error_is_an_audio_error() -> None:
    for cls in (AudioTooLong, CorruptAudio, EmptyAudio, FormatMismatch, InvalidParameters, OddByteCount):
        assert issubclass(cls, AudioError)
    assert issubclass(UnsupportedEncoding, AudioError)


# ---------------------------------------------------------------- compressed (PyAV encodes the fixtures)
def encode(x: np.ndarray, rate: int, fmt: str) -> bytes:
    import av  # installed with faster-whisper (a pyproject dependency)
    codec = {"flac": "flac", "ogg": "libopus", "mp3": "libmp3lame"}[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        st = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.rate = rate
        for pkt in st.encode(frame):
            out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    return buf.getvalue()


BACKENDS = ["pyav"] + (["ffmpeg"] if shutil.which("ffmpeg") else [])


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "pyav":
        monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    return request.param


@pytest.mark.parametrize("fmt,rate", [("flac", 44100), ("ogg", 48000), ("mp3", 44100)])
def test_compressed_round_trip(fmt: str, rate: int, backend: str) -> None:
    data = encode(tone(440, 1.0, rate), rate, fmt)
    out = decode_chunk(data, encoding=fmt, sample_rate=rate, channels=1)
    assert out.dtype == np.float32
    assert abs(len(out) - 16000) < 0.06 * 16000  # codec priming/padding
    assert abs(peak_hz(out) - 440) <= 3
    assert abs(rms(out[2000:-2000]) - 0.5 / np.sqrt(2)) < 0.03


def test_compressed_corrupt_and_too_long(backend: str) -> None:
    with pytest.raises(CorruptAudio):
        decode_chunk(b"fLaC" + bytes(range(256)) * 4, encoding="flac", sample_rate=16000, channels=1)
    data = encode(tone(440, 2.0, 16000), 16000, "flac")
    with pytest.raises(AudioTooLong):
        decode_chunk(data, encoding="flac", sample_rate=16000, channels=1, max_seconds=1)
