"""processors/asr.py through process()/tick() with RawRecords: real tiny.en, flite speech, no broker."""

from __future__ import annotations

import io
import itertools
import json
import random
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from models.wer import wer
from processors.asr import AsrProcessor, decode_checkpoint, latest_checkpoints
from streams import topics
from streams.audio_producer import chunk_headers, pcm16_chunks
from streams.records import OutRecord, RawRecord

SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog near the river bank.",
    "report": "Please send the quarterly report to the finance team by Friday.",
}


@pytest.fixture(scope="module")
def engine():
    from models.asr_engine import load_engine

    return load_engine("tiny.en")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, int]]:
    """name → (PCM16 bytes, sample rate), with a second of silence after the speech."""
    out = {}
    for name, text in SENTENCES.items():
        path = Path(tmp_path_factory.mktemp("flite")) / f"{name}.wav"
        subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            out[name] = (w.readframes(w.getnframes()) + b"\0\0" * rate, rate)
    return out


def raw(records: list[OutRecord], start_offset: int = 0, partition: int = 0) -> list[RawRecord]:
    return [RawRecord(r.topic, partition, start_offset + i, r.key, r.value, 0, r.headers)
            for i, r in enumerate(records)]


def events(outputs: list[OutRecord], topic: str) -> list[dict]:
    return [json.loads(o.value) for o in outputs if o.topic == topic]


def finals(outputs: list[OutRecord]) -> list[dict]:
    return [e for e in events(outputs, topics.ASR_TRANSCRIPTS) if e.get("final")]


def processor(engine, **kw) -> AsrProcessor:
    return AsrProcessor(engine, clock=lambda: 1_000, **kw)


def test_interleaved_streams_transcribe_separately_and_feed_text_in(engine, clips) -> None:
    asr = processor(engine)
    a = pcm16_chunks(*clips["fox"], 1, "mic-a", chunk_ms=300)
    b = pcm16_chunks(*clips["report"], 1, "mic-b", chunk_ms=700)
    mixed = [r for pair in zip(a, b, strict=False) for r in pair] + a[len(b):] + b[len(a):]
    assert len(mixed) == len(a) + len(b)
    out = asr.process(raw(mixed))

    by_stream: dict[str, list[dict]] = {}
    for e in finals(out):
        by_stream.setdefault(e["stream_id"], []).append(e)
    for sid, name in (("mic-a", "fox"), ("mic-b", "report")):
        segs = sorted(by_stream[sid], key=lambda e: e["start"])
        text = " ".join(e["text"] for e in segs)
        assert wer(SENTENCES[name], text) <= 0.15, (sid, text)
        assert [e["id"] for e in segs] == [f"{sid}:{i}" for i in range(len(segs))]
        for e in segs:
            assert e["schema"] == "asr.transcripts/1" and e["model"] == "openai-whisper:tiny.en"
            assert e["language"] == "en" and 0 <= e["start"] < e["end"] <= len(clips[name][0]) / 2 / 16000 + 0.01
            assert e["no_speech_prob"] < 0.5
    texts = {e["id"]: e for e in events(out, topics.TEXT_IN)}
    assert set(texts) == {e["id"] for e in finals(out)}
    one = texts["mic-a:0"]
    assert one["source"] == "asr" and one["stream_id"] == "mic-a" and one["end"] > one["start"]
    # every touched stream checkpointed, and closed (eos) streams carry no audio
    states = {o.key: decode_checkpoint(o.value) for o in out if o.topic == topics.ASR_STATE}
    assert set(states) == {b"mic-a", b"mic-b"} and all(s.ended and s.tail.size == 0 for s in states.values())


def test_silence_and_hiss_give_no_text(engine) -> None:
    rng = np.random.default_rng(0)
    quiet = np.concatenate([np.zeros(16000 * 2), rng.normal(0, 0.003, 16000 * 2)])
    pcm = (quiet * 32767).astype("<i2").tobytes()
    out = processor(engine).process(raw(pcm16_chunks(pcm, 16000, 1, "quiet", chunk_ms=200)))
    assert finals(out) == [] and events(out, topics.TEXT_IN) == []
    assert [o.topic for o in out] == [topics.ASR_STATE]


