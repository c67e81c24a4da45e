"""Batched whisper transcription of speech segments (≤ 30 s each, float32 mono 16 kHz). No Kafka here.

Backends: the rules below live in :class:`SpeechEngine` and hold for both backends, which only decode:
:class:`AsrEngine` runs openai-whisper on torch (float32), ``models.asr_ct2.Ct2AsrEngine`` runs the same
weights in CTranslate2 int8 (several times cheaper per segment; its module doc says how each step keeps these
semantics). ``load_engine(..., backend=)`` picks one; the worker follows ``STREAMSENSE_ASR_BACKEND``.

Why our own loop instead of ``whisper.transcribe``: that call handles one long file, slides a 30 s window
and conditions on its own previous text. A streaming processor already has VAD-cut segments from several
streams at once; one batched ``whisper.decode`` over their mel spectrograms shares the decoder's steps among
segments, each segment is encoded in a window that fits it (see "Window" below), and deterministic settings
(temperature 0; the only conditioning is on the stream's previous final, see "Context" below) make a replay
after a crash produce the same text for the same audio.

Word timestamps (optional, per segment) use whisper's own cross-attention alignment
(``whisper.timing.find_alignment``, the code behind ``transcribe(word_timestamps=True)``): one extra decoder
pass per segment that asks for them, so segments that do not ask pay nothing.

Silence and noise must give no text: whisper hallucinates ("Thank you.") on near-silent or noisy input, so
gates apply — an energy gate before decoding (digital silence; nothing is decoded) and a no-speech rule after
it, stricter than whisper's own and measured on noise the Silero VAD takes for speech (see
:class:`EngineConfig`). A result whose text loops (compression ratio over 2.4, as ``whisper.transcribe``
checks) is decoded again by seeded sampling at rising temperatures, and gives no text if it keeps looping.

Context: a segment may come with what its stream said just before it (:class:`Context`: the previous
segment's audio and final text). It is then decoded with that audio in front of it and the text forced as the
decoder's prefix, so tiny.en reads it as the continuation of a sentence it already heard, as the 30 s window of
``whisper.transcribe`` does, instead of as an utterance alone: on bench/speech_quality.py quiet speech at
20 dB SNR went from WER 0.137 to 0.099 (whole file 0.088). The audio in front changes what the no-speech rule
sees (the window holds speech), so a result in context is checked instead: one that reads the context again or
scores ``avg_logprob`` under ``context_logprob_threshold`` (noise after speech gave -1.7 and -2.6) is decoded
again alone, under the ordinary gates. Deterministic: the context is the stream's previous final, which a
replay restores from the checkpoint.

Window: whisper pads every input to a 30 s window, so a 5 s segment cost the encoder 30 s of work (and each
decoding step cross-attends 1500 audio frames). Like whisper.cpp's ``audio_ctx``, the engine pads a segment's
mel only to its length plus 5 s of silence, rounded up to 5 s steps (:func:`encoder_window`; the encoder's
positional embedding is sliced to match, :class:`_ShortWindowEncoder`), so the encoder's cost follows the
speech. The silence after the speech matters: with 1 s of it tiny.en read 50 flite sentences (each alone)
at WER 0.245 (it writes the sentence twice, or loops), 2 s 0.155, 3 s 0.078, 5 s 0.045, against 0.060 in
the 30 s window. A segment's window depends on its own length only (segments of one window length share a
decoder call), so batching does not change a replay. A short window raises ``no_speech_prob`` (a lone "Yes."
0.58 -> gated, noise "Not one." 0.39 -> passed), and the gates were calibrated in the 30 s window, so a result
over ``window_recheck_no_speech`` (0.1; clean speech scores ~0.01-0.04) is decoded again in the 30 s window
and that result stands: bench/speech_quality.py's short replies, noise and 5 dB speech then read exactly as
in the 30 s window. Even 5 s of silence after the speech did not always stop the doubled sentence (two of the
energy VAD's 4.7 s segments of clean speech came out twice), so a result that repeats a run of 5 words is
decoded again in the 30 s window too.

Why beam search (3 beams) and not greedy: a VAD segment is one utterance alone in a 30 s window, without the
neighbouring speech that ``whisper.transcribe`` of a whole file has in the same window, and greedy decoding
of tiny.en derails on some such segments ("the results look good and" -> "the results of Luke could end",
"the singer had a sore throat" -> "the singhead is worthrote"), costing whole phrases. Beam search recovers
them: on bench/asr_wer_offline.py (the bench's clips, and 14 clips of 40 other flite sentences) greedy
segments scored WER 0.046 / 0.071 against offline 0.022 / 0.055, beams of 3 0.015 / 0.057 (beams of 5:
0.015 / 0.061). Beam search is as deterministic as greedy. Stock whisper would make it cost ~20-50% more CPU
per segment (and fails on batches); two decoding-step fixes below (:class:`_GroupedCrossAttention`,
:func:`_vocab_logits`) bring 3 beams to about greedy's cost, with the same tokens as stock whisper.
"""

