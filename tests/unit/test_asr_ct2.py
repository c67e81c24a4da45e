"""models/asr_ct2.py (the CTranslate2 backend) on real tiny.en weights and flite speech: the engine's contract
with the same semantics as the torch backend (tests/unit/test_asr_engine.py), and the worker's choice of it."""

from __future__ import annotations

import subprocess
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.asr_engine import SAMPLE_RATE, Context, encoder_window, load_engine
from models.wer import wer

SENTENCES = [
    "The doctor said the results look good and the next visit is in March.",
    "The concert was cancelled because the singer had a sore throat.",
    "Please send the quarterly report to the finance team in London by Friday.",
]


def flite(text: str, path: Path) -> np.ndarray:
    """The sentence as the VAD cuts it: speech with 0.1 s of silence either side."""
    subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True)
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
    pad = np.zeros(1600, np.float32)
    return np.concatenate([pad, pcm[loud[0] : loud[-1] + 1].astype(np.float32) / 32768.0, pad])


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    work = Path(tmp_path_factory.mktemp("flite"))
    return [flite(text, work / f"s{i}.wav") for i, text in enumerate(SENTENCES)]


@pytest.fixture(scope="module")
def engine():
    return load_engine("tiny.en", backend="ct2", threads=None)  # the worker's default: two replicas


@pytest.fixture(scope="module")
def torch_engine():
    return load_engine("tiny.en")


def test_the_ct2_backend_reads_flite_sentences(engine, segments) -> None:
    from models.asr_ct2 import Ct2AsrEngine

    assert isinstance(engine, Ct2AsrEngine)
    for sentence, result in zip(SENTENCES, engine.transcribe(segments), strict=True):
        assert wer(sentence, result.text) <= 0.1, (sentence, result.text)
        assert result.gated is None and result.language == "en"
        assert result.avg_logprob is not None and -0.5 < result.avg_logprob < 0.0
        assert result.no_speech_prob is not None and result.no_speech_prob < 0.1


def test_silence_and_noise_give_no_text(engine) -> None:
    rng = np.random.default_rng(7)
    silence = np.zeros(3 * SAMPLE_RATE, np.float32)
    noise = rng.normal(0.0, 0.05, 4 * SAMPLE_RATE).astype(np.float32)
    [quiet, loud] = engine.transcribe([silence, noise])
    assert (quiet.text, quiet.gated, quiet.no_speech_prob) == ("", "energy", None)  # never decoded
    assert loud.text == "" and loud.gated == "no_speech" and loud.no_speech_prob > engine.cfg.no_speech_hard


def test_a_segment_alone_and_batched_with_others_of_its_window_decodes_the_same(engine, segments) -> None:
    windows = {encoder_window(s.size, engine.cfg.window_step_s, engine.cfg.window_margin_s) for s in segments}
    assert len(windows) == 1  # one decoder call: the batch really is shared
    batched = engine.transcribe(segments)
    alone = engine.transcribe_sequential(segments)
    assert [(r.text, r.avg_logprob, r.no_speech_prob) for r in batched] == [
        (r.text, r.avg_logprob, r.no_speech_prob) for r in alone]
    assert [r.text for r in engine.transcribe(segments[::-1])] == [r.text for r in batched][::-1]


def test_a_batch_split_between_replicas_decodes_as_one_replica_does(engine, segments) -> None:
    from models.asr_ct2 import DEFAULT_THREADS, load_ct2_engine

    assert engine.replicas == DEFAULT_THREADS == 2  # the default: two single-thread replicas share each call
    single = load_ct2_engine("tiny.en", threads=1)
    assert single.replicas == 1
    assert len(segments) > 2
    assert [(r.text, r.avg_logprob, r.no_speech_prob) for r in engine.transcribe(segments)] == [
        (r.text, r.avg_logprob, r.no_speech_prob) for r in single.transcribe(segments)]


def test_ct2_int8_reads_what_the_torch_backend_reads(engine, torch_engine, segments) -> None:
    for mine, ref in zip(engine.transcribe(segments), torch_engine.transcribe(segments), strict=True):
        assert wer(ref.text, mine.text) <= 0.1, (ref.text, mine.text)
        assert mine.avg_logprob == pytest.approx(ref.avg_logprob, abs=0.05)
        assert mine.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=0.02)


