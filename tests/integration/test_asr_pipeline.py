"""audio.chunks → asr worker → asr.transcripts + text.in → text worker → text.enriched, on the embedded broker."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import wave
from pathlib import Path

import pytest

from models.wer import wer
from processors.asr import decode_checkpoint
from streams import topics
from streams.audio_producer import pcm16_chunks, wav_chunks
from streams.kafka_io import read_topic
from streams.settings import Settings
from tests.integration.harness import WorkerProcess, collect, produce

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite")]

SENTENCE = "Please send the quarterly report to the finance team in London by Friday."


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
        first.wait_for_log("worker ready", timeout_s=120)
        produce(broker, chunks[:cut])
        # kill only once the batch holding the open second utterance is checkpointed (and so delivered)
        checkpointed = [r for r in read_topic(
            Settings(bootstrap=broker), broker, topics.ASR_STATE, timeout_s=60,
            stop=lambda r: r.key == sid.encode() and decode_checkpoint(r.value).next_seq == cut,
        ) if r.key == sid.encode()]
        last = decode_checkpoint(checkpointed[-1].value)
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


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory):
    w = WorkerProcess(broker, Path(tmp_path_factory.mktemp("asr-worker")), processors="asr,text").start()
    w.wait_for_log("worker ready", timeout_s=120)
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
