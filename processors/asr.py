"""Streaming speech recognition: ``audio.chunks`` → ``asr.transcripts`` (+ ``text.in`` for final segments).

A batch-in, records-out function like processors/text.py; the runtime only moves bytes. Per stream:
chunks are decoded (models/audio.py), deduplicated and reordered by seq (StreamBuffer), cut into speech
segments by a VAD (Silero by default; models/speech_segmenter.py), and all streams' segments of a batch are
transcribed together (models/asr_engine).

Output contract (documented here because consumers rely on it):
- A final transcript's id is f"{stream_id}:{segment_index}"; indexes count only segments that produced
  text, so a replay after a crash rewrites the same ids (idempotent) and finals are never revised.
- A stream with a hole that never fills (seqs missing past the reorder window, or at idle timeout) gets one
  ``asr.transcripts`` event with an ``error`` field and ``final: false``, id f"{stream_id}:gap:{first}-{last}";
  the stream then continues after the hole (times are spliced). Text consumers must skip events with ``error``.
- Partials (off by default; ``STREAMSENSE_ASR_PARTIAL_INTERVAL_MS=N`` turns them on): while a segment is
  still open, each batch that brought at least N ms of new speech to it also decodes it so far and sends an
  ``asr.transcripts`` event with ``final: false, partial: true``, ``segment_index`` = the index its final
  will have, id f"{stream_id}:{index}:partial@{end_ms}". Partials are unstable and never reach ``text.in``;
  the stream's next final with that index supersedes them; if the segment closes without text, an empty
  partial for the index withdraws the preview. Partials are not checkpointed (after a restart a withdrawal
  may be missing; the next final still supersedes). Each partial costs a decode: budget CPU for it.
- Word timings: with ``STREAMSENSE_ASR_WORD_TIMESTAMPS=1`` (or a stream's chunk header
  ``word_timestamps: 1``; ``0`` turns them off for that stream) a final carries
  ``words: [{word, start, end, probability}]``, times in seconds from stream start, inside [start, end].
- ``language``: "en" for ".en" models; multilingual models (e.g. "base") detect it per segment.
- Context: a segment that begins within ``CONTEXT_GAP_S`` of its stream's previous final is decoded after it
  (that final's audio and text; models/asr_engine.py), as whole-file whisper hears the previous sentence;
  ``context_s`` (``STREAMSENSE_ASR_CONTEXT_S``) bounds the audio kept, 0 turns it off. The context is part of
  the checkpoint, so a replay decodes the same segment the same way.
- Bad chunks become dead letters with the decoder's reason; other streams are unaffected.
- After each batch the touched streams' open state is checkpointed (`checkpoints`; the runtime's state store
  writes it to ``asr.state`` after the batch's transcripts), so a restart neither loses buffered audio nor
  repeats a final segment. The checkpoint holds the VAD's whole state (its model state and the audio it still
  holds), so a restored stream is cut exactly as it would have been without the restart.

Why checkpoints: Faust commits a batch's offsets once its outputs are delivered, so audio still buffered
(an open segment, chunks waiting for a missing seq) would be lost on a crash. Whenever the worker is assigned
``audio.chunks`` partitions (at start and on every rebalance) the runtime restores the latest checkpoint of
every stream on them (streams/runtime/handover.py); streams of revoked partitions are released, so two ASR
workers in one group split the streams and either takes over the other's. The data layout of a stream's state is
the ``asr.state`` contract in streams/contracts/asr_state.py; the chunk headers are streams/contracts/audio_chunks.py.

Checkpoint size: each ``asr.state`` record stays under ``max_state_bytes`` (default 1,000,000, below Kafka's
default 1 MB message limit, which would otherwise reject the record and stop the worker). The tail is bounded
by the max segment length (checked when the processor is built); out-of-order chunks waiting for a missing seq
are not, since chunks may be up to 30 s each. When they would push the record over the bound, the processor
stops waiting for the oldest missing chunk as if the reorder window had passed: a gap event (its ``error``
says why), the buffered audio goes on to the VAD, and the checkpoint again holds exactly the stream's state,
so a restart still neither loses nor repeats a final. Counting is without compression (noise does not shrink).

Size: ~520 lines, over the ~400 the codebase aims at, because the per-stream state machine (release order →
VAD → segments → finals in context, partials and gaps → checkpoint) is one unit whose pieces share the stream's state;
what could leave did (chunk headers and the state layout are contracts in streams/contracts/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.asr_engine import Context, Transcription, Word
from models.audio import AudioError, decode_chunk
from models.speech_segmenter import SAMPLE_RATE, Segment, SpeechDetector, StreamBuffer, VADConfig
from monitoring import metrics
from streams.contracts import topics
from streams.contracts.asr_state import StreamCheckpoint, checkpoint_size_bound, decode_checkpoint, encode_checkpoint
from streams.contracts.audio_chunks import MAX_STREAM_ID, BadChunk, parse_meta
from streams.contracts.deadletter import dead_letter
from streams.contracts.records import OutRecord, RawRecord
from streams.contracts.schemas import asr_transcript_event, encode, now_ms, text_in_event
from streams.contracts.state import TP, Checkpoint, StateError

log = logging.getLogger(__name__)


# Kafka's default broker limit (message.max.bytes) is 1,048,588 bytes and producers refuse records over
# max.request.size = 1,048,576; this leaves room for the key, headers and batch overhead.
DEFAULT_MAX_STATE_BYTES = 1_000_000
# The context's text is the stream's previous final cut to this many characters (whisper keeps at most 223
# tokens of it anyway), so the checkpoint that carries it stays bounded.
MAX_CONTEXT_CHARS = 500
# A segment is decoded in context (models/asr_engine.py) only when its stream's previous segment ended at most
# this long before it began: pieces of one stretch of talk that the VAD cut. After a longer pause the next
# words are often a new turn, and context made tiny.en continue the old one (short replies 2-3 s apart in
# bench/speech_quality.py: WER 0.188 alone, 0.344 in context; with this rule 0.188 again). Segment bounds
# include 0.3 s of padding on each side, so this is up to 1.6 s of silence.
CONTEXT_GAP_S = 1.0

class Transcriber(Protocol):
    model_name: str

    def transcribe(self, segments: Sequence[np.ndarray], word_timestamps: Sequence[bool] | None = None,
                   contexts: Sequence[Context | None] | None = None) -> list[Transcription]: ...


@dataclass
class StreamState:
    """One stream: ordered release (buffer) → VAD (which holds the audio an open segment may still need).

    Times: the VAD counts from its own start; ``base_s`` maps that to stream time (non-zero after a restore
    that re-reads audio into a fresh VAD).
    """

    stream_id: str
    buffer: StreamBuffer
    vad: SpeechDetector
    next_index: int = 0
    base_s: float = 0.0
    ended: bool = False
    last_seen_ms: int = 0  # on the processor's idle clock (`AsrProcessor.idle_now`), not the wall clock
    idle_flushed: bool = False  # flushed once for the current silence; reset by the next chunk
    partition: int | None = None  # input partition, so this stream's outputs keep their order
    offset: int = -1  # offset of the last chunk applied (the checkpoint's input offset)
    replay: np.ndarray | None = None  # restored audio without a usable VAD state, re-read before the next audio
    word_timestamps: bool | None = None  # set by the stream's chunk headers; None: the processor default
    partial_at_s: float = 0.0  # VAD time of the last partial's end (partials are not checkpointed)
    partial_index: int | None = None  # segment index of a partial not yet superseded by a final
    context: Context | None = None  # the last final's audio and text, for the next segment (checkpointed)
    context_end_s: float = 0.0  # stream time the last final's segment ended


@dataclass
class _Pending:
    """A segment waiting for the batch's transcription, with where its outputs go."""

    state: StreamState
    segment: Segment
    seq: int


