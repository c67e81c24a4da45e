"""Batched whisper transcription of speech segments (≤ 30 s each, float32 mono 16 kHz). No Kafka here.

Why our own loop instead of ``whisper.transcribe``: that call handles one long file, slides a 30 s window
and conditions on its own previous text. A streaming processor already has VAD-cut segments from several
streams at once; one batched ``whisper.decode`` over their mel spectrograms pays the encoder's fixed
30 s-window cost once per batch instead of once per segment, and deterministic settings (temperature 0,
no conditioning on previous text) make a replay after a crash produce the same text for the same audio.

Word timestamps (optional, per segment) use whisper's own cross-attention alignment
(``whisper.timing.find_alignment``, the code behind ``transcribe(word_timestamps=True)``): one extra decoder
pass per segment that asks for them, so segments that do not ask pay nothing.

Silence must give no text: whisper hallucinates ("Thank you.") on near-silent input, so two gates apply —
an energy gate before decoding (cheap; nothing is decoded) and whisper's own no-speech rule after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH
from whisper.model import Whisper
from whisper.timing import find_alignment, merge_punctuations
from whisper.tokenizer import get_tokenizer

SAMPLE_RATE = 16000
MAX_SEGMENT_S = 30.0
# whisper.transcribe's defaults: punctuation is glued to the neighbouring word instead of getting its own timing
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass(frozen=True)
class EngineConfig:
    """Thresholds follow ``whisper.transcribe``'s defaults, which are what its authors tuned them on."""

    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    no_speech_hard: float = 0.8  # above this, no text whatever the logprob (tiny.en says "you" to hiss at 0.91)
    min_rms_db: float = -50.0  # the energy gate: quieter segments are not decoded at all
    batch_size: int = 8  # segments per decoder call; memory grows linearly with it
    language: str | None = None  # None: English for ".en" models, detected per segment otherwise


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
    gated: str | None = None  # why the text was suppressed ("energy", "no_speech"), else None
    words: tuple[Word, ...] | None = None  # only when asked for, and only for segments with text


def rms_db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -200.0
    return float(10.0 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


class AsrEngine:
    """Transcribes lists of segments; ``transcribe`` batches, ``transcribe_sequential`` is the baseline."""

    def __init__(self, model: Whisper, model_name: str, config: EngineConfig | None = None) -> None:
        self.model = model.eval()
        self.model_name = model_name
        self.cfg = config or EngineConfig()
        self.language = self.cfg.language or ("en" if not model.is_multilingual else None)

    def transcribe(self, segments: Sequence[np.ndarray],
                   word_timestamps: Sequence[bool] | None = None) -> list[Transcription]:
        """One result per segment, in order; segments failing the energy gate are never decoded.

        ``word_timestamps[i]`` asks for segment i's word timings (default: none)."""
        wants = list(word_timestamps) if word_timestamps is not None else [False] * len(segments)
        if len(wants) != len(segments):
            raise ValueError(f"{len(wants)} word_timestamps flags for {len(segments)} segments")
        results: list[Transcription | None] = [None] * len(segments)
        todo: list[int] = []
        for i, seg in enumerate(segments):
            if seg.size > MAX_SEGMENT_S * SAMPLE_RATE + SAMPLE_RATE:  # +1 s: VAD padding
                raise ValueError(f"segment of {seg.size / SAMPLE_RATE:.1f} s exceeds whisper's 30 s window")
            if rms_db(seg) < self.cfg.min_rms_db:
                results[i] = Transcription("", self.language or "", None, None, gated="energy")
            else:
                todo.append(i)
        for start in range(0, len(todo), self.cfg.batch_size):
            idx = todo[start : start + self.cfg.batch_size]
            decoded = self._decode([segments[i] for i in idx], [wants[i] for i in idx])
            for i, res in zip(idx, decoded, strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def transcribe_sequential(self, segments: Sequence[np.ndarray]) -> list[Transcription]:
        """Same results one segment per decoder call: the baseline the batched path is measured against."""
        return [r for seg in segments for r in self.transcribe([seg])]

    def _decode(self, batch: list[np.ndarray], wants: list[bool]) -> list[Transcription]:
        n_mels = self.model.dims.n_mels
        mel = torch.stack([
            whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(np.ascontiguousarray(s))), n_mels)
            for s in batch
        ])
        options = whisper.DecodingOptions(
            task="transcribe", language=self.language, temperature=0.0, fp16=False, without_timestamps=True
        )
        with torch.inference_mode():
            decoded = whisper.decode(self.model, mel.to(self.model.device), options)
        out = []
        for r, seg, seg_mel, want in zip(decoded, batch, mel, wants, strict=True):
            silent = r.no_speech_prob > self.cfg.no_speech_hard or (
                r.no_speech_prob > self.cfg.no_speech_threshold and r.avg_logprob < self.cfg.logprob_threshold
            )
            text = "" if silent else r.text.strip()
            words = self._words(seg, seg_mel, r) if want and text else None
            out.append(Transcription(
                text=text,
                language=r.language or self.language or "",
                avg_logprob=round(float(r.avg_logprob), 4),
                no_speech_prob=round(float(r.no_speech_prob), 4),
                gated="no_speech" if silent else None,
                words=words,
            ))
        return out

    def _words(self, samples: np.ndarray, mel: torch.Tensor, result: whisper.DecodingResult) -> tuple[Word, ...]:
        """Align the decoded tokens to the audio; times are clamped to the segment (DTW can overshoot it)."""
        tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                                  language=result.language or self.language or "en", task="transcribe")
        text_tokens = [t for t in result.tokens if t < tokenizer.eot]
        if not text_tokens:
            return ()
        duration = samples.size / SAMPLE_RATE
        alignment = find_alignment(self.model, tokenizer, text_tokens, mel.to(self.model.device),
                                   max(1, samples.size // HOP_LENGTH))
        merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
        words = []
        for w in alignment:
            if not w.word.strip():
                continue  # merge_punctuations leaves emptied entries behind
            start = min(max(float(w.start), 0.0), duration)
            words.append(Word(w.word.strip(), round(start, 3), round(min(max(float(w.end), start), duration), 3),
                              round(float(w.probability), 4)))
        return tuple(words)


def load_engine(spec: str = "tiny.en", config: EngineConfig | None = None, threads: int | None = 1) -> AsrEngine:
    """Load once at worker start (seconds; converts and caches shipped CT2 weights on first use)."""
    from models.whisper_loader import load_whisper, model_label

    if threads:
        torch.set_num_threads(threads)
    return AsrEngine(load_whisper(spec, progress=False), model_label(spec), config)
