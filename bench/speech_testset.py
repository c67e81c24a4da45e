"""Speech test audio built locally from flite: read speech, quiet speech in noise, spontaneous-like speech with
pauses and fillers, and noise-only / silence-only clips, each with its reference text.

Why synthetic: no downloads are allowed, and the failures to reproduce are about level, noise and timing
(quiet stretches missed by an energy VAD, short fragments that whisper misreads or invents text for), which
mixing clean flite speech controls exactly. Everything is deterministic (fixed texts, voices and seeds) and
cached as WAV files under ``cache_dir`` (default ``~/.cache/streamsense/speech-testset/<hash>``, the hash of
this file, so editing the generator rebuilds the set).

Levels: flite speaks at about -20 dBFS; "quiet" utterances are first set to -10 dBFS and then attenuated by
20-30 dB each (-30..-40 dBFS, the levels of the user report that motivated this: speech at -30..-39 dB over a
noise floor near -45 dB). Noise (white, pink, or babble made of several time-reversed flite talkers, so it
sounds like speech but holds no words) is added at the clip's SNR against the mean speech level.

    .venv/bin/python bench/speech_testset.py   # builds (or finds) the set and lists it
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
VOICES = ("rms", "slt", "awb", "kal16")
FILLERS = ("um", "uh", "hmm", "er", "ah", "mm")

# Read speech: sentences the other benches never speak.
READ = [
    "The committee will publish its final decision on the new harbour next week.",
    "A light breeze carried the smell of cut grass across the playing fields.",
    "Most of the passengers fell asleep long before the bus reached the border.",
    "She keeps her grandfather's watch in a small wooden box on the shelf.",
    "The factory doubled its output after the second production line opened.",
    "Heavy snow closed the mountain pass for almost the entire weekend.",
    "We painted the kitchen walls a pale shade of green last summer.",
    "The orchestra rehearsed the symphony three times before the opening night.",
    "His neighbour lent him a ladder to clean the gutters on the roof.",
    "The council voted to build a cycle path along the old railway line.",
    "Two volunteers counted the birds on the island every morning in May.",
    "The bakery ran out of rye bread an hour after it opened.",
]

# Spontaneous speech: "|" marks a pause (0.3-1.3 s), fillers and repetitions are spoken as written.
SPONTANEOUS = [
    "so um | I was thinking | that we could uh | move the meeting to Thursday",
    "yeah | the the problem is | that nobody | checked the numbers before they were sent",
    "okay | and then uh | we we drove back home | because it started raining",
    "I mean | it's not | um | it's not that expensive | if you book early",
    "well | the printer on the second floor | uh | is broken again",
    "right | so the plan is | to finish the draft | um | by the end of the month",
    "hmm | I don't know | maybe we should | ask the the manager first",
    "and uh | the kids loved it | they they want to go back | next summer",
    "sure | um | I can send you | the the slides tonight",
]

# Lone short replies, each with seconds of background around it: the fragments whisper is worst at.
SHORT = ["yes", "okay", "no thanks", "sure", "right", "good morning", "see you", "thank you", "maybe later",
         "not really", "all right", "go ahead"]


@dataclass(frozen=True)
class TestClip:
    """One clip: float32 mono 16 kHz audio and its reference text ("" for noise-only and silence-only)."""

    name: str
    condition: str
    audio: np.ndarray
    text: str

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE

    def pcm16(self) -> bytes:
        return (np.clip(self.audio, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()


# condition -> (kind, SNR in dB or None); noise types cycle over a condition's clips
CONDITIONS: dict[str, tuple[str, float | None]] = {
    "clean": ("read", None),
    "quiet_snr20": ("quiet", 20.0),
    "quiet_snr10": ("quiet", 10.0),
    "quiet_snr5": ("quiet", 5.0),
    "spontaneous": ("spontaneous", 12.0),
    "short_replies": ("short", 15.0),
    "noise_only": ("noise", None),
    "silence_only": ("silence", None),
}
NOISES = ("pink", "white", "babble")


def flite_speech(text: str, voice: str, work: Path) -> np.ndarray:
    """Speech with flite's own leading/trailing silence trimmed, so timings are ours."""
    key = hashlib.sha1(f"{voice}:{text}".encode()).hexdigest()[:16]
    path = work / f"tts-{key}.wav"
    if not path.exists():
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, timeout=60,
                       capture_output=True)
    with wave.open(str(path)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getnchannels() != 1:
            raise RuntimeError(f"flite voice {voice} wrote {w.getframerate()} Hz x{w.getnchannels()}")
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(x) > 0.01)
    return x[loud[0] : loud[-1] + 1] if loud.size else x


def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def at_level(x: np.ndarray, level_db: float) -> np.ndarray:
    return (x * 10 ** ((level_db - _db(x)) / 20)).astype(np.float32)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.normal(size=n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / np.sqrt(f), n).astype(np.float32)


