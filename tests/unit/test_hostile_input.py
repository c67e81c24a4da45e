"""Hostile input at every input topic: no processor crashes, every bad message becomes a dead letter with a
reason, and the good messages around it are processed.

Hypothesis builds batches that interleave hostile records (random bytes, JSON of the wrong shape or types, huge
fields, nested arrays, invalid UTF-8, missing/garbage/duplicated headers and keys, out-of-range numbers) with
known-good records at known offsets, runs ``process()`` (and ``tick()`` where there is one) and accounts for every
input offset: either one dead letter naming its topic/partition/offset, with a reason and the original bytes
(a prefix and the digest when cut to the message limit), or the processor's normal output or effect. Each generated
record carries what must happen to it (`DEAD`, `OK`, or `ANY` where the contract leaves it open).

The models are stand-ins, because input handling is under test, not the models: a fake enricher for the text
processor (`FakeEnricher`), a length-reporting engine and the energy VAD for ASR (`LengthEngine`), a retraining
that never trains for the retrainer (`FakeRetraining`); the recommender and the drift monitor are the real ones.

Valid-but-odd inputs accepted by design: a click whose id was already applied (the model drops duplicates), a
non-finite ``value`` on a click event other than a rating (only ratings use it), an audio chunk whose seq the
stream already has (dropped as a redelivery), a transcript that is not final (no signal), a response with no
items, a drift event of a model the policy does not retrain, a model update of another model.

The bugs these tests found are kept as examples at the end of the file (regression tests); a newly found one is
pinned there with ``xfail(strict=True)`` until it is fixed.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.asr_engine import Transcription
from models.audio import ENCODINGS
from models.recs import OnlineRecommender, RecsConfig
from models.recs.events import EVENT_TYPES
from models.registry import RegistryError
from models.speech_segmenter import VADConfig
from models.text_types import ENTITY_LABELS, SENTIMENT_LABELS, Sentiment
from monitoring.drift_monitor import DriftConfig
from monitoring.retrain_policy import PolicyConfig, RetrainPolicy
from monitoring.rollback_watch import RollbackWatch
from processors.asr import AsrProcessor
from processors.monitor import MonitorProcessor
from processors.recs import RecsProcessor
from processors.retrainer import RetrainerProcessor
from processors.text import TextEnrichmentProcessor
from streams.contracts import topics
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.deadletter import DEFAULT_MAX_MESSAGE_BYTES, original_bytes
from streams.contracts.records import OutRecord, RawRecord, record_size
from streams.contracts.schemas import FEEDBACK_LABELS, MAX_TS_MS, validate_text_enriched
from streams.contracts.state import json_state

torch.set_num_threads(1)

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])
NOW = 1_800_000_000_000
PARTITION = 3

DEAD = "dead"  # must become a dead letter
OK = "ok"  # must get the processor's normal output or effect, and no dead letter
ANY = "any"  # one or the other (where the contract leaves it open), but never nothing


@dataclass(frozen=True)
class Case:
    """One input to be: its bytes, what must happen to it and why (printed when it does not)."""

    value: bytes | None
    expect: str
    why: str
    key: bytes | None = b"key"
    headers: tuple[tuple[str, bytes | None], ...] = ()
    meta: Any = None  # its expected effect, per topic: an id, a (stream, seq), ...


Where = tuple[str, int, int]
Batch = list[tuple[RawRecord, Case]]


def where(record: RawRecord) -> Where:
    return record.topic, record.partition, record.offset


def interleave(goods: Sequence[tuple[str, Case]], hostile: Sequence[tuple[str, Case]]) -> list[tuple[str, Case]]:
    """Good records first, last, and spread between the hostile ones."""
    out: list[tuple[str, Case]] = []
    gaps = max(len(goods) - 1, 1)
    for i, good in enumerate(goods):
        out.append(good)
        out.extend(hostile[i * len(hostile) // gaps: (i + 1) * len(hostile) // gaps] if i < gaps else ())
    return out


def records(cases: Sequence[tuple[str, Case]]) -> Batch:
    """One RawRecord per case, at consecutive offsets per topic, in the order given."""
    offsets: Counter[str] = Counter()
    batch = []
    for topic, case in cases:
        batch.append((RawRecord(topic, PARTITION, offsets[topic], case.key, case.value, NOW - 1000,
                                case.headers), case))  # type: ignore[arg-type]  # None header values: hostile
        offsets[topic] += 1
    return batch


def dead_letters(outputs: Sequence[OutRecord], batch: Batch, processor: str) -> dict[Where, dict[str, Any]]:
    """The dead letters among ``outputs`` by the input they stand for, each checked: one per input, under the
    message limit, naming its source, with a reason and the original bytes (a prefix and the digest when cut)."""
    inputs = {where(r): r for r, _ in batch}
    letters: dict[Where, dict[str, Any]] = {}
    for out in outputs:
        if out.topic != topics.DEADLETTER:
            continue
        assert record_size(out) <= DEFAULT_MAX_MESSAGE_BYTES, f"dead letter of {record_size(out)} bytes"
        letter = json.loads(out.value)
        src = letter["source"]
        at = (src["topic"], src["partition"], src["offset"])
        assert at in inputs, f"dead letter for {at}, which is no input"
        assert at not in letters, f"two dead letters for {at}"
        record = inputs[at]
        assert out.source is record and letter["id"] == "{}:{}:{}".format(*at)
        assert letter["processor"] == processor and letter["error"] and letter["reason"].strip()
        value = record.value or b""
        assert (letter["value_bytes"], letter["value_sha256"]) == (len(value), hashlib.sha256(value).hexdigest())
        kept = original_bytes(out.value)
        assert value.startswith(kept) if letter["truncated"] else kept == value
        letters[at] = letter
    return letters


def account(batch: Batch, letters: dict[Where, dict[str, Any]], done: set[Where]) -> None:
    """Every input is dead-lettered or done (its normal output or effect), never both and never neither, as its
    case expects."""
    for record, case in batch:
        at = where(record)
        dead, ok = at in letters, at in done
        got = f"dead letter ({letters[at]['reason'][:200]})" if dead else "processed" if ok else "nothing"
        assert not (dead and ok), f"{at} ({case.why}): dead-lettered and processed"
        if case.expect == DEAD:
            assert dead, f"{at} ({case.why}): must be dead-lettered, got {got}"
        elif case.expect == OK:
            assert ok and not dead, f"{at} ({case.why}): must be processed, got {got}"
        else:
            assert dead or ok, f"{at} ({case.why}): silently dropped"


# --- JSON building blocks -------------------------------------------------------------------------------------

def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def with_raw(event: dict[str, Any], name: str, raw: bytes) -> bytes:
    """``event`` with field ``name`` as raw JSON text: NaN, Infinity, deep nesting."""
    rest = dumps({k: v for k, v in event.items() if k != name})
    return b"{" + dumps(name) + b":" + raw + (b"," + rest[1:] if len(rest) > 2 else b"}")


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(text)} chars)"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return False


def parses(convert: Callable[[Any], Any], value: Any) -> bool:
    try:
        convert(value)
        return True
    except (ValueError, TypeError, OverflowError):
        return False


SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20)
           | st.floats(allow_nan=False, allow_infinity=False))
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=3), max_leaves=8)
NON_FINITE = st.sampled_from([b"NaN", b"Infinity", b"-Infinity"])  # JSON tokens Python's json reads
NESTED = st.integers(2, 300).map(nested)  # json reads these
TOO_DEEP = st.integers(2_000, 100_000).map(nested)  # past the parser's recursion limit: a dead letter
BLANK = st.sampled_from(["", " ", "\t\n", "\u3000"])
NOT_STR = VALUES.filter(lambda v: not isinstance(v, str)) | BLANK | NON_FINITE | NESTED  # for required strings
GOOD_ID = st.text(min_size=1, max_size=40).filter(str.strip) | st.integers(-(10**50), 10**50)
BAD_ID = (VALUES.filter(lambda v: isinstance(v, bool) or not isinstance(v, str | int)) | BLANK | NON_FINITE
          | st.integers(201, 3000).map(lambda n: "i" * n) | st.just(10**250))  # ids are 1..200 characters
NUMBER = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
TS = st.integers(-MAX_TS_MS, MAX_TS_MS) | st.floats(-MAX_TS_MS, MAX_TS_MS)
OUT_OF_RANGE_TS = (st.integers(MAX_TS_MS + 1, 2**70) | st.floats(min_value=MAX_TS_MS * 1.01)
                   | st.sampled_from([float("nan"), float("-inf")]))
NOT_NUMBER = VALUES.filter(lambda v: not isinstance(v, int | float))  # bools are numbers to the contracts
INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")


def huge(lo: int = 100_000, hi: int = 2_000_000) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(lambda n: ("x" * 62 + "\u00e9" + "\U0001f600") * (n // 64) + "y" * (n % 64))


def garbage(event: dict[str, Any]) -> list[st.SearchStrategy[Case]]:
    """Values no JSON topic accepts; ``event`` is a valid event of the topic, to corrupt."""
    good = dumps(event)
    return [
        st.binary(max_size=200).filter(lambda b: not is_json_object(b))
        .map(lambda b: Case(b, DEAD, f"random bytes {b[:30]!r}")),
        st.sampled_from([None, b""]).map(lambda v: Case(v, DEAD, f"value {v!r}")),
        VALUES.filter(lambda v: not isinstance(v, dict)).map(lambda v: Case(dumps(v), DEAD, f"JSON {short(v)}")),
        (NON_FINITE | NESTED | TOO_DEEP).map(lambda raw: Case(raw, DEAD, f"JSON {short(raw)}")),
        TOO_DEEP.map(lambda raw: Case(with_raw(event, "x-deep", raw), DEAD, f"a field nested {len(raw) // 2} deep")),
        st.tuples(st.integers(0, len(good)), st.sampled_from(INVALID_UTF8))
        .map(lambda t: Case(good[: t[0]] + t[1] + good[t[0]:], DEAD, f"invalid UTF-8 {t[1]!r} at byte {t[0]}")),
        st.integers(1, len(good) - 1).map(lambda n: Case(good[:n], DEAD, f"cut after {n} bytes")),
        st.integers(100_000, 2_000_000).map(lambda n: Case((b"\x00\xffgarbage" * (n // 9 + 1))[:n], DEAD,
                                                           f"{n} bytes of garbage")),
        huge().map(lambda s: Case(dumps(s), DEAD, f"a JSON string of {len(s)} characters")),
    ]


def variants(event: dict[str, Any], name: str, values: st.SearchStrategy[Any], expect: str, why: str,
             meta: Callable[[dict[str, Any]], Any] | None = None) -> st.SearchStrategy[Case]:
    """``event`` with field ``name`` set to each of ``values`` (Python values, or raw JSON text given as bytes)."""
    def case(v: Any) -> Case:
        value = with_raw(event, name, v) if isinstance(v, bytes) else dumps({**event, name: v})
        full = {**event, name: v}
        return Case(value, expect, f"{why}: {name}={short(v)}", meta=meta(full) if meta else None)
    return values.map(case)


def dropped(event: dict[str, Any], names: Sequence[str]) -> st.SearchStrategy[Case]:
    return st.sampled_from(list(names)).map(
        lambda n: Case(dumps({k: v for k, v in event.items() if k != n}), DEAD, f"required field {n!r} missing"))


def extras(event: dict[str, Any], expect: str, meta: Callable[[dict[str, Any]], Any] | None = None
           ) -> list[st.SearchStrategy[Case]]:
    """``event`` with fields nobody reads: huge, nested, of any type (they pass through or are ignored)."""
    return [
        variants(event, "x-huge", huge(), expect, "a huge extra field", meta),
        variants(event, "x-nested", NESTED, expect, "a nested extra field", meta),
        variants(event, "x-any", VALUES, expect, "an extra field", meta),
    ]


KEYS = st.one_of(st.just(b"key"), st.none(), st.binary(max_size=30), st.sampled_from(INVALID_UTF8),
                 st.integers(1025, 4000).map(lambda n: b"k" * n))
HEADERS = st.one_of(
    st.just(()),
    st.lists(st.tuples(st.text(max_size=10), st.none() | st.binary(max_size=30)), max_size=4).map(tuple),
    st.sampled_from(INVALID_UTF8).map(lambda b: (("h", b), ("h", b))),
    st.integers(100_000, 400_000).map(lambda n: (("big", b"\xff" * n),)),
)


def anywhere(cases: st.SearchStrategy[Case]) -> st.SearchStrategy[Case]:
    """Any key and headers (a JSON topic's processor reads neither)."""
    return st.builds(lambda c, k, h: replace(c, key=k, headers=c.headers + h), cases, KEYS, HEADERS)


def hostile_batch(topic: str, kinds: Sequence[st.SearchStrategy[Case]], *, decorate: bool = True
                  ) -> st.SearchStrategy[list[tuple[str, Case]]]:
    """1..8 hostile records of ``topic``, each of another kind (a random selection of ``kinds``, so that every
    kind shows up within a few examples), with any key and headers unless ``decorate`` is false."""
    def batch(order: list[int], n: int) -> st.SearchStrategy[list[tuple[str, Case]]]:
        chosen = [anywhere(kinds[i]) if decorate else kinds[i] for i in order[:n]]
        return st.tuples(*chosen).map(lambda cases: [(topic, c) for c in cases])
    return st.tuples(st.permutations(range(len(kinds))), st.integers(1, 8)).flatmap(lambda t: batch(*t))


# --- text.in → text processor ----------------------------------------------------------------------------------

class FakeEnricher:
    """A stand-in model (the processor's input handling is under test): neutral for every text, and it raises
    on a text containing POISON, like a model choking on one input."""

    def __init__(self) -> None:
        self.models = {"sentiment": "fake@1", "ner": "fake@1"}

    def enrich(self, texts: Sequence[str]) -> list[tuple[Sentiment, list]]:
        if any("POISON" in t for t in texts):
            raise RuntimeError("fake model choked")
        return [(Sentiment("neutral", 0.5), []) for _ in texts]

    def replace(self, kind: str, model: Any) -> None:
        raise NotImplementedError


TEXT_IN = {"id": "good", "text": "a good day in Paris", "source": "test", "ts": NOW - 5}


def good_text(i: int) -> tuple[str, Case]:
    return topics.TEXT_IN, Case(dumps({**TEXT_IN, "id": f"good-{i}"}), OK, f"good text.in {i}")


def text_in_cases() -> list[st.SearchStrategy[Case]]:
    e = TEXT_IN
    return [
        *garbage(e),
        dropped(e, ("id", "text", "source")),
        *(variants(e, n, NOT_STR, DEAD, "not a non-empty string") for n in ("id", "text", "source")),
        variants(e, "text", huge(5001), DEAD, "over max_chars"),
        variants(e, "schema", st.sampled_from(["clicks/1", "text.in/2", "text.in", "text.in/x", 5, [], {}]), DEAD,
                 "another topic's or version's schema"),
        variants(e, "ts", NOT_NUMBER.filter(lambda v: v is not None) | st.booleans(), DEAD, "ts not a number"),
        variants(e, "text", st.text(max_size=20).map(lambda t: f"{t} POISON"), DEAD, "the model raises"),
        # valid but odd
        variants(e, "text", st.text(min_size=1, max_size=5000).filter(lambda t: t.strip() and "POISON" not in t),
                 OK, "any text up to max_chars"),
        variants(e, "id", huge(), OK, "a huge id (its output is over the limit: delivery dead-letters the input)"),
        variants(e, "ts", TS | st.none(), OK, "any ts up to year 9999"),
        variants(e, "ts", OUT_OF_RANGE_TS, DEAD, "a ts past year 9999, NaN or Infinity"),
        variants(e, "schema", st.sampled_from(["text.in/1", "text.in/0", None]), OK, "an accepted schema"),
        *extras(e, OK),
    ]


def check_text(topic: str, hostile: Sequence[tuple[str, Case]]) -> None:
    batch = records(interleave([good_text(i) for i in range(3)], hostile))
    outputs = TextEnrichmentProcessor(FakeEnricher(), clock=lambda: NOW).process([r for r, _ in batch])
    letters = dead_letters(outputs, batch, "text")
    assert len(outputs) == len(batch)  # one output per input, in input order
    done = set()
    for (record, _case), out in zip(batch, outputs, strict=True):
        if out.topic == topics.TEXT_ENRICHED:
            event = json.loads(out.value)
            validate_text_enriched(event)
            assert event["id"] == json.loads(record.value or b"")["id"] and out.key == event["id"].encode()
            assert out.source is record and out.partition == record.partition
            done.add(where(record))
        else:
            assert out.topic == topics.DEADLETTER and where(record) in letters  # in the input's position
    account(batch, letters, done)


@SETTINGS
@given(hostile_batch(topics.TEXT_IN, text_in_cases()))
def test_text_in(hostile: list[tuple[str, Case]]) -> None:
    check_text(topics.TEXT_IN, hostile)


# --- audio.chunks → ASR processor --------------------------------------------------------------------------------

class LengthEngine:
    """A stand-in transcriber: the text says how many samples the segment had."""

    model_name = "length"

    def transcribe(self, segments, word_timestamps=None, contexts=None) -> list[Transcription]:
        return [Transcription(f"samples{s.size}", "en", -0.1, 0.01) for s in segments]


class CountingAsr(AsrProcessor):
    """Logs every chunk that reaches a stream's reorder buffer, as (stream id, seq)."""

    def __init__(self) -> None:
        super().__init__(LengthEngine(), vad=VADConfig.energy(max_segment_s=15.0), clock=lambda: NOW)
        self.pushed: list[tuple[str, int]] = []

    def _stream(self, stream_id: str):
        state = super()._stream(stream_id)
        if "push" not in vars(state.buffer):
            push = state.buffer.push

            def counted(seq: int, samples: np.ndarray, eos: bool = False) -> list:
                self.pushed.append((stream_id, seq))
                return push(seq, samples, eos)

            state.buffer.push = counted  # type: ignore[method-assign]
        return state


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


_noise = np.random.default_rng(7)
GOOD_AUDIO = [pcm16(np.concatenate([_noise.uniform(-0.5, 0.5, 24_000), np.zeros(16_000)])) for _ in range(3)]
TONE = pcm16(np.sin(np.arange(1600) / 5) * 0.25)  # 0.1 s at 16 kHz


def good_chunk(seq: int) -> tuple[str, Case]:
    return topics.AUDIO_CHUNKS, Case(GOOD_AUDIO[seq], OK, f"good chunk {seq}", key=b"good",
                                     headers=chunk_headers("good", seq, 16000, 1, eos=seq == 2), meta=("good", seq))


def chunk(why: str, expect: str = DEAD, *, sid: str = "h0", seq: int = 0, value: bytes | None = TONE,
          key: bytes | str | None = "sid", drop: Sequence[str] = (), extra: Sequence[tuple[str, bytes | None]] = (),
          **override: Any) -> Case:
    """A chunk of stream ``sid`` (key = sid unless given), its headers changed as told."""
    headers: dict[str, bytes | None] = dict(chunk_headers(sid, seq, 16000, 1))
    for name in drop:
        headers.pop(name)
    headers.update({k: v if v is None or isinstance(v, bytes) else str(v).encode() for k, v in override.items()})
    return Case(value, expect, why, key=sid.encode() if key == "sid" else key,  # type: ignore[arg-type]
                headers=(*headers.items(), *extra), meta=None if expect == DEAD else (sid, seq))


def not_int(text: str) -> bool:
    return bool(text.strip()) and not parses(int, text.strip())


def float_wav(samples: np.ndarray) -> bytes:
    """A WAV of IEEE floats (format 3), NaN included: not PCM, so not readable."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def wav(pcm: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


SID = st.sampled_from(["h0", "h1", "h2"])
NUMERIC_HEADERS = ("seq", "sample_rate", "channels")


def audio_cases() -> list[st.SearchStrategy[Case]]:
    return [
        st.sets(st.sampled_from(["seq", "sample_rate", "encoding"]), min_size=1)
        .map(lambda d: chunk(f"headers {sorted(d)} missing", drop=sorted(d))),
        st.just(chunk("no headers at all", drop=("stream_id", "seq", "sample_rate", "channels", "encoding", "eos"))),
        st.sampled_from(["seq", "sample_rate", "encoding"]).map(lambda h: chunk(f"header {h} is None", **{h: None})),
        st.tuples(st.sampled_from(NUMERIC_HEADERS), st.text(max_size=10).filter(not_int))
        .map(lambda t: chunk(f"header {t[0]}={t[1]!r}", **{t[0]: t[1]})),
        st.tuples(st.sampled_from(["seq", "sample_rate", "encoding", "eos", "stream_id", "x-other"]),
                  st.sampled_from(INVALID_UTF8)).map(lambda t: chunk(f"header {t[0]} not UTF-8", **{t[0]: t[1]})),
        (st.integers(-(10**30), 999) | st.integers(384_001, 10**30))
        .map(lambda r: chunk(f"sample_rate {r}", sample_rate=r)),
        (st.integers(-(10**9), 0) | st.integers(33, 10**9)).map(lambda c: chunk(f"channels {c}", channels=c)),
        st.text(min_size=1, max_size=12).filter(lambda s: s.strip() and s.strip().lower() not in ENCODINGS)
        .map(lambda s: chunk(f"encoding {s!r}", encoding=s)),
        st.text(max_size=5).filter(lambda s: s.strip() not in ("0", "1")).map(lambda s: chunk(f"eos {s!r}", eos=s)),
        st.text(min_size=1, max_size=5).filter(lambda s: s.strip() not in ("", "0", "1"))
        .map(lambda s: chunk(f"word_timestamps {s!r}", word_timestamps=s)),
        st.integers(-(10**30), -1).map(lambda s: chunk(f"seq {s}", seq=s)),
        st.integers(4301, 6000).map(lambda n: chunk(f"seq of {n} digits", seq="9" * n)),
        st.just(chunk("key and stream_id differ", stream_id="other")),
        st.sampled_from([None, b""]).map(lambda k: chunk(f"key {k!r} and no stream_id", key=k, drop=("stream_id",))),
        st.integers(201, 5000).map(lambda n: chunk(f"stream id of {n} characters", key=None, stream_id="s" * n)),
        st.sampled_from([1, 3, 1601]).map(lambda n: chunk(f"pcm16 of {n} bytes", value=TONE[:n])),
        st.just(chunk("stereo pcm16 of 6 bytes", value=TONE[:6], channels=2)),
        st.sampled_from([None, b""]).map(lambda v: chunk(f"value {v!r}", value=v)),
        st.integers(30_001, 40_000).map(lambda n: chunk(f"{n / 1000} s at 1 kHz", value=b"\0\0" * n,
                                                        sample_rate=1000)),
        st.binary(max_size=200).map(lambda b: chunk(f"wav of random bytes {b[:20]!r}", value=b, encoding="wav")),
        st.just(chunk("float WAV with NaN", value=float_wav(np.array([0.1, np.nan, np.inf, -0.2])), encoding="wav")),
        st.just(chunk("WAV of 8 kHz declared 16 kHz", value=wav(TONE, 8000), encoding="wav")),
        st.just(chunk("duplicated seq header, the last not a number", extra=(("seq", b"x"),))),
        # valid but odd
        st.tuples(SID, st.integers(0, 20), st.binary(min_size=2, max_size=4000))
        .map(lambda t: chunk("random pcm16", OK, sid=t[0], seq=t[1], value=t[2][: len(t[2]) // 2 * 2])),
        st.tuples(SID, st.sampled_from([1000, 8000, 11025, 22050, 44100, 48000, 96000, 384000]))
        .map(lambda t: chunk(f"{t[1]} Hz", OK, sid=t[0], sample_rate=t[1])),
        st.tuples(SID, st.integers(1, 32)).map(lambda t: chunk(f"{t[1]} channels", OK, sid=t[0], channels=t[1],
                                                               value=TONE[: 1600 // (2 * t[1]) * 2 * t[1]])),
        st.tuples(SID, st.sampled_from([10**18, 2**31, 2**63, 10**4299, 21]))
        .map(lambda t: chunk(f"seq {t[1]}", OK, sid=t[0], seq=t[1])),
        st.tuples(SID, st.integers(0, 5)).map(lambda t: chunk("eos", OK, sid=t[0], seq=t[1], eos="1")),
        st.tuples(SID, st.sampled_from(["0", "1", ""])).map(
            lambda t: chunk(f"word_timestamps {t[1]!r}", OK, sid=t[0], word_timestamps=t[1])),
        st.tuples(SID, st.lists(st.tuples(st.text(max_size=8).map(lambda s: f"x-{s}"), st.text(max_size=20)
                                          .map(str.encode) | st.none()), max_size=4))
        .map(lambda t: chunk("unknown headers", OK, sid=t[0], extra=tuple(t[1]))),
        st.tuples(SID, st.integers(100_000, 400_000))
        .map(lambda t: chunk(f"a header of {t[1]} bytes", OK, sid=t[0], extra=(("x-big", b"b" * t[1]),))),
        SID.map(lambda s: chunk("duplicated headers", OK, sid=s, extra=(("seq", b"0"), ("encoding", b"pcm16")))),
        SID.map(lambda s: chunk("no key, stream_id header", OK, sid=s, key=None)),
        SID.map(lambda s: chunk("key, no stream_id header", OK, sid=s, drop=("stream_id",))),
        st.tuples(SID, st.integers(50_000, 1_000_000)).map(
            lambda t: chunk(f"{t[1] * 2} bytes at 384 kHz", OK, sid=t[0], sample_rate=384000,
                            value=(TONE * (t[1] // 1600 + 1))[: t[1] * 2])),
        st.tuples(SID, st.sampled_from(["flac", "ogg", "mp3"]), st.binary(min_size=1, max_size=400))
        .map(lambda t: chunk(f"{t[1]} of random bytes", ANY, sid=t[0], value=t[2], encoding=t[1])),
    ]


def check_audio(topic: str, hostile: Sequence[tuple[str, Case]]) -> None:
    batch = records(interleave([good_chunk(s) for s in range(3)], hostile))
    asr = CountingAsr()
    outputs = asr.process([r for r, _ in batch])
    letters = dead_letters(outputs, batch, "asr")
    survivors = [(r, c) for r, c in batch if where(r) not in letters]
    account(batch, letters, {where(r) for r, _ in survivors})
    # each chunk not dead-lettered reached its stream's reorder buffer, in input order (which releases it, holds it
    # for a missing seq, or drops a seq the stream already has: redeliveries are dropped by design)
    assert asr.pushed == [c.meta for _, c in survivors]
    assert {o.topic for o in outputs} <= {topics.DEADLETTER, topics.ASR_TRANSCRIPTS, topics.TEXT_IN}
    finals = {e["id"] for o in outputs if o.topic == topics.ASR_TRANSCRIPTS and (e := json.loads(o.value))["final"]}
    assert {"good:0", "good:1", "good:2"} <= finals
    assert {"good:0", "good:1", "good:2"} <= {json.loads(o.value)["id"] for o in outputs if o.topic == topics.TEXT_IN}
    later = asr.tick(NOW + 60_000)  # every stream idle: holes given up, open segments closed
    assert {o.topic for o in later} <= {topics.ASR_TRANSCRIPTS, topics.TEXT_IN}
    assert all(len(cp.data) <= asr.max_state_bytes for cp in asr.checkpoints(NOW + 60_000))


@settings(SETTINGS, max_examples=30)  # the cheapest test, with the most kinds of input
@given(hostile_batch(topics.AUDIO_CHUNKS, audio_cases(), decorate=False))
def test_audio_chunks(hostile: list[tuple[str, Case]]) -> None:
    check_audio(topics.AUDIO_CHUNKS, hostile)


# --- clicks, items, recs.requests → recommender ----------------------------------------------------------------

def small_model() -> OnlineRecommender:
    return OnlineRecommender(RecsConfig(dim=8, use_content=False, replay_size=2000, recent_size=200,
                                        n_shared_negatives=32))


CLICK = {"id": "c", "user_id": "u0", "item_id": "i0", "event": "click", "ts": NOW - 10}
ITEM = {"item_id": "i0", "title": "Toy Story", "genres": ["Animation", "Comedy"]}
REQUEST = {"id": "r", "user_id": "u0", "k": 3}


def click_id(e: dict[str, Any]) -> str:
    return str(e["id"])  # as the model dedupes it


def item_id(e: dict[str, Any]) -> str:
    return str(e["item_id"]).strip()


def request_of(e: dict[str, Any]) -> tuple[str, str, int]:
    return str(e["id"]).strip(), str(e["user_id"]).strip(), e.get("k", 10)


def good_click(i: int, user: str, item: str) -> tuple[str, Case]:
    e = {**CLICK, "id": f"good-{i}", "user_id": user, "item_id": item}
    return topics.CLICKS, Case(dumps(e), OK, f"good click {i}", meta=click_id(e))


def good_item(item: str) -> tuple[str, Case]:
    e = {**ITEM, "item_id": item}
    return topics.ITEMS, Case(dumps(e), OK, f"good item {item}", meta=item_id(e))


def good_request(i: int, user: str, k: int) -> tuple[str, Case]:
    e = {"id": f"good-{i}", "user_id": user, "k": k}
    return topics.RECS_REQUESTS, Case(dumps(e), OK, f"good request {i}", meta=request_of(e))


GOOD_RECS = [good_item("i0"), good_click(0, "u0", "i0"), good_click(1, "u1", "i1"), good_request(0, "u0", 3),
             good_item("i1"), good_click(2, "u0", "i1"), good_request(1, "u1", 1000)]


def not_rating(s: str) -> bool:
    return not parses(float, s) or not 0.0 <= float(s) <= 10.0


def click_cases() -> list[st.SearchStrategy[Case]]:
    e, rating = CLICK, {**CLICK, "event": "rating"}
    return [
        *garbage(e),
        dropped(e, ("id", "user_id", "item_id", "event")),
        *(variants(e, n, BAD_ID, DEAD, "not an id") for n in ("id", "user_id", "item_id")),
        variants(e, "event", VALUES.filter(lambda v: str(v) not in EVENT_TYPES), DEAD, "unknown event"),
        variants(rating, "value", st.floats(max_value=-1e-9) | st.floats(min_value=10.000001, allow_infinity=False)
                 | NON_FINITE | st.text(max_size=8).filter(not_rating), DEAD, "rating out of 0..10"),
        variants(e, "value", st.text(max_size=8).filter(lambda s: not parses(float, s))
                 | st.lists(VALUES, max_size=2) | st.dictionaries(st.text(max_size=3), VALUES, max_size=2),
                 DEAD, "value not a number"),
        variants(e, "ts", st.text(min_size=1, max_size=8).filter(lambda s: not parses(int, s))
                 | st.lists(VALUES, min_size=1, max_size=2) | st.just(b"NaN"), DEAD, "ts not a number"),
        # valid but odd
        *(variants(e, n, GOOD_ID, OK, "any id", click_id) for n in ("id", "user_id", "item_id")),
        variants(e, "event", st.sampled_from(EVENT_TYPES), OK, "any event", click_id),
        variants(rating, "value", st.floats(0, 10) | st.none() | st.sampled_from(["0", "7.5", "10"]), OK,
                 "a rating in 0..10", click_id),
        variants(e, "value", NUMBER | NON_FINITE, OK, "a value on a click (only ratings read it)", click_id),
        variants(e, "ts", NUMBER | st.sampled_from(["", "12", [], {}, None, True, False, 0]), OK, "odd ts", click_id),
        variants(e, "id", st.sampled_from(["good-0", "good-1", "good-2"]), OK, "a duplicate id (dropped by the "
                 "model: at-least-once delivery redelivers clicks)", click_id),
        *extras(e, OK, click_id),
    ]


def item_cases() -> list[st.SearchStrategy[Case]]:
    e = ITEM
    wrong = VALUES.filter(lambda v: v is not None and not isinstance(v, str)
                          and not (isinstance(v, list) and all(isinstance(g, str) for g in v)))
    return [
        *garbage(e),
        dropped(e, ("item_id",)),
        variants(e, "item_id", BAD_ID, DEAD, "not an id"),
        *(variants(e, n, wrong | NON_FINITE | NESTED, DEAD, "not a string") for n in ("title", "genres", "text")),
        # valid but odd
        variants(e, "item_id", GOOD_ID, OK, "any id", item_id),
        *(variants(e, n, huge() | st.text(max_size=50) | st.lists(st.text(max_size=10), max_size=3) | st.none(),
                   OK, "any text", item_id) for n in ("title", "genres", "text")),
        *extras(e, OK, item_id),
    ]


def request_cases() -> list[st.SearchStrategy[Case]]:
    e = REQUEST
    return [
        *garbage(e),
        dropped(e, ("id", "user_id")),
        *(variants(e, n, BAD_ID, DEAD, "not an id") for n in ("id", "user_id")),
        variants(e, "k", st.integers(max_value=0) | st.integers(min_value=1001) | st.just(10**30) | NON_FINITE
                 | VALUES.filter(lambda v: isinstance(v, bool) or not isinstance(v, int)), DEAD, "k not in 1..1000"),
        # valid but odd
        *(variants(e, n, GOOD_ID, OK, "any id", request_of) for n in ("id", "user_id")),
        variants(e, "k", st.integers(1, 1000), OK, "any k in 1..1000", request_of),
        st.just(Case(dumps({"id": "q", "user_id": "u0"}), OK, "no k (10)", meta=("q", "u0", 10))),
        *extras(e, OK, request_of),
    ]


def check_recs(topic: str, hostile: Sequence[tuple[str, Case]]) -> None:
    batch = records(interleave(GOOD_RECS, hostile))
    processor = RecsProcessor(small_model(), clock=lambda: NOW)
    catalog: list[str] = []  # the item ids the model was given, in order
    add_items = processor.model.add_items

    def adding(rows: list[dict[str, Any]]) -> int:
        catalog.extend(str(row["item_id"]) for row in rows)
        return add_items(rows)

    processor.model.add_items = adding  # type: ignore[method-assign]
    outputs = processor.process([r for r, _ in batch])
    letters = dead_letters(outputs, batch, "recs")
    assert {o.topic for o in outputs} <= {topics.DEADLETTER, topics.RECS_RESPONSES}
    kept = {t: [(r, c) for r, c in batch if r.topic == t and where(r) not in letters]
            for t in (topics.CLICKS, topics.ITEMS, topics.RECS_REQUESTS)}
    # requests: one response each, in input order, on the input's partition
    responses = [o for o in outputs if o.topic == topics.RECS_RESPONSES]
    assert len(responses) == len(kept[topics.RECS_REQUESTS])
    done = set()
    for out, (record, case) in zip(responses, kept[topics.RECS_REQUESTS], strict=True):
        body = json.loads(out.value)
        assert out.source is record and out.partition == record.partition
        if case.meta is not None:
            rid, user, k = case.meta
            key = rid.encode("utf-8", "surrogatepass")  # a request id may hold a lone surrogate
            assert (out.key, body["id"], body["user_id"]) == (key, rid, user) and len(body["items"]) <= k
            done.add(where(record))
    # items went to the model's catalog; clicks: the model applied each distinct click id once (a repeated id is
    # dropped by design)
    done |= {where(r) for r, c in kept[topics.ITEMS] if c.meta is not None}
    done |= {where(r) for r, c in kept[topics.CLICKS] if c.meta is not None}
    account(batch, letters, done)
    assert catalog == [c.meta for _, c in kept[topics.ITEMS]]
    assert processor.model.n_applied == len({c.meta for _, c in kept[topics.CLICKS]})
    assert processor.offsets == {(t, PARTITION): max(r.offset for r, _ in batch if r.topic == t)
                                 for t in (topics.CLICKS, topics.ITEMS) if any(r.topic == t for r, _ in batch)}


@SETTINGS
@given(hostile_batch(topics.CLICKS, click_cases()))
def test_recs_clicks(hostile: list[tuple[str, Case]]) -> None:
    check_recs(topics.CLICKS, hostile)


@SETTINGS
@given(hostile_batch(topics.ITEMS, item_cases()))
def test_recs_items(hostile: list[tuple[str, Case]]) -> None:
    check_recs(topics.ITEMS, hostile)


@SETTINGS
@given(hostile_batch(topics.RECS_REQUESTS, request_cases()))
def test_recs_requests(hostile: list[tuple[str, Case]]) -> None:
    check_recs(topics.RECS_REQUESTS, hostile)


# --- text.enriched, asr.transcripts, recs.responses, clicks → drift monitor -------------------------------------

class SpyMonitor(MonitorProcessor):
    """Records each input that reached the detectors, with how many signal values it carried."""

    def __init__(self) -> None:
        super().__init__(DriftConfig(reference_events=300), stats_s=0.0, checkpoint_s=0.0)
        self.observed: dict[Where, int] = {}

    def _observations(self, r: RawRecord):
        ts, observations = super()._observations(r)
        self.observed[where(r)] = len(observations)
        return ts, observations


ENRICHED = {"id": "t1", "ts": NOW - 20, "schema": "text.enriched/1", "text": "Shares of Acme rose", "source": "test",
            "sentiment": {"label": "positive", "score": 0.8},
            "entities": [{"text": "Acme", "label": "ORG", "start": 10, "end": 14, "score": 1.0}],
            "models": {"sentiment": "sentiment@v1", "ner": "ner@v1"}, "latency_ms": 5}
TRANSCRIPT = {"id": "s:0", "final": True, "model": "whisper@1", "start": 0.0, "end": 2.0, "text": "hello there world",
              "avg_logprob": -0.3, "no_speech_prob": 0.01, "language": "en"}
RESPONSE = {"id": "r1", "user_id": "u0", "items": [{"item_id": "i0", "score": 0.9}], "model": "recs@1"}
SIGNALS = "signals"  # meta of a good input that must reach the detectors with at least one value

GOOD_MONITOR = [
    (topics.TEXT_ENRICHED, Case(dumps(ENRICHED), OK, "good text.enriched", meta=SIGNALS)),
    (topics.ASR_TRANSCRIPTS, Case(dumps(TRANSCRIPT), OK, "good final transcript", meta=SIGNALS)),
    (topics.RECS_RESPONSES, Case(dumps(RESPONSE), OK, "good response", meta=SIGNALS)),
    (topics.CLICKS, Case(dumps(CLICK), OK, "good click (a hit on the response)")),
    (topics.ASR_TRANSCRIPTS, Case(dumps({"id": "s:1:partial@1", "final": False, "partial": True}), OK,
                                  "good partial (no signal)")),
    (topics.TEXT_ENRICHED, Case(dumps({**ENRICHED, "id": "t2"}), OK, "good text.enriched", meta=SIGNALS)),
]


def enriched_cases(meta: Callable[[dict[str, Any]], Any] | None = None, *, embeddings: bool = True
                   ) -> list[st.SearchStrategy[Case]]:
    """text.enriched events (the monitor's and the retrainer's input); ``meta`` of the valid ones. ``embeddings``:
    whether the consumer reads sentiment.embedding (the monitor does; the retrainer ignores it)."""
    e, sentiment = ENRICHED, ENRICHED["sentiment"]
    entity = ENRICHED["entities"][0]

    def with_sentiment(values: st.SearchStrategy[Any], name: str, why: str, expect: str = DEAD
                       ) -> st.SearchStrategy[Case]:
        return values.map(lambda v: Case(dumps({**e, "sentiment": {**sentiment, name: v}}), expect,
                                         f"{why}: sentiment.{name}={short(v)}",
                                         meta=meta(e) if meta and expect == OK else None))

    def with_entity(values: st.SearchStrategy[Any], name: str, why: str) -> st.SearchStrategy[Case]:
        return values.map(lambda v: Case(dumps({**e, "entities": [{**entity, name: v}]}), DEAD,
                                         f"{why}: entity {name}={short(v)}"))

    return [
        *garbage(e),
        dropped(e, ("id", "text", "source", "schema", "sentiment", "entities", "models", "latency_ms")),
        *(variants(e, n, NOT_STR, DEAD, "not a non-empty string") for n in ("id", "text", "source")),
        variants(e, "schema", VALUES.filter(lambda v: v != "text.enriched/1"), DEAD, "not this schema"),
        variants(e, "sentiment", VALUES.filter(lambda v: not isinstance(v, dict)), DEAD, "not an object"),
        with_sentiment(VALUES.filter(lambda v: v not in SENTIMENT_LABELS), "label", "unknown label"),
        with_sentiment(st.floats(max_value=-1e-9) | st.floats(min_value=1.000001) | st.just(float("nan"))
                       | NOT_NUMBER, "score", "score not in 0..1"),
        with_sentiment(st.just([]) | st.lists(NOT_NUMBER, min_size=1, max_size=3) | st.text(max_size=5) | st.just({}),
                       "embedding", "embedding not an array of numbers", DEAD if embeddings else OK),
        variants(e, "entities", VALUES.filter(lambda v: not isinstance(v, list)), DEAD, "not an array"),
        with_entity(VALUES.filter(lambda v: v not in ENTITY_LABELS), "label", "unknown entity label"),
        with_entity(st.integers(15, 10**6) | NOT_NUMBER, "end", "entity end out of range"),
        with_entity(st.integers(-(10**6), -1) | st.integers(14, 10**6), "start", "entity start out of range"),
        with_entity(st.text(max_size=10).filter(lambda t: t != "Acme"), "text", "entity text not the text's"),
        variants(e, "models", VALUES.filter(lambda v: not isinstance(v, dict)), DEAD, "not an object"),
        variants(e, "latency_ms", NOT_NUMBER, DEAD, "not a number"),
        # valid but odd
        variants(e, "id", st.text(min_size=1, max_size=30).filter(str.strip).map(lambda s: f"e-{s}"), OK, "any id",
                 meta),
        st.tuples(st.sampled_from(SENTIMENT_LABELS), st.floats(0, 1)).map(
            lambda t: Case(dumps({**e, "sentiment": {"label": t[0], "score": t[1]}}), OK, f"sentiment {t}",
                           meta=meta(e) if meta else None)),
        st.text(min_size=1, max_size=2000).filter(str.strip).map(
            lambda t: Case(dumps({**e, "text": t, "entities": []}), OK, "any text", meta=meta(e) if meta else None)),
        variants(e, "models", st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3), OK,
                 "any model versions", meta),
        variants(e, "latency_ms", NUMBER, OK, "any latency", meta),
        *extras(e, OK, meta),
    ]


def transcript_cases() -> list[st.SearchStrategy[Case]]:
    e = TRANSCRIPT
    return [
        *garbage(e),
        *(variants(e, n, VALUES.filter(lambda v: not isinstance(v, str)) | NON_FINITE, DEAD, "not a string")
          for n in ("model", "text")),
        *(variants(e, n, NOT_NUMBER | st.just(b"NaN"), DEAD, "not a number") for n in ("start", "end")),
        st.tuples(st.floats(-1e300, 1e300), st.floats(0, 1e300)).map(
            lambda t: Case(dumps({**e, "start": t[0], "end": t[0] - t[1]}), DEAD, f"end before start {t}")),
        # valid but odd
        variants(e, "final", st.sampled_from([False, None]), OK, "not final (no signal)"),
        VALUES.map(lambda v: Case(dumps({"anything": v}), OK, "not final: nothing else is read")),
        st.tuples(st.floats(-1e300, 1e300), st.floats(1e-6, 1e300)).filter(lambda t: t[0] + t[1] > t[0]).map(
            lambda t: Case(dumps({**e, "start": t[0], "end": t[0] + t[1]}), OK, f"start/end {t}")),
        *(variants(e, n, VALUES | NON_FINITE, OK, "ignored unless a number/string")
          for n in ("avg_logprob", "no_speech_prob", "language", "ts")),
        variants(e, "text", huge() | st.text(max_size=100), OK, "any text"),
        *extras(e, OK),
    ]


def response_cases() -> list[st.SearchStrategy[Case]]:
    e = RESPONSE
    return [
        *garbage(e),
        dropped(e, ("model", "items")),
        variants(e, "model", VALUES.filter(lambda v: not isinstance(v, str)), DEAD, "not a string"),
        variants(e, "items", VALUES.filter(lambda v: not isinstance(v, list)), DEAD, "not an array"),
        st.lists(VALUES.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3).map(
            lambda items: Case(dumps({**e, "items": [*e["items"], *items]}), DEAD, f"items {short(items)}")),
        st.lists(NOT_NUMBER, min_size=1, max_size=3).map(
            lambda s: Case(dumps({**e, "items": [{"item_id": "i", "score": x} for x in s]}), DEAD, f"scores {s}")),
        st.just(Case(dumps({**e, "items": [{"item_id": "i"}]}), DEAD, "no score")),
        # valid but odd
        variants(e, "items", st.just([]), OK, "no items"),
        st.lists(st.tuples(VALUES, NUMBER), min_size=1, max_size=4).map(
            lambda items: Case(dumps({**e, "items": [{"item_id": i, "score": s} for i, s in items]}), OK,
                               f"items {short(items)}")),
        NON_FINITE.map(lambda raw: Case(with_raw(e, "items", b'[{"item_id":"i","score":' + raw + b"}]"), DEAD,
                                        f"score {raw!r} (it would stall the detectors)")),
        variants(e, "user_id", VALUES, OK, "any user"),
        *extras(e, OK),
    ]


def check_monitor(topic: str, hostile: Sequence[tuple[str, Case]]) -> None:
    batch = records(interleave(GOOD_MONITOR, hostile))
    monitor = SpyMonitor()
    outputs = monitor.process([r for r, _ in batch])
    letters = dead_letters(outputs, batch, "monitor")
    assert {o.topic for o in outputs} <= {topics.DEADLETTER, topics.DRIFT_EVENTS}
    account(batch, letters, set(monitor.observed))
    assert all(monitor.observed[where(r)] > 0 for r, c in batch if c.meta == SIGNALS)
    assert monitor.offsets == {(t, PARTITION): max(r.offset for r, _ in batch if r.topic == t)
                               for t in {r.topic for r, _ in batch}}
    stats = monitor.tick(NOW)
    assert stats and all(o.topic == topics.DRIFT_STATS and json.loads(o.value)["signal"] for o in stats)
    [checkpoint] = monitor.checkpoints(NOW)
    assert json_state(checkpoint)["signals"]


@SETTINGS
@given(hostile_batch(topics.TEXT_ENRICHED, enriched_cases()))
def test_monitor_text_enriched(hostile: list[tuple[str, Case]]) -> None:
    check_monitor(topics.TEXT_ENRICHED, hostile)


@SETTINGS
@given(hostile_batch(topics.ASR_TRANSCRIPTS, transcript_cases()))
def test_monitor_asr_transcripts(hostile: list[tuple[str, Case]]) -> None:
    check_monitor(topics.ASR_TRANSCRIPTS, hostile)


@SETTINGS
@given(hostile_batch(topics.RECS_RESPONSES, response_cases()))
def test_monitor_recs_responses(hostile: list[tuple[str, Case]]) -> None:
    check_monitor(topics.RECS_RESPONSES, hostile)


@SETTINGS
@given(hostile_batch(topics.CLICKS, click_cases()))
def test_monitor_clicks(hostile: list[tuple[str, Case]]) -> None:
    check_monitor(topics.CLICKS, hostile)


# --- feedback, text.enriched, drift.events, retrain.requests, model.updates → retrainer -------------------------

class FakeRetraining:
    """Stands in for SentimentRetraining: a retrain fails with a readable reason (a "failed" decision)."""

    def retrain(self, examples, *, version, data_window, requested):
        raise ValueError("fake retraining: this test trains nothing")

    def rollback(self, *, from_version: str, reason: str):
        raise RegistryError("fake retraining: nothing to roll back to")


def retrainer() -> RetrainerProcessor:
    policy = RetrainPolicy({"sentiment": PolicyConfig(min_labels=10_000, cooldown_s=0, schedule_s=0)})
    return RetrainerProcessor(FakeRetraining(), policy, RollbackWatch(min_labels=10_000),  # type: ignore[arg-type]
                              join_s=60, checkpoint_s=0, clock=lambda: NOW)


FEEDBACK = {"id": "f", "label": "positive", "source": "test", "text": "what a fine film"}
DRIFT = {"id": "d", "ts": 1, "model": "sentiment", "model_version": "sentiment@v1", "signal": "label",
         "detector": "cusum", "level": "drift", "statistic": "s", "value": 1.0, "threshold": 1.0,
         "reference": {"events": 100}, "window": {"events": 80}}
RETRAIN = {"id": "q", "model": "sentiment", "reason": "manual", "requested_by": "test"}
UPDATE = {"id": "u", "model": "sentiment", "version": "v2", "previous_version": "v1", "action": "promote",
          "registry_path": "/registry/sentiment/v2", "sha256": "0" * 64,
          "metrics": {"champion": {}, "challenger": {}}, "data_window": {}}

GOOD_RETRAINER = [
    (topics.TEXT_ENRICHED, Case(dumps({**ENRICHED, "id": "j1"}), OK, "good text.enriched", meta=("text", "j1"))),
    (topics.FEEDBACK, Case(dumps({"id": "j1", "label": "negative", "source": "test"}), OK,
                           "good label joining its text", meta=("label", "j1"))),
    (topics.DRIFT_EVENTS, Case(dumps(DRIFT), OK, "good drift event (arms sentiment)", meta=("decision", "d"))),
    (topics.FEEDBACK, Case(dumps({**FEEDBACK, "id": "f1"}), OK, "good label with text", meta=("label", "f1"))),
    (topics.RETRAIN_REQUESTS, Case(dumps(RETRAIN), OK, "good request", meta=("request", "q"))),
    (topics.MODEL_UPDATES, Case(dumps(UPDATE), OK, "good promotion", meta=("update", "v2"))),
    (topics.FEEDBACK, Case(dumps({"id": "lost", "label": "neutral", "source": "test"}), DEAD,
                           "a label whose text never comes: dead-lettered after join_s", meta=("join", "lost"))),
]
PREFIXED = st.text(min_size=1, max_size=20).filter(str.strip)
WRONG_SCHEMA = st.sampled_from(["clicks/1", "feedback/2", "feedback", "x/y", 5, [], {}])


def label_of(e: dict[str, Any]) -> tuple[str, str]:
    return ("label", e["id"]) if e.get("text") is not None else ("join", e["id"])


def feedback_cases() -> list[st.SearchStrategy[Case]]:
    e = FEEDBACK
    return [
        *garbage(e),
        dropped(e, ("id", "label", "source")),
        *(variants(e, n, NOT_STR, DEAD, "not a non-empty string") for n in ("id", "source")),
        variants(e, "label", VALUES.filter(lambda v: v not in FEEDBACK_LABELS) | NESTED, DEAD, "unknown label"),
        variants(e, "text", NOT_STR.filter(lambda v: v is not None), DEAD, "text not a non-empty string"),
        variants(e, "schema", WRONG_SCHEMA, DEAD, "another topic's or version's schema"),
        variants(e, "ts", NOT_NUMBER.filter(lambda v: v is not None) | st.booleans(), DEAD, "ts not a number"),
        # valid but odd (ids prefixed, so that none joins a text.enriched event by chance)
        st.tuples(PREFIXED, st.sampled_from(FEEDBACK_LABELS), huge() | st.text(max_size=50).filter(str.strip))
        .map(lambda t: {**e, "id": f"f-{t[0]}", "label": t[1], "text": t[2]})
        .map(lambda f: Case(dumps(f), OK, "a label with any text", meta=label_of(f))),
        st.tuples(PREFIXED, st.sampled_from([None, "absent"])).map(
            lambda t: {**{k: v for k, v in e.items() if k != "text"}, "id": f"f-{t[0]}",
                       **({"text": None} if t[1] is None else {})})
        .map(lambda f: Case(dumps(f), DEAD, "a label whose text never comes: dead-lettered after join_s",
                            meta=label_of(f))),
        variants(e, "ts", TS | st.none(), OK, "any ts up to year 9999", label_of),
        *extras(e, OK, label_of),
    ]


def drift_meta(e: dict[str, Any]) -> tuple[str, Any]:
    """The policy retrains sentiment on level drift: a warning is a "skipped" decision; a cleared episode or
    another model is no decision at all (accepted without output, by design)."""
    return ("decision", e["id"]) if e["model"] == "sentiment" and e["level"] == "warning" else ("none", e["id"])


def drift_cases() -> list[st.SearchStrategy[Case]]:
    e = {**DRIFT, "id": "d-x", "level": "warning"}
    required = ("id", "model", "model_version", "signal", "detector", "statistic", "level", "value", "threshold",
                "reference", "window")
    return [
        *garbage(e),
        dropped(e, required),
        *(variants(e, n, NOT_STR, DEAD, "not a non-empty string")
          for n in ("id", "model", "model_version", "signal", "detector", "statistic")),
        variants(e, "level", VALUES.filter(lambda v: v not in ("warning", "drift", "cleared")), DEAD, "unknown level"),
        *(variants(e, n, NOT_NUMBER | st.booleans(), DEAD, "not a number") for n in ("value", "threshold")),
        *(variants(e, n, VALUES.filter(lambda v: not isinstance(v, dict)), DEAD, "not an object")
          for n in ("reference", "window")),
        *(variants(e, n, VALUES.filter(lambda v: not isinstance(v, int)).map(lambda v: {"events": v}), DEAD,
                   "events not an integer") for n in ("reference", "window")),
        variants(e, "schema", WRONG_SCHEMA, DEAD, "another topic's or version's schema"),
        # valid but odd
        st.tuples(PREFIXED, st.sampled_from(["warning", "cleared"])).map(  # ids: d- decided, n- not
            lambda t: {**e, "id": f"{'d' if t[1] == 'warning' else 'n'}-{t[0]}", "level": t[1]})
        .map(lambda d: Case(dumps(d), OK, f"sentiment {d['level']}", meta=drift_meta(d))),
        st.tuples(PREFIXED.filter(lambda m: m != "sentiment"), st.sampled_from(["warning", "drift", "cleared"]))
        .map(lambda t: {**e, "id": f"n-{t[0]}", "model": t[0], "level": t[1]})
        .map(lambda d: Case(dumps(d), OK, f"model {d['model']!r}, not retrained here", meta=drift_meta(d))),
        *(variants(e, n, NUMBER | NON_FINITE, OK, "any number", drift_meta) for n in ("value", "threshold")),
        variants(e, "window", st.integers(-(10**30), 10**30).map(lambda n: {"events": n}), OK, "any window",
                 drift_meta),
        *extras(e, OK, drift_meta),
    ]


def request_meta(e: dict[str, Any]) -> tuple[str, str]:
    return "request", e["id"]


def retrain_request_cases() -> list[st.SearchStrategy[Case]]:
    e = {**RETRAIN, "id": "q-x"}
    return [
        *garbage(e),
        dropped(e, ("id", "model", "reason", "requested_by")),
        *(variants(e, n, NOT_STR, DEAD, "not a non-empty string") for n in ("id", "model", "requested_by")),
        variants(e, "reason", VALUES.filter(lambda v: v not in ("drift", "manual", "schedule")), DEAD,
                 "unknown reason"),
        variants({**e, "reason": "drift"}, "drift_event_id", NOT_STR, DEAD, "a drift request without its event"),
        variants(e, "schema", WRONG_SCHEMA, DEAD, "another topic's or version's schema"),
        variants(e, "ts", NOT_NUMBER.filter(lambda v: v is not None) | st.booleans(), DEAD, "ts not a number"),
        # valid but odd
        st.tuples(PREFIXED, PREFIXED | st.just("sentiment"), st.sampled_from(["manual", "schedule"]))
        .map(lambda t: {**e, "id": f"q-{t[0]}", "model": t[1], "reason": t[2]})
        .map(lambda r: Case(dumps(r), OK, f"a request for {r['model']!r}", meta=request_meta(r))),
        variants({**e, "reason": "drift"}, "drift_event_id", PREFIXED, OK, "a drift request", request_meta),
        variants(e, "ts", st.integers(0, 4_000_000_000_000) | st.none(), OK, "any ts", request_meta),
        *extras(e, OK, request_meta),
    ]


def update_meta(e: dict[str, Any]) -> tuple[str, str]:
    return "update", e["version"]


def update_cases() -> list[st.SearchStrategy[Case]]:
    e = {**UPDATE, "id": "u-x", "version": "v3"}
    return [
        *garbage(e),
        dropped(e, ("id", "model", "version", "registry_path", "sha256", "action", "metrics", "data_window")),
        *(variants(e, n, NOT_STR, DEAD, "not a non-empty string")
          for n in ("id", "model", "version", "registry_path", "sha256")),
        variants(e, "previous_version", NOT_STR.filter(lambda v: v is not None), DEAD, "not a string or null"),
        variants(e, "action", VALUES.filter(lambda v: v not in ("promote", "rollback")), DEAD, "unknown action"),
        *(variants(e, n, VALUES.filter(lambda v: not isinstance(v, dict)), DEAD, "not an object")
          for n in ("metrics", "data_window")),
        st.sampled_from(["champion", "challenger"]).flatmap(
            lambda side: variants(e, "metrics", VALUES.filter(lambda v: not isinstance(v, dict))
                                  .map(lambda v: {"champion": {}, "challenger": {}, side: v}), DEAD,
                                  f"metrics.{side} not an object")),
        # valid but odd
        st.tuples(PREFIXED, st.sampled_from(["promote", "rollback"]), st.none() | PREFIXED).map(
            lambda t: {**e, "model": t[0], "action": t[1], "previous_version": t[2]})
        .map(lambda u: Case(dumps(u), OK, f"an update of {u['model']!r}", meta=update_meta(u))),
        *extras(e, OK, update_meta),
    ]


def check_retrainer(topic: str, hostile: Sequence[tuple[str, Case]]) -> None:
    batch = records(interleave(GOOD_RETRAINER, hostile))
    processor = retrainer()
    outputs = processor.process([r for r, _ in batch])
    later = processor.tick(NOW + 61_000)  # labels still waiting for their text give up
    letters = dead_letters(outputs + later, batch, "retrainer")
    assert {o.topic for o in outputs} <= {topics.DEADLETTER, topics.RETRAIN_DECISIONS}
    assert {o.topic for o in later} <= {topics.DEADLETTER}
    for record, case in batch:  # a timeout for labels still waiting for their text, a schema error for the rest
        if where(record) in letters:
            joined = case.meta is not None and case.meta[0] == "join"
            assert letters[where(record)]["error"] == ("FeedbackJoinTimeout" if joined else "SchemaError"), case.why
    survivors = [(r, c) for r, c in batch if where(r) not in letters]

    def expected(kind: str) -> Counter[str]:
        return Counter(c.meta[1] for _, c in survivors if c.meta is not None and c.meta[0] == kind)

    # one decision per request, and per drift event the policy decides on (none for the others)
    decisions = [json.loads(o.value) for o in outputs if o.topic == topics.RETRAIN_DECISIONS]
    assert Counter(d["request_id"] for d in decisions if "request_id" in d) == expected("request")
    assert Counter(d["drift_event_id"] for d in decisions if "drift_event_id" in d) == expected("decision")
    assert len(processor.labels) == sum(expected("label").values())  # one training example per usable label
    labeled = {label[0] for label in processor.labels}
    done = {where(r) for r, c in survivors if c.meta is not None and (
        (c.meta[0] == "label" and c.meta[1] in labeled) or (c.meta[0] == "text" and c.meta[1] in processor.texts)
        or c.meta[0] in ("request", "decision", "none", "update"))}
    account(batch, letters, done)
    if topic != topics.MODEL_UPDATES:
        assert processor.watch.watches["sentiment"].version == "v2"  # the good promotion is watched
    [checkpoint] = processor.checkpoints(NOW + 61_000)
    assert json_state(checkpoint)["labels"]


@SETTINGS
@given(hostile_batch(topics.FEEDBACK, feedback_cases()))
def test_retrainer_feedback(hostile: list[tuple[str, Case]]) -> None:
    check_retrainer(topics.FEEDBACK, hostile)


@SETTINGS
@given(hostile_batch(topics.TEXT_ENRICHED, enriched_cases(lambda e: ("text", e["id"]), embeddings=False)))
def test_retrainer_text_enriched(hostile: list[tuple[str, Case]]) -> None:
    check_retrainer(topics.TEXT_ENRICHED, hostile)


@SETTINGS
@given(hostile_batch(topics.DRIFT_EVENTS, drift_cases()))
def test_retrainer_drift_events(hostile: list[tuple[str, Case]]) -> None:
    check_retrainer(topics.DRIFT_EVENTS, hostile)


@SETTINGS
@given(hostile_batch(topics.RETRAIN_REQUESTS, retrain_request_cases()))
def test_retrainer_retrain_requests(hostile: list[tuple[str, Case]]) -> None:
    check_retrainer(topics.RETRAIN_REQUESTS, hostile)


@SETTINGS
@given(hostile_batch(topics.MODEL_UPDATES, update_cases()))
def test_retrainer_model_updates(hostile: list[tuple[str, Case]]) -> None:
    check_retrainer(topics.MODEL_UPDATES, hostile)


# --- bugs these tests found: each example stays as a regression test ----------------------------------------
# A new one is pinned here by its failing example under xfail(strict=True) until it is fixed (then the strict
# XPASS fails the run, and the mark goes).

CHECKS = {"text": check_text, "asr": check_audio, "recs": check_recs, "monitor": check_monitor,
          "retrainer": check_retrainer}


def known(processor: str, topic: str, case: Case, name: str) -> Any:
    return pytest.param(processor, topic, case, id=f"{processor}-{topic}-{name}")


def raw_case(raw: bytes, why: str, expect: str = ANY, meta: Any = None) -> Case:
    return Case(raw, expect, why, meta=meta)


BIG = b"1" + b"0" * 400
FOUND_BUGS = [
    known("text", topics.TEXT_IN, raw_case(b'{"id":"s","text":"\\ud800","source":"t"}', "surrogate text"),
          "surrogate"),
    known("recs", topics.RECS_REQUESTS, raw_case(b'{"id":"\\udc80","user_id":"u0"}', "surrogate request id",
                                                 meta=("\udc80", "u0", 10)), "surrogate"),
    known("retrainer", topics.RETRAIN_REQUESTS,
          raw_case(b'{"id":"q-s","model":"\\ud800","reason":"manual","requested_by":"t"}', "surrogate model",
                   meta=("request", "q-s")), "surrogate"),
    known("retrainer", topics.DRIFT_EVENTS, raw_case(with_raw({**DRIFT, "level": "warning"}, "id", b'"\\ud800"'),
                                                     "surrogate drift id", meta=("decision", "\ud800")),
          "surrogate"),
    known("text", topics.TEXT_IN, raw_case(with_raw(TEXT_IN, "ts", b"NaN"), "ts NaN"), "ts-nan"),
    known("recs", topics.CLICKS, raw_case(with_raw(CLICK, "ts", b"Infinity"), "ts Infinity", meta="c"),
          "ts-infinity"),
    known("retrainer", topics.FEEDBACK, raw_case(with_raw({**FEEDBACK, "id": "f-n"}, "ts", b"NaN"), "ts NaN",
                                                 meta=("label", "f-n")), "ts-nan"),
    known("monitor", topics.CLICKS, raw_case(with_raw(CLICK, "value", BIG), "value 10**400", meta="c"), "value-10e400"),
    known("monitor", topics.ASR_TRANSCRIPTS, raw_case(with_raw(TRANSCRIPT, "end", BIG), "end 10**400", DEAD),
          "end-10e400"),
    known("monitor", topics.RECS_RESPONSES, raw_case(with_raw(RESPONSE, "items", b'[{"item_id":"i","score":' + BIG
                                                              + b"}]"), "score 10**400", DEAD), "score-10e400"),
    known("monitor", topics.TEXT_ENRICHED, raw_case(with_raw(ENRICHED, "sentiment", b'{"label":"positive","score":0.5'
                                                             b',"embedding":[' + BIG + b"]}"), "embedding 10**400",
                                                             DEAD), "embedding-10e400"),
    known("retrainer", topics.TEXT_ENRICHED, raw_case(dumps({**ENRICHED, "entities": ["Acme"]}),
                                                      "entity not an object", DEAD), "entity-not-object"),
    known("retrainer", topics.RETRAIN_REQUESTS,
          raw_case(dumps({**RETRAIN, "id": "q-t", "ts": 10**30}), "ts past time_t", meta=("request", "q-t")),
          "ts-10e30"),  # was: the ts reached time.gmtime() (version_for) and raised OverflowError
    known("monitor", topics.TEXT_ENRICHED, raw_case(dumps({**ENRICHED, "models": {"sentiment": ["v"]}}),
                                                    "model version an array", DEAD), "version-array"),
    known("monitor", topics.ASR_TRANSCRIPTS, raw_case(with_raw(TRANSCRIPT, "avg_logprob", BIG),
                                                      "avg_logprob 10**400 (optional: ignored)", OK), "logprob-10e400"),
]


def reproduce(check: Callable[[str, Sequence[tuple[str, Case]]], None], topic: str, cases: Sequence[Case]) -> None:
    """``check`` one batch of ``cases``; what it raises is raised from here, without the frames below (pytest
    formats a traceback for a pinned bug's xfail, parsing the source of each frame: seconds for these tests)."""
    try:
        check(topic, [(topic, c) for c in cases])
    except Exception as exc:
        raise exc.with_traceback(None) from None


@pytest.mark.parametrize(("processor", "topic", "case"), FOUND_BUGS)
def test_found_bug_stays_fixed(processor: str, topic: str, case: Case) -> None:
    reproduce(CHECKS[processor], topic, [case])


def test_monitor_embeddings_of_different_lengths() -> None:
    """Was: they reached np.asarray (EmbeddingReference) together, a ValueError for the whole batch."""
    cases = [Case(dumps({**ENRICHED, "id": f"e{n}", "sentiment": {"label": "positive", "score": 0.5,
                                                                  "embedding": [0.5] * n}}), expect, f"embedding[{n}]")
             for n, expect in ((2, OK), (3, DEAD))]
    reproduce(check_monitor, topics.TEXT_ENRICHED, cases)


def test_retrainer_second_pending_label_keeps_the_first() -> None:
    """Was: pending joins were keyed by id, so the second replaced the first, which then ended as neither a label
    nor a dead letter."""
    cases = [Case(dumps({"id": "f-same", "label": label, "source": "test"}), DEAD, f"label {label} waiting",
                  meta=("join", "f-same")) for label in ("positive", "negative")]
    reproduce(check_retrainer, topics.FEEDBACK, cases)


def test_asr_streams_with_undecodable_keys_do_not_merge() -> None:
    """Was: keys were decoded with errors='replace', so b'\\xff' and b'\\xfe' both became stream '\\ufffd' and
    the second's chunk 0 was dropped as a duplicate of the first's."""
    asr = CountingAsr()
    headers = tuple((k, v) for k, v in chunk_headers("x", 0, 16000, 1) if k != "stream_id")
    batch = records([(topics.AUDIO_CHUNKS, Case(TONE, ANY, f"key {key!r}", key=key, headers=headers))
                     for key in (b"\xff", b"\xfe")])
    letters = dead_letters(asr.process([r for r, _ in batch]), batch, "asr")
    assert len(letters) == 2 and not asr.streams


def test_monitor_null_model_version_is_a_dead_letter_and_tick_works() -> None:
    """Was: a null version observed before a string one left signals of both versions, and tick() (sorting the
    signal keys for drift.stats) raised TypeError on every tick from then on."""
    monitor = SpyMonitor()
    batch = records([(topics.TEXT_ENRICHED, Case(dumps({**ENRICHED, "models": {"sentiment": None}}), DEAD, "null")),
                     (topics.TEXT_ENRICHED, Case(dumps(ENRICHED), OK, "good text.enriched"))])
    letters = dead_letters(monitor.process([r for r, _ in batch]), batch, "monitor")
    account(batch, letters, set(monitor.observed))
    assert monitor.tick(NOW)