from __future__ import annotations

import copy
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, Self

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH
from whisper.decoding import DecodingTask
from whisper.model import AudioEncoder, MultiHeadAttention, TextDecoder, Whisper
from whisper.timing import WordTiming, find_alignment, merge_punctuations
from whisper.tokenizer import get_tokenizer

SAMPLE_RATE = 16000
MAX_SEGMENT_S = 30.0
# whisper.transcribe's defaults: punctuation is glued to the neighbouring word instead of getting its own timing
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class EngineConfig:
    """The no-speech gate: no text when ``no_speech_prob > no_speech_hard``, or when ``no_speech_prob >
    no_speech_threshold`` and ``avg_logprob < logprob_threshold``.

    Why stricter than ``whisper.transcribe``'s 0.6 / -1.0 (and the 0.8 hard limit this engine had): VAD segments
    of noise (babble floors, swells of babble, noise bursts) that Silero takes for speech made tiny.en write
    "Thank you.", "Welcome.", "That was it." at no-speech 0.4-0.75 and logprob -0.5..-1.0, which passed. Measured
    on bench/speech_quality.py's calibration (lone one-to-three-word replies at -30..-40 dBFS in noise 10-20 dB
    lower, and 6 s noise clips with transients; two seeds, 122 correctly read replies, 55 noise segments with
    text; ``bench/speech_quality.py --calibrate``): the old gate let 45 invented words through and dropped 1
    reply; 0.6 / 0.4 / -0.5 lets 1 through and drops 12 replies (lone "yeah", "fine", "no" at no-speech ~0.5),
    and of the bench's 75 segments of speech only 2, both misread entirely (speech under white noise at 10 and
    5 dB SNR). Looser, 0.6 / 0.4 / -0.7 keeps 5 more replies and lets 4 words through; the target is no text
    at all on noise, so the stricter one.
    """

    no_speech_threshold: float = 0.4
    logprob_threshold: float = -0.5
    no_speech_hard: float = 0.6  # above this, no text whatever the logprob
    # the energy gate: quieter segments are not decoded at all. Only digital silence and dither: Silero finds
    # speech at -60 dBFS and tiny.en reads it (measured: a flite sentence at -40..-60 dBFS over pink noise 15 dB
    # lower, all read right), so the -50 dB of the energy-VAD days would drop quiet talkers.
    min_rms_db: float = -70.0
    # Repetition loops ("the King of Me, and the King of Me, ..."): as whisper.transcribe, a result whose text
    # compresses more than this is decoded again by sampling at rising temperatures (best of ``best_of``),
    # seeded from the segment's audio so a replay gives the same text; none better: no text.
    compression_ratio_threshold: float = 2.4
    fallback_temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    best_of: int = 5
    # A result decoded in context (see the module doc) scoring below this is decoded again alone.
    context_logprob_threshold: float = -1.0
    batch_size: int = 8  # segments per decoder call; memory grows linearly with it
    beam_size: int | None = 3  # None or 1: greedy (cheaper, but derails on some segments; see the module doc)
    # The encoder's window (module doc, "Window"): a segment's mel is padded to its length plus
    # ``window_margin_s`` of silence, rounded up to whole ``window_step_s`` steps (at most 30 s), instead of
    # always to 30 s; None: whisper's 30 s. Under 3 s of margin tiny.en often reads the audio twice or loops
    # (a result that repeats itself is decoded again in the 30 s window).
    window_step_s: float | None = 5.0
    window_margin_s: float = 5.0
    # A result from a short window whose no_speech_prob exceeds this is decoded again in the 30 s window,
    # where the gates above were calibrated (a short window raises no_speech_prob).
    window_recheck_no_speech: float = 0.1
    language: str | None = None  # None: English for ".en" models, detected per segment otherwise


