"""audio.chunks → asr worker → asr.transcripts + text.in → text worker → text.enriched, on the embedded broker."""

from __future__ import annotations

import json
import subprocess
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest

from models.wer import wer
from streams.audio_producer import pcm16_chunks, wav_chunks
from streams.contracts import topics
from streams.contracts.asr_state import StreamCheckpoint, decode_checkpoint
from streams.contracts.audio_chunks import chunk_headers
from streams.contracts.records import OutRecord
from streams.contracts.settings import Settings
from streams.contracts.state import decode_state_record, state_key
from streams.runtime.kafka_io import read_topic
from tests.integration.harness import WorkerProcess, checkpoint_key, collect, produce

pytestmark = pytest.mark.integration  # flite is required (make installs it): no skip when it is missing

SENTENCE = "Please send the quarterly report to the finance team in London by Friday."
OTHER = "The quick brown fox jumps over the lazy dog."


def stream_state(value: bytes) -> StreamCheckpoint:
    """The stream checkpoint inside an ``asr.state`` record (the runtime's state record wraps it)."""
    return decode_checkpoint(decode_state_record(value).data)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("flite")) / "clip.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", SENTENCE, "-o", str(path)], check=True)
    return path


def test_kill_9_mid_stream_then_restart_loses_and_repeats_no_segment(broker: str, clip: Path,
                                                                     tmp_path: Path) -> None:
    """Runs before the module's shared worker starts, so only this test's group transcribes this stream."""
    sid = f"crash-{uuid.uuid4().hex[:6]}"
    with wave.open(str(clip)) as w:
        rate, speech = w.getframerate(), w.readframes(w.getnframes())
    utterance = speech + b"\0\0" * rate  # a second of silence ends the segment
    chunks = pcm16_chunks(utterance + utterance, rate, 1, sid, chunk_ms=400)  # killed inside the second one
    cut = len(chunks) * 3 // 4
    app_id = f"asr-crash-{uuid.uuid4().hex[:6]}"
    first = WorkerProcess(broker, tmp_path, processors="asr", app_id=app_id).start()
    try:
        first.wait_ready(timeout_s=120)
        produce(broker, chunks[:cut])
        # kill only once the batch holding the open second utterance is checkpointed (and so delivered)
        checkpointed = [r for r in read_topic(
            Settings(bootstrap=broker), broker, topics.ASR_STATE, timeout_s=60,
            stop=lambda r: r.key == state_key(app_id, sid) and stream_state(r.value).next_seq == cut,
        ) if r.key == state_key(app_id, sid)]
        last = stream_state(checkpointed[-1].value)
        assert last.next_seq == cut and last.next_index == 1 and last.tail.size > 0, first.log()[-2000:]
    finally:
        first.kill()
    second = WorkerProcess(broker, tmp_path, processors="asr", app_id=app_id).start()
    try:
        second.wait_for_log("asr model ready", timeout_s=120)
        produce(broker, chunks[cut:])
        collect(broker, topics.ASR_TRANSCRIPTS, 1, match=f"{sid}:1", worker=second, timeout_s=90)
        got = [json.loads(r.value) for r in read_topic(Settings(bootstrap=broker), broker, topics.ASR_TRANSCRIPTS,
                                                       timeout_s=30, idle_timeout_s=3) if r.key == sid.encode()]
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    ids = sorted({e["id"] for e in got})
    assert ids == [f"{sid}:0", f"{sid}:1"], (ids, [e.get("text") for e in got])
    by_id = {e["id"]: e for e in got}
    assert wer(SENTENCE + " " + SENTENCE, by_id[f"{sid}:0"]["text"] + " " + by_id[f"{sid}:1"]["text"]) <= 0.15
    assert by_id[f"{sid}:0"]["end"] <= by_id[f"{sid}:1"]["start"]


