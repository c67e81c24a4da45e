"""Segmenter: exact reorder/dedupe/gap semantics and frame-exact segment boundaries on synthetic audio."""

from __future__ import annotations

import numpy as np
import pytest

from models.speech_segmenter import EnergyVAD, Segment, StreamBuffer, StreamGap, StreamSegmenter, VADConfig

SR = 16000
FRAME = 0.02
EXACT = VADConfig(pad_s=0.0)


def silence(s: float) -> np.ndarray:
    return np.zeros(round(s * SR), np.float32)


def burst(s: float, db: float = -10.0, hz: float = 300.0) -> np.ndarray:
    amp = 10 ** (db / 20) * np.sqrt(2)  # sine RMS = amp / sqrt(2)
    return (amp * np.sin(2 * np.pi * hz * np.arange(round(s * SR)) / SR)).astype(np.float32)


def cat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts)


def bounds(segs: list) -> list[tuple[float, float]]:
    return [(round(s.start_s, 3), round(s.end_s, 3)) for s in segs if isinstance(s, Segment)]


def assert_bounds(got: list[tuple[float, float]], want: list[tuple[float, float]]) -> None:
    assert len(got) == len(want), got
    for (a, b), (c, d) in zip(got, want, strict=True):
        assert abs(a - c) <= FRAME and abs(b - d) <= FRAME, (got, want)


