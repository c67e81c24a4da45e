"""processors/asr.py with RawRecords: real tiny.en, flite speech, no broker.

Tests of transcripts alone call ``process()``; tests of state, ticks and restarts run the processor through the
real runtime core (`InProcessWorker`: its checkpoints become ``asr.state`` records through the state store,
delivered after the batch's other outputs) and restart it with `restart` (the runtime's start-up recovery).
"""

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

from models.asr_engine import Transcription, Word
from models.speech_segmenter import VADConfig
from models.wer import wer
from processors.asr import AsrProcessor
from streams.audio_producer import pcm16_chunks
from streams.contracts import topics
from streams.contracts.asr_state import StreamCheckpoint, decode_checkpoint, encode_checkpoint
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.deadletter import DEFAULT_MAX_MESSAGE_BYTES
from streams.contracts.records import OutRecord, RawRecord, record_size
from streams.contracts.state import decode_state_record, marker_key
from streams.runtime.testing import InProcessWorker, restart

SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog near the river bank.",
    "report": "Please send the quarterly report to the finance team by Friday.",
}
# Loud noise stands in for speech where whisper is faked: the energy VAD takes it for speech, Silero rightly not.
ENERGY = VADConfig.energy(max_segment_s=15.0)


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


def states(outputs: list[OutRecord]) -> list[StreamCheckpoint]:
    """The streams' checkpoints in the ``asr.state`` records among ``outputs``, in delivery order."""
    return [decode_checkpoint(decode_state_record(o.value).data) for o in outputs if o.topic == topics.ASR_STATE]


def state_last(outputs: list[OutRecord]) -> None:
    """A batch's (or tick's) state records are delivered after all its other outputs."""
    kinds = [o.topic == topics.ASR_STATE for o in outputs]
    assert kinds == sorted(kinds), [o.topic for o in outputs]


def test_interleaved_streams_transcribe_separately_and_feed_text_in(engine, clips) -> None:
    asr = processor(engine)
    a = pcm16_chunks(*clips["fox"], 1, "mic-a", chunk_ms=300)
    b = pcm16_chunks(*clips["report"], 1, "mic-b", chunk_ms=700)
    mixed = [r for pair in zip(a, b, strict=False) for r in pair] + a[len(b):] + b[len(a):]
    assert len(mixed) == len(a) + len(b)
    worker = InProcessWorker(asr)
    out = worker.run(raw(mixed))
    state_last(out)

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
    records = {decode_state_record(o.value).key.encode(): decode_state_record(o.value)
               for o in out if o.topic == topics.ASR_STATE}
    assert {o.key for o in out if o.topic == topics.ASR_STATE} == {b"test/mic-a", b"test/mic-b"}  # app-scoped
    saved = {key: decode_checkpoint(r.data) for key, r in records.items()}
    assert set(saved) == {b"mic-a", b"mic-b"} and all(s.ended and s.tail.size == 0 for s in saved.values())
    last = {r.key: r.offset for r in raw(mixed)}  # each checkpoint includes its stream's last chunk
    assert {k: r.offsets for k, r in records.items()} == {k: {(topics.AUDIO_CHUNKS, 0): o} for k, o in last.items()}
    assert worker.acked == [[r.offset for r in raw(mixed)]]


def test_silence_and_hiss_give_no_text(engine) -> None:
    rng = np.random.default_rng(0)
    quiet = np.concatenate([np.zeros(16000 * 2), rng.normal(0, 0.003, 16000 * 2)])
    pcm = (quiet * 32767).astype("<i2").tobytes()
    out = InProcessWorker(processor(engine)).run(raw(pcm16_chunks(pcm, 16000, 1, "quiet", chunk_ms=200)))
    assert finals(out) == [] and events(out, topics.TEXT_IN) == []
    assert [o.topic for o in out] == [topics.ASR_STATE]
    [state] = states(out)
    assert state.stream_id == "quiet" and state.ended and state.next_index == 0


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
    out = InProcessWorker(processor(engine)).run([record, good])
    [letter] = events(out, topics.DEADLETTER)
    assert reason in letter["reason"], letter["reason"]
    assert letter["processor"] == "asr" and letter["source"]["offset"] == 1
    assert [o.key for o in out if o.topic == topics.ASR_STATE] == [b"test/ok"]  # the other stream went on