@dataclass(frozen=True)
class Context:
    """What a stream said just before a segment: the previous segment's audio and its final text."""

    text: str
    audio: np.ndarray


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the segment's first sample
    end: float
    probability: float


@dataclass(frozen=True)
class Transcription:
    text: str  # "" when a gate judged the segment not to be speech
    language: str
    avg_logprob: float | None
    no_speech_prob: float | None
    gated: str | None = None  # why the text was suppressed ("energy", "no_speech", "repetition"), else None
    words: tuple[Word, ...] | None = None  # only when asked for, and only for segments with text


class _GroupedCrossAttention(MultiHeadAttention):
    """Decoder cross-attention where each segment's beams share one copy of its audio keys/values.

    Why: beam search gives every segment ``n`` decoder rows. Whisper computes the cross-attention keys/values
    from the audio features once per row, so repeating the features per beam would cost ``n`` times the
    projections of 1500 audio frames and ``n`` times the memory traffic at every decoding step (that is where
    beam search's CPU goes). Cross-attention has no mask and every query row is independent, so a segment's
    beam rows are attended as one longer query against its single key/value copy: the same numbers, once.
    Rows are grouped by segment, as ``DecodingTask`` lays them out (``repeat_interleave``). Equal batch sizes
    take whisper's own path unchanged.
    """

    def qkv_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_q, n_k = q.shape[0], k.shape[0]
        if n_q == n_k or n_q % n_k or mask is not None:
            return super().qkv_attention(q, k, v, mask)
        group, t = n_q // n_k, q.shape[1]
        out, qk = super().qkv_attention(q.reshape(n_k, group * t, q.shape[2]), k, v)
        if qk is not None:  # (n_k, heads, group * t, frames) -> (n_q, heads, t, frames)
            heads = qk.shape[1]
            qk = qk.reshape(n_k, heads, group, t, -1).transpose(1, 2).reshape(n_q, heads, t, -1)
        return out.reshape(n_q, t, -1), qk


class _ShortWindowEncoder(AudioEncoder):
    """whisper's ``AudioEncoder.forward`` (20250625) for a mel of any length up to 30 s: the positional
    embedding is sliced to the frames there are, instead of asserting 1500.

    Encoded features pass through unchanged: ``whisper.decoding.detect_language`` (multilingual models) takes
    features for a mel unless they have 1500 frames, and sends them here again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.conv1.in_channels and x.shape[-1] == self.positional_embedding.shape[1]:
            return x  # (batch, frames, n_audio_state): already encoded
        x = torch.nn.functional.gelu(self.conv1(x))
        x = torch.nn.functional.gelu(self.conv2(x))
        x = x.permute(0, 2, 1)
        x = (x + self.positional_embedding[: x.shape[1]]).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


def _vocab_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` (the decoder's tied output projection), in the operand order MKL runs fastest.

    Why: each decoding step projects a few rows onto the 51,864-token vocabulary (80 MB of weights for tiny).
    For 2-10 rows (beam search: beams x segments) MKL's small-m GEMM is up to 4x slower than the transposed
    product ``weight @ x.T`` (measured on this 2-core machine, 1 thread: 3 rows 18 ms vs 4.7 ms; 1 row and
    15+ rows: no gain), and it ran at every step. Same products, summed in another order.
    """
    n, t, d = x.shape
    rows = n * t
    if 2 <= rows <= 10:
        return (weight @ x.reshape(rows, d).T).T.reshape(n, t, -1).float()
    return (x @ weight.T).float()


class _FastLogitsDecoder(TextDecoder):
    """whisper's ``TextDecoder.forward`` (20250625) with :func:`_vocab_logits` for the output projection."""

    def forward(self, x: torch.Tensor, xa: torch.Tensor, kv_cache: dict | None = None) -> torch.Tensor:
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + x.shape[-1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, mask=self.mask, kv_cache=kv_cache)
        x = self.ln(x)
        return _vocab_logits(x, self.token_embedding.weight.to(x.dtype))