def run_vad(x: np.ndarray, cfg: VADConfig = EXACT, chunk: int | list[int] = 1600) -> list[Segment]:
    vad = EnergyVAD(cfg)
    sizes = [chunk] * (len(x) // chunk + 1) if isinstance(chunk, int) else chunk
    out, i = [], 0
    for n in sizes:
        out += vad.push(x[i : i + n])
        i += n
    assert i >= len(x)
    return out + vad.flush()


# ---------------------------------------------------------------- StreamBuffer
def seqs(items: list) -> list:
    return [it[0] if len(it) == 3 else ("gap", *it) for it in items]


def test_buffer_reorders_and_dedupes() -> None:
    b, x = StreamBuffer(window=4), np.zeros(1)
    assert seqs(b.push(0, x)) == [0]
    assert seqs(b.push(2, x)) == []
    assert seqs(b.push(2, x)) == []  # duplicate while pending
    assert seqs(b.push(1, x)) == [1, 2]
    assert seqs(b.push(0, x)) == []  # redelivery of a released seq
    assert b.duplicates == 2


def test_buffer_declares_gap_after_window_and_drops_late_chunk() -> None:
    b, x = StreamBuffer(window=3), np.zeros(1)
    b.push(0, x)
    for s in (2, 3, 4):  # 4 - 1 = 3: still within the window
        assert b.push(s, x) == []
    assert seqs(b.push(5, x)) == [("gap", 1, 1), 2, 3, 4, 5]
    assert b.push(1, x) == [] and b.duplicates == 1


def test_buffer_eos_flush_and_first_seq() -> None:
    b, x = StreamBuffer(window=8, next_seq=None), np.zeros(1)
    assert seqs(b.push(10, x)) == [10]
    assert b.push(13, x, eos=True) == []
    assert b.push(14, x) == [] and b.duplicates == 1  # after eos: ignored
    items = b.flush()
    assert seqs(items) == [("gap", 11, 12), 13]
    assert items[-1][2] is True


def test_buffer_gives_up_only_the_first_hole_on_request() -> None:
    b, x = StreamBuffer(window=8), np.zeros(3)
    assert b.give_up_hole() == []  # nothing pending: nothing to give up
    b.push(0, x)
    for s in (2, 3, 5):
        assert b.push(s, x) == []
    assert b.pending_samples == 9
    assert seqs(b.give_up_hole()) == [("gap", 1, 1), 2, 3]  # 4 is still awaited
    assert b.next_seq == 4 and b.pending_samples == 3
    assert b.push(1, x) == [] and b.duplicates == 1  # too late now
    assert seqs(b.push(4, x)) == [4, 5]


# ---------------------------------------------------------------- EnergyVAD
def test_pause_shorter_than_hangover_keeps_one_segment() -> None:
    x = cat(silence(0.5), burst(1.0), silence(0.3), burst(0.5), silence(1.0), burst(0.7), silence(0.2))
    segs = run_vad(x)
    assert_bounds(bounds(segs), [(0.5, 2.3), (3.3, 4.0)])
    s0 = segs[0]
    np.testing.assert_array_equal(s0.samples, x[round(s0.start_s * SR) : round(s0.end_s * SR)])


@pytest.mark.parametrize("chunk", [1, 137, 320, 5000, [3, 997, 20000, 1, 44444]])
def test_boundaries_do_not_depend_on_chunking(chunk) -> None:
    x = cat(silence(0.3), burst(0.8), silence(0.9), burst(0.4), silence(0.6))
    if chunk == 1:
        x = x[:SR]  # sample-by-sample is slow; the first segment is enough
        want = [(0.3, 1.0)]
    else:
        want = [(0.3, 1.1), (2.0, 2.4)]
    assert_bounds(bounds(run_vad(x, chunk=chunk)), want)


def test_max_segment_length_cuts_long_speech() -> None:
    x = cat(silence(0.5), burst(2.5), silence(1.0))
    segs = run_vad(x, VADConfig(pad_s=0.0, max_segment_s=1.0))
    assert_bounds(bounds(segs), [(0.5, 1.5), (1.5, 2.5), (2.5, 3.0)])
    assert sum(len(s.samples) for s in segs) == round(2.5 * SR)


def test_open_segment_previews_speech_without_closing_it() -> None:
    x = cat(silence(0.5), burst(0.8), silence(0.2))
    vad = EnergyVAD(VADConfig(pad_s=0.1))
    assert vad.open_segment() is None
    assert vad.push(x) == []
    seg = vad.open_segment()
    assert_bounds(bounds([seg]), [(0.4, 1.4)])  # padded, and not into the trailing silence beyond the pad
    np.testing.assert_array_equal(seg.samples, x[round(seg.start_s * SR) : round(seg.end_s * SR)])
    closed = vad.push(silence(0.6))
    assert bounds(closed) == bounds([seg]) and vad.open_segment() is None


def test_clicks_shorter_than_min_speech_are_dropped() -> None:
    x = cat(silence(0.5), burst(0.04), silence(1.0), burst(0.3), silence(1.0))
    assert_bounds(bounds(run_vad(x)), [(1.54, 1.84)])


def test_padding_adds_context_without_overlap() -> None:
    x = cat(silence(0.05), burst(0.5), silence(0.6), burst(0.5), silence(0.5))
    segs = run_vad(x, VADConfig(pad_s=0.4))
    # first pad clipped at 0; second start clipped at the first segment's end
    assert_bounds(bounds(segs), [(0.0, 0.95), (0.95, 2.05)])


def test_steady_noise_is_not_speech() -> None:
    rng = np.random.default_rng(0)
    x = cat(silence(0.0), burst(0.6, db=-10), silence(1.0), burst(0.4, db=-10), silence(1.0))
    x = x + rng.normal(0, 10 ** (-35 / 20), len(x)).astype(np.float32)
    assert_bounds(bounds(run_vad(x)), [(0.0, 0.6), (1.6, 2.0)])


def test_noise_floor_adapts_to_a_louder_room() -> None:
    """Noise jumps 25 dB: at most one false segment while adapting, then bursts are cut exactly again."""
    rng = np.random.default_rng(1)
    quiet, loud = 10 ** (-60 / 20), 10 ** (-35 / 20)
    x = cat(silence(10.0), burst(0.5, db=-5), silence(1.0))
    noise = np.where(np.arange(len(x)) < 1 * SR, quiet, loud)
    x = x + (rng.normal(0, 1, len(x)) * noise).astype(np.float32)
    vad = EnergyVAD(EXACT)
    segs = run_vad(x)
    got = bounds(segs)
    assert len(got) <= 2 and got[-1] == pytest.approx((10.0, 10.5), abs=FRAME)
    if len(got) == 2:
        assert got[0][0] == pytest.approx(1.0, abs=FRAME) and got[0][1] < 7.0
    vad.push(x)
    assert vad.noise_floor_db == pytest.approx(-35, abs=3)


def test_digital_silence_and_quiet_hiss_never_speech() -> None:
    rng = np.random.default_rng(2)
    x = cat(silence(1.0), rng.normal(0, 10 ** (-62 / 20), SR).astype(np.float32))
    assert run_vad(x) == []


# ---------------------------------------------------------------- StreamSegmenter
def chunks(x: np.ndarray, size: float = 0.1) -> list[np.ndarray]:
    n = round(size * SR)
    return [x[i : i + n] for i in range(0, len(x), n)]


def test_stream_reordered_duplicated_chunks_give_same_segments() -> None:
    x = cat(silence(0.5), burst(1.0), silence(0.8), burst(0.6), silence(0.7))
    parts = chunks(x)
    order = list(range(len(parts)))
    order[3], order[5] = order[5], order[3]
    order.insert(8, 2)  # redelivery
    seg = StreamSegmenter("s1", EXACT, window=4)
    out = []
    for i in order:
        out += seg.push(i, parts[i], eos=(i == len(parts) - 1))
    assert_bounds(bounds(out), [(0.5, 1.5), (2.3, 2.9)])
    assert seg.ended and seg.buffer.duplicates == 1
    assert not [o for o in out if isinstance(o, StreamGap)]


def test_stream_gap_closes_segment_and_continues() -> None:
    x = cat(silence(0.5), burst(1.0), silence(1.0), burst(0.5), silence(0.6))
    parts = chunks(x)
    seg = StreamSegmenter("s2", EXACT, window=3)
    out = []
    for i, p in enumerate(parts):
        if i != 9:  # 0.9..1.0 s, inside the first burst, never arrives
            out += seg.push(i, p, eos=(i == len(parts) - 1))
    gaps = [o for o in out if isinstance(o, StreamGap)]
    assert [(g.first_seq, g.last_seq, g.stream_id) for g in gaps] == [(9, 9, "s2")]
    assert gaps[0].at_s == pytest.approx(0.9) and "chunks 9..9 missing" in str(gaps[0])
    # gaps take no stream time: everything after shifts 0.1 s earlier
    assert_bounds(bounds(out), [(0.5, 0.9), (0.9, 1.4), (2.4, 2.9)])
    assert out.index(gaps[0]) == 1  # the segment before the splice is emitted before the gap report


def test_stream_flush_on_idle() -> None:
    seg = StreamSegmenter("s3", EXACT)
    out = seg.push(0, cat(silence(0.2), burst(0.5)))
    assert out == []  # still talking
    out = seg.push(2, silence(0.1)) + seg.flush()
    assert [type(o).__name__ for o in out] == ["Segment", "StreamGap"]
    assert_bounds(bounds(out), [(0.2, 0.7)])
