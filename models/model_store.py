"""Where built models live, so the CLI, the processors and CI agree on one location."""

from __future__ import annotations

import os
from pathlib import Path

HEAD_MODEL = "sentiment-minilm-head"
FINETUNED_MODEL = "sentiment-minilm-finetuned"


def model_dir() -> Path:
    """Root of built models; overridable so tests and containers can point at a throwaway or baked-in dir."""
    env = os.environ.get("STREAMSENSE_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "streamsense" / "models"


def is_built(path: Path) -> bool:
    """A model directory counts as built only once its weights and config are both in place."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))