def test_a_gap_that_never_fills_is_reported_and_the_stream_goes_on(engine) -> None:
    sent = [OutRecord(topics.AUDIO_CHUNKS, b"gappy", TONE, chunk_headers("gappy", seq, 16000, 1))
            for seq in (0, 1, 2, 5, 6)]  # 3 and 4 never come
    asr = AsrProcessor(engine, clock=lambda: 1_000, idle_timeout_s=5)
    now = [1_000]
    worker = InProcessWorker(asr, clock=lambda: now[0])
    out = worker.run(raw(sent))
    assert events(out, topics.ASR_TRANSCRIPTS) == []  # still inside the reorder window
    assert [s.pending.keys() for s in states(out)] == [{5, 6}]  # the waiting chunks are in the checkpoint
    now[0] = 3_000
    assert worker.tick() == []  # not idle yet
    now[0] = 7_000
    out = worker.tick()
    [gap] = events(out, topics.ASR_TRANSCRIPTS)
    assert gap["id"] == "gappy:gap:3-4" and gap["final"] is False and "3..4 never arrived" in gap["error"]
    assert asr.streams["gappy"].buffer.next_seq == 7
    state_last(out)
    [state] = states(out)  # the flush is checkpointed too, after the gap event
    assert state.next_seq == 7 and state.pending == {}
    now[0] = 20_000
    assert worker.tick() == []  # flushed once per idle period


