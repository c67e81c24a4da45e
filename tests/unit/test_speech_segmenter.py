"""Segmenter: exact reorder/dedupe/gap semantics and frame-exact segment boundaries on synthetic audio."""

from __future__ import annotations

import numpy as np
import pytest

from models.speech_segmenter import EnergyVAD, Segment, StreamBuffer, StreamGap, StreamSegmenter, VADConfig

SR = 16000
FRAME = 0.02
EXACT = VADConfig.energy(pad_s=0.0)


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
    segs = run_vad(x, VADConfig.energy(pad_s=0.0, max_segment_s=1.0))
    assert_bounds(bounds(segs), [(0.5, 1.5), (1.5, 2.5), (2.5, 3.0)])
    assert sum(len(s.samples) for s in segs) == round(2.5 * SR)


def test_open_segment_previews_speech_without_closing_it() -> None:
    x = cat(silence(0.5), burst(0.8), silence(0.2))
    vad = EnergyVAD(VADConfig.energy(pad_s=0.1))
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
    segs = run_vad(x, VADConfig.energy(pad_s=0.4))
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


# ---------------------------------------------------------------- Silero (the default VAD), on flite speech
SENTENCE = "The committee will publish its final decision on the new harbour next week."


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """flite speech at -30 dBFS (quiet) and the generator's work dir, for noise."""
    from bench.speech_testset import at_level, flite_speech

    work = tmp_path_factory.mktemp("flite")
    return {"work": work, "yes": at_level(flite_speech("yes", "slt", work), -30.0),
            "sentence": at_level(flite_speech(SENTENCE, "rms", work), -30.0)}


def noise(kind: str, s: float, db: float, work, seed: int = 0) -> np.ndarray:
    from bench.speech_testset import make_noise

    return make_noise(kind, round(s * SR), db, np.random.default_rng(seed), work)


def pushed(x: np.ndarray, cfg: VADConfig | None = None, chunk: int | list[int] = 8000) -> list[Segment]:
    """500 ms chunks by default, as the processor gets them; flushed at the end."""
    from models.speech_segmenter import SpeechDetector

    det = SpeechDetector(cfg)
    sizes = [chunk] if isinstance(chunk, int) else chunk
    out, i = [], 0
    while i < len(x):
        for n in sizes:
            out += det.push(x[i : i + n])
            i += n
    return out + det.flush()


def test_silero_is_the_default_and_finds_speech_the_energy_vad_cuts_short(voice) -> None:
    """Speech 7 dB over a pink floor at -45 dB: Silero takes all of it; the energy VAD needs 10 dB."""
    s = voice["sentence"]
    x = cat(silence(1.0), s * 10 ** (-8 / 20), silence(1.0)) + noise("pink", 2.0 + len(s) / SR, -45.0, voice["work"])
    assert VADConfig().vad == "silero" and StreamSegmenter("s").vad.cfg.vad == "silero"
    [seg] = pushed(x)
    assert seg.start_s <= 1.0 and seg.end_s >= 1.0 + len(s) / SR - 0.05, (seg.start_s, seg.end_s)
    energy = sum(g.speech_s for g in pushed(x, VADConfig.energy()))
    assert energy < 0.6 * seg.speech_s, (energy, seg.speech_s)


@pytest.mark.parametrize("chunk", [8000, 512, 1000, [3, 997, 20000, 1, 44444, 333]])
def test_silero_boundaries_do_not_depend_on_chunking(voice, chunk) -> None:
    x = cat(silence(0.5), voice["sentence"], silence(2.5), voice["yes"], silence(3.0))
    want = pushed(x)
    got = pushed(x, chunk=chunk)
    assert [(g.start_s, g.end_s, g.speech_s) for g in got] == [(w.start_s, w.end_s, w.speech_s) for w in want]
    assert all(np.array_equal(g.samples, w.samples) for g, w in zip(got, want, strict=True))


def test_short_speech_followed_closely_by_more_is_one_segment(voice) -> None:
    """"yes", 1.2 s of silence, a sentence: one segment (whisper reads "yes" better with the sentence)."""
    x = cat(silence(0.5), voice["yes"], silence(1.2), voice["sentence"], silence(1.0))
    [seg] = pushed(x)
    assert seg.start_s < 0.5 and seg.end_s > 0.5 + (len(x) - SR) / SR - 1.0 - 0.2
    apart = pushed(x, VADConfig(short_segment_s=0.0))  # no merging: the pause splits them
    assert len(apart) == 2