def test_duplicates_and_reordering_give_the_same_transcript_once(engine, clips) -> None:
    chunks = pcm16_chunks(*clips["fox"], 1, "dup", chunk_ms=250)
    messy = list(chunks)
    rng = random.Random(7)
    for i in range(0, len(messy) - 4, 4):  # shuffle within windows of 4 (inside the reorder window of 8)
        window = messy[i : i + 4]
        rng.shuffle(window)
        messy[i : i + 4] = window
    messy = messy[:5] + messy[2:9] + messy[5:] + messy[:3]  # redeliveries, some after eos
    asr = processor(engine)
    out = asr.process(raw(messy[: len(messy) // 2])) + asr.process(raw(messy[len(messy) // 2 :], 1000))
    got = finals(out)
    assert len({e["id"] for e in got}) == len(got)
    assert wer(SENTENCES["fox"], " ".join(e["text"] for e in sorted(got, key=lambda e: e["start"]))) <= 0.15
    assert asr.streams["dup"].buffer.duplicates == len(messy) - len(chunks)


def wav_bytes(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def bad(value: bytes, drop: tuple[str, ...] = (), **override: str) -> RawRecord:
    headers = dict(chunk_headers("bad", 0, 16000, 1))
    for k in drop:
        headers.pop(k)
    headers.update({k: v.encode() for k, v in override.items()})
    return RawRecord(topics.AUDIO_CHUNKS, 0, 1, b"bad", value, 0, tuple(headers.items()))


TONE = (np.sin(np.arange(1600) / 5) * 8000).astype("<i2").tobytes()
BAD = {
    "corrupt-wav": (bad(b"RIFF\x10\x00\x00\x00WAVEjunk", encoding="wav"), "not a readable WAV"),
    "odd-bytes": (bad(TONE + b"\x01"), "not a multiple of 2"),
    "missing-headers": (bad(TONE, drop=("seq", "sample_rate")), "missing required header(s): seq, sample_rate"),
    "non-integer-seq": (bad(TONE, seq="seven"), "header 'seq'='seven' is not an integer"),
    "bad-eos": (bad(TONE, eos="yes"), "header 'eos'='yes'"),
    "key-mismatch": (bad(TONE, stream_id="other"), "differs from the message key"),
    "rate-mismatch": (bad(wav_bytes(TONE, 8000), encoding="wav"), "WAV header says 8000 Hz x 1 ch"),
    "zero-length": (bad(b""), "empty pcm16 chunk"),
    "unsupported": (bad(TONE, encoding="opus"), "unsupported encoding 'opus'"),
    "absurd-rate": (bad(TONE, sample_rate="5"), "outside 1000..384000"),
    "bad-word-timestamps": (bad(TONE, word_timestamps="yes"), "header 'word_timestamps'='yes'"),
    "too-long": (bad(b"\0\0" * 16000 * 31), "over the 30 s limit"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_chunk_is_dead_lettered_with_its_reason(engine, kind: str) -> None:
    record, reason = BAD[kind]
    good = RawRecord(topics.AUDIO_CHUNKS, 0, 2, b"ok", TONE, 0, chunk_headers("ok", 0, 16000, 1))
    out = processor(engine).process([record, good])
    [letter] = events(out, topics.DEADLETTER)
    assert reason in letter["reason"], letter["reason"]
    assert letter["processor"] == "asr" and letter["source"]["offset"] == 1
    assert [o.key for o in out if o.topic == topics.ASR_STATE] == [b"ok"]  # the other stream went on


def test_a_gap_that_never_fills_is_reported_and_the_stream_goes_on(engine) -> None:
    sent = [OutRecord(topics.AUDIO_CHUNKS, b"gappy", TONE, chunk_headers("gappy", seq, 16000, 1))
            for seq in (0, 1, 2, 5, 6)]  # 3 and 4 never come
    asr = AsrProcessor(engine, clock=lambda: 1_000, idle_timeout_s=5)
    assert events(asr.process(raw(sent)), topics.ASR_TRANSCRIPTS) == []  # still inside the reorder window
    assert asr.tick(3_000) == []  # not idle yet
    out = asr.tick(7_000)
    [gap] = events(out, topics.ASR_TRANSCRIPTS)
    assert gap["id"] == "gappy:gap:3-4" and gap["final"] is False and "3..4 never arrived" in gap["error"]
    assert asr.streams["gappy"].buffer.next_seq == 7
    assert asr.tick(20_000) == []  # flushed once per idle period


def test_restart_from_checkpoint_neither_loses_nor_repeats_segments(engine, clips) -> None:
    """Crash after a delivered batch, then replay of that batch on the restored processor."""
    pcm, rate = clips["fox"]
    two = pcm + pcm  # two utterances: the cut lands inside the second one
    chunks = raw(pcm16_chunks(two, rate, 1, "crash", chunk_ms=400))
    cut = int(len(chunks) * 0.7)
    first = processor(engine)
    out1 = first.process(chunks[:cut])
    state_log = [(o.key, o.value) for o in out1 if o.topic == topics.ASR_STATE]
    restored = latest_checkpoints([(b"\x00marker/x", b"t"), *state_log])
    assert restored["crash"].tail.size > 0 and not restored["crash"].ended

    second = processor(engine, restored=restored)
    out2 = second.process(chunks[cut - 5 :])  # the last 5 chunks were delivered but not committed
    got = finals(out1) + finals(out2)
    assert [e["id"] for e in got] == [f"crash:{i}" for i in range(len(got))]
    text = " ".join(e["text"] for e in got)
    assert wer(SENTENCES["fox"] + " " + SENTENCES["fox"], text) <= 0.15, text
    starts = [e["start"] for e in got]
    assert starts == sorted(starts) and got[-1]["end"] <= len(two) / 2 / rate + 0.01


def with_header(records: list[OutRecord], name: str, value: bytes) -> list[OutRecord]:
    return [OutRecord(r.topic, r.key, r.value, (*r.headers, (name, value)), r.partition) for r in records]


def test_word_timestamps_on_request_are_monotonic_and_inside_their_segment(engine, clips) -> None:
    """Per-stream header on one stream only: the other stream's finals carry no words (and cost no alignment)."""
    asr = processor(engine, word_timestamps=False)
    wanted = with_header(pcm16_chunks(*clips["fox"], 1, "words", chunk_ms=500), "word_timestamps", b"1")
    plain = pcm16_chunks(*clips["report"], 1, "plain", chunk_ms=500)
    out = asr.process(raw(wanted + plain))
    got = {e["stream_id"]: e for e in finals(out)}
    assert "words" not in got["plain"]
    final = got["words"]
    words = final["words"]
    assert words and " ".join(w["word"] for w in words) == final["text"]
    assert all(set(w) == {"word", "start", "end", "probability"} for w in words)
    assert all(final["start"] <= w["start"] <= w["end"] <= final["end"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    assert all(0.0 <= w["probability"] <= 1.0 for w in words) and words[-1]["end"] > words[0]["start"]
    [state] = [decode_checkpoint(o.value) for o in out if o.topic == topics.ASR_STATE and o.key == b"words"]
    assert state.word_timestamps is True  # a restarted worker keeps the stream's choice


def test_word_timestamps_setting_is_read_from_the_environment(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSENSE_ASR_WORD_TIMESTAMPS", "1")
    assert processor(engine).word_timestamps is True
    monkeypatch.setenv("STREAMSENSE_ASR_WORD_TIMESTAMPS", "off")
    assert processor(engine).word_timestamps is False
    assert processor(engine, word_timestamps=True).word_timestamps is True


def test_multilingual_model_reports_the_detected_language(clips) -> None:
    """The shipped multilingual "base" model detects the language per segment; finals and text.in carry it."""
    from models.asr_engine import load_engine

    asr = processor(load_engine("base"))
    out = asr.process(raw(pcm16_chunks(*clips["report"], 1, "multi", chunk_ms=500)))
    [final] = finals(out)
    assert final["language"] == "en" and final["model"] == "openai-whisper:base"
    assert wer(SENTENCES["report"], final["text"]) <= 0.15, final["text"]
    [text] = events(out, topics.TEXT_IN)
    assert text["lang"] == "en"
