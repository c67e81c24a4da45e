"""Item content features: static text embeddings of title + genres.

wordllama is used because it is static (a token-embedding lookup plus pooling, ~22k texts/s on 2 cores),
ships its weights inside the wheel, and needs no network; a transformer encoder would cost ~70x more per item
for the same role (a cold-start prior that the collaborative part quickly overrides).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

TextEncoder = Callable[[Sequence[str]], np.ndarray]


def item_text(row: Mapping[str, Any]) -> str:
    """Text used for an item's content embedding; genres are split so each becomes its own token."""
    parts = [str(row.get("title") or "")]
    genres = row.get("genres")
    if genres:
        parts.append(str(genres).replace("|", " "))
    if row.get("text"):
        parts.append(str(row["text"]))
    return " ".join(p for p in parts if p).strip()


class WordLlamaEncoder:
    """L2-normalised wordllama embeddings truncated to ``dim``: matryoshka training keeps prefixes useful."""

    def __init__(self, dim: int = 64) -> None:
        import wordllama
        from wordllama import WordLlama

        pkg_dir = os.path.dirname(wordllama.__file__)
        self.dim = dim
        self._wl = WordLlama.load(cache_dir=pkg_dir, disable_download=True, dim=256, trunc_dim=dim)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        emb = np.asarray(self._wl.embed(list(texts), norm=True), dtype=np.float32)
        return emb.reshape(len(texts), self.dim)


def default_encoder(dim: int = 64) -> TextEncoder | None:
    """The wordllama encoder, or None when it cannot be loaded (the model then runs without content)."""
    try:
        return WordLlamaEncoder(dim)
    except Exception:  # any load failure just disables content features
        return None