def _babble(n: int, rng: np.random.Generator, work: Path, talkers: int = 6) -> np.ndarray:
    """Several time-reversed talkers: speech-shaped and speech-modulated, but no words to transcribe."""
    out = np.zeros(n, np.float32)
    for t in range(talkers):
        parts, size = [], 0
        while size < n:
            text = READ[int(rng.integers(len(READ)))]
            part = at_level(flite_speech(text, VOICES[t % len(VOICES)], work)[::-1], -20.0)
            parts.append(part)
            size += part.size
        out += np.roll(np.concatenate(parts)[:n], int(rng.integers(n)))
    return out


def transients(n: int, floor_db: float, rng: np.random.Generator, work: Path) -> np.ndarray:
    """Non-speech transients a VAD may fire on: clicks, short noise bursts and short swells of babble."""
    out = np.zeros(n, np.float32)
    for _ in range(4):  # clicks: 3 ms decaying spikes at -12 dBFS peak
        at = int(rng.integers(n - 100))
        out[at : at + 48] += (0.25 * np.exp(-np.arange(48) / 8) * rng.choice([-1, 1], 48)).astype(np.float32)
    for _ in range(2):  # bursts: 0.1-0.3 s of pink noise 15 dB over the floor
        size = int(rng.uniform(0.1, 0.3) * SAMPLE_RATE)
        at = int(rng.integers(n - size))
        out[at : at + size] += at_level(_pink(size, rng), floor_db + 15.0)
    for _ in range(2):  # swells: 0.3-0.6 s of babble (several time-reversed talkers), 10 dB over the floor
        size = int(rng.uniform(0.3, 0.6) * SAMPLE_RATE)
        at = int(rng.integers(n - size))
        out[at : at + size] += at_level(_babble(size, rng, work), floor_db + 10.0) * np.hanning(size).astype(np.float32)
    return out


def make_noise(kind: str, n: int, level_db: float, rng: np.random.Generator, work: Path) -> np.ndarray:
    x = {"white": lambda: rng.normal(size=n).astype(np.float32), "pink": lambda: _pink(n, rng),
         "babble": lambda: _babble(n, rng, work)}[kind]()
    return at_level(x, level_db)


def _silence(s: float) -> np.ndarray:
    return np.zeros(round(s * SAMPLE_RATE), np.float32)


