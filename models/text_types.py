"""Plain result types and model protocols shared by the text models and the stream processors.

Kept free of torch/spaCy imports so processors and schemas can depend on them cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
ENTITY_LABELS: tuple[str, ...] = ("PER", "ORG", "LOC", "MISC")
EMBEDDING_DIMS = 16


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: str  # "positive" | "neutral" | "negative"
    score: float  # probability of `label`
    # A fixed random projection of the encoder's sentence embedding (EMBEDDING_DIMS values), so the drift
    # monitor can watch the input distribution without running the encoder again; () when the model has none.
    embedding: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.embedding:
            del out["embedding"]
        else:
            out["embedding"] = [round(x, 4) for x in self.embedding]
        return out


@dataclass(frozen=True, slots=True)
class Entity:
    """An entity span; offsets index the ORIGINAL text so consumers can highlight without re-tokenizing."""

    text: str
    label: str  # "PER" | "ORG" | "LOC" | "MISC"
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class SentimentModel(Protocol):
    name: str  # "name@version", recorded in every enriched event

    def predict(self, texts: Sequence[str]) -> list[Sentiment]: ...


@runtime_checkable
class EntityRecognizer(Protocol):
    name: str

    def predict(self, texts: Sequence[str]) -> list[list[Entity]]: ...