class AsrProcessor:
    """Capabilities (processors/base.py): Ticking (idle flushes), Checkpointed (one inline checkpoint per
    touched stream per batch, so nothing needs replaying), PartitionedState (a stream's key pins it to one
    partition, so its state moves with that partition when a rebalance hands it to another worker)."""

    name = "asr"
    source_topics = (topics.AUDIO_CHUNKS,)
    state_topic = topics.ASR_STATE
    state_store = "topic"
    replay_topics: tuple[str, ...] = ()  # every batch checkpoints the streams it touched before its commit
    tick_s = 1.0

    def __init__(
        self,
        engine: Transcriber,
        *,
        vad: VADConfig | None = None,
        reorder_window: int = 8,
        idle_timeout_s: float = 10.0,
        max_chunk_s: float = 30.0,
        max_chunk_bytes: int = 16 * 1024 * 1024,
        batch_size: int = 32,
        batch_ms: int = 200,
        read_ahead: int = 0,
        clock: Callable[[], int] = now_ms,
        word_timestamps: bool = False,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        partial_interval_ms: int = 0,
        context_s: float = 10.0,
    ) -> None:
        """``word_timestamps``: the default for streams whose chunks do not say; ``partial_interval_ms`` 0: no
        partials. ``max_state_bytes`` bounds each ``asr.state`` record (see "Checkpoint size" in the module
        doc); it must hold the longest tail the VAD settings allow, else ValueError."""
        self.engine = engine
        self.vad_config = vad or VADConfig(max_segment_s=15.0)
        self.window = reorder_window
        self.idle_timeout_ms = int(idle_timeout_s * 1000)
        self.max_chunk_s = max_chunk_s
        self.max_chunk_bytes = max_chunk_bytes
        self.batch_size = batch_size
        self.batch_ms = batch_ms
        self.read_ahead = read_ahead
        self.clock = clock
        self.word_timestamps = word_timestamps
        if partial_interval_ms < 0:
            raise ValueError(f"partial_interval_ms={partial_interval_ms} must be >= 0 (0: no partials)")
        self.partial_interval_s = partial_interval_ms / 1000
        self.max_state_bytes = max_state_bytes
        keep = int(self.vad_config.retained_s() * SAMPLE_RATE) + 1
        vad_state, _audio = SpeechDetector(self.vad_config).snapshot()  # also fails fast without the VAD model
        worst = StreamCheckpoint("\U0001f600" * MAX_STREAM_ID, 2**62, 2**62, -1.2345678901234567e300,
                                 np.zeros(keep, np.float32), eos_seq=2**62, last_seen_ms=2**62, word_timestamps=False,
                                 base_s=-1.2345678901234567e300, vad=_widest(vad_state),
                                 context_text="\U0001f600" * MAX_CONTEXT_CHARS, context_end_s=-1.2345678901234567e300)
        if checkpoint_size_bound(worst) > max_state_bytes:
            raise ValueError(f"max_state_bytes={max_state_bytes} cannot hold a stream's tail of "
                             f"{self.vad_config.retained_s():.1f} s (max_segment_s "
                             f"{self.vad_config.max_segment_s:g}); need at least {checkpoint_size_bound(worst)}")
        # the context's audio takes what the tail leaves of the bound (two bytes a sample, zlib's bound aside)
        room_s = (max_state_bytes - checkpoint_size_bound(worst)) / 2.01 / SAMPLE_RATE
        self.context_s = max(0.0, min(context_s, room_s))
        if self.context_s < context_s:
            log.warning("asr: context audio cut from %.1f s to %.1f s to keep asr.state records under %d bytes",
                        context_s, self.context_s, max_state_bytes)
        self.streams: dict[str, StreamState] = {}
        self._dirty: dict[str, StreamState] = {}  # streams changed since the last checkpoints() call
        self._busy_ms = 0  # wall time spent in process() and tick(): see `idle_now`

    # --- public API --------------------------------------------------------------------------------------

    def idle_now(self, now_ms: int) -> int:
        """The clock the idle timeout runs on: wall time less the time spent decoding. A stream is idle when its
        source sent nothing for ``idle_timeout_s``, not when this worker was busy that long: a slow batch (two busy
        cores) would otherwise close the open segments of every stream whose next chunks wait behind it on the
        topic, cutting sentences that an unhurried run keeps whole."""
        return now_ms - self._busy_ms

    def process(self, records: Sequence[RawRecord]) -> list[OutRecord]:
        started = self.clock()
        try:
            return self._process(records, self.idle_now(started))
        finally:
            self._busy_ms += max(0, self.clock() - started)

    def _process(self, records: Sequence[RawRecord], now: int) -> list[OutRecord]:
        outputs: list[OutRecord] = []
        pending: list[_Pending] = []
        touched: dict[str, StreamState] = {}
        for record in records:
            try:
                meta = parse_meta(record)
                if record.value is not None and len(record.value) > self.max_chunk_bytes:
                    raise BadChunk(f"chunk of {len(record.value)} bytes is over the {self.max_chunk_bytes} byte limit")
                samples = decode_chunk(record.value or b"", encoding=meta.encoding, sample_rate=meta.sample_rate,
                                       channels=meta.channels, max_seconds=self.max_chunk_s)
            except (BadChunk, AudioError) as exc:
                outputs.append(dead_letter(record, processor=self.name, reason=str(exc),
                                           error=type(exc).__name__))
                continue
            state = self._stream(meta.stream_id)
            state.partition, state.last_seen_ms, state.idle_flushed = record.partition, now, False
            state.offset = max(state.offset, record.offset)
            if meta.word_timestamps is not None:
                state.word_timestamps = meta.word_timestamps
            touched[meta.stream_id] = state
            released = state.buffer.push(meta.seq, samples, meta.eos)
            self._feed(state, released, meta.seq, pending, outputs)
        outputs.extend(self._transcribe(pending, self._open_segments(list(touched.values()))))
        self._dirty.update(touched)
        return outputs

    def tick(self, now_ms: int) -> list[OutRecord]:
        """Idle timeout: a stream silent for ``idle_timeout_s`` gives up on its holes and closes its segment."""
        started = self.clock()
        try:
            return self._flush_idle(self.idle_now(now_ms))
        finally:
            self._busy_ms += max(0, self.clock() - started)

    def _flush_idle(self, now: int) -> list[OutRecord]:
        outputs: list[OutRecord] = []
        pending: list[_Pending] = []
        flushed = []
        for state in self.streams.values():
            if state.ended or state.idle_flushed or now - state.last_seen_ms < self.idle_timeout_ms:
                continue
            self._feed(state, state.buffer.flush(), (state.buffer.next_seq or 1) - 1, pending, outputs)
            if state.replay is not None:
                self._push_audio(state, np.zeros(0, np.float32))
            last = (state.buffer.next_seq or 1) - 1
            pending.extend(_Pending(state, seg, last) for seg in state.vad.flush())
            state.idle_flushed = True
            flushed.append(state)
        outputs.extend(self._transcribe(pending))
        self._dirty.update((s.stream_id, s) for s in flushed)
        return outputs

    # --- state (the Checkpointed capability) ----------------------------------------------------------------

    def checkpoints(self, now_ms: int) -> list[Checkpoint]:
        """One checkpoint per stream the last batch or tick changed; delivered after that batch's outputs."""
        out = [self._checkpoint(s) for s in self._dirty.values()]
        self._dirty.clear()
        return out

    def restore(self, checkpoints: Sequence[Checkpoint]) -> None:
        for cp in checkpoints:
            try:
                stream = decode_checkpoint(cp.data)
            except StateError as exc:
                log.warning("asr: ignoring the state of stream %s: %s", cp.key, exc)
                continue
            state = self._restore(stream)
            state.offset = max(cp.offsets.values(), default=-1)
            state.partition = next((p for t, p in cp.offsets if t == topics.AUDIO_CHUNKS), None)
            self.streams[stream.stream_id] = state

    def release_partitions(self, partitions: Set[TP]) -> None:
        """Forget the streams of revoked partitions: their new owner restores them from ``asr.state`` (each was
        checkpointed with the batch that last touched it), and an idle flush here would repeat its segment."""
        held = {p for t, p in partitions if t == topics.AUDIO_CHUNKS}
        gone = [sid for sid, s in self.streams.items() if s.partition in held]
        for sid in gone:
            del self.streams[sid]
            self._dirty.pop(sid, None)
        if gone:
            log.info("asr: released %d stream(s) of partitions %s", len(gone), sorted(held))

    def replay(self, records: Sequence[RawRecord]) -> None:
        """Apply chunks whose outputs were already delivered (not needed by the runtime today: ``replay_topics``
        is empty because each batch checkpoints before its commit)."""
        self.process(records)

    # --- per stream ------------------------------------------------------------------------------------------

    def _stream(self, stream_id: str) -> StreamState:
        state = self.streams.get(stream_id)
        if state is None:
            state = StreamState(stream_id, StreamBuffer(window=self.window), SpeechDetector(self.vad_config))
            self.streams[stream_id] = state
        return state

    def _restore(self, cp: StreamCheckpoint) -> StreamState:
        """Continue from a checkpoint: the VAD from its saved state, exactly; if there is none (a version-1
        checkpoint) or it cannot continue (the VAD kind was changed), a fresh VAD re-reads the saved audio."""
        buffer = StreamBuffer(window=self.window, next_seq=cp.next_seq, pending=dict(cp.pending), eos_seq=cp.eos_seq)
        vad = None
        if cp.vad is not None and cp.base_s is not None and not cp.ended:
            try:
                vad = SpeechDetector.restore(self.vad_config, cp.vad, cp.tail)
            except (ValueError, KeyError, TypeError) as exc:
                log.info("asr stream %s: re-reading its audio into a fresh VAD: %s", cp.stream_id, exc)
        state = StreamState(cp.stream_id, buffer, vad or SpeechDetector(self.vad_config), next_index=cp.next_index,
                            base_s=cp.base_s if vad else cp.tail_start_s, ended=cp.ended,
                            # a fresh idle period: the checkpoint's time is the previous owner's idle clock, and
                            # a restart or hand-over that took a while is no silence of the source
                            last_seen_ms=self.idle_now(self.clock()), word_timestamps=cp.word_timestamps,
                            context=Context(cp.context_text, cp.context_audio) if cp.context_text else None,
                            context_end_s=cp.context_end_s)
        if vad is None and cp.tail.size and not cp.ended:
            state.replay = cp.tail
        return state

    def _push_audio(self, state: StreamState, samples: np.ndarray) -> list[Segment]:
        if state.replay is not None:
            samples, state.replay = np.concatenate([state.replay, samples]), None
        return state.vad.push(samples)

    def _feed(self, state: StreamState, released: list, seq: int, pending: list[_Pending],
              outputs: list[OutRecord]) -> None:
        reason = None
        while True:
            for item in released:
                if len(item) == 2:  # a hole given up on: close the open segment, report the gap, splice
                    for seg in state.vad.flush():
                        pending.append(_Pending(state, seg, item[0] - 1))
                    outputs.append(self._gap_event(state, item[0], item[1], reason))
                    continue
                chunk_seq, samples, eos = item
                pending.extend(_Pending(state, s, chunk_seq) for s in self._push_audio(state, samples))
                if eos:
                    pending.extend(_Pending(state, s, chunk_seq) for s in state.vad.flush())
                    state.ended = True
            if not state.buffer.pending:
                return
            size = checkpoint_size_bound(self._snapshot(state))
            if size <= self.max_state_bytes:
                return
            # The checkpoint would not fit in one record: stop waiting for the oldest missing chunk (as if the
            # reorder window had passed) rather than drop buffered audio or write a record the broker rejects.
            reason = (f"given up early: {state.buffer.pending_samples / SAMPLE_RATE:.1f} s of later audio were "
                      f"buffered, over the {self.max_state_bytes}-byte checkpoint bound")
            log.warning("asr stream %s: %s", state.stream_id, reason)
            released = state.buffer.give_up_hole()

    # --- outputs -----------------------------------------------------------------------------------------------

    def _transcribe(self, pending: list[_Pending], partials: Sequence[_Pending] = ()) -> list[OutRecord]:
        """Finals for closed segments, then partials for open ones.

        With context on, a segment is decoded after its stream's previous one, whose final text it reads:
        the k-th segment of each stream in this batch goes in the k-th engine call (usually there is one)."""
        rounds: list[list[_Pending]] = [pending]
        if self.context_s > 0:
            rounds, seen = [[]], dict[str, int]()
            for p in pending:
                k = seen[p.state.stream_id] = seen.get(p.state.stream_id, -1) + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(p)
        *earlier, last = rounds
        outputs = [out for segment_round in earlier for out in self._transcribe_round(segment_round, ())]
        return outputs + self._transcribe_round(last, partials)

    def _transcribe_round(self, pending: list[_Pending], partials: Sequence[_Pending]) -> list[OutRecord]:
        """Finals for closed segments, then partials for open ones, from one engine call (one batch)."""
        if not pending and not partials:
            return []
        everything = (*pending, *partials)
        segments = [p.segment.samples for p in everything]
        wants = [self._wants_words(p.state) for p in pending] + [False] * len(partials)
        contexts = [self._context_for(p) for p in everything]
        # only pass what some stream uses, so simpler Transcribers keep working
        extra: dict[str, Any] = {}
        if any(wants):
            extra["word_timestamps"] = wants
        if any(contexts):
            extra["contexts"] = contexts
        started = time.perf_counter()
        results = self.engine.transcribe(segments, **extra)
        audio_s = sum(len(x) for x in segments) / SAMPLE_RATE
        if audio_s > 0:
            metrics.ASR_REAL_TIME_FACTOR.observe((time.perf_counter() - started) / audio_s)
        outputs: list[OutRecord] = []
        for p, result in zip(pending, results[: len(pending)], strict=True):
            state = p.state
            start, end = state.base_s + p.segment.start_s, state.base_s + p.segment.end_s
            if state.partial_index is not None:
                # The first segment to close after a partial is the one it previewed: its final (same index)
                # supersedes the partial; if it has no text, an empty partial withdraws the preview.
                if not result.text:
                    outputs.append(self._partial(state, state.partial_index, p.seq, start, end, None))
                state.partial_index = None
            if not result.text:
                continue  # silence / noise: no text, no id consumed
            index, state.next_index = state.next_index, state.next_index + 1
            if self.context_s > 0:
                audio = p.segment.samples
                state.context = Context(result.text[-MAX_CONTEXT_CHARS:], audio) \
                    if audio.size <= self.context_s * SAMPLE_RATE else None
                state.context_end_s = end
            outputs.extend(self._final(state, index, p.seq, start, end, result))
        for p, result in zip(partials, results[len(pending):], strict=True):
            if result.text:
                state = p.state
                outputs.append(self._partial(state, state.next_index, p.seq, state.base_s + p.segment.start_s,
                                             state.base_s + p.segment.end_s, result))
                state.partial_index = state.next_index
        return outputs

    def _context_for(self, p: _Pending) -> Context | None:
        state = p.state
        if state.context is None or state.base_s + p.segment.start_s - state.context_end_s > CONTEXT_GAP_S:
            return None
        return state.context

    def _open_segments(self, streams: Sequence[StreamState]) -> list[_Pending]:
        """Open segments due a partial: at least ``partial_interval_s`` of speech since the last one."""
        due = []
        for state in streams:
            if self.partial_interval_s <= 0 or state.ended or state.replay is not None:
                continue
            seg = state.vad.open_segment()
            if seg is None or seg.end_s - max(seg.start_s, state.partial_at_s) < self.partial_interval_s:
                continue
            state.partial_at_s = seg.end_s
            due.append(_Pending(state, seg, (state.buffer.next_seq or 1) - 1))
        return due

    def _partial(self, state: StreamState, index: int, seq: int, start: float, end: float,
                 result: Transcription | None) -> OutRecord:
        """An unstable hypothesis for the open segment that will become final ``index`` (``result`` None: the
        segment closed without text, so the earlier partial is withdrawn with an empty one)."""
        event = asr_transcript_event(
            f"{state.stream_id}:{index}:partial@{round(end * 1000)}", ts=self.clock(), stream_id=state.stream_id,
            seq=seq, start=start, end=end, text=result.text if result else "", final=False,
            model=self.engine.model_name, partial=True, segment_index=index,
            language=result.language if result else None, avg_logprob=result.avg_logprob if result else None,
            no_speech_prob=result.no_speech_prob if result else None,
        )
        return OutRecord(topics.ASR_TRANSCRIPTS, state.stream_id.encode(), encode(event), partition=state.partition)

    def _wants_words(self, state: StreamState) -> bool:
        return self.word_timestamps if state.word_timestamps is None else state.word_timestamps

    def _final(self, state: StreamState, index: int, seq: int, start: float, end: float,
               result: Transcription) -> list[OutRecord]:
        tid = f"{state.stream_id}:{index}"
        event = asr_transcript_event(
            tid, ts=self.clock(), stream_id=state.stream_id, seq=seq, start=start, end=end, text=result.text,
            final=True, model=self.engine.model_name, segment_index=index, language=result.language,
            avg_logprob=result.avg_logprob, no_speech_prob=result.no_speech_prob,
        )
        if result.words is not None:
            event["words"] = self._stream_words(result.words, start, event["start"], event["end"])
        text = text_in_event(result.text, event_id=tid, source="asr", stream_id=state.stream_id,
                             start=event["start"], end=event["end"], lang=result.language)
        key = state.stream_id.encode()
        return [
            OutRecord(topics.ASR_TRANSCRIPTS, key, encode(event), partition=state.partition),
            OutRecord(topics.TEXT_IN, tid.encode(), encode(text)),
        ]

    @staticmethod
    def _stream_words(words: Sequence[Word], offset: float, lo: float, hi: float) -> list[dict[str, Any]]:
        """Segment-relative word times → stream times, clamped to the (rounded) segment bounds."""
        out = []
        for w in words:
            start = min(max(round(offset + w.start, 3), lo), hi)
            out.append({"word": w.word, "start": start, "end": min(max(round(offset + w.end, 3), start), hi),
                        "probability": w.probability})
        return out

    def _gap_event(self, state: StreamState, first: int, last: int, reason: str | None = None) -> OutRecord:
        at = round(state.base_s + state.vad.position_s, 3)
        why = f" ({reason})" if reason else ""
        event = asr_transcript_event(
            f"{state.stream_id}:gap:{first}-{last}", ts=self.clock(), stream_id=state.stream_id, seq=first,
            start=at, end=at, text="", final=False, model=self.engine.model_name,
            error=f"stream {state.stream_id}: chunks {first}..{last} never arrived{why}; audio spliced at {at:.2f} s",
        )
        return OutRecord(topics.ASR_TRANSCRIPTS, state.stream_id.encode(), encode(event), partition=state.partition)

    @staticmethod
    def _snapshot(state: StreamState) -> StreamCheckpoint:
        vad: dict[str, Any] | None = None
        if state.ended:
            tail, tail_start = np.zeros(0, np.float32), state.base_s + state.vad.position_s
        elif state.replay is not None:  # restored audio not re-read yet: a restore re-reads it again
            tail, tail_start = state.replay, state.base_s
        else:
            vad, tail = state.vad.snapshot()
            tail_start = state.base_s + vad["audio_start"] / SAMPLE_RATE
        return StreamCheckpoint(
            stream_id=state.stream_id, next_seq=state.buffer.next_seq, next_index=state.next_index,
            tail_start_s=tail_start, tail=tail, pending=dict(state.buffer.pending),
            eos_seq=state.buffer.eos_seq, ended=state.ended, last_seen_ms=state.last_seen_ms,
            word_timestamps=state.word_timestamps, base_s=state.base_s, vad=vad,
            context_end_s=state.context_end_s, **_context_fields(state.context),
        )

    def _checkpoint(self, state: StreamState) -> Checkpoint:
        value = encode_checkpoint(self._snapshot(state))
        if len(value) > self.max_state_bytes:  # cannot happen: _feed bounds pending, __init__ the tail
            log.error("asr stream %s: checkpoint of %d bytes is over the %d-byte bound", state.stream_id,
                      len(value), self.max_state_bytes)
        offsets = {} if state.partition is None or state.offset < 0 else \
            {(topics.AUDIO_CHUNKS, state.partition): state.offset}
        return Checkpoint(state.stream_id, value, offsets)


def _context_fields(context: Context | None) -> dict[str, Any]:
    return {} if context is None else {"context_text": context.text, "context_audio": context.audio}


def _widest(value: Any) -> Any:
    """``value`` with every number as long as JSON can write it: a VAD state's worst case for the size bound."""
    if isinstance(value, dict):
        return {k: _widest(v) for k, v in value.items()}
    if isinstance(value, bool | str | np.ndarray):
        return value
    return -1.2345678901234567e300 if isinstance(value, float) or value is None else 2**62