def test_float32_ct2_reproduces_whispers_scores(torch_engine, segments) -> None:
    """Checks the avg_logprob recovered from CT2's length-normalised score, in and out of context: without
    quantisation CT2 runs the same arithmetic as whisper, so the figures agree to rounding."""
    from models.asr_ct2 import load_ct2_engine

    exact = load_ct2_engine("tiny.en", compute_type="float32")
    context = Context(SENTENCES[0], segments[0])
    for eng_results in zip(exact.transcribe(segments[1:], contexts=[context, None]),
                           torch_engine.transcribe(segments[1:], contexts=[context, None]), strict=True):
        mine, ref = eng_results
        assert mine.text == ref.text
        assert mine.avg_logprob == pytest.approx(ref.avg_logprob, abs=2e-3)
        assert mine.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=2e-3)


def test_a_segment_decoded_in_context_gives_only_its_own_words(engine, segments) -> None:
    context = Context(SENTENCES[0], segments[0])
    [alone, in_context] = engine.transcribe([segments[1], segments[1]], contexts=[None, context])
    assert wer(SENTENCES[1], in_context.text) <= 0.1 and in_context.gated is None, in_context.text
    assert "doctor" not in in_context.text.lower()  # the forced prefix is not part of the result
    assert in_context.avg_logprob is not None and in_context.avg_logprob > -0.3
    assert wer(SENTENCES[1], alone.text) <= 0.1


def test_a_result_that_reads_the_context_again_is_decoded_alone(engine, segments) -> None:
    """The context's own audio after it: the decoder can only read the context again, which the doubt rule
    catches, so the result is the segment decoded alone."""
    context = Context(SENTENCES[0], segments[0])
    [again] = engine.transcribe([segments[0]], contexts=[context])
    [alone] = engine.transcribe([segments[0]])
    assert again == alone


def test_word_timings_are_monotonic_and_inside_the_segment(engine, segments) -> None:
    for seg in segments:
        [r] = engine.transcribe([seg], word_timestamps=[True])
        assert r.words, r
        assert " ".join(w.word for w in r.words) == r.text
        duration = seg.size / SAMPLE_RATE
        assert all(0.0 <= w.start <= w.end <= duration for w in r.words)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(r.words, r.words[1:], strict=False))
        assert r.words[-1].end > duration / 2  # spread over the speech, not bunched at the start
        assert all(0.0 <= w.probability <= 1.0 for w in r.words)
    [plain] = engine.transcribe([segments[0]])
    assert plain.words is None


def test_word_timings_agree_with_the_torch_backend(engine, torch_engine, segments) -> None:
    [mine] = engine.transcribe([segments[0]], word_timestamps=[True])
    [ref] = torch_engine.transcribe([segments[0]], word_timestamps=[True])
    assert [w.word for w in mine.words] == [w.word for w in ref.words]
    assert [w.start for w in mine.words] == pytest.approx([w.start for w in ref.words], abs=0.15)


def test_a_doubtful_no_speech_score_is_judged_in_the_30s_window(engine, segments) -> None:
    always = engine.with_config(replace(engine.cfg, window_recheck_no_speech=-1.0))
    full = engine.with_config(replace(engine.cfg, window_step_s=None))
    assert [(r.text, r.no_speech_prob, r.avg_logprob) for r in always.transcribe(segments[:2])] == [
        (r.text, r.no_speech_prob, r.avg_logprob) for r in full.transcribe(segments[:2])]


@pytest.fixture(scope="module")
def noisy(segments) -> np.ndarray:
    """Speech under white noise at 0 dB SNR: sampling at temperature 1 reads it differently from seed to seed."""
    speech = segments[1]
    noise = np.random.default_rng(3).normal(0.0, float(np.sqrt(np.mean(speech**2))), speech.size)
    return (speech + noise).astype(np.float32)


def test_the_fallback_sampler_replays_from_the_audio_seed(engine, noisy, segments, monkeypatch) -> None:
    import models.asr_ct2 as ct2

    sampler = engine.with_config(replace(engine.cfg, fallback_temperatures=(1.0,), best_of=1,
                                         compression_ratio_threshold=100.0))
    [mel] = ct2.log_mels([noisy], [encoder_window(noisy.size, 5.0, 5.0)], engine.model.n_mels)
    mel = mel.numpy()
    first = sampler._fallback(noisy, mel)
    sampler._fallback(segments[0], mel)  # another seed in between
    assert first is not None and sampler._fallback(noisy, mel) == first
    texts = set()
    for seed in range(4):  # the seed decides: other seeds sample other texts
        monkeypatch.setattr(ct2, "audio_seed", lambda _samples, seed=seed: seed)
        texts.add(sampler._fallback(noisy, mel).text)
    assert len(texts) > 1, texts