def test_partials_preview_an_open_segment_and_the_final_supersedes_them(broker: str, clip: Path,
                                                                        tmp_path: Path) -> None:
    """Before the module's shared worker starts (it would transcribe this stream too, in its own group)."""
    sid = f"partial-{uuid.uuid4().hex[:6]}"
    with wave.open(str(clip)) as w:
        rate, speech = w.getframerate(), w.readframes(w.getnframes())
    chunks = pcm16_chunks(speech + b"\0\0" * rate, rate, 1, sid, chunk_ms=400)
    worker = WorkerProcess(broker, tmp_path, processors="asr",
                           env={"STREAMSENSE_ASR_PARTIAL_INTERVAL_MS": "800"}).start()
    try:
        worker.wait_ready(timeout_s=120)
        # Two thirds of the sentence first, then wait for its preview: the segment is open however late the
        # worker joins its group or however the chunks fall into batches (paced sends raced both on slow CI).
        head = len(speech) * 2 // 3 // (rate * 2 * 400 // 1000)
        produce(broker, chunks[:head])
        collect(broker, topics.ASR_TRANSCRIPTS, 1, match=f"{sid}:0:partial@", worker=worker, timeout_s=90)
        produce(broker, chunks[head:])
        collect(broker, topics.ASR_TRANSCRIPTS, 1, match=f"{sid}:0", worker=worker, timeout_s=90)
        got = [json.loads(r.value) for r in read_topic(Settings(bootstrap=broker), broker, topics.ASR_TRANSCRIPTS,
                                                       timeout_s=30, idle_timeout_s=3) if r.key == sid.encode()]
        texts_in = [json.loads(r.value) for r in read_topic(Settings(bootstrap=broker), broker, topics.TEXT_IN,
                                                            timeout_s=30, idle_timeout_s=3)
                    if json.loads(r.value).get("stream_id") == sid]
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    finals = [e for e in got if e["final"]]
    partials = [e for e in got if e.get("partial")]
    assert [e["id"] for e in finals] == [f"{sid}:0"]
    assert wer(SENTENCE, finals[0]["text"]) <= 0.15
    assert partials, [e["id"] for e in got]
    assert all(not e["final"] and e["segment_index"] == 0 for e in partials)
    assert got.index(partials[-1]) < got.index(finals[0])  # previews come first, on the stream's partition
    assert len(texts_in) == 1 and texts_in[0]["text"] == finals[0]["text"]  # partials never reach text.in


def one_stream_per_partition(prefix: str, partitions: int) -> list[str]:
    """Stream ids that the producer's default partitioner (murmur2 of the key, as Kafka's Java client) puts on
    partitions 0..n-1, one each, so a rebalance surely moves open streams."""
    from kafka.partitioner.default import murmur2

    found: dict[int, str] = {}
    for i in range(10_000):
        sid = f"{prefix}-{i}"
        found.setdefault((murmur2(sid.encode()) & 0x7FFFFFFF) % partitions, sid)
        if len(found) == partitions:
            return [found[p] for p in range(partitions)]
    raise AssertionError("no stream id found for every partition")


def checkpointed(broker: str, upto: dict[str, int], timeout_s: float = 90.0,
                 workers: tuple[WorkerProcess, ...] = ()) -> None:
    """Wait until each stream's checkpoint has applied its chunks below ``upto[sid]`` (so every output of
    those chunks is delivered: a checkpoint goes out after its batch's outputs)."""
    done: set[str] = set()

    def stop(r) -> bool:
        sid = checkpoint_key(r)
        if sid in upto and stream_state(r.value).next_seq >= upto[sid]:
            done.add(sid)
        return done == set(upto)

    for _ in read_topic(Settings(bootstrap=broker), broker, topics.ASR_STATE, timeout_s=timeout_s, stop=stop):
        pass
    assert done == set(upto), (sorted(set(upto) - done), *(w.log()[-2000:] for w in workers))


def test_two_workers_split_the_streams_and_a_killed_ones_streams_move_to_the_other(own_broker: str, clip: Path,
                                                                                    tmp_path: Path) -> None:
    """On a broker of its own (a new group would also transcribe every stream other tests left on audio.chunks).
    Every open stream is mid-utterance at each hand-over: when B joins A's group (a rebalance gives B half of
    the partitions; B restores their streams from what A checkpointed) and when B is SIGKILLed (A restores them
    from what B checkpointed). Every utterance's final arrives exactly once, and the text is right."""
    partitions = Settings().partitions
    sids = one_stream_per_partition(f"handover-{uuid.uuid4().hex[:4]}", partitions)
    speech, rate = pcm_of(clip)
    utterance = speech + b"\0\0" * rate
    chunks = {sid: pcm16_chunks(utterance * 3, rate, 1, sid, chunk_ms=400) for sid in sids}
    per_utterance = len(chunks[sids[0]]) / 3
    cuts = [int(per_utterance * 1.5), int(per_utterance * 2.5)]  # inside the 2nd and the 3rd utterance
    app_id = f"asr-handover-{uuid.uuid4().hex[:6]}"
    env = {"STREAMSENSE_ASR_IDLE_TIMEOUT_S": "600"}  # pauses between phases must not end a segment early
    a = WorkerProcess(own_broker, tmp_path, processors="asr", app_id=app_id, env=env).start()
    b = WorkerProcess(own_broker, tmp_path, processors="asr", app_id=app_id, env=env)
    try:
        a.wait_ready(timeout_s=120)
        produce(own_broker, [c for sid in sids for c in chunks[sid][: cuts[0]]])
        checkpointed(own_broker, {sid: cuts[0] for sid in sids}, workers=(a,))

        held_by_b = b.start().wait_ready(timeout_s=120)["partitions"]
        moved = [sid for p, sid in enumerate(sids) if f"{topics.AUDIO_CHUNKS}[{p}]" in held_by_b]
        assert 0 < len(moved) < partitions, held_by_b
        assert f"asr: restored {len(moved)} checkpoint(s) of" in b.log(), b.log()[-2000:]
        produce(own_broker, [c for sid in sids for c in chunks[sid][cuts[0] : cuts[1]]])
        checkpointed(own_broker, {sid: cuts[1] for sid in sids}, workers=(a, b))

        b.kill()  # A gets B's partitions after the session timeout and restores B's streams
        produce(own_broker, [c for sid in sids for c in chunks[sid][cuts[1] :]])
        transcripts_of(own_broker, {sid: 3 for sid in sids}, timeout_s=120)
        finals = [json.loads(r.value) for r in read_topic(Settings(bootstrap=own_broker), own_broker,
                                                          topics.ASR_TRANSCRIPTS, timeout_s=30, idle_timeout_s=3)
                  if r.key is not None and r.key.decode() in sids]
    finally:
        b.stop()
        assert a.stop() == 0, a.log()[-3000:]
    assert a.log().count("asr: restored") >= 2, a.log()[-3000:]  # its first assignment and B's partitions
    for sid in sids:
        mine = sorted((e for e in finals if e["stream_id"] == sid and e["final"]), key=lambda e: e["start"])
        assert [e["id"] for e in mine] == [f"{sid}:{i}" for i in range(3)], [(e["id"], e["text"]) for e in mine]
        assert wer(" ".join([SENTENCE] * 3), " ".join(e["text"] for e in mine)) <= 0.15, [e["text"] for e in mine]


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory):
    w = WorkerProcess(broker, Path(tmp_path_factory.mktemp("asr-worker")), processors="asr,text").start()
    w.wait_ready(timeout_s=120)
    yield w
    assert w.stop() == 0, w.log()[-3000:]


