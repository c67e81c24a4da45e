"""Where built models live, so the CLI, the processors and CI agree on one location.

The directory is configured once per process by its entry point (`streamsense` and the worker builder pass
``Settings.model_dir``, i.e. ``STREAMSENSE_MODEL_DIR``); models/ reads no environment, so a library user or a
test sets it with ``configure`` instead of mutating ``os.environ``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

HEAD_MODEL = "sentiment-minilm-head"
FINETUNED_MODEL = "sentiment-minilm-finetuned"
NER_MODEL = "ner-conll-minilm"
DEFAULT_MODEL_DIR = "~/.cache/streamsense/models"  # also Settings.model_dir's default

_configured: Path | None = None


def configure(path: str | Path | None) -> Path | None:
    """Point this process at a model directory (None: back to the default). Returns the previous setting so a
    caller that changes it temporarily (a test) can restore it."""
    global _configured
    previous = _configured
    _configured = Path(path).expanduser() if path else None
    return previous


def model_dir() -> Path:
    """Root of built models; configurable so tests and containers can point at a throwaway or baked-in dir."""
    return _configured if _configured is not None else Path(DEFAULT_MODEL_DIR).expanduser()


def registry_dir() -> Path:
    """The model registry (models/registry.py): every retrained version and the champion alias. Workers on
    several machines must see the same one (a shared volume), like an MLflow artifact store."""
    return model_dir() / "registry"


def retrain_cache_dir() -> Path:
    """The retrainer's embeddings of its replay and holdout tweets (keyed by the encoder's weights)."""
    return model_dir() / ".retrain-cache"


def is_built(path: Path) -> bool:
    """A model directory counts as built only once its weights and config are both in place."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` with the fully written ``tmp`` beside it, so a crashed build never leaves a
    half-written model where a worker would load it."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