def test_a_looping_result_is_decoded_again_by_sampling_and_replays(engine, noisy) -> None:
    """Through transcribe: a threshold the beam result just exceeds sends the segment to the fallback, whose
    sampled result (or the repetition gate) is the same on a replay; one nothing meets gates it."""
    from whisper.utils import compression_ratio

    [beam] = engine.transcribe([noisy])
    assert beam.text and beam.gated is None
    strict = engine.with_config(replace(engine.cfg, compression_ratio_threshold=0.1, fallback_temperatures=(1.0,),
                                        best_of=2))
    [first] = strict.transcribe([noisy])
    assert first.gated == "repetition" and first.text == ""  # nothing compresses under 0.1
    edge = engine.with_config(replace(engine.cfg, compression_ratio_threshold=compression_ratio(beam.text) - 1e-6,
                                      fallback_temperatures=(0.6, 1.0), best_of=2))
    calls: list[int] = []
    inner = edge._fallback
    edge._fallback = lambda *a: calls.append(1) or inner(*a)  # type: ignore[method-assign]
    replayed = [edge.transcribe([noisy])[0] for _ in range(2)]
    assert calls == [1, 1] and replayed[0] == replayed[1]
    assert replayed[0].text != beam.text or replayed[0].gated == "repetition"


def test_a_multilingual_model_detects_the_language(segments) -> None:
    base = load_engine("base", backend="ct2")  # shipped in two parts, joined in memory
    assert base.language is None
    results = base.transcribe(segments[:2])
    assert [r.language for r in results] == ["en", "en"]
    assert all(wer(s, r.text) <= 0.2 for s, r in zip(SENTENCES, results, strict=False)), [r.text for r in results]


def test_a_model_without_ct2_weights_fails_with_a_one_line_hint() -> None:
    from models.whisper_loader import WhisperUnavailable

    with pytest.raises(WhisperUnavailable, match="STREAMSENSE_ASR_BACKEND=torch") as err:
        load_engine("small.en", backend="ct2")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown ASR backend"):
        load_engine("tiny.en", backend="onnx")


def test_the_setting_chooses_the_worker_backend() -> None:
    from models.asr_ct2 import Ct2AsrEngine
    from streams.contracts.settings import ConfigError, Settings
    from streams.runtime.worker import build_asr

    assert Settings.from_env({}).asr_backend == "torch"
    assert Settings.from_env({"STREAMSENSE_ASR_BACKEND": " CT2 "}).asr_backend == "ct2"
    with pytest.raises(ConfigError, match="STREAMSENSE_ASR_BACKEND"):
        Settings.from_env({"STREAMSENSE_ASR_BACKEND": "onnx"})
    asr = build_asr(Settings.from_env({"STREAMSENSE_ASR_BACKEND": "ct2", "STREAMSENSE_ASR_BEAM_SIZE": "2"}),
                    lambda _line: None)
    assert isinstance(asr.engine, Ct2AsrEngine) and asr.engine.cfg.beam_size == 2


def test_segments_in_context_batched_together_decode_as_one_at_a_time(engine, segments) -> None:
    """CT2 lines up prefixes of different lengths in one call; each result must be what it is alone."""
    contexts = [Context(SENTENCES[0], segments[0]), Context(SENTENCES[1], segments[1])]
    batch = [segments[1], segments[2]]
    windows = {encoder_window(c.audio.size + s.size, 5.0, 5.0) for s, c in zip(batch, contexts, strict=True)}
    assert len(windows) == 1 and len(SENTENCES[0]) != len(SENTENCES[1])  # one call, prefixes of two lengths
    together = engine.transcribe(batch, contexts=contexts)
    alone = [engine.transcribe([s], contexts=[c])[0] for s, c in zip(batch, contexts, strict=True)]
    assert together == alone
    assert [wer(t, r.text) <= 0.1 for t, r in zip(SENTENCES[1:], together, strict=True)] == [True, True], together