def test_chunked_clip_becomes_a_final_transcript_and_an_enriched_text(broker: str, worker: WorkerProcess,
                                                                      clip: Path) -> None:
    sid = f"call-{uuid.uuid4().hex[:6]}"
    produce(broker, wav_chunks(clip, sid, chunk_ms=400))

    [final] = collect(broker, topics.ASR_TRANSCRIPTS, 1, match=sid, worker=worker, timeout_s=90)
    assert final["id"] == f"{sid}:0" and final["final"] is True and final["stream_id"] == sid
    assert wer(SENTENCE, final["text"]) <= 0.15, final["text"]
    assert 0 <= final["start"] < final["end"] and final["model"] == "openai-whisper:tiny.en"

    [enriched] = collect(broker, topics.TEXT_ENRICHED, 1, match=sid, worker=worker, timeout_s=90)
    assert enriched["id"] == final["id"] and enriched["source"] == "asr" and enriched["stream_id"] == sid
    assert (enriched["start"], enriched["end"]) == (final["start"], final["end"])
    assert ("London", "LOC") in {(e["text"], e["label"]) for e in enriched["entities"]}
    assert "[streamsense] asr model ready" in worker.log()


def pcm_of(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def ended_checkpoints(broker: str, sids: set[str], timeout_s: float = 90.0,
                      worker: WorkerProcess | None = None) -> dict[str, StreamCheckpoint]:
    """Wait until every stream's eos is processed: its checkpoint is delivered after its transcripts, and its
    ``next_index`` says how many finals it produced."""
    done: dict[str, StreamCheckpoint] = {}

    def stop(r) -> bool:
        key = checkpoint_key(r)
        if key in sids:
            cp = stream_state(r.value)
            if cp.ended:
                done[key] = cp
        return set(done) == sids

    died = (lambda: worker.proc is not None and worker.proc.poll() is not None) if worker else None
    for _ in read_topic(Settings(bootstrap=broker), broker, topics.ASR_STATE, timeout_s=timeout_s, stop=stop,
                        abort=died):
        pass
    assert set(done) == sids, (sorted(done), worker.log()[-3000:] if worker else "")
    return done


def transcripts_of(broker: str, want: dict[str, int], timeout_s: float = 30.0) -> dict[str, list[dict]]:
    """All ``asr.transcripts`` events of the given streams, once each stream has ``want[sid]`` distinct ids."""
    got: dict[str, dict[str, dict]] = {sid: {} for sid in want}

    def stop(r) -> bool:
        sid = (r.key or b"").decode("utf-8", "replace")
        if sid in got:
            event = json.loads(r.value)
            got[sid][event["id"]] = event
        return all(len(got[s]) >= n for s, n in want.items())

    for _ in read_topic(Settings(bootstrap=broker), broker, topics.ASR_TRANSCRIPTS, timeout_s=timeout_s, stop=stop):
        pass
    return {sid: sorted(events.values(), key=lambda e: e["start"]) for sid, events in got.items()}


def test_two_interleaved_streams_come_out_as_separate_finals(broker: str, worker: WorkerProcess, clip: Path,
                                                             tmp_path: Path) -> None:
    other = tmp_path / "other.wav"
    subprocess.run(["flite", "-voice", "rms", "-t", OTHER, "-o", str(other)], check=True)
    tag = uuid.uuid4().hex[:6]
    sids = {f"left-{tag}": SENTENCE, f"right-{tag}": OTHER}
    a = pcm16_chunks(*pcm_of(clip), 1, f"left-{tag}", chunk_ms=400)
    b = pcm16_chunks(*pcm_of(other), 1, f"right-{tag}", chunk_ms=300)
    produce(broker, [r for pair in zip(a, b, strict=False) for r in pair] + a[len(b):] + b[len(a):])

    ended = ended_checkpoints(broker, set(sids), worker=worker)
    got = transcripts_of(broker, {sid: cp.next_index for sid, cp in ended.items()})
    for sid, sentence in sids.items():
        finals = [e for e in got[sid] if e.get("final")]
        assert finals and all(e["stream_id"] == sid for e in finals), got[sid]
        assert [e["id"] for e in finals] == [f"{sid}:{i}" for i in range(len(finals))]
        text = " ".join(e["text"] for e in finals)
        assert wer(sentence, text) <= 0.15, (sid, text)


def test_a_silent_stream_produces_no_transcript(broker: str, worker: WorkerProcess) -> None:
    sid = f"silent-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(1)
    quiet = np.concatenate([np.zeros(16000 * 2), rng.normal(0, 0.002, 16000 * 2)])
    produce(broker, pcm16_chunks((quiet * 32767).astype("<i2").tobytes(), 16000, 1, sid, chunk_ms=500))

    [cp] = ended_checkpoints(broker, {sid}, worker=worker).values()
    assert cp.next_index == 0  # no final was numbered
    # transcripts precede their stream's checkpoint, so anything for this stream is already on the topic
    mine = [r for r in read_topic(Settings(bootstrap=broker), broker, topics.ASR_TRANSCRIPTS, timeout_s=20,
                                  idle_timeout_s=3) if r.key == sid.encode()]
    assert mine == []


def test_bad_chunks_are_dead_lettered_while_a_good_stream_still_transcribes(broker: str, worker: WorkerProcess,
                                                                             clip: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    tone = (np.sin(np.arange(8000) / 5) * 8000).astype("<i2").tobytes()

    def bad(kind: str, value: bytes, drop: tuple[str, ...] = (), **override: str) -> OutRecord:
        sid = f"bad-{kind}-{tag}"
        headers = dict(chunk_headers(sid, 0, 16000, 1, eos=True))
        for k in drop:
            headers.pop(k)
        headers.update({k: v.encode() for k, v in override.items()})
        return OutRecord(topics.AUDIO_CHUNKS, sid.encode(), value, tuple(headers.items()))

    expected = {
        f"bad-corrupt-{tag}": "not a readable WAV",
        f"bad-headers-{tag}": "missing required header(s): seq, sample_rate",
        f"bad-empty-{tag}": "empty pcm16 chunk",
        f"bad-opus-{tag}": "unsupported encoding 'opus'",
    }
    good = f"good-{tag}"
    records = [
        bad("corrupt", b"RIFF\x10\x00\x00\x00WAVEjunk", encoding="wav"),
        bad("headers", tone, drop=("seq", "sample_rate")),
        bad("empty", b""),
        bad("opus", tone, encoding="opus"),
    ]
    chunks = pcm16_chunks(*pcm_of(clip), 1, good, chunk_ms=500)
    produce(broker, chunks[:2] + records + chunks[2:])  # bad chunks in the middle of the good stream's batch

    letters: dict[str, dict] = {}

    def stop(r) -> bool:
        key = (r.key or b"").decode("utf-8", "replace")
        if key in expected:
            letters[key] = json.loads(r.value)
        return len(letters) == len(expected)

    for _ in read_topic(Settings(bootstrap=broker), broker, topics.DEADLETTER, timeout_s=90, stop=stop,
                        abort=lambda: worker.proc is not None and worker.proc.poll() is not None):
        pass
    assert set(letters) == set(expected), (sorted(letters), worker.log()[-3000:])
    for key, reason in expected.items():
        assert reason in letters[key]["reason"] and letters[key]["processor"] == "asr", letters[key]
        assert letters[key]["source"]["topic"] == topics.AUDIO_CHUNKS

    [final] = collect(broker, topics.ASR_TRANSCRIPTS, 1, match=good, worker=worker, timeout_s=90)
    assert final["id"] == f"{good}:0" and wer(SENTENCE, final["text"]) <= 0.15, final["text"]