class _BatchedDecodingTask(DecodingTask):
    """``whisper.DecodingTask`` whose beam search works on a batch of segments, with shared audio keys/values.

    Why: openai-whisper (since its PR #1483; still so in 20250625) repeats the token rows once per beam but
    not the encoded audio, relying on broadcasting, which only works for a single segment; a batch fails with
    "The size of tensor a (6) must match the size of tensor b (2)" (unmerged fixes: openai/whisper#2197,
    #2389). ``run()`` expects one feature row per decoder row (it takes ``audio_features[:: n_group]`` after
    the loop), so features are repeated where they are encoded; language detection and the decoding loop get
    one row per segment, which :class:`_GroupedCrossAttention` serves to all of that segment's beams.
    """

    def _get_audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        features = super()._get_audio_features(mel)
        return features.repeat_interleave(self.n_group, dim=0) if self.n_group > 1 else features

    def _detect_language(self, audio_features: torch.Tensor, tokens: torch.Tensor) -> tuple:
        return super()._detect_language(audio_features[:: self.n_group], tokens)

    def _main_loop(self, audio_features: torch.Tensor, tokens: torch.Tensor) -> tuple:
        return super()._main_loop(audio_features[:: self.n_group], tokens)


def _repeats_a_run(text: str, run: int = 5) -> bool:
    """Whether some ``run`` consecutive words occur twice in ``text``: in a short window tiny.en sometimes
    writes a sentence twice (module doc, "Window"), which the compression-ratio check lets through."""
    said = re.findall(r"[a-z0-9']+", text.lower())
    grams = [tuple(said[i : i + run]) for i in range(len(said) - run + 1)]
    return len(set(grams)) < len(grams)


def _rereads(text: str, context: str) -> bool:
    """Whether ``text`` only repeats words of ``context`` in order: the decoder read the context's audio again
    instead of going on after it."""
    said, before = (" ".join(re.findall(r"[a-z0-9']+", t.lower())) for t in (text, context))
    return bool(said) and f" {said} " in f" {before} "