def test_restart_from_checkpoint_neither_loses_nor_repeats_segments(engine, clips) -> None:
    """Crash after a delivered batch, then replay of that batch on the restored processor."""
    pcm, rate = clips["fox"]
    two = pcm + pcm  # two utterances: the cut lands inside the second one
    chunks = raw(pcm16_chunks(two, rate, 1, "crash", chunk_ms=400))
    cut = int(len(chunks) * 0.7)
    first = InProcessWorker(processor(engine))
    out1 = first.run(chunks[:cut])
    second = InProcessWorker(processor(engine))
    restart(second.processor, [(marker_key("x"), b"t"), *first.state()], second.store)
    restored = second.store.load(first.state())
    assert [cp.key for cp in restored] == ["crash"]
    assert restored[0].offsets == {(topics.AUDIO_CHUNKS, 0): chunks[cut - 1].offset}
    saved = decode_checkpoint(restored[0].data)
    assert saved.tail.size > 0 and not saved.ended

    out2 = second.run(chunks[cut - 5 :])  # the last 5 chunks were delivered but not committed
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
    out = InProcessWorker(asr).run(raw(wanted + plain))
    got = {e["stream_id"]: e for e in finals(out)}
    assert "words" not in got["plain"]
    final = got["words"]
    words = final["words"]
    assert words and " ".join(w["word"] for w in words) == final["text"]
    assert all(set(w) == {"word", "start", "end", "probability"} for w in words)
    assert all(final["start"] <= w["start"] <= w["end"] <= final["end"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(words))
    assert all(0.0 <= w["probability"] <= 1.0 for w in words) and words[-1]["end"] > words[0]["start"]
    [state] = [s for s in states(out) if s.stream_id == "words"]
    assert state.word_timestamps is True  # a restarted worker keeps the stream's choice


class WordsAskedEngine:
    """Stands in for whisper: records which segments were asked for word timings."""

    model_name = "words-asked"

    def __init__(self) -> None:
        self.asked: list[bool] = []

    def transcribe(self, segments, word_timestamps=None, contexts=None) -> list[Transcription]:
        flags = list(word_timestamps) if word_timestamps is not None else [False] * len(segments)
        self.asked += flags
        return [Transcription("word", "en", -0.1, 0.01, words=(Word("word", 0.0, 0.1, 0.9),) if f else None)
                for f in flags]


def test_word_timestamps_are_off_by_default_and_set_by_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor takes the setting as an argument (Settings reads STREAMSENSE_ASR_WORD_TIMESTAMPS)."""
    monkeypatch.setenv("STREAMSENSE_ASR_WORD_TIMESTAMPS", "1")  # not the processor's business any more
    chunks = raw(noisy_chunks("w", 2, seconds=3.0))
    off = AsrProcessor(WordsAskedEngine(), clock=lambda: 1_000, vad=ENERGY)
    assert off.word_timestamps is False
    out = off.process(chunks)
    assert finals(out) and all("words" not in e for e in finals(out)) and not any(off.engine.asked)
    on = AsrProcessor(WordsAskedEngine(), clock=lambda: 1_000, word_timestamps=True, vad=ENERGY)
    assert on.word_timestamps is True
    out = on.process(chunks)
    assert finals(out) and all(e["words"][0]["word"] == "word" for e in finals(out)) and all(on.engine.asked)


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


# --- checkpoint size guard (no whisper: only ids, times and record sizes matter) ------------------------------


class LengthEngine:
    """Stands in for whisper: one word per segment naming its length, so a changed cut shows in the text."""

    model_name = "length"

    def transcribe(self, segments, word_timestamps=None, contexts=None) -> list[Transcription]:
        return [Transcription(f"samples{s.size}", "en", -0.1, 0.01) for s in segments]


def noisy_chunks(sid: str, n: int, seconds: float = 8.0) -> list[OutRecord]:
    """Chunks of loud uniform noise, each ending in 1 s of digital silence (a pause: the segment closes).
    Noise does not compress, so a checkpoint holding it is as big as its PCM16."""
    rng = np.random.default_rng(5)
    out = []
    for seq in range(n):
        noise = rng.uniform(-0.5, 0.5, int((seconds - 1.0) * 16000))
        pcm = (np.concatenate([noise, np.zeros(16000)]) * 32767).astype("<i2").tobytes()
        headers = chunk_headers(sid, seq, 16000, 1, eos=seq == n - 1)
        out.append(OutRecord(topics.AUDIO_CHUNKS, sid.encode(), pcm, headers))
    return out


STATE_HEADER_ALLOWANCE = 1_000  # the state record's header: key, input offsets, location, size


def test_checkpoints_stay_under_the_size_bound_and_a_restart_still_loses_and_repeats_nothing() -> None:
    """Chunk 1 is late; 8 s chunks 2..9 wait for it (inside the reorder window of 8) — 2.5 MB of audio, which
    no 1 MB record holds. The processor gives up on chunk 1 early instead; a crash right after, a restore
    and an at-least-once replay then give exactly the finals of an uninterrupted run."""
    chunks = raw(noisy_chunks("big", 14))
    order = [chunks[0], *chunks[2:10], chunks[1], *chunks[10:]]  # chunk 1 arrives after 8 later ones

    def run(records: list[RawRecord], crash_after: int | None = None) -> tuple[list[OutRecord], int | None]:
        worker = InProcessWorker(AsrProcessor(LengthEngine(), clock=lambda: 1_000, vad=ENERGY))
        outs: list[OutRecord] = []
        fired = None
        i = 0
        while i < len(records):
            out = worker.run([records[i]])
            outs += out
            if fired is None and any(e.get("error") for e in events(out, topics.ASR_TRANSCRIPTS)):
                fired = i
                if crash_after is not None:  # delivered, not committed: restore, replay this batch too
                    state = [(o.key, o.value) for o in outs if o.topic == topics.ASR_STATE]
                    worker = InProcessWorker(AsrProcessor(LengthEngine(), clock=lambda: 1_000, vad=ENERGY))
                    restart(worker.processor, state, worker.store)
                    i -= crash_after
            i += 1
        return outs, fired

    def fits(outs: list[OutRecord]) -> None:
        """Every state record holds its stream's data whole (no dead letter stood in for one) and stays under
        the bound plus the state record's small header, well below Kafka's 1 MB message limit."""
        assert events(outs, topics.DEADLETTER) == []
        records = [o for o in outs if o.topic == topics.ASR_STATE]
        assert max(len(o.value) for o in records) <= 1_000_000 + STATE_HEADER_ALLOWANCE
        assert max(len(decode_state_record(o.value).data) for o in records) <= 1_000_000
        assert max(record_size(o) for o in records) < DEFAULT_MAX_MESSAGE_BYTES == 1_048_576

    straight, fired = run(order)
    fits(straight)
    assert fired is not None and fired < 9  # gave up before chunk 1 came (the window alone would wait for it)
    [gap] = [e for e in events(straight, topics.ASR_TRANSCRIPTS) if e.get("error")]
    assert gap["id"] == "big:gap:1-1" and "checkpoint bound" in gap["error"]
    want = [(e["id"], e["start"], e["end"], e["text"]) for e in finals(straight)]
    assert [w[0] for w in want] == [f"big:{i}" for i in range(len(want))] and len(want) == 13  # no chunk 1

    crashed, _ = run(order, crash_after=3)
    got = {(e["id"], e["start"], e["end"], e["text"]) for e in finals(crashed)}
    assert got == set(want)  # repeats only re-send identical finals (same id, same content)
    fits(crashed)


def test_a_bound_that_cannot_hold_the_longest_tail_is_refused() -> None:
    AsrProcessor(LengthEngine(), vad=VADConfig(max_segment_s=29.0))  # the worker's largest setting fits
    with pytest.raises(ValueError, match="cannot hold a stream's tail"):
        AsrProcessor(LengthEngine(), vad=VADConfig(max_segment_s=29.0), max_state_bytes=900_000)


# --- partial hypotheses -----------------------------------------------------------------------------------------


def partials(outputs: list[OutRecord]) -> list[dict]:
    return [e for e in events(outputs, topics.ASR_TRANSCRIPTS) if e.get("partial")]


def test_partials_preview_the_open_segment_and_its_final_supersedes_them(engine, clips) -> None:
    asr = processor(engine, partial_interval_ms=1000)
    out: list[OutRecord] = []
    for record in raw(pcm16_chunks(*clips["fox"], 1, "live", chunk_ms=500)):  # one chunk per batch, as live
        out += asr.process([record])
    got, [final] = partials(out), finals(out)
    assert len(got) >= 2, got  # the sentence is ~4 s long: a preview per second of new speech
    assert all(e["final"] is False and e["segment_index"] == final["segment_index"] == 0 for e in got)
    assert len({e["id"] for e in got}) == len(got) and all(e["id"].startswith("live:0:partial@") for e in got)
    ends = [e["end"] for e in got]
    assert ends == sorted(ends) and ends[-1] <= final["end"] and all(e["start"] == final["start"] for e in got)
    order = [json.loads(o.value).get("partial", False) for o in out if o.topic == topics.ASR_TRANSCRIPTS]
    assert order == [True] * len(got) + [False]  # every preview before the final that supersedes it
    last = got[-1]["text"].lower().split()
    assert wer(" ".join(last), " ".join(final["text"].lower().split()[: len(last)])) <= 0.3, (got[-1], final)
    assert [e["id"] for e in events(out, topics.TEXT_IN)] == [final["id"]]  # partials never reach text.in


def test_partials_are_off_by_default_and_set_by_the_constructor(engine, clips,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor takes the interval as an argument (Settings reads STREAMSENSE_ASR_PARTIAL_INTERVAL_MS)."""
    monkeypatch.setenv("STREAMSENSE_ASR_PARTIAL_INTERVAL_MS", "750")  # not the processor's business any more
    asr = processor(engine)
    assert asr.partial_interval_s == 0
    out = [o for r in raw(pcm16_chunks(*clips["report"], 1, "quiet-ui", chunk_ms=500)) for o in asr.process([r])]
    assert partials(out) == [] and len(finals(out)) == 1
    assert processor(engine, partial_interval_ms=750).partial_interval_s == 0.75
    with pytest.raises(ValueError):
        processor(engine, partial_interval_ms=-1)


class ShortOnlyEngine(LengthEngine):
    """Text for segments under 2 s only: a partial gets text, the closed segment's final gets none."""

    def transcribe(self, segments, word_timestamps=None, contexts=None) -> list[Transcription]:
        return [Transcription("maybe" if s.size < 2 * 16000 else "", "en", -0.1, 0.01) for s in segments]


def test_a_partial_whose_segment_ends_without_text_is_withdrawn() -> None:
    asr = AsrProcessor(ShortOnlyEngine(), clock=lambda: 1_000, partial_interval_ms=1000, vad=ENERGY)
    noise = np.random.default_rng(3).uniform(-0.5, 0.5, 3 * 16000)
    pcm = (np.concatenate([noise, np.zeros(16000)]) * 32767).astype("<i2").tobytes()
    out = [o for r in raw(pcm16_chunks(pcm, 16000, 1, "nope", chunk_ms=1000)) for o in asr.process([r])]
    got = partials(out)
    assert [e["text"] for e in got] == ["maybe", ""] and finals(out) == []
    assert got[0]["segment_index"] == got[1]["segment_index"] == 0 and got[0]["id"] != got[1]["id"]
    assert asr.streams["nope"].next_index == 0 and asr.streams["nope"].partial_index is None


def test_a_rebalance_moves_open_streams_to_their_partitions_new_owner(engine, clips) -> None:
    """Worker A holds both partitions and is cut mid-utterance on two streams; a rebalance gives partition 1 to
    worker B, which restores its stream from what A checkpointed. Each utterance is final exactly once, and
    A's idle flush no longer touches the stream it gave away."""
    pcm, rate = clips["fox"]
    one = raw(pcm16_chunks(pcm + pcm, rate, 1, "kept", chunk_ms=400), partition=0)
    two = raw(pcm16_chunks(pcm + pcm, rate, 1, "moved", chunk_ms=400), partition=1)
    cut = int(len(one) * 0.7)
    a, b = InProcessWorker(processor(engine)), InProcessWorker(processor(engine))
    a.rebalance({(topics.AUDIO_CHUNKS, 0), (topics.AUDIO_CHUNKS, 1)})
    out_a = a.run(one[:cut] + two[:cut])
    assert {s.stream_id for s in states(out_a)} == {"kept", "moved"}

    out_a += a.rebalance({(topics.AUDIO_CHUNKS, 0)})
    assert set(a.processor.streams) == {"kept"}
    b.rebalance({(topics.AUDIO_CHUNKS, 1)}, state=[(marker_key("b"), b"t"), *a.state()])
    assert set(b.processor.streams) == {"moved"} and b.processor.streams["moved"].partition == 1

    out_a += a.run(one[cut:]) + a.tick()  # the tick would flush "moved" had A kept it
    out_b = b.run(two[cut - 3 :]) + b.tick()  # 3 chunks A applied are read again: skipped, not repeated
    for sid, out in (("kept", out_a), ("moved", out_a + out_b)):
        got = [e for e in finals(out) if e["stream_id"] == sid]
        # one final per segment, ids in order (the VAD may join the two utterances: 1 s apart, each under 5 s)
        assert got and [e["id"] for e in got] == [f"{sid}:{i}" for i in range(len(got))], [(e["id"], e["text"])
                                                                                           for e in got]
        text = " ".join(e["text"] for e in got)
        assert wer(SENTENCES["fox"] + " " + SENTENCES["fox"], text) <= 0.15, text
    assert all(e["stream_id"] == "moved" for e in finals(out_b))


# --- context: a segment decoded after its stream's previous one ------------------------------------------------


class ContextEngine(LengthEngine):
    """Records what context each call's segments came with; the text names the call, so a context shows which
    final it came from."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int] | None]] = []

    def transcribe(self, segments, word_timestamps=None, contexts=None) -> list[Transcription]:
        given = list(contexts) if contexts is not None else [None] * len(segments)
        self.calls.append([None if c is None else (c.text, c.audio.size) for c in given])
        return [Transcription(f"call{len(self.calls)}", "en", -0.1, 0.01) for _ in segments]


def bursts(*pattern: tuple[float, float]) -> bytes:
    """PCM16 of (seconds of loud noise, seconds of silence) pairs: one energy-VAD segment per burst."""
    rng = np.random.default_rng(11)
    parts = [np.concatenate([rng.uniform(-0.5, 0.5, int(on * 16000)), np.zeros(int(off * 16000))])
             for on, off in pattern]
    return (np.concatenate(parts) * 32767).astype("<i2").tobytes()


def test_a_segment_after_a_short_pause_is_decoded_in_the_context_of_its_streams_previous_final() -> None:
    """Three bursts in one chunk: 1.0 s of silence between the first two (their bounds, padding included, are
    0.8 s apart: context), 3.0 s before the third (a new turn: none). The second is decoded after the first's
    final came back, in its own engine call, with that final's text and the first segment's audio."""
    engine = ContextEngine()
    asr = AsrProcessor(engine, clock=lambda: 1_000, vad=ENERGY)
    out = asr.process(raw(pcm16_chunks(bursts((1, 1.0), (1, 3.0), (1, 1.0)), 16000, 1, "ctx", chunk_ms=10_000)))
    first, second, third = finals(out)
    assert [e["text"] for e in (first, second, third)] == ["call1", "call2", "call3"]
    assert second["start"] - first["end"] == pytest.approx(0.8, abs=0.05) and third["start"] - second["end"] > 2
    size = round((first["end"] - first["start"]) * 16000)
    assert engine.calls[0] == [None] and engine.calls[2] == [None]
    [(text, samples)] = engine.calls[1]
    assert text == "call1" and abs(samples - size) <= 16


def test_context_is_checkpointed_so_a_restored_stream_decodes_its_next_segment_in_it() -> None:
    def worker() -> InProcessWorker:
        return InProcessWorker(AsrProcessor(ContextEngine(), clock=lambda: 1_000, vad=ENERGY))

    chunks = raw(pcm16_chunks(bursts((1, 1.0), (1, 1.0)), 16000, 1, "ctx", chunk_ms=2_000))
    first = worker()
    [final] = finals(first.run([chunks[0]]))
    saved = decode_checkpoint(decode_state_record(first.state()[-1][1]).data)
    assert saved.context_text == final["text"] == "call1" and saved.context_end_s == final["end"]
    assert saved.context_audio.size == round((final["end"] - final["start"]) * 16000)
    second = worker()
    restart(second.processor, [(marker_key("x"), b"t"), *first.state()], second.store)
    finals(second.run([chunks[1]]))
    assert second.processor.engine.calls == [[("call1", saved.context_audio.size)]]


def test_context_off_decodes_a_batch_in_one_call_without_it() -> None:
    engine = ContextEngine()
    asr = AsrProcessor(engine, clock=lambda: 1_000, vad=ENERGY, context_s=0)
    out = asr.process(raw(pcm16_chunks(bursts((1, 1.0), (1, 1.0)), 16000, 1, "off", chunk_ms=10_000)))
    assert len(finals(out)) == 2 and engine.calls == [[None, None]]


def test_a_checkpoint_with_pending_chunks_and_a_context_round_trips_and_older_records_have_none() -> None:
    rng = np.random.default_rng(2)
    tail, a, b, ctx = (np.round(rng.uniform(-0.5, 0.5, n) * 32768).astype(np.float32) / 32768
                       for n in (800, 300, 500, 700))
    cp = StreamCheckpoint("s", 3, 2, 1.5, tail, pending={5: (a, False), 7: (b, True)}, context_text="hi there",
                          context_end_s=1.25, context_audio=ctx)
    back = decode_checkpoint(encode_checkpoint(cp))
    assert back.context_text == "hi there" and back.context_end_s == 1.25
    assert np.array_equal(back.context_audio, ctx) and np.array_equal(back.tail, tail)
    assert [(k, v.tolist(), e) for k, (v, e) in back.pending.items()] == [(5, a.tolist(), False), (7, b.tolist(), True)]
    cp.context_text, cp.context_audio = "", np.zeros(0, np.float32)
    old = decode_checkpoint(encode_checkpoint(cp))
    assert old.context_text == "" and old.context_audio.size == 0 and old.pending.keys() == {5, 7}


class SlowEngine(LengthEngine):
    """Whisper on two busy cores: each call takes 11 s of the shared fake clock."""

    def __init__(self, now: list[int]) -> None:
        self.now = now

    def transcribe(self, segments, word_timestamps=None, contexts=None) -> list[Transcription]:
        self.now[0] += 11_000
        return super().transcribe(segments, word_timestamps, contexts)


def open_speech(sid: str) -> OutRecord:
    """2 s of loud noise, no pause after it and no end of stream: a segment the energy VAD keeps open."""
    return OutRecord(topics.AUDIO_CHUNKS, sid.encode(), bursts((2, 0.0)), chunk_headers(sid, 0, 16000, 1))


def test_a_slow_batch_is_no_silence_of_the_streams_waiting_behind_it() -> None:
    """Found by the chaos test: stream a's next chunk waits on the topic behind a batch that took 11 s; the
    idle timeout (10 s) must not close a's open segment meanwhile (it cut sentences in two)."""
    now = [1_000]
    asr = AsrProcessor(SlowEngine(now), clock=lambda: now[0], vad=ENERGY)
    assert finals(asr.process(raw([open_speech("a")]))) == []
    b = pcm16_chunks(bursts((1, 1.0)), 16000, 1, "b", chunk_ms=2_000)[0]
    [final_b] = finals(asr.process(raw([b], start_offset=1)))  # decoded in 11 s
    assert final_b["stream_id"] == "b" and now[0] >= 12_000
    assert asr.tick(now[0]) == []  # a: not idle, its source did not stop
    now[0] += 10_500
    assert [e["stream_id"] for e in finals(asr.tick(now[0]))] == ["a"]  # really silent for 10 s: closed


def test_a_restored_stream_starts_a_fresh_idle_period() -> None:
    """A restart or hand-over that took longer than the idle timeout is no silence of the source either."""
    now = [1_000]
    first = InProcessWorker(AsrProcessor(LengthEngine(), clock=lambda: now[0], vad=ENERGY), clock=lambda: now[0])
    first.run(raw([open_speech("a")]))
    now[0] += 60_000  # the worker died; its successor starts a minute later
    second = InProcessWorker(AsrProcessor(LengthEngine(), clock=lambda: now[0], vad=ENERGY), clock=lambda: now[0])
    restart(second.processor, [(marker_key("x"), b"t"), *first.state()], second.store)
    assert finals(second.tick()) == []
    now[0] += 10_000
    assert [e["stream_id"] for e in finals(second.tick())] == ["a"]