def test_a_lone_short_reply_closes_after_the_merge_gap_with_real_padding(voice) -> None:
    from models.speech_segmenter import SpeechDetector

    floor = noise("pink", 6.0, -50.0, voice["work"])
    x = floor + cat(silence(1.0), voice["yes"], silence(6.0 - 1.0 - len(voice["yes"]) / SR))
    det, out, when = SpeechDetector(VADConfig()), [], None
    for i in range(0, len(x), 1600):
        out += det.push(x[i : i + 1600])
        if out and when is None:
            when = (i + 1600) / SR
    [seg] = out
    end_of_speech = 1.0 + len(voice["yes"]) / SR
    assert end_of_speech + 1.9 <= when <= end_of_speech + 2.4, when  # waited merge_gap_s for more speech
    assert seg.start_s == pytest.approx(1.0 - 0.3, abs=0.07)
    assert seg.end_s == pytest.approx(end_of_speech + 0.3, abs=0.1)
    a = round(seg.start_s * SR)
    np.testing.assert_array_equal(seg.samples, x[a : a + len(seg.samples)])  # padding is the stream's own audio


@pytest.mark.parametrize("kind,db", [("white", -40.0), ("pink", -30.0), ("pink", -60.0)])
def test_steady_noise_and_silence_open_no_segment(voice, kind: str, db: float) -> None:
    x = cat(silence(1.0), noise(kind, 6.0, db, voice["work"], seed=3))
    assert pushed(x) == []
    assert pushed(silence(3.0)) == []


def test_long_speech_is_cut_at_a_pause_not_inside_a_word(voice) -> None:
    s = voice["sentence"]
    x = cat(silence(0.5), s, silence(0.3), s, silence(1.0))
    segs = pushed(x, VADConfig(max_segment_s=6.0, pad_s=0.0))
    pause = (0.5 + len(s) / SR, 0.5 + len(s) / SR + 0.3)
    assert len(segs) == 2 and all(g.end_s - g.start_s <= 6.0 for g in segs)
    assert pause[0] - 0.1 <= segs[0].end_s <= pause[1] + 0.05, (segs[0].end_s, pause)
    assert segs[1].start_s == segs[0].end_s


@pytest.mark.parametrize("cfg", [VADConfig(), VADConfig.energy()], ids=["silero", "energy"])
def test_restoring_a_snapshot_mid_utterance_gives_the_same_segments(voice, cfg) -> None:
    """At every chunk boundary: snapshot through the asr.state encoding, restore, go on: segments as if the
    stream had never stopped (bit-exact PCM16 audio, the model state, the counters)."""
    from models.speech_segmenter import SpeechDetector
    from streams.contracts.asr_state import StreamCheckpoint, decode_checkpoint, encode_checkpoint

    s = voice["sentence"]
    x = cat(silence(0.5), s, silence(2.5), voice["yes"], silence(0.4), s, silence(2.5))
    x = x + noise("pink", len(x) / SR, -50.0, voice["work"])
    x = (np.round(x * 32768) / 32768).astype(np.float32)  # PCM16, as chunks arrive
    chunks = [x[i : i + 8000] for i in range(0, len(x), 8000)]
    det = SpeechDetector(cfg)
    want = [g for c in chunks for g in det.push(c)] + det.flush()
    assert len(want) >= 2
    for cut in range(1, len(chunks)):
        det, got = SpeechDetector(cfg), []
        for c in chunks[:cut]:
            got += det.push(c)
        state, audio = det.snapshot()
        cp = decode_checkpoint(encode_checkpoint(StreamCheckpoint("s", cut, 0, 0.0, audio, base_s=0.0, vad=state)))
        det = SpeechDetector.restore(cfg, cp.vad, cp.tail)
        for c in chunks[cut:]:
            got += det.push(c)
        got += det.flush()
        assert [(g.start_s, g.end_s, g.speech_s) for g in got] == [(w.start_s, w.end_s, w.speech_s) for w in want], cut
        assert all(np.array_equal(g.samples, w.samples) for g, w in zip(got, want, strict=True)), cut


def test_a_snapshot_does_not_restore_into_another_kind_of_vad(voice) -> None:
    from models.speech_segmenter import SpeechDetector

    state, audio = SpeechDetector(VADConfig.energy()).snapshot()
    with pytest.raises(ValueError, match="cannot continue"):
        SpeechDetector.restore(VADConfig(), state, audio)