def encoder_window(samples: int, step_s: float | None, margin_s: float) -> int:
    """Samples the encoder sees for segments of at most ``samples``: the length plus ``margin_s`` of silence,
    rounded up to a whole number of ``step_s`` steps, at most whisper's 30 s; ``step_s`` None: 30 s."""
    full = int(MAX_SEGMENT_S * SAMPLE_RATE)
    if not step_s:
        return full
    step = int(step_s * SAMPLE_RATE)
    need = samples + int(margin_s * SAMPLE_RATE)
    return min(full, -(-need // step) * step)


def rms_db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -200.0
    return float(10.0 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


def log_mels(batch: Sequence[np.ndarray], windows: Sequence[int], n_mels: int) -> list[torch.Tensor]:
    """Each segment's log-mel spectrogram in its window (whisper's own feature code, so both backends see the
    very same features; padding with silence adds no new maximum, so the normalisation is the 30 s window's)."""
    return [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(np.ascontiguousarray(s)), w),
                                        n_mels)[:, : w // HOP_LENGTH] for s, w in zip(batch, windows, strict=True)]


def audio_seed(samples: np.ndarray) -> int:
    """The fallback sampler's seed: CRC-32 of the samples, so a replay of the same audio samples the same."""
    return zlib.crc32(np.ascontiguousarray(samples, np.float32).tobytes())


def clamped_words(alignment: list[WordTiming], duration: float) -> tuple[Word, ...]:
    """Aligned words with punctuation glued on (as ``whisper.transcribe``), times clamped to the segment
    (DTW can overshoot it); the same shape whichever backend aligned them."""
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    words = []
    for w in alignment:
        if not w.word.strip():
            continue  # merge_punctuations leaves emptied entries behind
        start = min(max(float(w.start), 0.0), duration)
        words.append(Word(w.word.strip(), round(start, 3), round(min(max(float(w.end), start), duration), 3),
                          round(float(w.probability), 4)))
    return tuple(words)


class Decoded(Protocol):
    """What a backend's decoder call yields per segment (``whisper.DecodingResult`` has these fields)."""

    text: str
    tokens: list[int]
    language: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


class SpeechEngine(ABC):
    """The engine's contract and rules (module doc: gates, context, window, recheck, fallback, batching), over a
    backend that decodes: :class:`AsrEngine` (openai-whisper on torch) or ``models.asr_ct2.Ct2AsrEngine``.

    A backend supplies three steps, each with the semantics the rules assume: ``_run`` (beam search at
    temperature 0 of segments padded to the given windows, batch-independent), ``_fallback`` (seeded sampling
    of one looping segment) and ``_words`` (cross-attention alignment of decoded tokens)."""

    model_name: str
    cfg: EngineConfig
    _model_language: str | None  # "en" for ".en" models, None (detect per segment) for multilingual ones

    @property
    def language(self) -> str | None:
        return self.cfg.language or self._model_language

    def with_config(self, config: EngineConfig) -> Self:
        """The same loaded model under other settings (benches and tests compare configurations)."""
        twin = copy.copy(self)
        twin.cfg = config
        return twin

    def transcribe(self, segments: Sequence[np.ndarray], word_timestamps: Sequence[bool] | None = None,
                   contexts: Sequence[Context | None] | None = None) -> list[Transcription]:
        """One result per segment, in order; segments failing the energy gate are never decoded.

        ``word_timestamps[i]`` asks for segment i's word timings (default: none). ``contexts[i]``: what was said
        just before segment i (module doc). Segments in context share decoder calls where the backend can line
        up prefixes of different lengths (CT2; whisper's decoder on torch has no padding mask, so there each
        prefix gets its own call), and a segment is decoded in context only when it wants no word timings (the
        alignment would have to skip the context) and the context and the segment fit whisper's 30 s window
        together; otherwise it is decoded alone."""
        wants = list(word_timestamps) if word_timestamps is not None else [False] * len(segments)
        before = list(contexts) if contexts is not None else [None] * len(segments)
        if len(wants) != len(segments) or len(before) != len(segments):
            raise ValueError(f"{len(wants)} word_timestamps flags and {len(before)} contexts for "
                             f"{len(segments)} segments")
        results: list[Transcription | None] = [None] * len(segments)
        todo: list[int] = []
        for i, seg in enumerate(segments):
            if seg.size > MAX_SEGMENT_S * SAMPLE_RATE + SAMPLE_RATE:  # +1 s: VAD padding
                raise ValueError(f"segment of {seg.size / SAMPLE_RATE:.1f} s exceeds whisper's 30 s window")
            if rms_db(seg) < self.cfg.min_rms_db:
                results[i] = Transcription("", self.language or "", None, None, gated="energy")
            else:
                todo.append(i)
        in_context = [i for i in todo if self._fits(segments[i], before[i]) and not wants[i]]
        for start in range(0, len(in_context), self.cfg.batch_size):
            idx = in_context[start : start + self.cfg.batch_size]
            decoded = self._decode_in_context([segments[i] for i in idx], [before[i] for i in idx])  # type: ignore[misc]
            for i, res in zip(idx, decoded, strict=True):
                results[i] = res
        chosen = set(in_context)
        alone = [i for i in todo if i not in chosen]
        for start in range(0, len(alone), self.cfg.batch_size):
            idx = alone[start : start + self.cfg.batch_size]
            decoded = self._decode([segments[i] for i in idx], [wants[i] for i in idx])
            for i, res in zip(idx, decoded, strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    @staticmethod
    def _fits(segment: np.ndarray, context: Context | None) -> bool:
        return bool(context and context.text and context.audio.size
                    and context.audio.size + segment.size <= MAX_SEGMENT_S * SAMPLE_RATE)

    def _decode_in_context(self, segments: list[np.ndarray], contexts: list[Context]) -> list[Transcription]:
        """Each context's audio in front, its text as the forced prefix; a doubtful result (module doc), or
        one that loops, is decoded again alone."""
        out = self._decode([np.concatenate([c.audio, s]) for s, c in zip(segments, contexts, strict=True)],
                           [False] * len(segments), [c.text for c in contexts])
        doubtful = [i for i, (r, c) in enumerate(zip(out, contexts, strict=True)) if r.gated == "repetition" or (
            r.gated is None and ((r.avg_logprob or 0.0) < self.cfg.context_logprob_threshold
                                 or _rereads(r.text, c.text)))]
        if doubtful:
            again = self._decode([segments[i] for i in doubtful], [False] * len(doubtful))
            for i, r in zip(doubtful, again, strict=True):
                out[i] = r
        return out

    def transcribe_sequential(self, segments: Sequence[np.ndarray]) -> list[Transcription]:
        """Same results one segment per decoder call: the baseline the batched path is measured against."""
        return [r for seg in segments for r in self.transcribe([seg])]

    def _decode(self, batch: list[np.ndarray], wants: list[bool],
                prefixes: list[str] | None = None) -> list[Transcription]:
        """``prefixes[i]``: decode segment i as the continuation of this text (its audio begins with that speech); a
        looping result is then reported as gated "repetition" for the caller to decode alone."""
        prefixes = prefixes or [""] * len(batch)
        full = int(MAX_SEGMENT_S * SAMPLE_RATE)
        windows = [encoder_window(s.size, self.cfg.window_step_s, self.cfg.window_margin_s) for s in batch]
        decoded, mel = self._run(batch, windows, prefixes)
        # A short window raises no_speech_prob (module doc): a doubtful one is decoded again in whisper's 30 s
        # window, so the gates below judge it as they were calibrated.
        recheck = [i for i, r in enumerate(decoded) if windows[i] < full and (
            r.no_speech_prob > self.cfg.window_recheck_no_speech or _repeats_a_run(r.text))]
        if recheck:
            again, again_mel = self._run([batch[i] for i in recheck], [full] * len(recheck),
                                         [prefixes[i] for i in recheck])
            for i, r, m in zip(recheck, again, again_mel, strict=True):
                decoded[i], mel[i] = r, m
        out = []
        for r, seg, seg_mel, want, prefix in zip(decoded, batch, mel, wants, prefixes, strict=True):
            silent = r.no_speech_prob > self.cfg.no_speech_hard or (
                r.no_speech_prob > self.cfg.no_speech_threshold and r.avg_logprob < self.cfg.logprob_threshold
            )
            gated = "no_speech" if silent else None
            if not silent and r.compression_ratio > self.cfg.compression_ratio_threshold:
                retry = None if prefix else self._fallback(seg, seg_mel)
                if retry is None:
                    gated = "repetition"
                else:  # keep the first pass's no-speech figure: sampling does not change the audio's evidence
                    r = replace(retry, no_speech_prob=r.no_speech_prob)
            text = "" if gated else r.text.strip()
            words = self._words(seg, seg_mel, r) if want and text else None
            out.append(Transcription(
                text=text,
                language=r.language or self.language or "",
                avg_logprob=round(float(r.avg_logprob), 4),
                no_speech_prob=round(float(r.no_speech_prob), 4),
                gated=gated,
                words=words,
            ))
        return out

    @abstractmethod
    def _run(self, batch: list[np.ndarray], windows: list[int],
             prefixes: list[str]) -> tuple[list[Decoded], list[Any]]:
        """Beam search (temperature 0) of ``batch``, each segment padded to its own window and forced to go on
        after its prefix ("" none); the result of a segment must not depend on the others in its batch.
        Returns the results and each segment's features (passed back to ``_fallback`` and ``_words``)."""

    @abstractmethod
    def _fallback(self, samples: np.ndarray, features: Any) -> Decoded | None:
        """Best-of-n sampling at rising temperatures, seeded by :func:`audio_seed`: the first result whose
        compression ratio is under the threshold, else None."""

    @abstractmethod
    def _words(self, samples: np.ndarray, features: Any, result: Decoded) -> tuple[Word, ...]:
        """Word timings of ``result``'s tokens in ``samples`` (see :func:`clamped_words`)."""


class AsrEngine(SpeechEngine):
    """The openai-whisper (torch) backend; ``transcribe_sequential`` is the batching baseline."""

    def __init__(self, model: Whisper, model_name: str, config: EngineConfig | None = None) -> None:
        self.model = model.eval()
        # Faster decoding steps, same results (see the classes); swapping classes keeps the loaded weights.
        if type(model.decoder) is TextDecoder:
            model.decoder.__class__ = _FastLogitsDecoder
        if type(model.encoder) is AudioEncoder:
            model.encoder.__class__ = _ShortWindowEncoder
        for block in model.decoder.blocks:
            if block.cross_attn is not None and type(block.cross_attn) is MultiHeadAttention:
                block.cross_attn.__class__ = _GroupedCrossAttention
        self.model_name = model_name
        self.cfg = config or EngineConfig()
        self._model_language = None if model.is_multilingual else "en"

    def _run(self, batch: list[np.ndarray], windows: list[int],
             prefixes: list[str]) -> tuple[list[whisper.DecodingResult], list[torch.Tensor]]:
        """Beam-search ``batch`` (temperature 0), each segment padded to its own window: segments of one window
        length and one prefix share a decoder call. A segment's window depends on its own length only, never
        on its batch, so a replay gives the same tokens however the segments were batched."""
        mel = log_mels(batch, windows, self.model.dims.n_mels)
        beams = self.cfg.beam_size if self.cfg.beam_size and self.cfg.beam_size > 1 else None
        decoded: list[whisper.DecodingResult | None] = [None] * len(batch)
        for w, prefix in sorted(set(zip(windows, prefixes, strict=True))):
            idx = [i for i, key in enumerate(zip(windows, prefixes, strict=True)) if key == (w, prefix)]
            options = whisper.DecodingOptions(
                task="transcribe", language=self.language, temperature=0.0, beam_size=beams, fp16=False,
                without_timestamps=True, prefix=prefix or None,
            )
            with torch.inference_mode():
                got = _BatchedDecodingTask(self.model, options).run(torch.stack([mel[i] for i in idx])
                                                                    .to(self.model.device))
            for i, r in zip(idx, got, strict=True):
                decoded[i] = r
        return decoded, mel  # type: ignore[return-value]

    def _fallback(self, samples: np.ndarray, mel: torch.Tensor) -> whisper.DecodingResult | None:
        """A segment whose text loops, decoded again by best-of-n sampling at rising temperatures (what
        ``whisper.transcribe`` does); the first result that does not loop, else None.

        Deterministic: the sampler is seeded from the audio (CRC-32 of its samples) in a forked RNG, and the
        segment is decoded alone, so the same audio gives the same text whatever batch it arrived in."""
        seed = audio_seed(samples)
        for k, temperature in enumerate(self.cfg.fallback_temperatures):
            options = whisper.DecodingOptions(
                task="transcribe", language=self.language, temperature=temperature, best_of=self.cfg.best_of,
                fp16=False, without_timestamps=True,
            )
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(seed + k)
                [r] = _BatchedDecodingTask(self.model, options).run(mel[None].to(self.model.device))
            if r.compression_ratio <= self.cfg.compression_ratio_threshold:
                return r
        return None

    def _words(self, samples: np.ndarray, mel: torch.Tensor, result: whisper.DecodingResult) -> tuple[Word, ...]:
        """whisper's own alignment (``whisper.timing.find_alignment``) of the decoded tokens."""
        tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                                  language=result.language or self.language or "en", task="transcribe")
        text_tokens = [t for t in result.tokens if t < tokenizer.eot]
        if not text_tokens:
            return ()
        alignment = find_alignment(self.model, tokenizer, text_tokens, mel.to(self.model.device),
                                   max(1, samples.size // HOP_LENGTH))
        return clamped_words(alignment, samples.size / SAMPLE_RATE)


def load_engine(spec: str = "tiny.en", config: EngineConfig | None = None, threads: int | None = 1,
                backend: str = "torch") -> SpeechEngine:
    """Load once at worker start (seconds; converts and caches shipped CT2 weights on first use for torch).

    ``backend``: "torch" (openai-whisper; ``threads`` sets torch's process-wide thread count, None leaves it)
    or "ct2" (``models.asr_ct2``; ``threads`` are CTranslate2 model replicas on one thread each, None its default)."""
    if backend == "ct2":
        from models.asr_ct2 import load_ct2_engine

        return load_ct2_engine(spec, config, threads)
    if backend != "torch":
        raise ValueError(f"unknown ASR backend {backend!r}; expected ct2 or torch")
    from models.whisper_loader import load_whisper, model_label

    if threads:
        torch.set_num_threads(threads)
    return AsrEngine(load_whisper(spec, progress=False), model_label(spec), config)