def _speech_clip(phrases: list[list[str]], voice: str, rng: np.random.Generator, work: Path, quiet: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Utterances (lists of phrases spoken with pauses between) joined by 0.8-1.5 s of silence; returns the
    audio and a speech mask (True where an utterance is) for the SNR."""
    pieces, mask = [_silence(0.4)], [np.zeros(round(0.4 * SAMPLE_RATE), bool)]
    for u, utterance in enumerate(phrases):
        level = -10.0 - float(rng.uniform(20.0, 30.0)) if quiet else None
        for p, phrase in enumerate(utterance):
            x = flite_speech(phrase, voice, work)
            x = at_level(x, level) if level is not None else x
            pieces.append(x)
            mask.append(np.ones(x.size, bool))
            if p < len(utterance) - 1:
                gap = _silence(float(rng.uniform(0.3, 1.3)))
                pieces.append(gap)
                mask.append(np.zeros(gap.size, bool))
        gap = _silence(float(rng.uniform(0.8, 1.5)) if u < len(phrases) - 1 else 0.6)
        pieces.append(gap)
        mask.append(np.zeros(gap.size, bool))
    return np.concatenate(pieces), np.concatenate(mask)


def make_clip(condition: str, i: int, work: Path) -> TestClip:
    kind, snr = CONDITIONS[condition]
    rng = np.random.default_rng([list(CONDITIONS).index(condition), i])
    voice = VOICES[i % len(VOICES)]
    name = f"{condition}-{i}"
    if kind in ("read", "quiet"):
        picks = [READ[(i * 3 + k + (4 if kind == "quiet" else 0)) % len(READ)] for k in range(3)]
        audio, mask = _speech_clip([[s] for s in picks], voice, rng, work, quiet=kind == "quiet")
        text = " ".join(picks)
    elif kind == "spontaneous":
        picks = [SPONTANEOUS[(i * 3 + k) % len(SPONTANEOUS)] for k in range(3)]
        phrases = [[p.strip() for p in s.split("|")] for s in picks]
        audio, mask = _speech_clip(phrases, voice, rng, work, quiet=True)
        text = " ".join(" ".join(p) for p in phrases)
    elif kind == "short":
        picks = [SHORT[(i * 4 + k) % len(SHORT)] for k in range(4)]
        pieces, masks = [], []
        for reply in picks:
            gap = _silence(float(rng.uniform(2.0, 3.5)))
            x = at_level(flite_speech(reply, voice, work), -10.0 - float(rng.uniform(20.0, 30.0)))
            pieces += [gap, x]
            masks += [np.zeros(gap.size, bool), np.ones(x.size, bool)]
        pieces.append(_silence(2.0))
        masks.append(np.zeros(pieces[-1].size, bool))
        audio, mask, text = np.concatenate(pieces), np.concatenate(masks), " ".join(picks)
    elif kind == "noise":
        n = round(float(rng.uniform(12, 18)) * SAMPLE_RATE)
        floor = -45.0 + 5.0 * (i % 3)
        audio = make_noise(NOISES[i % len(NOISES)], n, floor, rng, work) + transients(n, floor, rng, work)
        mask, text = None, ""
    else:  # silence: digital zeros, dither, hum with hiss
        n = round(float(rng.uniform(10, 15)) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        audio = [np.zeros(n, np.float32), at_level(rng.normal(size=n), -75.0),
                 at_level(np.sin(2 * np.pi * 50 * t), -55.0) + at_level(rng.normal(size=n), -70.0)][i % 3]
        mask, text = None, ""
    if snr is not None and mask is not None:
        floor = _db(audio[mask]) - snr
        audio = audio + make_noise(NOISES[i % len(NOISES)], audio.size, floor, rng, work)
        if kind == "short":
            audio = audio + transients(audio.size, floor, rng, work)
    return TestClip(name, condition, np.clip(audio, -1.0, 1.0).astype(np.float32), text)


def noise_clip(kind: str, seconds: float, floor_db: float, seed: int, work: Path) -> np.ndarray:
    """``seconds`` of ``kind`` noise (white, pink, babble) at ``floor_db`` with :func:`transients` on top."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    return (make_noise(kind, n, floor_db, rng, work) + transients(n, floor_db, rng, work)).astype(np.float32)


def calibration_clips(seed: int, work: Path) -> list[TestClip]:
    """For measuring the engine's no-speech gate: every short reply (and a few more) once per voice, alone in
    2 s of noise 10-20 dB below it at -30..-40 dBFS; and 48 clips of 6 s of noise with transients, at floors
    of -50..-35 dBFS. Not cached: built in ~10 s."""
    rng = np.random.default_rng(seed)
    out = []
    for k, reply in enumerate([*SHORT, "no", "yeah", "hello", "fine", "wait", "oh well", "me too", "got it"]):
        for v, voice in enumerate(VOICES):
            x = at_level(flite_speech(reply, voice, work), -10 - float(rng.uniform(20, 30)))
            audio = np.concatenate([_silence(2.0), x, _silence(2.0)])
            audio = audio + make_noise(NOISES[(k + v) % 3], audio.size, _db(x) - float(rng.uniform(10, 20)), rng, work)
            out.append(TestClip(f"reply-{k}-{voice}", "reply", audio.astype(np.float32), reply))
    for k in range(48):
        n, floor = 6 * SAMPLE_RATE, -50.0 + 5.0 * (k % 4)
        audio = make_noise(NOISES[k % 3], n, floor, rng, work) + transients(n, floor, rng, work)
        out.append(TestClip(f"noise-{k}", "noise", audio.astype(np.float32), ""))
    return out


def _fingerprint(per_condition: int) -> str:
    return hashlib.sha1(Path(__file__).read_bytes() + str(per_condition).encode()).hexdigest()[:12]


def build(per_condition: int = 3, cache_dir: Path | None = None,
          conditions: tuple[str, ...] = tuple(CONDITIONS)) -> list[TestClip]:
    """The test set (``per_condition`` clips per condition), from the cache when this generator built it before."""
    root = cache_dir or Path.home() / ".cache" / "streamsense" / "speech-testset"
    cache = root / _fingerprint(per_condition)
    manifest = cache / "manifest.json"
    if not manifest.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
            entries = []
            for condition in CONDITIONS:
                for i in range(per_condition):
                    clip = make_clip(condition, i, Path(tmp))
                    with wave.open(str(cache / f"{clip.name}.wav"), "wb") as w:
                        w.setnchannels(1)
                        w.setsampwidth(2)
                        w.setframerate(SAMPLE_RATE)
                        w.writeframes(clip.pcm16())
                    entries.append({"name": clip.name, "condition": condition, "text": clip.text})
        manifest.write_text(json.dumps(entries, indent=1))
    out = []
    for e in json.loads(manifest.read_text()):
        if e["condition"] not in conditions:
            continue
        with wave.open(str(cache / f"{e['name']}.wav")) as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        out.append(TestClip(e["name"], e["condition"], audio, e["text"]))
    return out


def main() -> int:
    for clip in build():
        level = _db(clip.audio)
        print(f"{clip.name:16s} {clip.duration:5.1f} s  {level:6.1f} dBFS  {clip.text[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
