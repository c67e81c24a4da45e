"""Silero VAD (v6, the ONNX copy faster-whisper ships) as a streaming, per-stream speech-probability source.

Why Silero: an energy VAD needs speech well above the noise floor, so quiet talkers in a noisy room never
become segments; Silero is a small neural model trained on speech vs. everything else and is nearly
level-independent (the same words attenuated by 40 dB score about the same). Why this copy: it is already
installed with faster-whisper, needs only onnxruntime, and costs ~3 ms of one core per audio second when fed
500 ms at a time (measured on an AMD EPYC core, bench/speech_quality.py), about 2% of tiny.en's decoding.

How the model is fed (as faster_whisper/vad.py does): 16 kHz audio in windows of 512 samples (32 ms), each
prefixed by the 64 samples before it; the LSTM state ``h``/``c`` (1x1x128 each) carries across calls. A call
may hold any number of windows (the model runs its LSTM along the batch axis), and the probabilities are
bit-identical however the windows are grouped, so chunking never changes a decision.

Per stream: :class:`SileroVAD` holds only the state (h, c, the 64-sample context); the ONNX session is
shared by all streams of a process (sessions are safe to run from several threads).

>>> import numpy as np
>>> vad = SileroVAD()
>>> probs = vad.probabilities(np.zeros((3, WINDOW), np.float32))  # silence: 3 windows, 3 low scores
>>> probs.shape, bool((probs < 0.05).all())
((3,), True)
>>> restored = SileroVAD.from_state(vad.state())
>>> bool(np.array_equal(restored.state()["h"], vad.state()["h"]))
True
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples per probability (32 ms); the model's only window at 16 kHz
CONTEXT = 64  # samples of the previous window prepended to each window
STATE_SHAPE = (1, 1, 128)
MODEL_FILE = "silero_vad_v6.onnx"


class SileroUnavailable(RuntimeError):
    """faster-whisper's model file or onnxruntime is missing; the energy VAD still works without them."""


def model_path() -> Path:
    """The ONNX file inside the installed faster-whisper package, found without importing faster-whisper
    (its import pulls in CTranslate2 and PyAV, which a VAD does not need)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise SileroUnavailable("faster-whisper is not installed; it ships the Silero VAD model")
    for root in spec.submodule_search_locations:
        path = Path(root) / "assets" / MODEL_FILE
        if path.exists():
            return path
    raise SileroUnavailable(f"{MODEL_FILE} not found in faster-whisper's assets")


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    """One single-threaded CPU session per process: a 32 ms window is far too small to gain from threads, and
    the cores belong to whisper."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise SileroUnavailable("onnxruntime is not installed") from exc
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(str(model_path()), sess_options=opts, providers=["CPUExecutionProvider"])


class SileroVAD:
    """Speech probability per 512-sample window of one stream, carrying the model state between calls."""

    def __init__(self) -> None:
        self._session = _session()
        self.h = np.zeros(STATE_SHAPE, np.float32)
        self.c = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros(CONTEXT, np.float32)

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``windows``: (n, 512) float32 in [-1, 1], consecutive audio; returns n probabilities in [0, 1]."""
        windows = np.asarray(windows, np.float32).reshape(-1, WINDOW)
        if not len(windows):
            return np.zeros(0, np.float32)
        before = np.concatenate([self.context[None], windows[:-1, -CONTEXT:]])
        probs, self.h, self.c = self._session.run(
            None, {"input": np.concatenate([before, windows], axis=1), "h": self.h, "c": self.c})
        self.context = windows[-1, -CONTEXT:].copy()
        return np.asarray(probs, np.float32).reshape(-1)

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly here (a checkpoint carries it: 320 floats)."""
        return {"h": self.h.reshape(-1).copy(), "c": self.c.reshape(-1).copy(), "context": self.context.copy()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> SileroVAD:
        vad = cls()
        vad.h = np.asarray(state["h"], np.float32).reshape(STATE_SHAPE).copy()
        vad.c = np.asarray(state["c"], np.float32).reshape(STATE_SHAPE).copy()
        vad.context = np.asarray(state["context"], np.float32).reshape(CONTEXT).copy()
        return vad
